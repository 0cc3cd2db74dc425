"""The ingest pipeline: raw batches → strict validation → pseudonymization → the lake.

Catalogue and profile re-loads: when records carry no ``valid_from``/``updated_at``, a record for
an id the lake does not know yet is valid from its ``launched_at``/``signed_up_at`` (else "since
always"); a record for a known id whose content changed becomes a new version valid from the time
of this ingest; an unchanged record adds nothing. That is what re-uploading a nightly catalogue
export needs: prices and stock change from when shelf learned of them, and history stays intact.

Documented behaviour on bad input: every valid record lands; every refused record is reported by
line with its reason, and all of them are written to a rejects file under ``<home>/rejects/`` so
nothing is lost from sight. With ``max_rejects`` set, an ingest that refuses more records than
that is aborted whole and the lake is left unchanged (the writer session never commits).
A whole ingest commits at once: it lands completely or not at all.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Literal, Protocol, TypeVar

import orjson
import pyarrow as pa

from shelf.errors import InputError
from shelf.privacy import Pseudonymizer
from shelf.schema import (
    EventRules,
    RecordError,
    ValidatedBatch,
    validate_events,
    validate_items,
    validate_users,
)

Kind = Literal["events", "items", "users"]
T = TypeVar("T")
# How many reasons a report keeps in memory for printing; the rejects file has all of them.
KEPT_ERRORS = 200
_END = object()  # what the read-ahead thread hands over after the last batch


class TooManyRejects(InputError):
    """More records were refused than the caller allowed; nothing was committed."""


@dataclass
class IngestReport:
    """What one ingest did, in numbers a data engineer checks first."""

    source: str
    kind: Kind
    read: int = 0
    added: int = 0
    duplicates: int = 0
    rejected: int = 0
    unreadable: int = 0  # rows that could not even be parsed (truncated line, wrong column count)
    errors: list[RecordError] = field(default_factory=list)
    rejects_file: Path | None = None
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        lines = [
            f"{self.kind} from {self.source}: read {self.read:,}, added {self.added:,}, "
            f"duplicates skipped {self.duplicates:,}, rejected {self.rejected:,}, unreadable {self.unreadable:,} "
            f"({self.seconds:.1f} s, {self.per_second:,.0f} records/s)"
        ]
        shown = self.errors[:10]
        lines += [f"  {e}" for e in shown]
        total_errors = self.rejected + self.unreadable
        if total_errors > len(shown):
            lines.append(f"  ... and more; every reason is in {self.rejects_file}")
        elif self.rejects_file is not None:
            lines.append(f"  all reasons: {self.rejects_file}")
        return "\n".join(lines)


class RawInput(Protocol):
    """One batch of raw records as a reader produces it (``shelf.datasets.readers.RawBatch``)."""

    table: pa.Table
    positions: pa.Array
    problems: list[RecordError]


class _RejectsLog:
    """Appends every refused record's reasons to a JSONL file, opened on the first one."""

    def __init__(self, home: Path, source: str, kind: Kind) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(source).name)[:80] or "input"
        self.path = home / "rejects" / f"{stamp}-{kind}-{safe}.jsonl"
        self._handle: BinaryIO | None = None

    def write(self, errors: Iterable[RecordError]) -> None:
        for error in errors:
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = self.path.open("ab")
            record = {
                "source": error.source,
                "line": error.position,
                "field": error.field,
                "value": error.value,
                "expected": error.expected,
            }
            self._handle.write(orjson.dumps(record) + b"\n")

    def close(self) -> Path | None:
        if self._handle is None:
            return None
        self._handle.close()
        return self.path


def _validator(
    kind: Kind,
    pseudonymizer: Pseudonymizer,
    rules: EventRules,
    source: str,
) -> Callable[[pa.Table, pa.Array], ValidatedBatch]:
    if kind == "events":
        return lambda t, pos: validate_events(t, pseudonymizer=pseudonymizer, rules=rules, positions=pos, source=source)
    if kind == "items":
        return lambda t, pos: validate_items(t, assume_timezone=rules.assume_timezone, positions=pos, source=source)
    return lambda t, pos: validate_users(
        t, pseudonymizer=pseudonymizer, assume_timezone=rules.assume_timezone, positions=pos, source=source
    )


