"""Pseudonymization of shopper ids with a keyed HMAC.

The mapping is deterministic for a given key, so a shopper keeps one pseudonym across files and
the live API. Only distinct ids are hashed, which keeps bulk ingest fast (a 10M-event file
usually has far fewer shoppers than events).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PSEUDONYM_PREFIX = "u_"
_DIGEST_BYTES = 16  # 128 bits: collisions are out of reach for any shop's population
_BLOCK_BYTES = 64  # SHA-256's block size, which HMAC pads the key to
# Pseudonyms remembered across batches (a file's 1M-row batches mostly repeat the same shoppers).
# ~50 bytes an entry in Arrow buffers: the default bounds the cache near 50 MB; when full, new ids are hashed
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
        self._known_ids: pa.Array | None = None
        self._known_pseudonyms: pa.Array | None = None
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
        distinct = encoded.dictionary.cast(pa.string())
        # Ids seen in earlier batches are looked up in one vectorised pass (Arrow's hash join);
        # only new ids go through the Python loop below.
        if self._known_ids is not None and len(self._known_ids):
            position = pc.index_in(distinct, value_set=self._known_ids)
            known = pc.take(self._known_pseudonyms, position)
            missing = pc.is_null(position)
        else:
            known = pa.nulls(len(distinct), pa.string())
            missing = pa.array(np.ones(len(distinct), dtype=bool))
        new_ids = distinct.filter(missing)
        inner, outer = self._inner.copy, self._outer.copy
        hashed: list[str | None] = []
        for value in new_ids.cast(pa.binary()).to_pylist():
            if blank_is_null and not value:
                hashed.append(None)
                continue
            digest = inner()
            digest.update(value)
            keyed = outer()
            keyed.update(digest.digest())
            hashed.append(PSEUDONYM_PREFIX + keyed.digest()[:_DIGEST_BYTES].hex())
        fresh = pa.array(hashed, type=pa.string())
        self._remember(new_ids, fresh)
        mapped = pc.replace_with_mask(known, missing, fresh) if len(fresh) else known
        return pc.take(mapped, encoded.indices)

    def _remember(self, ids: pa.Array, pseudonyms: pa.Array) -> None:
        held = 0 if self._known_ids is None else len(self._known_ids)
        room = self._cache_entries - held
        if room <= 0 or len(ids) == 0:
            return
        keep = pc.is_valid(pseudonyms)  # blank ids map to null and are not worth remembering
        ids, pseudonyms = ids.filter(keep)[:room], pseudonyms.filter(keep)[:room]
        if self._known_ids is None:
            self._known_ids, self._known_pseudonyms = ids, pseudonyms
        else:
            self._known_ids = pa.concat_arrays([self._known_ids, ids])
            self._known_pseudonyms = pa.concat_arrays([self._known_pseudonyms, pseudonyms])
