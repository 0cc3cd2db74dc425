"""Pseudonyms: the keyed HMAC, and the bounded cache bulk ingest goes through."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pyarrow as pa
import pytest

from shelf.privacy import Pseudonymizer, string_hashes

KEY = b"a test key that is long enough"


def reference(raw: str | None, blank_is_null: bool = False) -> str | None:
    if raw is None or (blank_is_null and raw == ""):
        return None
    return "u_" + hmac.new(KEY, raw.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def test_one_is_hmac_sha256_truncated_to_128_bits() -> None:
    pseudo = Pseudonymizer(KEY)
    assert pseudo.one("shopper-1") == reference("shopper-1")
    long_key = b"k" * 100  # longer than SHA-256's block: hashed first, as RFC 2104 says
    expected = "u_" + hmac.new(long_key, b"x", hashlib.sha256).hexdigest()[:32]
    assert Pseudonymizer(long_key).one("x") == expected == Pseudonymizer(long_key).array(pa.array(["x"])).to_pylist()[0]


@pytest.mark.parametrize("cache_entries", [0, 7, 1_000_000])
def test_batches_match_the_reference_whatever_the_cache_holds(cache_entries: int) -> None:
    rng = np.random.default_rng(11)
    shoppers = [f"user-{i}" for i in range(60)] + ["", "é", "ü" * 80, "a\0", "a", "0", "x" * 5000]
    pseudo = Pseudonymizer(KEY, cache_entries=cache_entries)
    for batch in range(25):
        picks = rng.integers(0, len(shoppers) + 4, 50)
        raw = [shoppers[i] if i < len(shoppers) else None for i in picks]
        blank_is_null = batch % 2 == 0
        array = pa.array(raw, pa.string())
        if batch % 3 == 0:
            array = pa.chunked_array([array[:20], array[20:]])
        elif batch % 3 == 1:
            array = pa.array(["skip", *raw], pa.string()).slice(1)  # an offset into the buffers
        got = pseudo.array(array, blank_is_null=blank_is_null).to_pylist()
        assert got == [reference(r, blank_is_null) for r in raw]
        assert pseudo.cached <= cache_entries


def test_the_cache_fills_up_to_its_bound_then_stays() -> None:
    pseudo = Pseudonymizer(KEY, cache_entries=100)
    pseudo.array(pa.array([f"s{i}" for i in range(70)]))
    assert pseudo.cached == 70
    pseudo.array(pa.array([f"s{i}" for i in range(50, 200)]))
    assert pseudo.cached == 100
    again = pseudo.array(pa.array([f"s{i}" for i in range(200)]))
    assert again.to_pylist() == [reference(f"s{i}") for i in range(200)]


def test_large_strings_and_empty_batches() -> None:
    pseudo = Pseudonymizer(KEY)
    assert pseudo.array(pa.array(["a", None], pa.large_string())).to_pylist() == [reference("a"), None]
    assert pseudo.array(pa.array([], pa.string())).to_pylist() == []
    assert pseudo.array(pa.array([None, None], pa.string())).to_pylist() == [None, None]


def test_colliding_cache_hashes_never_give_a_wrong_pseudonym(monkeypatch: pytest.MonkeyPatch) -> None:
    from shelf import privacy

    # Every id hashes alike: the cache can hold one of them, and must still tell them apart.
    monkeypatch.setattr(privacy, "string_hashes", lambda strings: np.zeros(len(strings), dtype=np.uint64))
    pseudo = Pseudonymizer(KEY)
    for ids in (["a", "b"], ["b", "c", "a"], ["c", "b"]):
        assert pseudo.array(pa.array(ids)).to_pylist() == [reference(i) for i in ids]
    assert pseudo.cached == 1


def test_string_hashes_depend_on_content_not_on_layout() -> None:
    values = ["", "a", "a\0", "ab", "ba", "user-1", "é" * 40]
    plain = string_hashes(pa.array(values))
    assert len(set(plain.tolist())) == len(values)
    shifted = string_hashes(pa.array(["zzz", *values], pa.large_string()).slice(1))
    assert np.array_equal(plain, shifted)
