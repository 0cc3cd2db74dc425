"""The write-ahead log: live event batches are durable here before the API acknowledges them.

Layout under the WAL folder (``<home>/lake/wal`` by convention)::

    LOCK                      held (flock) by the one process that appends
    seg-0000000000000001.wal  sealed segments, oldest first
    seg-0000000000000002.wal  the active segment (the highest number), appended to

A segment starts with an 8-byte magic and holds records, each::

    [u32 payload length][u32 CRC-32 of payload][payload: one Arrow IPC stream, EVENT_SCHEMA]

written with a single ``write`` call. An append returns only after its bytes are fsynced.
**Group commit**: appenders write under a short lock, then one of them (the leader) fsyncs on
behalf of every record written so far while the others wait; so N concurrent appenders cost
about one fsync, not N. A segment is rotated when it passes ``segment_bytes``; the fsync that
covers its last record also covers the new segment's directory entry.

Recovery on open reads every segment. A *torn tail* (a last record cut short, or ending at the
end of the file with a bad checksum or zeros, as a crash mid-write leaves it) is dropped and the
file truncated: that record was never acknowledged. A checksum mismatch with valid bytes after it
is damage, not a crash, and raises :class:`WalCorruptError` naming file and offset. Appends after
recovery always go to a new segment.

``compact(into, commit)`` seals the active segment, hands each sealed segment's events to ``into``
(a lake writer session's ``append_events``, which dedupes on ``event_id``), runs ``commit`` and
deletes the segments only after it returns; a crash in between replays the segments next time,
which the dedupe makes harmless. :func:`read_segments` reads the folder without the lock (for
snapshots: the lake reads the WAL beside its Parquet parts).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from shelf.errors import LakeError
from shelf.fsutil import fsync_dir
from shelf.schema import EVENT_SCHEMA

log = logging.getLogger(__name__)

MAGIC = b"SHELFWL1"
_HEADER = struct.Struct("<II")  # payload length, crc32
_SEGMENT_RE = re.compile(r"^seg-(\d{16})\.wal$")
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
MAX_RECORD_BYTES = 256 * 1024 * 1024


class WalCorruptError(LakeError):
    """A segment is damaged somewhere other than its tail; it needs a person to look at it."""


@dataclass(frozen=True)
class WalStats:
    """What the log holds and how hard it has worked (for metrics and benchmarks)."""

    segments: int
    appends: int
    fsyncs: int
    bytes_written: int


def _segment_name(number: int) -> str:
    return f"seg-{number:016d}.wal"


def _encode(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, EVENT_SCHEMA) as writer:
        writer.write_table(table)
    payload = sink.getvalue().to_pybytes()
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _decode(payload: bytes) -> pa.Table:
    with pa.ipc.open_stream(pa.py_buffer(payload)) as reader:
        return reader.read_all()


def _scan(path: Path, data: bytes, *, is_last: bool) -> tuple[list[tuple[int, int]], int]:
    """Record spans ``(start, end)`` of payloads and the length of the valid prefix.

    Raises WalCorruptError for damage that a crash cannot explain.
    """
    if len(data) < len(MAGIC):
        if MAGIC.startswith(data):
            return [], 0  # a crash while creating the segment
        raise WalCorruptError(f"{path}: not a shelf WAL segment (bad magic)")
    if data[: len(MAGIC)] != MAGIC:
        raise WalCorruptError(f"{path}: not a shelf WAL segment (bad magic)")
    spans: list[tuple[int, int]] = []
    offset = len(MAGIC)
    size = len(data)
    while offset < size:
        if size - offset < _HEADER.size:
            break  # torn header
        length, crc = _HEADER.unpack_from(data, offset)
        start, end = offset + _HEADER.size, offset + _HEADER.size + length
        if length == 0:
            if not any(data[offset:]):
                break  # the file was extended with zeros but never written: torn
            raise WalCorruptError(f"{path}: empty record at byte {offset}; the segment is damaged")
        if end > size:
            break  # torn payload (or a garbage length in a torn header)
        if zlib.crc32(data[start:end]) != crc:
            if end == size:
                break  # the last record, cut by a crash before its bytes reached the disk
            raise WalCorruptError(
                f"{path}: checksum mismatch in the record at byte {offset} with {size - end} bytes "
                "after it; this is damage, not a crash. Move the segment aside after checking what it "
                "holds (shelf never deletes it on its own)"
            )
        spans.append((start, end))
        offset = end
    if offset < size and not is_last:
        log.warning("%s: dropping a torn tail of %d bytes (never acknowledged)", path, size - offset)
    return spans, offset


def read_segments(root: Path | str) -> pa.Table:
    """Every durable event in the WAL folder ``root``, read without its lock (EVENT_SCHEMA).

    For readers beside a live appender (snapshots). Each segment is read, then fsynced by the
    reader itself, so every whole, checksummed record returned is on disk: either it was already
    acknowledged, or its appender is about to acknowledge it (or crashed first, and recovery will
    keep the record, since it is whole). A tail that is still being written fails its checksum
    and is left out. A segment deleted meanwhile (compacted) is skipped: its events were committed
    to the lake before the delete. Damage that is not a torn tail raises :class:`WalCorruptError`.
    """
    folder = Path(root)
    if not folder.is_dir():
        return EVENT_SCHEMA.empty_table()
    tables: list[pa.Table] = []
    for path in sorted(p for p in folder.iterdir() if _SEGMENT_RE.match(p.name)):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read()
            os.fsync(fd)
        finally:
            os.close(fd)
        spans, _ = _scan(path, data, is_last=True)
        tables += [_decode(data[start:end]) for start, end in spans]
    if not tables:
        return EVENT_SCHEMA.empty_table()
    return pa.concat_tables([t.cast(EVENT_SCHEMA) for t in tables])


class WriteAheadLog:
    """Durable, group-committed append of EVENT_SCHEMA batches; one appending process per folder.

    Thread-safe: ``append`` may be called from many threads at once (that is what makes group
    commit pay). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, root: Path | str, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        if segment_bytes < 4096:
            raise ValueError(f"segment_bytes={segment_bytes} is too small; use at least 4096")
        self.root = Path(root)
        self.segment_bytes = segment_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.root / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise LakeError(f"{self.root} is locked by another process (another `shelf serve`?)") from None

        self._mutex = threading.Lock()
        self._synced = threading.Condition(self._mutex)
        self._compacting = threading.Lock()
        self._closed = False
        self._written = 0  # logical bytes written since open (monotonic across segments)
        self._durable = 0  # logical bytes known fsynced
        self._syncing = False
        self._sync_error: BaseException | None = None
        self._to_seal: list[int] = []  # fds of rotated segments awaiting their final fsync
        self._dir_dirty = False
        self._appends = 0
        self._fsyncs = 0

        try:
            self._sealed: list[Path] = self._recover()
            numbers = [int(m.group(1)) for p in self._sealed if (m := _SEGMENT_RE.match(p.name))]
            self._next_number = max(numbers, default=0) + 1
            self._fd = -1
            self._active: Path | None = None
            self._active_size = 0
            self._open_segment()
            fsync_dir(self.root)
        except BaseException:
            self._release_lock()
            raise

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> WriteAheadLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Fsync what was written and release the folder. Idempotent."""
        with self._mutex:
            if self._closed:
                return
            while self._syncing:
                self._synced.wait()
            self._closed = True
            fds = [*self._to_seal, self._fd]
            self._to_seal = []
        for fd in fds:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(self.root)
        self._release_lock()

    def _release_lock(self) -> None:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            os.close(self._lock_fd)

    # -- recovery --------------------------------------------------------------------------

    def _segment_paths(self) -> list[Path]:
        found = [p for p in self.root.iterdir() if _SEGMENT_RE.match(p.name)]
        return sorted(found, key=lambda p: p.name)

    def _recover(self) -> list[Path]:
        """Check every segment, truncate torn tails, drop empty segments; sealed paths in order."""
        paths = self._segment_paths()
        kept: list[Path] = []
        for i, path in enumerate(paths):
            data = path.read_bytes()
            spans, valid = _scan(path, data, is_last=i == len(paths) - 1)
            if not spans:
                path.unlink()
                continue
            if valid < len(data):
                with path.open("r+b") as handle:
                    handle.truncate(valid)
                    handle.flush()
                    os.fsync(handle.fileno())
            kept.append(path)
        return kept

    # -- appending -------------------------------------------------------------------------

    def _open_segment(self) -> None:
        """Start a new active segment (caller holds the mutex, or is the constructor)."""
        path = self.root / _segment_name(self._next_number)
        self._next_number += 1
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        os.write(fd, MAGIC)
        if self._active is not None:
            self._sealed.append(self._active)
            self._to_seal.append(self._fd)
        self._fd, self._active, self._active_size = fd, path, len(MAGIC)
        self._written += len(MAGIC)
        self._dir_dirty = True

    def append(self, table: pa.Table) -> None:
        """Write ``table`` (EVENT_SCHEMA) and return once it is on disk (fsynced)."""
        if not table.schema.equals(EVENT_SCHEMA, check_metadata=False):
            raise ValueError(f"WAL records must have EVENT_SCHEMA; got {table.schema}")
        if table.num_rows == 0:
            return
        record = _encode(table)
        if len(record) > MAX_RECORD_BYTES:
            raise ValueError(f"a WAL record of {len(record):,} bytes is over {MAX_RECORD_BYTES:,}; split the batch")
        with self._mutex:
            self._check_open()
            if self._active_size > len(MAGIC) and self._active_size + len(record) > self.segment_bytes:
                self._open_segment()
            os.write(self._fd, record)  # O_APPEND, one call: a crash leaves a prefix, never a mix
            self._active_size += len(record)
            self._written += len(record)
            self._appends += 1
            self._wait_durable(self._written)

    def sync(self) -> None:
        """Return once everything written so far is fsynced."""
        with self._mutex:
            self._check_open()
            self._wait_durable(self._written)

    def _check_open(self) -> None:
        if self._closed:
            raise LakeError(f"the WAL at {self.root} is closed")
        if self._sync_error is not None:
            raise LakeError(f"the WAL at {self.root} failed to fsync and refuses writes: {self._sync_error}")

    def _wait_durable(self, target: int) -> None:
        """Group commit (caller holds the mutex): lead an fsync or wait for the one in flight."""
        while self._durable < target:
            if self._sync_error is not None:
                raise LakeError(f"fsync of the WAL at {self.root} failed: {self._sync_error}")
            if self._syncing:
                self._synced.wait()
                continue
            # Lead: everything written up to now rides on this fsync.
            self._syncing = True
            covered = self._written
            fds, self._to_seal = [*self._to_seal, self._fd], []
            dir_dirty, self._dir_dirty = self._dir_dirty, False
            self._mutex.release()
            error: BaseException | None = None
            try:
                for fd in fds:
                    os.fsync(fd)
                if dir_dirty:
                    fsync_dir(self.root)
            except BaseException as exc:  # an fsync failure poisons the log (fsyncgate)
                error = exc
            finally:
                for fd in fds[:-1]:
                    os.close(fd)
                self._mutex.acquire()
            self._syncing = False
            self._fsyncs += 1
            if error is not None:
                self._sync_error = error
            else:
                self._durable = max(self._durable, covered)
            self._synced.notify_all()

    # -- reading ---------------------------------------------------------------------------

    def _durable_view(self) -> list[tuple[Path, int | None]]:
        """Segments with how many bytes of each are acknowledged (None: the whole file)."""
        with self._mutex:
            self._check_open()
            self._wait_durable(self._written)
            assert self._active is not None
            return [*((p, None) for p in self._sealed), (self._active, self._active_size)]

    def _read_segment(self, path: Path, limit: int | None) -> pa.Table:
        with path.open("rb") as handle:
            data = handle.read() if limit is None else handle.read(limit)
        spans, _ = _scan(path, data, is_last=True)
        tables = [_decode(data[start:end]) for start, end in spans]
        return pa.concat_tables(tables) if tables else EVENT_SCHEMA.empty_table()

    def iter_segments(self) -> Iterator[tuple[Path, pa.Table]]:
        """Each segment with its acknowledged events, oldest first (the active one included)."""
        with self._compacting:
            for path, limit in self._durable_view():
                yield path, self._read_segment(path, limit)

    def read_all(self) -> pa.Table:
        """Every acknowledged event not yet compacted, in append order (EVENT_SCHEMA)."""
        tables = [table for _, table in self.iter_segments()]
        return pa.concat_tables(tables) if tables else EVENT_SCHEMA.empty_table()

    # -- compaction ------------------------------------------------------------------------

    def seal(self) -> None:
        """Close the active segment to appends (if it holds anything) and make it durable."""
        with self._mutex:
            self._check_open()
            if self._active_size > len(MAGIC):
                self._open_segment()
            self._wait_durable(self._written)

    def has_pending(self) -> bool:
        """Whether anything is left to compact (a sealed segment, or records in the active one)."""
        with self._mutex:
            return bool(self._sealed) or self._active_size > len(MAGIC)

    def compact(self, into: Callable[[pa.Table], object], commit: Callable[[], object] | None = None) -> int:
        """Hand every sealed segment to ``into``; delete segments once they are safely elsewhere.

        Without ``commit``, each segment is deleted as soon as ``into`` returns (``into`` must
        make the events durable itself). With ``commit`` (a lake writer session's ``commit``:
        ``into`` is its ``append_events``, whose parts are invisible until the commit), every
        segment is handed over first, ``commit`` runs, and only then are the segments deleted, so
        a crash anywhere leaves each event in the WAL, the lake, or both (the lake's dedupe on
        ``event_id`` makes the replay harmless).

        Appends continue meanwhile (into a fresh segment). If ``into`` or ``commit`` raises, the
        segments not yet deleted stay for the next compaction. Returns the number of events
        handed over.
        """
        with self._compacting:
            self.seal()
            with self._mutex:
                sealed = list(self._sealed)
            handed = 0
            done: list[Path] = []
            for path in sealed:
                table = self._read_segment(path, None)
                if table.num_rows:
                    into(table)
                    handed += table.num_rows
                if commit is None:
                    self._drop([path])
                else:
                    done.append(path)
            if commit is not None and done:
                commit()
                self._drop(done)
            return handed

    def _drop(self, paths: list[Path]) -> None:
        for path in paths:
            path.unlink()
            with self._mutex:
                self._sealed.remove(path)
        fsync_dir(self.root)

    def stats(self) -> WalStats:
        with self._mutex:
            return WalStats(
                segments=len(self._sealed) + 1,
                appends=self._appends,
                fsyncs=self._fsyncs,
                bytes_written=self._written,
            )
