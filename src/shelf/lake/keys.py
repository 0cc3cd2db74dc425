"""The event-id dedupe index: exact 128-bit keys in sorted runs, the large runs in scratch files.

An event's key is DuckDB's ``md5_number(event_id)`` split into two uint64 halves. Two distinct
event ids share a key only by an md5 collision: for n events the chance of any accidental collision
is about n² / 2^129 (3e-26 at 10M events, 3e-21 at 1B), which we accept. (md5 collisions can be
*crafted* with arbitrary bytes; event ids are short validated text, and a crafted pair would at
worst make the lake drop the second of the two events.)

Memory stays nearly flat as the lake grows (bulk ingest must not need RAM in proportion to it):

* Keys are kept in runs sorted by the high half. The runs of the latest appends stay in memory
  until they hold ``MEMORY_RUN_KEYS`` keys; then they are merged, chunk by chunk, into one run in
  an unlinked scratch file beside the parts (so a crash leaves nothing behind), and ``FAN_IN``
  runs of one size class are merged into one of the next (each key is rewritten ~log8(n/1M)
  times). Of a run on disk only every ``BLOCK_KEYS``-th high half (a "fence", 1/64 byte a key)
  stays in memory.
* Bloom filters over every key (2 to 4 bytes a key, as a filter cannot grow and the next one is
  twice as large) let a lookup skip the runs for almost all new keys. The keys of runs on disk
  are in filters that are scratch files too, read (and written) a 256 KiB stretch at a time in
  the order of the sorted keys; only the newest keys' small filter is in memory. A key that
  passes (under 1% of new keys, and every real duplicate) is looked up exactly:
  by a vectorised binary search inside its fenced page of a run (read with pread), or, when most of a
  run's pages are wanted anyway, by streaming the run.

So a key is reported present only when that very key is in a run: the filter never decides alone.
Keys are recomputed from the ``event_id`` column of the committed parts when a writer session first
appends events (about 0.3 s per million events), so nothing besides the events is stored and a
change of hash function across versions is harmless.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import duckdb
import numpy as np
import pyarrow as pa

from shelf.errors import LakeError

Keys = tuple[np.ndarray, np.ndarray]

BLOCK_KEYS = 512  # keys per fence: one 4 KiB page of high halves
MEMORY_RUN_KEYS = 1 << 20  # keys held in memory (16 MiB) before they are merged into a file
FAN_IN = 8  # runs of one level merged at once: each key is rewritten ~log8(n / 2M) times
CHUNK_KEYS = 1 << 17  # keys read or written at a time (per run) when runs are merged or streamed
READ_KEYS = 4096  # keys looked up per round of block reads (bounds the blocks held: 16 MiB)
FILTER_BITS_PER_KEY = 16  # with 6 bits set per key: ~0.4% of absent keys pass a full filter
FILTER_HASHES = 6
FIRST_FILTER_KEYS = 1 << 20  # each further filter holds twice as many keys as the one before
FILTER_CHUNK_WORDS = 1 << 15  # words of a filter file read or written at a time (256 KiB)
SCRATCH_PREFIX = ".keys-"  # scratch files are unlinked at once; a crash in between leaves this name

_U64 = np.uint64


def event_keys(con: duckdb.DuckDBPyConnection, relation_sql: str) -> Keys:
    """(hi, lo) uint64 arrays of the event ids that ``relation_sql`` yields, in its order."""
    result = con.sql(_keys_sql(relation_sql)).fetchnumpy()
    hi = np.ascontiguousarray(result["hi"], dtype=_U64)
    lo = np.ascontiguousarray(result["lo"], dtype=_U64)
    return hi, lo


def event_key_batches(con: duckdb.DuckDBPyConnection, relation_sql: str, rows: int = CHUNK_KEYS) -> Iterator[Keys]:
    """Like :func:`event_keys`, streamed in batches of about ``rows`` keys (bounded memory)."""
    reader = con.sql(_keys_sql(relation_sql)).to_arrow_reader(rows)
    for batch in reader:
        yield (
            np.ascontiguousarray(batch.column(0).to_numpy(), dtype=_U64),
            np.ascontiguousarray(batch.column(1).to_numpy(), dtype=_U64),
        )


def _keys_sql(relation_sql: str) -> str:
    # md5_number is computed once per row (common subexpression), then split.
    return (
        "SELECT (m >> 64)::UBIGINT AS hi, (m & 18446744073709551615::UHUGEINT)::UBIGINT AS lo "
        f"FROM (SELECT md5_number(event_id) AS m FROM ({relation_sql}))"
    )


def table_keys(con: duckdb.DuckDBPyConnection, table: pa.Table) -> Keys:
    con.register("__keys_input", table.select(["event_id"]))
    try:
        return event_keys(con, "SELECT event_id FROM __keys_input")
    finally:
        con.unregister("__keys_input")


def first_occurrences(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which rows hold the first occurrence of their key, and all rows ordered by ``hi``.

    Returns ``(keep, order)``: ``keep[i]`` is False when an earlier row has the same 128-bit key;
    ``order`` sorts the rows by ``hi``.
    """
    n = len(hi)
    keep = np.ones(n, dtype=bool)
    order = np.argsort(hi)
    if n < 2:
        return keep, order
    sorted_hi = hi[order]
    equal_next = sorted_hi[1:] == sorted_hi[:-1]
    if not equal_next.any():
        return keep, order
    # Only rows sharing their high half with another row need the full comparison.
    grouped = np.zeros(n, dtype=bool)
    grouped[1:] |= equal_next
    grouped[:-1] |= equal_next
    rows = order[grouped]
    by_key = rows[np.lexsort((rows, lo[rows], hi[rows]))]
    same_as_previous = np.zeros(len(by_key), dtype=bool)
    same_as_previous[1:] = (hi[by_key][1:] == hi[by_key][:-1]) & (lo[by_key][1:] == lo[by_key][:-1])
    keep[by_key[same_as_previous]] = False
    return keep, order


