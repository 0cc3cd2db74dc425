"""shelf.lake: append-only event log, versioned item and user tables, snapshots as of a time.

    lake = Lake.open(settings.home)
    with lake.writer() as w:               # one writer at a time (flock on <home>/lake/.lock)
        w.append_events(batch.valid)       # idempotent on event_id; one Parquet part per append
        w.append_items(items.valid)        # versions by (item_id, valid_from)
    snap = lake.snapshot(as_of)            # nothing at or after as_of is visible
    train = snap.events(["user_id", "item_id", "timestamp"])
"""

from shelf.lake.lake import Lake, LakeOptions, LakeStats
from shelf.lake.manifest import FORMAT_VERSION, Manifest, Part
from shelf.lake.snapshot import EventSource, ParquetParts, Snapshot
from shelf.lake.writer import AppendReport, LakeWriter

__all__ = [
    "FORMAT_VERSION",
    "AppendReport",
    "EventSource",
    "Lake",
    "LakeOptions",
    "LakeStats",
    "LakeWriter",
    "Manifest",
    "ParquetParts",
    "Part",
    "Snapshot",
]
