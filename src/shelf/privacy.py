"""Pseudonymization of shopper ids with a keyed HMAC.

The mapping is deterministic for a given key, so a shopper keeps one pseudonym across files and
the live API. Only distinct ids are hashed, which keeps bulk ingest fast (a 10M-event file
usually has far fewer shoppers than events).
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.compute as pc

PSEUDONYM_PREFIX = "u_"
_DIGEST_BYTES = 16  # 128 bits: collisions are out of reach for any shop's population
_BLOCK_BYTES = 64  # SHA-256's block size, which HMAC pads the key to
# Pseudonyms remembered across batches (a file's 1M-row batches mostly repeat the same shoppers).
# ~150 bytes an entry: the default bounds the cache near 150 MB; when full, new ids are hashed
# without being remembered, so memory stays bounded however many shoppers a file has.
DEFAULT_CACHE_ENTRIES = 1_000_000


class Pseudonymizer:
    """Maps raw user ids to stable pseudonyms ``u_<32 hex>`` with HMAC-SHA256."""

    def __init__(self, key: bytes, *, cache_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        if not key:
            raise ValueError("the pseudonymization key must not be empty")
        # HMAC (RFC 2104) with its two keyed SHA-256 states computed once: hashing an id then costs
        # two state copies instead of a new HMAC object, which bulk ingest does ~1M times a file.
        block = (hashlib.sha256(key).digest() if len(key) > _BLOCK_BYTES else key).ljust(_BLOCK_BYTES, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self._cache: dict[bytes, str] = {}
        self._cache_entries = cache_entries

    def one(self, raw_id: str) -> str:
        inner = self._inner.copy()
        inner.update(raw_id.encode("utf-8"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return PSEUDONYM_PREFIX + outer.digest()[:_DIGEST_BYTES].hex()

    def array(self, raw_ids: pa.Array | pa.ChunkedArray, *, blank_is_null: bool = False) -> pa.Array:
        """Pseudonymize a string array; nulls stay null, and so do empty ids with ``blank_is_null``."""
        if isinstance(raw_ids, pa.ChunkedArray):
            raw_ids = raw_ids.combine_chunks()
        if len(raw_ids) == 0:
            return pa.array([], type=pa.string())
        encoded = pc.dictionary_encode(raw_ids)
        # The loop of one() inlined, on the ids' UTF-8 bytes as Arrow holds them (no str round trip).
        inner, outer = self._inner.copy, self._outer.copy
        hashed: list[str | None] = []
        cache, room = self._cache, self._cache_entries - len(self._cache)
        for value in encoded.dictionary.cast(pa.binary()).to_pylist():
            if blank_is_null and not value:
                hashed.append(None)
                continue
            known = cache.get(value)
            if known is None:
                digest = inner()
                digest.update(value)
                keyed = outer()
                keyed.update(digest.digest())
                known = PSEUDONYM_PREFIX + keyed.digest()[:_DIGEST_BYTES].hex()
                if room > 0:
                    cache[value] = known
                    room -= 1
            hashed.append(known)
        return pc.take(pa.array(hashed, type=pa.string()), encoded.indices)