def _read_ahead(batches: Iterable[T]) -> Iterator[T]:
    """Yield ``batches`` while a thread reads the next one (one batch ahead, so memory stays flat).

    Parsing (pyarrow) and validation (DuckDB) release the GIL, so reading the next batch overlaps
    with checking and writing this one. The reader starts a batch only once the previous one was
    taken: a queue alone would let it hold one batch in the queue and build another (two ahead).
    The reader's exceptions surface here, in order.
    """
    ready: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=1)
    taken = threading.Semaphore(1)  # a permit to read one more batch
    stop = threading.Event()

    def wait_for_permit() -> bool:
        while not stop.is_set():
            if taken.acquire(timeout=0.1):
                return True
        return False

    def read() -> None:
        try:
            iterator = iter(batches)
            while wait_for_permit():
                batch = next(iterator, _END)
                ready.put(("end", None) if batch is _END else ("batch", batch))  # room: one permit
                if batch is _END:
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            ready.put(("error", exc))

    reader = threading.Thread(target=read, name="shelf-ingest-reader", daemon=True)
    reader.start()
    try:
        while True:
            what, item = ready.get()
            taken.release()
            if what == "end":
                return
            if what == "error":
                raise item  # type: ignore[misc]
            yield item  # type: ignore[misc]
    finally:
        stop.set()  # a reader waiting for a permit gives up within 0.1 s
        reader.join()


