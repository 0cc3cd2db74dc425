"""The dedupe index, including keys that share their high 64 bits."""

from __future__ import annotations

import numpy as np

from shelf.lake.keys import KeyIndex, first_occurrences


def u64(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def test_first_occurrences_compares_all_128_bits() -> None:
    hi = u64([5, 5, 5, 1, 5, 1])
    lo = u64([1, 2, 1, 9, 2, 8])
    keep, order = first_occurrences(hi, lo)
    assert keep.tolist() == [True, True, False, True, False, True]
    assert np.all(np.diff(hi[order].astype(np.int64)) >= 0)


def test_index_membership_with_shared_high_halves() -> None:
    index = KeyIndex()
    index.add_sorted(u64([3, 3, 3, 7]), u64([30, 31, 32, 70]))
    index.add_sorted(u64([3, 9]), u64([33, 90]))  # merged into one run (sizes 4 and 2)
    index.add_sorted(u64([1]), u64([10]))
    assert len(index) == 7 and index.nbytes == 7 * 16
    found = index.contains(u64([1, 3, 3, 3, 7, 8, 9]), u64([10, 32, 33, 34, 71, 80, 90]))
    assert found.tolist() == [True, True, True, False, False, False, True]


def test_index_from_unsorted_keys_and_random_roundtrip() -> None:
    rng = np.random.default_rng(1)
    hi = rng.integers(0, 50, 2000, dtype=np.uint64)  # many shared high halves
    lo = rng.integers(0, 2**63, 2000, dtype=np.uint64)
    index = KeyIndex.from_unsorted(hi[:1000], lo[:1000])
    order = np.argsort(hi[1000:])
    index.add_sorted(hi[1000:][order], lo[1000:][order])
    assert index.contains(np.sort(hi), lo[np.argsort(hi)]).all()
    assert not index.contains(hi, lo + np.uint64(1)).any()
