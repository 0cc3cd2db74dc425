"""The lake: an append-only event log plus versioned item and user tables, as Parquet.

Layout under ``<home>/lake/``::

    manifest.json      which parts are committed (the only source of truth), see manifest.py
    .lock              flock'ed by the one writer session at a time
    events/ items/ users/   immutable Parquet parts (zstd), named v<version>-<session>-<n>.parquet
    wal/               segments of live events from `shelf serve` (see wal.py), not yet compacted

Readers never take the lock: they read the manifest once (an atomic rename guarantees a whole
one) and then only immutable files it names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from shelf.errors import LakeError
from shelf.lake._files import WriterLock
from shelf.lake.manifest import MANIFEST_NAME, Manifest, read_manifest, write_manifest
from shelf.lake.snapshot import EventSource, Snapshot, WalEvents, from_epoch_us
from shelf.lake.tables import TABLES
from shelf.lake.wal import read_segments
from shelf.lake.writer import LakeWriter

LAKE_FOLDER = "lake"
LOCK_NAME = ".lock"
WAL_FOLDER = "wal"  # <home>/lake/wal: live events written by `shelf serve`, not yet compacted


@dataclass(frozen=True)
class LakeOptions:
    """How parts are written and how long replaced parts are kept."""

    compression: str = "zstd"
    row_group_rows: int = 122_880  # small enough that row-group time statistics prune snapshot reads
    compact_target_rows: int = 4_000_000
    # Parts replaced by compaction stay on disk this long so older snapshots can still read them.
    retired_grace_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.compression not in ("zstd", "snappy"):
            raise LakeError(f"compression {self.compression!r} is not supported; use zstd or snappy")
        if self.row_group_rows < 1 or self.compact_target_rows < 2:
            raise LakeError("row_group_rows must be >= 1 and compact_target_rows >= 2")


@dataclass(frozen=True)
class LakeStats:
    """What the lake holds (everything committed)."""

    version: int
    events: int
    events_by_type: dict[str, int]
    first_event: datetime | None
    last_event: datetime | None
    distinct_users: int
    distinct_items: int
    distinct_sessions: int
    items: int
    item_versions: int
    users: int
    user_versions: int
    parts: dict[str, int] = field(default_factory=dict)
    bytes_on_disk: int = 0

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for printing."""
        out = [
            ("manifest version", str(self.version)),
            ("events", f"{self.events:,}"),
        ]
        out += [(f"  {kind}", f"{count:,}") for kind, count in sorted(self.events_by_type.items())]
        out += [
            ("first event", self.first_event.isoformat() if self.first_event else "-"),
            ("last event", self.last_event.isoformat() if self.last_event else "-"),
            ("distinct users in events", f"{self.distinct_users:,}"),
            ("distinct items in events", f"{self.distinct_items:,}"),
            ("distinct sessions", f"{self.distinct_sessions:,}"),
            ("items (versions)", f"{self.items:,} ({self.item_versions:,})"),
            ("users (versions)", f"{self.users:,} ({self.user_versions:,})"),
            ("parts", ", ".join(f"{name} {n}" for name, n in self.parts.items())),
            ("bytes on disk", f"{self.bytes_on_disk:,}"),
        ]
        return out

    def __str__(self) -> str:
        rows = self.rows()
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


