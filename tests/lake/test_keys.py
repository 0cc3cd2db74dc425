"""The dedupe index: exact membership, keys that share their high 64 bits, runs spilled to disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shelf.lake import keys
from shelf.lake.keys import KeyIndex, first_occurrences


def u64(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


@pytest.fixture
def tiny_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sizes small enough that a few hundred keys spill runs to disk, in many blocks and chunks."""
    monkeypatch.setattr(keys, "MEMORY_RUN_KEYS", 64)
    monkeypatch.setattr(keys, "BLOCK_KEYS", 8)
    monkeypatch.setattr(keys, "CHUNK_KEYS", 24)
    monkeypatch.setattr(keys, "READ_KEYS", 5)
    monkeypatch.setattr(keys, "FIRST_FILTER_KEYS", 32)
    monkeypatch.setattr(keys, "FAN_IN", 3)
    monkeypatch.setattr(keys, "FILTER_CHUNK_WORDS", 4)


def test_first_occurrences_compares_all_128_bits() -> None:
    hi = u64([5, 5, 5, 1, 5, 1])
    lo = u64([1, 2, 1, 9, 2, 8])
    keep, order = first_occurrences(hi, lo)
    assert keep.tolist() == [True, True, False, True, False, True]
    assert np.all(np.diff(hi[order].astype(np.int64)) >= 0)


def test_index_membership_with_shared_high_halves() -> None:
    index = KeyIndex()
    index.add_sorted(u64([3, 3, 3, 7]), u64([30, 31, 32, 70]))
    index.add_sorted(u64([3, 9]), u64([33, 90]))
    index.add_sorted(u64([1]), u64([10]))
    assert len(index) == 7 and index.run_sizes == [4, 2, 1]
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
    assert index.contains(hi, lo).all()  # unsorted queries are answered in their own order
    assert not index.contains(hi, lo + np.uint64(1)).any()


@pytest.mark.parametrize("high_values", [2**64 - 1, 40], ids=["spread", "shared-high-halves"])
def test_spilled_runs_answer_exactly_like_a_set(tiny_runs: None, tmp_path: Path, high_values: int) -> None:
    rng = np.random.default_rng(7)
    index = KeyIndex(tmp_path)
    held: set[tuple[int, int]] = set()
    for _ in range(30):
        hi = rng.integers(0, high_values, 37, dtype=np.uint64)
        lo = rng.integers(0, 2**64 - 1, 37, dtype=np.uint64)
        fresh = ~index.contains(hi, lo)
        assert fresh.tolist() == [(int(h), int(v)) not in held for h, v in zip(hi, lo, strict=True)]
        order = np.argsort(hi)
        index.add_sorted(hi[order], lo[order])
        held |= {(int(h), int(v)) for h, v in zip(hi, lo, strict=True)}
    assert index.disk_bytes > 0 and len(index) == len(held)
    every = np.array(sorted(held), dtype=np.uint64)
    assert index.contains(every[:, 0], every[:, 1]).all()  # dense lookups: runs streamed
    assert index.contains(every[::50, 0], every[::50, 1]).all()  # sparse lookups: blocks read
    assert not index.contains(every[:, 0], every[:, 1] ^ np.uint64(1)).any()
    assert not index.contains(every[::50, 0] + np.uint64(1), every[::50, 1]).any()
    assert list(tmp_path.iterdir()) == []  # scratch files are unlinked from the start
    index.close()


def test_a_long_stretch_of_one_high_half_spans_blocks_and_chunks(tiny_runs: None, tmp_path: Path) -> None:
    index = KeyIndex(tmp_path)
    for start in range(0, 200, 20):
        index.add_sorted(np.full(20, 5, dtype=np.uint64), np.arange(start, start + 20, dtype=np.uint64))
    assert index.disk_bytes > 0
    assert index.contains(np.full(200, 5, dtype=np.uint64), np.arange(200, dtype=np.uint64)).all()
    assert index.contains(u64([5, 5]), u64([0, 199])).all()
    assert not index.contains(u64([5, 5, 4, 6]), u64([200, 10**9, 0, 0])).any()
    index.close()


