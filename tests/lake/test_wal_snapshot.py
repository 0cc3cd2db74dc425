"""Snapshots read WAL segments beside Parquet parts: fresh events are visible before compaction,
without the WAL's lock, once each, and under the same as_of cut."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import at, events
from shelf.lake import Lake
from shelf.lake.lake import WAL_FOLDER
from shelf.lake.wal import WalCorruptError, WriteAheadLog, read_segments


def ids(snapshot_events: object) -> list[str]:
    return sorted(snapshot_events["event_id"].to_pylist())  # type: ignore[index]


@pytest.fixture
def lake_and_wal(tmp_path: Path):  # type: ignore[no-untyped-def]
    lake = Lake.open(tmp_path / "home")
    with WriteAheadLog(lake.path / WAL_FOLDER, segment_bytes=4096) as wal:  # held: the lock is taken
        yield lake, wal


def test_live_events_are_visible_without_the_wal_lock(lake_and_wal) -> None:  # type: ignore[no-untyped-def]
    lake, wal = lake_and_wal
    with lake.writer() as w:
        w.append_events(events(n=3))  # e0..e2 committed
    wal.append(events(n=4, start=3))  # e3..e6 live, in the active segment of a process holding the lock
    with lake.snapshot() as snap:
        assert ids(snap.events()) == [f"e{i}" for i in range(7)]
        assert snap.count_events() == 7
    with lake.snapshot(live=False) as snap:
        assert snap.count_events() == 3
    with lake.snapshot(at(5)) as snap:  # the as_of cut binds WAL events too
        assert ids(snap.events()) == [f"e{i}" for i in range(5)]


def test_events_in_both_the_wal_and_the_lake_are_seen_once(lake_and_wal) -> None:  # type: ignore[no-untyped-def]
    lake, wal = lake_and_wal
    wal.append(events(n=5))
    wal.append(events(n=2, start=3))  # a client resend: e3, e4 again
    # A crash after the commit and before the segments' delete leaves the events in both.
    with lake.writer() as w:
        w.append_events(events(n=4))
    with lake.snapshot() as snap:
        assert ids(snap.events()) == [f"e{i}" for i in range(5)]


def test_compaction_commits_before_deleting_segments(lake_and_wal) -> None:  # type: ignore[no-untyped-def]
    lake, wal = lake_and_wal
    for start in range(0, 60, 10):
        wal.append(events(n=10, start=start))
    with lake.writer() as session:
        handed = wal.compact(session.append_events, commit=session.commit)
    assert handed == 60 and wal.read_all().num_rows == 0
    assert lake.stats().events == 60
    with lake.snapshot() as snap:
        assert snap.count_events() == 60


def test_a_failed_commit_keeps_every_segment(lake_and_wal) -> None:  # type: ignore[no-untyped-def]
    lake, wal = lake_and_wal
    wal.append(events(n=10))

    def broken_commit() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError), lake.writer() as session:
        wal.compact(session.append_events, commit=broken_commit)
    assert wal.read_all().num_rows == 10, "nothing deleted: the events were never committed"
    assert lake.stats().events == 0


def test_a_torn_tail_being_written_is_left_out(lake_and_wal) -> None:  # type: ignore[no-untyped-def]
    lake, wal = lake_and_wal
    wal.append(events(n=3))
    active = sorted((lake.path / WAL_FOLDER).glob("seg-*.wal"))[-1]
    with open(active, "ab") as handle:  # what a reader sees mid-write: a record cut short
        handle.write(b"\x40\x00\x00\x00\x00\x00\x00\x00partial")
    assert read_segments(lake.path / WAL_FOLDER).num_rows == 3
    with lake.snapshot() as snap:
        assert snap.count_events() == 3


def test_damage_in_a_sealed_segment_is_loud(tmp_path: Path) -> None:
    lake = Lake.open(tmp_path / "home")
    with WriteAheadLog(lake.path / WAL_FOLDER, segment_bytes=4096) as wal:
        wal.append(events(n=3))
        wal.append(events(n=3, start=3))
        segment = sorted((lake.path / WAL_FOLDER).glob("seg-*.wal"))[0]
        data = bytearray(segment.read_bytes())
        data[20] ^= 0xFF  # inside the first record, with a whole record after it
        segment.write_bytes(bytes(data))
        os.sync()
        with pytest.raises(WalCorruptError):
            lake.snapshot()