class Lake:
    """A lake folder. Open with :meth:`Lake.open`; nothing is read before that."""

    def __init__(self, lake_dir: Path, options: LakeOptions) -> None:
        self.path = lake_dir
        self.options = options
        self._manifest_path = lake_dir / MANIFEST_NAME

    @classmethod
    def open(cls, home: Path | str, create: bool = True, *, options: LakeOptions | None = None) -> Lake:
        """The lake under ``home`` (``<home>/lake``); created empty when missing and ``create``."""
        lake_dir = Path(home) / LAKE_FOLDER
        lake = cls(lake_dir, options or LakeOptions())
        manifest_path = lake_dir / MANIFEST_NAME
        if not manifest_path.exists():
            if not create:
                raise LakeError(
                    f"no lake at {lake_dir} (no {MANIFEST_NAME}); ingest data first, or check SHELF_HOME / --home"
                )
            try:
                for name in TABLES:
                    (lake_dir / name).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LakeError(f"cannot create the lake at {lake_dir}: {exc}") from None
            lock = WriterLock(lake_dir / LOCK_NAME)
            lock.acquire(timeout_s=30.0)
            try:
                # Re-checked under the lock: another process may have created it meanwhile.
                if not manifest_path.exists():
                    write_manifest(manifest_path, Manifest())
            finally:
                lock.release()
        read_manifest(manifest_path)  # fail now on a damaged or newer manifest
        return lake

    def manifest(self) -> Manifest:
        manifest = read_manifest(self._manifest_path)
        if manifest is None:
            raise LakeError(f"the lake manifest {self._manifest_path} has disappeared; was the folder moved?")
        return manifest

    def writer(self, timeout_s: float = 0.0) -> LakeWriter:
        """Start a writer session (``with lake.writer() as w: ...``).

        Takes the exclusive lock ``<home>/lake/.lock``; when another session holds it this waits
        up to ``timeout_s`` seconds (default: not at all) and then raises a LakeError naming the
        lock and its holder.
        """
        lock = WriterLock(self.path / LOCK_NAME)
        lock.acquire(timeout_s)
        try:
            for name in TABLES:
                (self.path / name).mkdir(exist_ok=True)
            return LakeWriter(self.path, self.options, lock)
        except BaseException:
            lock.release()
            raise

    def snapshot(self, as_of: datetime | None = None, *, live: bool = True) -> Snapshot:
        """The lake as of ``as_of`` (an aware datetime; None: everything committed), frozen on the
        current manifest version.

        With ``live`` (the default), events in write-ahead-log segments that compaction has not
        reached yet are visible too (read without the WAL's lock, see ``wal.read_segments``).
        """
        extra: list[EventSource] = []
        # The WAL is read before the manifest: a segment is deleted only after its events are
        # committed, so each event is then in these rows or in the manifest read below.
        rows = read_segments(self.path / WAL_FOLDER) if live else None
        manifest = self.manifest()
        if rows is not None and rows.num_rows:
            extra.append(WalEvents.fresh(rows, self.path, manifest.parts("events")))
        return Snapshot(self.path, manifest, as_of, extra)

    def compact(self, target_rows: int | None = None, timeout_s: float = 0.0) -> int:
        """Merge small parts of every table into parts of up to ``target_rows`` rows.

        Crash-safe (one manifest commit; a crash leaves orphans the next writer removes) and
        idempotent (a second run finds nothing to merge). Replaced parts are deleted after
        ``options.retired_grace_s``. Returns the number of parts merged away.
        """
        target = target_rows or self.options.compact_target_rows
        with self.writer(timeout_s) as session:
            merged = sum(session.compact_table(spec, target) for spec in TABLES.values())
        return merged

    def stats(self) -> LakeStats:
        manifest = self.manifest()
        with Snapshot(self.path, manifest, None) as snap:
            by_type = snap.sql("SELECT type, count(*) AS n FROM events GROUP BY type ORDER BY type")
            overall = snap.sql(
                "SELECT count(*) AS n, epoch_us(min(timestamp)) AS first, epoch_us(max(timestamp)) AS last, "
                "count(DISTINCT user_id) AS users, count(DISTINCT item_id) AS items, "
                "count(DISTINCT session_id) AS sessions FROM events"
            ).to_pylist()[0]
            catalogue = snap.sql(
                "SELECT (SELECT count(*) FROM items) AS items, (SELECT count(*) FROM item_history) AS iv, "
                "(SELECT count(*) FROM users) AS users, (SELECT count(*) FROM user_history) AS uv"
            ).to_pylist()[0]
        return LakeStats(
            version=manifest.version,
            events=overall["n"],
            events_by_type=dict(zip(by_type["type"].to_pylist(), by_type["n"].to_pylist(), strict=True)),
            first_event=None if overall["first"] is None else from_epoch_us(overall["first"]),
            last_event=None if overall["last"] is None else from_epoch_us(overall["last"]),
            distinct_users=overall["users"],
            distinct_items=overall["items"],
            distinct_sessions=overall["sessions"],
            items=catalogue["items"],
            item_versions=catalogue["iv"],
            users=catalogue["users"],
            user_versions=catalogue["uv"],
            parts={name: len(manifest.parts(name)) for name in TABLES},
            bytes_on_disk=sum(p.bytes for parts in manifest.tables.values() for p in parts),
        )

    def __repr__(self) -> str:
        return f"Lake({self.path})"