def test_a_scratch_file_that_cannot_be_written_is_a_clear_lake_error(tiny_runs: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shelf.errors import LakeError

    def full_disk(fd: int, values: np.ndarray, offset: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keys, "_write_all", full_disk)
    index = KeyIndex(tmp_path)
    hi = np.arange(100, dtype=np.uint64)
    with pytest.raises(LakeError, match="scratch file in .*No space left on device.*nothing of it was committed"):
        index.add_sorted(hi, hi)
    assert list(tmp_path.iterdir()) == []


def test_after_a_failed_merge_the_index_refuses_to_answer(tiny_runs: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shelf.errors import LakeError

    index = KeyIndex(tmp_path)
    index.add_sorted(np.arange(50, dtype=np.uint64), np.arange(50, dtype=np.uint64))

    def full_disk(fd: int, values: np.ndarray, offset: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keys, "_write_all", full_disk)
    with pytest.raises(LakeError, match="No space left"):
        index.add_sorted(np.arange(100, 150, dtype=np.uint64), np.arange(50, dtype=np.uint64))
    # Keys may be missing from its runs now: "absent" would be a lie, so it answers nothing.
    with pytest.raises(LakeError, match="unusable after an earlier failure"):
        index.contains(u64([1]), u64([1]))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("folder", [False, True], ids=["memory", "scratch-file"])
def test_bloom_filter_words_are_the_same_in_memory_and_in_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: bool) -> None:
    monkeypatch.setattr(keys, "FILTER_CHUNK_WORDS", 8)
    rng = np.random.default_rng(3)
    reference = keys._Bloom(500)
    bloom = keys._Bloom(500, tmp_path if folder else None)
    added_hi, added_lo = [], []
    for size in (1, 37, 0, 120, 3):
        hi = np.sort(rng.integers(0, 2**64 - 1, size, dtype=np.uint64))
        lo = rng.integers(0, 2**64 - 1, size, dtype=np.uint64)
        reference.add(hi, lo)
        bloom.add(hi[::-1].copy(), lo[::-1].copy())  # insertion does not need sorted keys
        added_hi.append(hi)
        added_lo.append(lo)
    hi, lo = np.concatenate(added_hi), np.concatenate(added_lo)
    order = np.argsort(hi)
    hi, lo = hi[order], lo[order]
    masks = keys._bloom_masks(lo)
    assert bloom.may_contain(hi, masks).all()  # never a false negative
    probe_hi = np.sort(rng.integers(0, 2**64 - 1, 2000, dtype=np.uint64))
    probe_masks = keys._bloom_masks(rng.integers(0, 2**64 - 1, 2000, dtype=np.uint64))
    assert (bloom.may_contain(probe_hi, probe_masks) == reference.may_contain(probe_hi, probe_masks)).all()
    assert bloom.may_contain(probe_hi[:0], probe_masks[:0]).tolist() == []
    if folder:
        words = keys._read_all(bloom._file.fileno(), bloom.size, 0)
        assert bloom.nbytes == 0 and bloom.disk_bytes == 8 * bloom.size
        assert list(tmp_path.iterdir()) == []  # unlinked from the start
    else:
        words = bloom.words
    assert np.array_equal(words, reference.words)
    bloom.close()


def test_filters_of_runs_on_disk_take_no_memory(tiny_runs: None, tmp_path: Path) -> None:
    index = KeyIndex(tmp_path)
    rng = np.random.default_rng(5)
    for _ in range(20):
        index.add_unsorted(rng.integers(0, 2**64 - 1, 30, dtype=np.uint64), rng.integers(0, 2**64 - 1, 30, dtype=np.uint64))
    memory_runs = sum(len(run) for run in index._fresh)
    fences = sum(run.nbytes for _, run in index._runs)
    fresh_filter = index._fresh_filter.nbytes if index._fresh_filter is not None else 0
    assert index.nbytes == 16 * memory_runs + fences + fresh_filter
    assert index._filters.nbytes == 0 and index._filters.disk_bytes > 0
    index.close()