def ingest(
    lake: object,
    kind: Kind,
    batches: Iterable[RawInput],
    *,
    pseudonymizer: Pseudonymizer,
    home: Path,
    source: str,
    rules: EventRules | None = None,
    max_rejects: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Validate and append every batch in one writer session (all lands, or nothing does)."""
    rules = rules or EventRules()
    report = IngestReport(source=source, kind=kind)
    sync = _VersionSync.for_lake(lake, kind) if kind != "events" else None
    validate = _validator(kind, pseudonymizer, rules, source)
    rejects = _RejectsLog(home, source, kind)
    started = time.perf_counter()
    trim = _malloc_trim()
    try:
        with _memory_returned_to_the_system(), lake.writer() as writer:  # type: ignore[attr-defined]
            append = {
                "events": writer.append_events,
                "items": writer.append_items,
                "users": writer.append_users,
            }[kind]
            for batch in _read_ahead(batches):
                table, positions, problems = batch.table, batch.positions, batch.problems
                report.unreadable += len(problems)
                report.read += table.num_rows + len(problems)
                _keep(report, problems)
                rejects.write(problems)
                if table.num_rows == 0:
                    continue
                checked = validate(table, positions)
                report.rejected += checked.rejected
                _keep(report, checked.errors)
                rejects.write(checked.errors)
                if max_rejects is not None and report.rejected + report.unreadable > max_rejects:
                    raise TooManyRejects(
                        f"{source}: {report.rejected + report.unreadable:,} records refused, more than "
                        f"--max-rejects {max_rejects:,}; nothing was ingested. First: {report.errors[0]}"
                    )
                valid = checked.valid
                if sync is not None and not ({"valid_from", "updated_at"} & set(table.column_names)):
                    valid, unchanged = sync.changes(valid)
                    report.duplicates += unchanged
                if valid.num_rows:
                    appended = append(valid)
                    report.added += appended.added
                    report.duplicates += appended.duplicates
                if trim is not None:
                    trim(0)
                if progress is not None:
                    progress(table.num_rows + len(problems))
    finally:
        report.rejects_file = rejects.close()
        report.seconds = time.perf_counter() - started
    return report


# How long Arrow's jemalloc keeps freed pages before returning them to the system while an ingest
# streams batches (Arrow's own default, restored afterwards, is 1000 ms).
INGEST_DECAY_MS = 100
_ARROW_DEFAULT_DECAY_MS = 1000


@contextlib.contextmanager
def _memory_returned_to_the_system() -> Iterator[None]:
    """The memory pool batches stream through (unless ARROW_DEFAULT_MEMORY_POOL chooses one).

    Arrow's jemalloc with a short decay where pyarrow has it, else the system allocator. Arrow's
    default, mimalloc, keeps freed batch-sized blocks for reuse (~80 MB more peak RSS on 3M events).
    The system allocator (glibc) returns them, but batch-sized buffers mixed with DuckDB's and
    numpy's allocations in the same glibc arenas fragment them, so peak RSS crept up with the input
    (CSV: 710 MiB at 3M events, 775-808 at 10M, 867 at 30M); with Arrow's buffers in jemalloc,
    freed pages returned after ``INGEST_DECAY_MS``, it measured 625 / 668-739 / 710 MiB at the
    same CPU time. A fixed glibc mmap threshold instead (1 MiB) cut as much but doubled the wall
    time (mmap/munmap per buffer); Arrow's default 1000 ms decay kept ~50 MiB more at 10M.
    Buffers remember their pool, so switching mid-process is safe.
    """
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        yield
        return
    previous = pa.default_memory_pool()
    try:
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(INGEST_DECAY_MS)
    except (NotImplementedError, pa.ArrowException):  # a pyarrow built without jemalloc
        pool = None
    pa.set_memory_pool(pool if pool is not None else pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)
        if pool is not None:
            with contextlib.suppress(NotImplementedError, pa.ArrowException):
                pa.jemalloc_set_decay_ms(_ARROW_DEFAULT_DECAY_MS)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, called after each batch, or None on another C library.

    glibc keeps freed blocks of a few MB in its per-thread arenas (its mmap threshold rises to
    32 MB after the first large free), so without a trim the reader's, validator's and writer's
    freed batches add up: on a 10M-event CSV ingest peak RSS measured 915 MB without it, 676 MB
    with it, for ~2 s more CPU time in all (with Arrow's buffers in jemalloc, 812 vs 713 MiB:
    DuckDB's and numpy's memory still comes from glibc).
    """
    try:
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def _keep(report: IngestReport, errors: list[RecordError]) -> None:
    room = KEPT_ERRORS - len(report.errors)
    if room > 0:
        report.errors.extend(errors[:room])


class _VersionSync:
    """Turns a dated-less catalogue (or profile) load into versions: new ids, changed ids, no-ops."""

    def __init__(self, current: pa.Table, key: str, now: datetime) -> None:
        self.current = current
        self.key = key
        self.now = now

    @classmethod
    def for_lake(cls, lake: object, kind: Kind) -> _VersionSync:
        snapshot = lake.snapshot(None)  # type: ignore[attr-defined]
        current = snapshot.items() if kind == "items" else snapshot.users()
        return cls(current, "item_id" if kind == "items" else "user_id", datetime.now(UTC))

    def changes(self, batch: pa.Table) -> tuple[pa.Table, int]:
        if self.current.num_rows == 0 or batch.num_rows == 0:
            return batch, 0
        import duckdb

        content = [c for c in batch.column_names if c not in (self.key, "valid_from")]
        differs = " OR ".join(f'n."{c}" IS DISTINCT FROM c."{c}"' for c in content) or "false"
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.register("n", batch)
            con.register("c", self.current.select([self.key, *content]))
            now = self.now.isoformat()
            changed = con.sql(
                f"""SELECT n.* REPLACE (CASE WHEN c."{self.key}" IS NULL THEN n.valid_from
                                            ELSE TIMESTAMPTZ '{now}' END AS valid_from)
                    FROM n LEFT JOIN c ON n."{self.key}" = c."{self.key}"
                    WHERE c."{self.key}" IS NULL OR {differs}"""
            ).to_arrow_table()
        finally:
            con.close()
        return changed.cast(batch.schema), batch.num_rows - changed.num_rows