# -- exact membership in one sorted run ------------------------------------------------------


def _present_at(run_hi: np.ndarray, run_lo: np.ndarray, hi: np.ndarray, lo: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Whether each (hi, lo) is in the run, given ``pos``, the first run index whose hi >= it."""
    n = len(run_hi)
    if n == 0 or len(hi) == 0:
        return np.zeros(len(hi), dtype=bool)
    clipped = np.minimum(pos, n - 1)
    hit = (pos < n) & (run_hi[clipped] == hi)
    same = hit & (run_lo[clipped] == lo)
    # A high half shared by distinct keys (chance ~n²/2^65): scan that short stretch.
    for i in np.flatnonzero(hit & ~same):
        j = int(pos[i])
        while j < n and run_hi[j] == hi[i]:
            if run_lo[j] == lo[i]:
                same[i] = True
                break
            j += 1
    return same


def _in_sorted(run_hi: np.ndarray, run_lo: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    return _present_at(run_hi, run_lo, hi, lo, np.searchsorted(run_hi, hi, side="left"))


def _lower_bound(run_hi: np.ndarray, hi: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Vectorised binary search: first index in [start, end) whose value >= hi (else end).

    Each step reads one value per key, so a lookup touches only the pages of its own range.
    """
    low, high = start.copy(), end.copy()
    last = len(run_hi) - 1
    while True:
        active = low < high
        if not active.any():
            return low
        mid = (low + high) >> 1
        below = active & (run_hi[np.minimum(mid, last)] < hi)
        low = np.where(below, mid + 1, low)
        high = np.where(active & ~below, mid, high)


def _merged_streams(streams: list[Iterator[Keys]]) -> Iterator[Keys]:
    """Merge streams of sorted chunks into one, holding about one chunk of each at a time."""
    heads: list[tuple[Keys, Iterator[Keys]]] = []
    for stream in streams:
        first = next(stream, None)
        while first is not None and not len(first[0]):
            first = next(stream, None)
        if first is not None:
            heads.append((first, stream))
    while heads:
        # Everything up to the smallest of the chunks' last values can go out now: whatever is
        # still to come in any stream is at least that value. At least one chunk is used up.
        bound = min(chunk[0][-1] for chunk, _ in heads)
        his, los, kept = [], [], []
        for (hi, lo), stream in heads:
            k = int(np.searchsorted(hi, bound, side="right"))
            his.append(hi[:k])
            los.append(lo[:k])
            rest = (hi[k:], lo[k:]) if k < len(hi) else next(stream, None)
            while rest is not None and not len(rest[0]):  # an empty chunk is not the end
                rest = next(stream, None)
            if rest is not None:
                kept.append((rest, stream))
        heads = kept
        hi, lo = np.concatenate(his), np.concatenate(los)
        order = np.argsort(hi, kind="stable")  # a merge of sorted pieces (timsort finds them)
        yield hi[order], lo[order]


# -- runs --------------------------------------------------------------------------------------


class _MemoryRun:
    """A run held in numpy arrays."""

    def __init__(self, hi: np.ndarray, lo: np.ndarray) -> None:
        self.hi, self.lo = hi, lo

    def __len__(self) -> int:
        return len(self.hi)

    @property
    def nbytes(self) -> int:
        return self.hi.nbytes + self.lo.nbytes

    def contains(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        return _in_sorted(self.hi, self.lo, hi, lo)

    def chunks(self) -> Iterator[Keys]:
        for start in range(0, len(self.hi), CHUNK_KEYS):
            yield self.hi[start : start + CHUNK_KEYS], self.lo[start : start + CHUNK_KEYS]

    def close(self) -> None:
        pass


class _FileRun:
    """A run in an unlinked scratch file: n high halves, then n low halves; fences in memory."""

    def __init__(self, file: IO[bytes], size: int, fences: np.ndarray) -> None:
        self._file = file
        self._fd = file.fileno()
        self._size = size
        self.fences = fences  # hi at every BLOCK_KEYS-th position

    @classmethod
    def write(cls, folder: Path, size: int, chunks: Iterable[Keys]) -> _FileRun:
        """Write ``size`` keys arriving as sorted chunks; the file is gone once closed or on a crash."""
        file = tempfile.TemporaryFile(dir=folder, prefix=SCRATCH_PREFIX)  # noqa: SIM115 (owned by the run)
        try:
            fd = file.fileno()
            fences: list[np.ndarray] = []
            done = 0
            for hi, lo in chunks:
                _write_all(fd, hi, 8 * done)
                _write_all(fd, lo, 8 * (size + done))
                fences.append(hi[(-done) % BLOCK_KEYS :: BLOCK_KEYS].copy())
                done += len(hi)
            if done != size:
                raise AssertionError(f"a key run was to hold {size} keys, {done} arrived")
        except BaseException:
            file.close()
            raise
        return cls(file, size, np.concatenate(fences) if fences else np.empty(0, _U64))

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        return self.fences.nbytes

    @property
    def disk_bytes(self) -> int:
        return 16 * self._size

    def chunks(self) -> Iterator[Keys]:
        for start in range(0, self._size, CHUNK_KEYS):
            count = min(CHUNK_KEYS, self._size - start)
            yield _read_all(self._fd, count, 8 * start), _read_all(self._fd, count, 8 * (self._size + start))

    def contains(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Membership of keys sorted by hi."""
        if len(hi) == 0 or self._size == 0:
            return np.zeros(len(hi), dtype=bool)
        if len(hi) >= len(self.fences):
            return self._contains_streamed(hi, lo)
        found = np.zeros(len(hi), dtype=bool)
        for start in range(0, len(hi), READ_KEYS):
            part = slice(start, start + READ_KEYS)
            found[part] = self._contains_read(hi[part], lo[part])
        return found

    def _contains_streamed(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """About one key per page is wanted: reading the run through is cheaper than seeking."""
        found = np.zeros(len(hi), dtype=bool)
        for run_hi, run_lo in self.chunks():
            # Keys equal to a chunk's first or last high half are checked in both chunks.
            first = int(np.searchsorted(hi, run_hi[0], side="left"))
            last = int(np.searchsorted(hi, run_hi[-1], side="right"))
            if last > first:
                found[first:last] |= _in_sorted(run_hi, run_lo, hi[first:last], lo[first:last])
        return found

    def _contains_read(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """A binary search inside each key's fenced block, the blocks read with ``pread``.

        (A memory mapping would do, but the kernel maps the page cache's large folios whole:
        measured ~1.5 MB of this process's RSS per key looked up.)
        """
        n, width = self._size, BLOCK_KEYS + 1
        block = np.searchsorted(self.fences, hi, side="left").astype(np.int64) - 1
        # The lower bound of a key in block b lies in [b * BLOCK_KEYS, (b + 1) * BLOCK_KEYS]: one
        # block and the next fence, read as one row. A key before the first fence searches [0, 0].
        base = np.maximum(block, 0) * BLOCK_KEYS
        bases, row = np.unique(base, return_inverse=True)
        values = np.zeros((len(bases), width), dtype=_U64)
        for i, first in enumerate(bases.tolist()):
            _read_into(self._fd, values[i, : min(width, n - first)], 8 * first)
        offset = row.astype(np.int64) * width
        end = np.where(block < 0, 0, np.minimum(base + BLOCK_KEYS, n) - base)
        local = _lower_bound(values.ravel(), hi, offset, offset + end) - offset
        position = base + local
        matched = np.flatnonzero((position < n) & (values[row, np.minimum(local, width - 1)] == hi))
        found = np.zeros(len(hi), dtype=bool)
        for i in matched.tolist():
            found[i] = self._present_from(int(position[i]), int(hi[i]), int(lo[i]))
        return found

    def _present_from(self, j: int, hi: int, lo: int) -> bool:
        """Whether (hi, lo) is at j or later in the stretch of keys whose high half is hi (rare:
        a duplicate, or a high half shared by distinct keys)."""
        while j < self._size:
            count = min(BLOCK_KEYS, self._size - j)
            his = _read_all(self._fd, count, 8 * j)
            los = _read_all(self._fd, count, 8 * (self._size + j))
            same_hi = his == _U64(hi)
            if (same_hi & (los == _U64(lo))).any():
                return True
            if not same_hi.all():
                return False
            j += count
        return False

    def close(self) -> None:
        self._file.close()


def _write_all(fd: int, values: np.ndarray, offset: int) -> None:
    view = np.ascontiguousarray(values).data.cast("B")
    while len(view):
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _read_all(fd: int, count: int, offset: int) -> np.ndarray:
    out = np.empty(count, dtype=_U64)
    _read_into(fd, out, offset)
    return out


def _read_into(fd: int, out: np.ndarray, offset: int) -> None:
    view = out.data.cast("B")
    while len(view):
        got = os.preadv(fd, [view], offset)
        if got == 0:
            raise OSError(f"a key run's scratch file ended early at byte {offset}")
        view, offset = view[got:], offset + got


# -- the filter ----------------------------------------------------------------------------------


def _bloom_masks(lo: np.ndarray) -> np.ndarray:
    """FILTER_HASHES bits of one 64-bit word, chosen by 6-bit fields of the low half."""
    mask = np.zeros(len(lo), dtype=_U64)
    for i in range(FILTER_HASHES):
        mask |= _U64(1) << ((lo >> _U64(6 * i)) & _U64(63))
    return mask


class _Bloom:
    """A blocked Bloom filter for up to ``capacity`` keys: each key sets bits in one word.

    The word is picked by the top bits of the high half, so keys sorted by hi touch the words
    in order (no random access, and insertion needs no sort). With a ``folder`` the words live in
    an unlinked scratch file (zeros until written) and are read, and written back, a stretch of
    ``FILTER_CHUNK_WORDS`` at a time: only the stretches a lookup needs, so at most one stretch is
    in memory whatever the filter's size.
    """

    def __init__(self, capacity: int, folder: Path | None = None) -> None:
        self.capacity = capacity
        self.count = 0
        self.size = max(1, capacity * FILTER_BITS_PER_KEY // 64)  # in words
        assert self.size < 1 << 32  # the slot arithmetic below stays within 64 bits
        self.words: np.ndarray | None = None
        self._file: IO[bytes] | None = None
        if folder is None:
            self.words = np.zeros(self.size, dtype=_U64)
            return
        self._file = tempfile.TemporaryFile(dir=folder, prefix=SCRATCH_PREFIX)  # noqa: SIM115 (owned by the filter)
        try:
            os.ftruncate(self._file.fileno(), 8 * self.size)  # a sparse file of zero words
        except BaseException:
            self._file.close()
            raise

    @property
    def nbytes(self) -> int:
        return 0 if self.words is None else self.words.nbytes

    @property
    def disk_bytes(self) -> int:
        return 0 if self._file is None else 8 * self.size

    def _slots(self, hi: np.ndarray) -> np.ndarray:
        return ((hi >> _U64(32)) * _U64(self.size)) >> _U64(32)

    def _stretches(self, slots: np.ndarray) -> Iterator[tuple[int, int, int]]:
        """(first key, end key, first word) of each stretch of sorted ``slots`` in one chunk."""
        chunk = slots // _U64(FILTER_CHUNK_WORDS)
        starts = np.flatnonzero(np.concatenate(([True], chunk[1:] != chunk[:-1])))
        ends = np.append(starts[1:], len(slots))
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            yield a, b, int(slots[a])

    def add(self, hi: np.ndarray, lo: np.ndarray) -> None:
        if not len(hi):
            return
        slots, masks = self._slots(hi), _bloom_masks(lo)
        if not _is_sorted(slots):
            order = np.argsort(slots, kind="stable")
            slots, masks = slots[order], masks[order]
        if self.words is not None:
            _set_bits(self.words, slots, masks)
        else:
            assert self._file is not None
            fd = self._file.fileno()
            for a, b, first in self._stretches(slots):
                words = _read_all(fd, int(slots[b - 1]) - first + 1, 8 * first)
                _set_bits(words, slots[a:b] - _U64(first), masks[a:b])
                _write_all(fd, words, 8 * first)
        self.count += len(hi)

    def may_contain(self, hi: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Whether each key may be in the filter; ``hi`` sorted ascending."""
        slots = self._slots(hi)
        if self.words is not None:
            return (self.words[slots] & masks) == masks
        assert self._file is not None
        if not len(hi):
            return np.zeros(0, dtype=bool)
        fd = self._file.fileno()
        maybe = np.empty(len(hi), dtype=bool)
        for a, b, first in self._stretches(slots):
            words = _read_all(fd, int(slots[b - 1]) - first + 1, 8 * first)
            maybe[a:b] = (words[slots[a:b] - _U64(first)] & masks[a:b]) == masks[a:b]
        return maybe

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.words = None


def _is_sorted(values: np.ndarray) -> bool:
    return len(values) < 2 or bool(np.all(values[1:] >= values[:-1]))


def _set_bits(words: np.ndarray, slots: np.ndarray, masks: np.ndarray) -> None:
    """words[slots] |= masks, for sorted slots (one OR per distinct slot)."""
    starts = np.flatnonzero(np.concatenate(([True], slots[1:] != slots[:-1])))
    words[slots[starts]] |= np.bitwise_or.reduceat(masks, starts)


class _Filters:
    """Bloom filters of doubling capacity (a filter cannot grow): keys go into the newest.

    With a ``folder`` each filter is a scratch file (see :class:`_Bloom`), so the filters of a
    large lake take disk and page cache, not this process's memory.
    """

    def __init__(self, folder: Path | None = None) -> None:
        self._folder = folder
        self._filters: list[_Bloom] = []

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self._filters)

    @property
    def disk_bytes(self) -> int:
        return sum(f.disk_bytes for f in self._filters)

    def add(self, hi: np.ndarray, lo: np.ndarray) -> None:
        while len(hi):
            if not self._filters or self._filters[-1].count >= self._filters[-1].capacity:
                previous = self._filters[-1].capacity if self._filters else FIRST_FILTER_KEYS // 2
                self._filters.append(_Bloom(2 * previous, self._folder))
            newest = self._filters[-1]
            take = newest.capacity - newest.count
            newest.add(hi[:take], lo[:take])
            hi, lo = hi[take:], lo[take:]

    def may_contain(self, hi: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """``hi`` sorted ascending; ``masks`` from :func:`_bloom_masks` of the low halves."""
        maybe = np.zeros(len(hi), dtype=bool)
        for bloom in self._filters:
            maybe |= bloom.may_contain(hi, masks)
        return maybe

    def close(self) -> None:
        for bloom in self._filters:
            bloom.close()
        self._filters = []


# -- the index -----------------------------------------------------------------------------------


class KeyIndex:
    """An exact set of 128-bit keys; see the module docstring.

    ``folder`` is where runs larger than ``MEMORY_RUN_KEYS`` go (unlinked scratch files); without
    one, every run stays in memory. Call :meth:`close` when done (the files go with the process
    anyway).
    """

    def __init__(self, folder: Path | None = None) -> None:
        self._folder = folder
        self._fresh: list[_MemoryRun] = []  # one run per add, until MEMORY_RUN_KEYS are held
        self._runs: list[tuple[int, _MemoryRun | _FileRun]] = []  # (level, run), levels descending
        self._fresh_filter: _Bloom | None = None  # the fresh runs' keys (in memory, < MEMORY_RUN_KEYS)
        self._filters = _Filters(folder)  # the merged runs' keys (scratch files with a folder)
        self._failed: LakeError | None = None

    def _all_runs(self) -> list[_MemoryRun | _FileRun]:
        return [run for _, run in self._runs] + list(self._fresh)

    def __len__(self) -> int:
        return sum(len(run) for run in self._all_runs())

    @property
    def nbytes(self) -> int:
        """Memory held: in-memory runs, fences of runs on disk, in-memory filters."""
        fresh_filter = self._fresh_filter.nbytes if self._fresh_filter is not None else 0
        return sum(run.nbytes for run in self._all_runs()) + self._filters.nbytes + fresh_filter

    @property
    def disk_bytes(self) -> int:
        """Scratch files: runs and filters."""
        runs = sum(run.disk_bytes for run in self._all_runs() if isinstance(run, _FileRun))
        return runs + self._filters.disk_bytes

    @property
    def run_sizes(self) -> list[int]:
        return [len(run) for run in self._all_runs()]

    @classmethod
    def from_unsorted(cls, hi: np.ndarray, lo: np.ndarray, folder: Path | None = None) -> KeyIndex:
        index = cls(folder)
        index.add_unsorted(hi, lo)
        return index

    def add_unsorted(self, hi: np.ndarray, lo: np.ndarray) -> None:
        """Add keys that are not yet present, in any order."""
        order = np.argsort(hi)
        self.add_sorted(hi[order], lo[order])

    def add_sorted(self, hi: np.ndarray, lo: np.ndarray) -> None:
        """Add keys that are not yet present; ``hi`` sorted ascending.

        Added runs are not merged until MEMORY_RUN_KEYS are held (behind the filter, a lookup
        in a few more runs costs little; merging costs a copy of every key); a small filter in
        memory covers them. Then they become one run of level 0, in a file when the index has a
        folder, and their keys go into the large filters as the merge streams them (one pass
        over a filter file per MEMORY_RUN_KEYS keys); FAN_IN runs of one level become one run
        of the next level.
        """
        self._check_usable()
        if not len(hi):
            return
        self._fresh.append(_MemoryRun(hi, lo))
        if sum(len(run) for run in self._fresh) < MEMORY_RUN_KEYS:
            if self._fresh_filter is None:
                self._fresh_filter = _Bloom(MEMORY_RUN_KEYS)
            self._fresh_filter.add(hi, lo)
            return
        try:
            merged = self._merge(self._fresh, into_filters=True)
        except LakeError as error:
            self._fail(error)
            raise
        self._fresh, self._fresh_filter = [], None
        self._runs.append((0, merged))
        while len(self._runs) >= FAN_IN and len({level for level, _ in self._runs[-FAN_IN:]}) == 1:
            level = self._runs[-1][0]
            group = [run for _, run in self._runs[-FAN_IN:]]
            try:
                self._runs[-FAN_IN:] = [(level + 1, self._merge(group))]
            except LakeError as error:
                self._fail(error)
                raise

    def _fail(self, error: LakeError) -> None:
        """A merge failed: keys may be missing from the runs, so the index answers no more."""
        self.close()
        self._failed = error

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise LakeError(f"the dedupe index is unusable after an earlier failure: {self._failed}")

    def _merge(self, runs: list[_MemoryRun] | list[_MemoryRun | _FileRun], *, into_filters: bool = False) -> _MemoryRun | _FileRun:
        """Runs → one, streamed chunk by chunk into a file (or into memory without a folder);
        with ``into_filters``, each chunk's keys go into the large filters before the run holds them."""
        size = sum(len(run) for run in runs)
        chunks = _merged_streams([run.chunks() for run in runs])
        if into_filters:
            chunks = self._filtered(chunks)
        try:
            if self._folder is not None:
                try:
                    return _FileRun.write(self._folder, size, chunks)
                except OSError as error:  # a full disk at 3 a.m. should say so, and where
                    raise LakeError(
                        f"cannot write the dedupe index's scratch file in {self._folder} ({error}); this write session "
                        "(an ingest, or a compaction of the live log) is abandoned and nothing of it was committed: free disk space there and retry"
                    ) from error
            parts = list(chunks)
            return _MemoryRun(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        finally:
            for run in runs:
                run.close()

    def _filtered(self, chunks: Iterator[Keys]) -> Iterator[Keys]:
        for hi, lo in chunks:
            self._filters.add(hi, lo)  # sorted chunks: together one pass over the newest filter
            yield hi, lo

    def contains(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Membership of each (hi, lo); fastest with ``hi`` sorted ascending."""
        self._check_usable()
        hi = np.asarray(hi, dtype=_U64)
        lo = np.asarray(lo, dtype=_U64)
        order = None
        if len(hi) > 1 and not bool(np.all(hi[1:] >= hi[:-1])):
            order = np.argsort(hi, kind="stable")
            hi, lo = hi[order], lo[order]
        found = np.zeros(len(hi), dtype=bool)
        masks = _bloom_masks(lo)
        passed = self._filters.may_contain(hi, masks)
        if self._fresh_filter is not None:
            passed |= self._fresh_filter.may_contain(hi, masks)
        maybe = np.flatnonzero(passed)
        if len(maybe):
            want_hi, want_lo = hi[maybe], lo[maybe]
            hit = np.zeros(len(maybe), dtype=bool)
            for run in self._all_runs():
                rest = np.flatnonzero(~hit)
                if not len(rest):
                    break
                hit[rest] = run.contains(want_hi[rest], want_lo[rest])
            found[maybe] = hit
        if order is None:
            return found
        unsorted = np.empty_like(found)
        unsorted[order] = found
        return unsorted

    def close(self) -> None:
        for run in self._all_runs():
            run.close()
        self._runs, self._fresh = [], []
        self._filters.close()
        self._fresh_filter = None
