"""Snapshots: the lake as of a time, frozen on one manifest version.

Nothing at or after ``as_of`` is visible: events with ``timestamp >= as_of`` are hidden; for items
and users the visible version is the latest with ``valid_from < as_of``. The same rule binds the
DuckDB views ``events``, ``items``, ``users``, ``item_history`` and ``user_history`` that
:meth:`Snapshot.sql` queries, so anything built from a snapshot cannot see the future.

Event rows come from a list of :class:`EventSource` objects: the committed Parquet parts, and
:class:`WalEvents`, the live events of write-ahead-log segments not yet compacted (so a fresh
event is visible without waiting for compaction; ``Lake.snapshot`` adds them).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Protocol

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from shelf.errors import LakeError
from shelf.lake.manifest import Manifest, Part
from shelf.lake.tables import EVENTS, ITEMS, USERS, TableSpec, empty_select, quote, sql_str

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_epoch_us(moment: datetime) -> int:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise LakeError(
            f"as_of {moment.isoformat()} has no time zone; pass an aware datetime "
            "(e.g. datetime(2024, 5, 1, tzinfo=timezone.utc)) so the cut is not guessed"
        )
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_epoch_us(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


class EventSource(Protocol):
    """Somewhere event rows live. ``select_sql`` yields all of its rows in ``EVENT_SCHEMA``
    columns (the snapshot applies the ``as_of`` cut), or None when it holds nothing before
    ``as_of_us``; it may register Arrow data on ``con`` under names it chooses."""

    def select_sql(self, con: duckdb.DuckDBPyConnection, as_of_us: int | None) -> str | None: ...


@dataclass(frozen=True)
class ParquetParts:
    """Committed Parquet parts of one table; parts wholly at or after the cut are skipped."""

    lake_dir: Path
    parts: tuple[Part, ...]
    spec: TableSpec

    def visible(self, as_of_us: int | None) -> list[Part]:
        return [
            p
            for p in self.parts
            if as_of_us is None or p.min_time_us is None or p.min_time_us < as_of_us
        ]

    def select_sql(self, con: duckdb.DuckDBPyConnection, as_of_us: int | None) -> str | None:
        parts = self.visible(as_of_us)
        if not parts:
            return None
        files = ", ".join(sql_str(str(self.lake_dir / p.path)) for p in parts)
        cols = ", ".join(quote(c) for c in self.spec.schema.names)
        return f"SELECT {cols} FROM read_parquet([{files}])"


@dataclass(frozen=True)
class WalEvents:
    """Live events read from write-ahead-log segments, minus those already in the lake.

    Build it with :meth:`fresh`, from WAL rows read *before* the manifest the snapshot is frozen
    on: a segment is deleted only after its events are committed, so every event is then in the
    rows, in the manifest, or both; ``fresh`` drops the "both" (and repeats within the WAL) by
    ``event_id``, as compaction will.
    """

    table: pa.Table
    name: str = "__wal_events"

    @classmethod
    def fresh(cls, rows: pa.Table, lake_dir: Path, parts: Sequence[Part]) -> WalEvents:
        cols = ", ".join(quote(c) for c in EVENTS.schema.names)
        first = (
            f"SELECT {cols}, __pos FROM __wal QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY __pos) = 1"
        )
        times = rows["timestamp"].cast(pa.int64())
        low, high = pc.min(times).as_py(), pc.max(times).as_py()
        # An event's copy in the lake has the same timestamp: only parts spanning it can hold it.
        overlapping = [
            p for p in parts
            if (p.min_time_us is None or p.min_time_us <= high) and (p.max_time_us is None or p.max_time_us >= low)
        ]
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.register("__wal", rows.append_column("__pos", pa.array(range(rows.num_rows), pa.int64())))
            if overlapping:
                files = ", ".join(sql_str(str(lake_dir / p.path)) for p in overlapping)
                sql = (
                    f"SELECT f.* FROM ({first}) f ANTI JOIN "
                    f"(SELECT event_id FROM read_parquet([{files}])) e ON f.event_id = e.event_id"
                )
            else:
                sql = first
            fresh = con.sql(f"SELECT {cols} FROM ({sql}) ORDER BY __pos").to_arrow_table()
        finally:
            con.close()
        return cls(fresh.cast(EVENTS.schema))

    def select_sql(self, con: duckdb.DuckDBPyConnection, as_of_us: int | None) -> str | None:
        if self.table.num_rows == 0:
            return None
        con.register(self.name, self.table)
        cols = ", ".join(quote(c) for c in EVENTS.schema.names)
        return f"SELECT {cols} FROM {self.name}"


def _union(con: duckdb.DuckDBPyConnection, sources: Sequence[EventSource] | Sequence[ParquetParts], spec: TableSpec, as_of_us: int | None) -> str:
    selects = [s for s in (src.select_sql(con, as_of_us) for src in sources) if s is not None]
    if not selects:
        return empty_select(spec.schema)
    body = " UNION ALL ".join(f"({s})" for s in selects)
    if as_of_us is None:
        return body
    cut = f"make_timestamptz({as_of_us}::BIGINT)"
    return f"SELECT * FROM ({body}) WHERE {quote(spec.time_column)} < {cut}"


class Snapshot:
    """A read-only view of the lake as of ``as_of`` (None: everything committed), frozen on the
    manifest ``version`` current when it was taken. Close it (or use ``with``) to free its DuckDB
    connection; parts replaced by compaction stay readable for the lake's grace period."""

    def __init__(
        self,
        lake_dir: Path,
        manifest: Manifest,
        as_of: datetime | None,
        extra_event_sources: Sequence[EventSource] = (),
    ) -> None:
        self.as_of = as_of
        self.version = manifest.version
        self._dir = lake_dir
        self._as_of_us = None if as_of is None else to_epoch_us(as_of)
        self.event_sources: list[EventSource] = [ParquetParts(lake_dir, manifest.parts("events"), EVENTS)]
        self.event_sources += list(extra_event_sources)
        self._items = ParquetParts(lake_dir, manifest.parts("items"), ITEMS)
        self._users = ParquetParts(lake_dir, manifest.parts("users"), USERS)
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None

    # -- views --------------------------------------------------------------------------------

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            con = duckdb.connect()
            con.execute("SET TimeZone = 'UTC'")
            cut = self._as_of_us
            con.execute(f"CREATE VIEW events AS {_union(con, self.event_sources, EVENTS, cut)}")
            for spec, source, history in ((ITEMS, self._items, "item_history"), (USERS, self._users, "user_history")):
                key = quote(spec.version_key[0])
                con.execute(f"CREATE VIEW {history} AS {_union(con, [source], spec, cut)}")
                con.execute(
                    f"CREATE VIEW {spec.name} AS SELECT * FROM {history} "
                    f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY valid_from DESC) = 1"
                )
            self._con = con
        return self._con

    def _query(self, sql: str) -> pa.Table:
        with self._lock:
            con = self._connection()
            try:
                return con.sql(sql).to_arrow_table()
            except duckdb.IOException as exc:
                raise LakeError(
                    f"a part of this snapshot (manifest version {self.version}) cannot be read: {exc}. "
                    "If the lake was compacted longer ago than its grace period, take a new snapshot; "
                    f"otherwise files under {self._dir} were removed or damaged."
                ) from None

    # -- public API ---------------------------------------------------------------------------

    def events(self, columns: list[str] | None = None) -> pa.Table:
        """Visible events in ``EVENT_SCHEMA`` (or just ``columns``), sorted by timestamp."""
        names = list(EVENTS.schema.names) if columns is None else list(columns)
        unknown = [c for c in names if c not in EVENTS.schema.names]
        if unknown:
            raise LakeError(f"unknown event column(s) {unknown}; the events table has {EVENTS.schema.names}")
        cols = ", ".join(quote(c) for c in names)
        table = self._query(f"SELECT {cols} FROM events ORDER BY timestamp, event_id")
        return table.cast(pa.schema([EVENTS.schema.field(c) for c in names]))

    def items(self) -> pa.Table:
        """One row per visible item: its latest version with ``valid_from < as_of`` (``ITEM_SCHEMA``)."""
        return self._query("SELECT * FROM items ORDER BY item_id").cast(ITEMS.schema)

    def users(self) -> pa.Table:
        """One row per visible user: the latest version with ``valid_from < as_of`` (``USER_SCHEMA``)."""
        return self._query("SELECT * FROM users ORDER BY user_id").cast(USERS.schema)

    def item_history(self) -> pa.Table:
        """Every visible item version (``valid_from < as_of``), by item then valid_from."""
        return self._query("SELECT * FROM item_history ORDER BY item_id, valid_from").cast(ITEMS.schema)

    def user_history(self) -> pa.Table:
        """Every visible user version, by user then valid_from."""
        return self._query("SELECT * FROM user_history ORDER BY user_id, valid_from").cast(USERS.schema)

    def sql(self, query: str) -> pa.Table:
        """Run one read-only SELECT over the views ``events``, ``items``, ``users``,
        ``item_history`` and ``user_history`` bound to this snapshot."""
        try:
            statements = duckdb.extract_statements(query)
        except duckdb.Error as exc:
            raise LakeError(f"snapshot.sql could not parse the query: {exc}") from None
        kinds = [s.type for s in statements]
        if len(kinds) != 1 or kinds[0] != duckdb.StatementType.SELECT:
            shown = ", ".join(k.name for k in kinds) or "nothing"
            raise LakeError(f"snapshot.sql runs exactly one read-only SELECT; got {shown}")
        try:
            return self._query(query)
        except (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException) as exc:
            raise LakeError(f"snapshot.sql failed: {exc}") from None

    def count_events(self) -> int:
        return int(self._query("SELECT count(*) AS n FROM events")["n"][0].as_py())

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        cut = "everything" if self.as_of is None else self.as_of.isoformat()
        return f"Snapshot(as_of={cut}, manifest_version={self.version})"
