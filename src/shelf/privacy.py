"""Pseudonymization of shopper ids with a keyed HMAC.

The mapping is deterministic for a given key, so a shopper keeps one pseudonym across files and
the live API. Only distinct ids are hashed, which keeps bulk ingest fast (a 10M-event file
usually has far fewer shoppers than events).
"""

from __future__ import annotations

import hashlib
import hmac

import pyarrow as pa
import pyarrow.compute as pc

PSEUDONYM_PREFIX = "u_"
_DIGEST_BYTES = 16  # 128 bits: collisions are out of reach for any shop's population


class Pseudonymizer:
    """Maps raw user ids to stable pseudonyms ``u_<32 hex>`` with HMAC-SHA256."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the pseudonymization key must not be empty")
        self._key = key

    def one(self, raw_id: str) -> str:
        digest = hmac.new(self._key, raw_id.encode("utf-8"), hashlib.sha256).digest()
        return PSEUDONYM_PREFIX + digest[:_DIGEST_BYTES].hex()

    def array(self, raw_ids: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Pseudonymize a string array; nulls stay null."""
        if isinstance(raw_ids, pa.ChunkedArray):
            raw_ids = raw_ids.combine_chunks()
        if len(raw_ids) == 0:
            return pa.array([], type=pa.string())
        encoded = pc.dictionary_encode(raw_ids)
        distinct = encoded.dictionary.to_pylist()
        hashed = pa.array([self.one(value) for value in distinct], type=pa.string())
        return pc.take(hashed, encoded.indices)
