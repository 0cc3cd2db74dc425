"""Writer sessions: parts are written as appends arrive; the manifest is committed once at the end.

A session holds the lake's writer lock from start to commit or abort. Each append is checked,
deduplicated and written as one Parquet part (sorted by the table's sort columns) by a background
thread while the caller prepares the next batch, so at most two batches are in memory. Nothing is
visible to readers until :meth:`LakeWriter.commit` replaces the manifest; an exception inside
``with lake.writer() as w:`` aborts the session and deletes its parts.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shelf.errors import LakeError
from shelf.lake._files import WriterLock, fsync_dir, fsync_file, remove_quietly, temporary_name
from shelf.lake.keys import (
    SCRATCH_PREFIX,
    KeyIndex,
    event_key_batches,
    first_occurrences,
    table_keys,
)
from shelf.lake.manifest import Manifest, Part, Retired, read_manifest, write_manifest
from shelf.lake.tables import (
    EVENTS,
    ITEMS,
    TABLES,
    USERS,
    TableSpec,
    conform,
    empty_select,
    quote,
    sql_str,
)

if TYPE_CHECKING:
    from shelf.lake.lake import LakeOptions


@dataclass(frozen=True)
class AppendReport:
    """What an append did: rows added to the lake, rows that were already there (or repeated)."""

    added: int = 0
    duplicates: int = 0

    def __add__(self, other: AppendReport) -> AppendReport:
        return AppendReport(self.added + other.added, self.duplicates + other.duplicates)


def _now_us() -> int:
    return time.time_ns() // 1000


def _time_bounds(table: pa.Table, column: str) -> tuple[int | None, int | None]:
    bounds = pc.min_max(table[column].cast(pa.int64()))
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    return low, high


def parquet_list(lake_dir: Path, paths: list[str]) -> str:
    return "read_parquet([" + ", ".join(sql_str(str(lake_dir / p)) for p in paths) + "])"


class LakeWriter:
    """One writer session. Create it with :meth:`shelf.lake.Lake.writer`; use it as a context manager."""

    def __init__(self, lake_dir: Path, options: LakeOptions, lock: WriterLock) -> None:
        self._dir = lake_dir
        self._options = options
        self._lock = lock
        self._manifest_path = lake_dir / "manifest.json"
        self._base = read_manifest(self._manifest_path) or Manifest()
        self._session = uuid.uuid4().hex[:10]
        self._sequence = 0
        self._new_parts: dict[str, list[Part]] = {name: [] for name in TABLES}
        self._replaced: set[str] = set()
        self._retiring: list[Retired] = []
        self._expired: set[str] = set()
        self._files: list[Path] = []  # every file this session created (to remove on abort)
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None
        self._index: KeyIndex | None = None
        self._state = "open"
        self.reports: dict[str, AppendReport] = {name: AppendReport() for name in TABLES}
        self._con = duckdb.connect()
        self._con.execute("SET TimeZone = 'UTC'")
        self._clean_up_leftovers()

    # -- public API ---------------------------------------------------------------------------

    @property
    def base_version(self) -> int:
        """The manifest version this session started from."""
        return self._base.version

    def append_events(self, table: pa.Table | pa.RecordBatch) -> AppendReport:
        """Append events (``EVENT_SCHEMA``); events whose ``event_id`` is already in the lake, in
        this session, or earlier in ``table`` are counted as duplicates and not written."""
        self._check_open()
        table = conform(table, EVENTS)
        rows = table.num_rows
        if rows == 0:
            return AppendReport()
        index = self._key_index()
        hi, lo = table_keys(self._con, table)
        first, by_hi = first_occurrences(hi, lo)
        candidates = by_hi[first[by_hi]]  # first occurrences, sorted by hi
        fresh = candidates[~index.contains(hi[candidates], lo[candidates])]
        added = len(fresh)
        if added:
            keep = None
            if added < rows:
                keep = np.zeros(rows, dtype=bool)
                keep[fresh] = True
            self._write_sorted(table, EVENTS, keep)
            index.add_sorted(hi[fresh], lo[fresh])
        return self._record(EVENTS, AppendReport(added, rows - added))

    def append_items(self, table: pa.Table | pa.RecordBatch) -> AppendReport:
        """Append item versions (``ITEM_SCHEMA``); identical versions already present add nothing."""
        return self._append_versions(table, ITEMS)

    def append_users(self, table: pa.Table | pa.RecordBatch) -> AppendReport:
        """Append user versions (``USER_SCHEMA``); identical versions already present add nothing."""
        return self._append_versions(table, USERS)

    def commit(self) -> Manifest:
        """Make everything appended in this session visible at once; returns the new manifest."""
        self._check_open()
        try:
            self._drain()
            changed = any(self._new_parts.values()) or self._replaced
            if not changed:
                self._finish("committed")
                return self._base
            for name, parts in self._new_parts.items():
                if parts:
                    fsync_dir(self._dir / name)
            tables = {
                name: tuple(p for p in self._base.parts(name) if p.path not in self._replaced)
                + tuple(self._new_parts[name])
                for name in TABLES
            }
            retired = tuple(r for r in self._base.retired if r.path not in self._expired) + tuple(self._retiring)
            manifest = self._base.next(tables=tables, retired=retired)
            try:
                write_manifest(self._manifest_path, manifest)
            except BaseException:
                # The rename may have happened before the failure: then the parts are committed.
                current = read_manifest(self._manifest_path)
                if current is not None and current.version >= manifest.version:
                    self._finish("committed")
                raise
            self._finish("committed")
            if self._replaced:
                self._remove_replaced_now_if_no_grace()
            return manifest
        except BaseException:
            if self._state == "open":
                self.abort()
            raise

    def abort(self) -> None:
        """Drop everything this session wrote; the lake stays as it was."""
        if self._state != "open":
            return
        try:
            if self._pending is not None:
                # The session is being dropped: a failed write changes nothing.
                with contextlib.suppress(BaseException):
                    self._pending.result()
                self._pending = None
            for path in self._files:
                remove_quietly(path)
        finally:
            self._finish("aborted")

    def __enter__(self) -> LakeWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            if self._state == "open":
                self.commit()
        else:
            self.abort()

    # -- versions (items, users) --------------------------------------------------------------

    def _append_versions(self, table: pa.Table | pa.RecordBatch, spec: TableSpec) -> AppendReport:
        self._check_open()
        table = conform(table, spec)
        rows = table.num_rows
        if rows == 0:
            return AppendReport()
        self._drain()  # the session's own earlier parts must be readable
        paths = [p.path for p in self._base.parts(spec.name)] + [p.path for p in self._new_parts[spec.name]]
        existing = f"SELECT * FROM {parquet_list(self._dir, paths)}" if paths else empty_select(spec.schema)
        key_eq = " AND ".join(f"n.{quote(k)} = e.{quote(k)}" for k in spec.version_key)
        same = " AND ".join(f"n.{quote(c)} IS NOT DISTINCT FROM e.{quote(c)}" for c in spec.schema.names)
        keys = ", ".join(quote(k) for k in spec.version_key)
        self._con.register("__new", table)
        try:
            inside = self._con.sql(
                f"SELECT {keys} FROM (SELECT DISTINCT * FROM __new) GROUP BY {keys} "
                f"HAVING count(*) > 1 ORDER BY {keys} LIMIT 5"
            ).fetchall()
            if inside:
                self._version_conflict(spec, inside, "this batch holds different records")
            against = self._con.sql(
                f"SELECT {', '.join('n.' + quote(k) for k in spec.version_key)} "
                f"FROM (SELECT DISTINCT * FROM __new) n JOIN ({existing}) e ON {key_eq} "
                f"WHERE NOT ({same}) ORDER BY 1, 2 LIMIT 5"
            ).fetchall()
            if against:
                self._version_conflict(spec, against, "the lake already holds a different record")
            order = ", ".join(quote(c) for c in spec.sort_columns)
            fresh = self._con.sql(
                f"SELECT n.* FROM (SELECT DISTINCT * FROM __new) n ANTI JOIN ({existing}) e ON {key_eq} "
                f"ORDER BY {', '.join('n.' + quote(c) for c in spec.sort_columns) or order}"
            ).to_arrow_table()
        except duckdb.IOException as exc:
            raise LakeError(f"cannot read the lake's {spec.name} parts under {self._dir}: {exc}") from None
        finally:
            self._con.unregister("__new")
        added = fresh.num_rows
        if added:
            self._write(fresh.cast(spec.schema), spec)
        return self._record(spec, AppendReport(added, rows - added))

    @staticmethod
    def _version_conflict(spec: TableSpec, examples: list[tuple[object, ...]], what: str) -> None:
        shown = "; ".join(f"{spec.version_key[0]} {k[0]!r} at {k[1]}" for k in examples)
        raise LakeError(
            f"conflicting {spec.name} versions: {what} for the same {spec.version_key[0]} and valid_from "
            f"({shown}). A version is identified by its {spec.version_key[0]} and valid_from; give a changed "
            "record its own valid_from (updated_at, or default_valid_from set to when the change became "
            "true) instead of rewriting history."
        )

    # -- parts --------------------------------------------------------------------------------

    def _write_sorted(self, table: pa.Table, spec: TableSpec, keep: np.ndarray | None) -> None:
        """Queue the rows of ``table`` flagged in ``keep`` (all when None) as one part, sorted."""
        first, *rest = spec.sort_columns
        column = table[first]
        if rest or first != spec.time_column or not pa.types.is_timestamp(column.type) or column.null_count:
            self._write(self._select_sorted(table, spec, keep), spec)
            return
        # One timestamp key: a stable numpy sort of its int64 values here, and the take of every
        # column in the writer thread, without a round trip of the batch through DuckDB.
        times = column.cast(pa.int64()).to_numpy()
        rows = None if keep is None else np.flatnonzero(keep)
        order = np.argsort(times if rows is None else times[rows], kind="stable")
        if rows is not None:
            order = rows[order]
        selected = table.select(spec.schema.names)
        step = self._options.row_group_rows

        def row_groups() -> Iterator[pa.Table]:
            # One row group's take at a time: the sorted copy of a whole batch is never held.
            for start in range(0, len(order), step):
                yield selected.take(order[start : start + step]).cast(spec.schema)

        self._write(row_groups, spec, (int(times[order[0]]), int(times[order[-1]])))

    def _select_sorted(self, table: pa.Table, spec: TableSpec, keep: np.ndarray | None) -> pa.Table:
        source = table if keep is None else table.append_column("__keep", pa.array(keep))
        where = "" if keep is None else "WHERE __keep"
        cols = ", ".join(quote(c) for c in spec.schema.names)
        order = ", ".join(quote(c) for c in spec.sort_columns)
        self._con.register("__batch", source)
        try:
            return self._con.sql(f"SELECT {cols} FROM __batch {where} ORDER BY {order}").to_arrow_table().cast(spec.schema)
        finally:
            self._con.unregister("__batch")

    def _next_part_path(self, spec: TableSpec) -> str:
        self._sequence += 1
        return f"{spec.name}/v{self._base.version + 1:08d}-{self._session}-{self._sequence:05d}.parquet"

    def _write(
        self,
        table: pa.Table | Callable[[], Iterator[pa.Table]],
        spec: TableSpec,
        bounds: tuple[int | None, int | None] | None = None,
    ) -> None:
        """Queue ``table`` as one part; waits for the previous part first (two batches at most).

        ``table`` may be a function that builds the part's row groups, in order, in the writer
        thread; ``bounds`` (min and max of the time column in µs) must then be given.
        """
        self._drain()
        relative = self._next_part_path(spec)
        final = self._dir / relative
        self._files += [temporary_name(final), final]
        options = self._options
        if bounds is None:
            assert isinstance(table, pa.Table)
            bounds = _time_bounds(table, spec.time_column)
        low, high = bounds

        def write() -> None:
            tmp = temporary_name(final)
            rows = 0
            out: pq.ParquetWriter | None = None
            try:
                for piece in table() if callable(table) else [table]:
                    if out is None:
                        out = pq.ParquetWriter(
                            tmp,
                            piece.schema,
                            compression=options.compression,
                            use_dictionary=True if spec.dictionary_columns is None else list(spec.dictionary_columns),
                        )
                    out.write_table(piece, row_group_size=options.row_group_rows)
                    rows += piece.num_rows
            finally:
                if out is not None:
                    out.close()
            fsync_file(tmp)
            os.replace(tmp, final)
            self._new_parts[spec.name].append(Part(relative, rows, final.stat().st_size, low, high))

        self._submit(write)

    def _submit(self, job: Callable[[], None]) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shelf-lake-writer")
        self._pending = self._executor.submit(job)

    def _drain(self) -> None:
        """Wait for the part being written; a failed write fails the session."""
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        try:
            pending.result()
        except OSError as exc:
            self.abort()
            raise LakeError(f"writing a part under {self._dir} failed: {exc}. The session was aborted; nothing was committed.") from exc
        except BaseException:
            self.abort()
            raise

    # -- compaction ---------------------------------------------------------------------------

    def compact_table(self, spec: TableSpec, target_rows: int) -> int:
        """Merge this table's small parts (under half of ``target_rows``) into parts of up to
        ``target_rows``; returns how many parts were merged away. Runs inside the session."""
        self._check_open()
        small = [p for p in self._base.parts(spec.name) if p.rows < target_rows // 2 and p.path not in self._replaced]
        groups: list[list[Part]] = []
        current: list[Part] = []
        for part in small:
            if current and sum(p.rows for p in current) + part.rows > target_rows:
                groups.append(current)
                current = []
            current.append(part)
        groups.append(current)
        merged = 0
        cols = ", ".join(quote(c) for c in spec.schema.names)
        order = ", ".join(quote(c) for c in spec.sort_columns)
        for group in (g for g in groups if len(g) >= 2):
            relative = self._next_part_path(spec)
            final = self._dir / relative
            tmp = temporary_name(final)
            self._files += [tmp, final]
            source = parquet_list(self._dir, [p.path for p in group])
            try:
                self._con.execute(
                    f"COPY (SELECT {cols} FROM {source} ORDER BY {order}) TO {sql_str(str(tmp))} "
                    f"(FORMAT parquet, COMPRESSION {self._options.compression}, ROW_GROUP_SIZE {self._options.row_group_rows})"
                )
            except duckdb.IOException as exc:
                raise LakeError(f"compacting {spec.name} parts under {self._dir} failed: {exc}") from None
            fsync_file(tmp)
            os.replace(tmp, final)
            lows = [p.min_time_us for p in group if p.min_time_us is not None]
            highs = [p.max_time_us for p in group if p.max_time_us is not None]
            self._new_parts[spec.name].append(
                Part(
                    relative,
                    sum(p.rows for p in group),
                    final.stat().st_size,
                    min(lows) if lows else None,
                    max(highs) if highs else None,
                )
            )
            now = _now_us()
            for part in group:
                self._replaced.add(part.path)
                self._retiring.append(Retired(part.path, now))
            merged += len(group)
        return merged

    # -- housekeeping -------------------------------------------------------------------------

    def _clean_up_leftovers(self) -> None:
        """Remove what crashed writers left (files the manifest does not name) and retired parts
        past their grace period. Runs under the lock, so no live writer owns such files."""
        remove_quietly(temporary_name(self._manifest_path))
        for scratch in self._dir.glob(SCRATCH_PREFIX + "*"):  # key runs of a crashed session
            remove_quietly(scratch)
        now = _now_us()
        grace_us = int(self._options.retired_grace_s * 1_000_000)
        keep_retired = set()
        for retired in self._base.retired:
            if now - retired.retired_at_us >= grace_us:
                self._expired.add(retired.path)
                remove_quietly(self._dir / retired.path)
            else:
                keep_retired.add(retired.path)
        committed = self._base.all_paths() | keep_retired
        for name in TABLES:
            folder = self._dir / name
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                if f"{name}/{entry.name}" not in committed and entry.is_file():
                    remove_quietly(entry)

    def _remove_replaced_now_if_no_grace(self) -> None:
        if self._options.retired_grace_s <= 0:
            for path in self._replaced:
                remove_quietly(self._dir / path)

    def _key_index(self) -> KeyIndex:
        if self._index is None:
            # Large runs of keys go to scratch files beside the parts (same disk, no RAM growth).
            index = KeyIndex(self._dir)
            paths = [p.path for p in self._base.parts("events")]
            if paths:
                # Streamed a chunk at a time: the lake's keys never sit in memory all at once.
                try:
                    for hi, lo in event_key_batches(self._con, f"SELECT event_id FROM {parquet_list(self._dir, paths)}"):
                        index.add_unsorted(hi, lo)
                except duckdb.IOException as exc:
                    index.close()
                    raise LakeError(f"cannot read the lake's event parts under {self._dir}: {exc}") from None
            self._index = index
        return self._index

    def _record(self, spec: TableSpec, report: AppendReport) -> AppendReport:
        self.reports[spec.name] = self.reports[spec.name] + report
        return report

    def _check_open(self) -> None:
        if self._state != "open":
            raise LakeError(f"this writer session is {self._state}; open a new one with lake.writer()")

    def _finish(self, state: str) -> None:
        self._state = state
        if self._index is not None:
            self._index.close()
            self._index = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._con.close()
        self._lock.release()
