"""The write-ahead log: durability, torn tails, group commit, compaction hand-off, kill -9.

(These live beside serving because the live API is the WAL's writer; they move to tests/lake
when that package settles.)
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from shelf.errors import LakeError
from shelf.lake.wal import MAGIC, WalCorruptError, WriteAheadLog
from shelf.schema import EVENT_SCHEMA

CHILD = Path(__file__).with_name("_wal_child.py")


def events(ids: list[str], item: str = "i1") -> pa.Table:
    n = len(ids)
    columns = {f.name: pa.nulls(n, f.type) for f in EVENT_SCHEMA}
    columns["event_id"] = pa.array(ids, pa.string())
    columns["item_id"] = pa.array([item] * n, pa.string())
    columns["type"] = pa.array(["view"] * n, pa.string())
    columns["timestamp"] = pa.array([datetime(2024, 5, 1, tzinfo=UTC)] * n, EVENT_SCHEMA.field("timestamp").type)
    return pa.table(columns, schema=EVENT_SCHEMA)


def ids_of(table: pa.Table) -> list[str]:
    return table["event_id"].to_pylist()


def segments(root: Path) -> list[Path]:
    return sorted(root.glob("seg-*.wal"))


def test_durable_across_reopen(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path) as wal:
        wal.append(events(["a", "b"]))
        wal.append(events(["c"]))
        assert ids_of(wal.read_all()) == ["a", "b", "c"]
    with WriteAheadLog(tmp_path) as wal:
        assert ids_of(wal.read_all()) == ["a", "b", "c"]
        wal.append(events(["d"]))
    with WriteAheadLog(tmp_path) as wal:
        assert ids_of(wal.read_all()) == ["a", "b", "c", "d"]
        assert wal.read_all().schema.equals(EVENT_SCHEMA)


def test_refuses_wrong_schema_and_second_process_lock(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path) as wal:
        with pytest.raises(ValueError, match="EVENT_SCHEMA"):
            wal.append(pa.table({"event_id": ["x"]}))
        with pytest.raises(LakeError, match="locked"):
            WriteAheadLog(tmp_path)
    with pytest.raises(LakeError, match="closed"):
        wal.append(events(["late"]))


def test_rotation_by_size(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, segment_bytes=4096) as wal:
        for i in range(40):
            wal.append(events([f"e{i}-{j}" for j in range(10)]))
        assert len(segments(tmp_path)) > 3
        assert len(wal.read_all()) == 400
    with WriteAheadLog(tmp_path, segment_bytes=4096) as wal:
        assert ids_of(wal.read_all()) == [f"e{i}-{j}" for i in range(40) for j in range(10)]


def test_torn_tail_is_dropped_at_every_cut(tmp_path: Path) -> None:
    """Cutting the last record anywhere loses exactly that (unacknowledged) record."""
    src = tmp_path / "src"
    with WriteAheadLog(src) as wal:
        wal.append(events(["a", "b"]))
        wal.append(events(["c"]))
    (segment,) = segments(src)
    data = segment.read_bytes()
    seen: set[tuple[str, ...]] = set()
    for cut in range(len(MAGIC), len(data), 37):
        root = tmp_path / f"cut{cut}"
        root.mkdir()
        (root / segment.name).write_bytes(data[:cut])
        with WriteAheadLog(root) as wal:
            got = tuple(ids_of(wal.read_all()))
        assert got in {(), ("a", "b")}
        seen.add(got)
    assert seen == {(), ("a", "b")}


def test_torn_tail_of_zeros_and_bad_checksum_at_end(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path) as wal:
        wal.append(events(["a"]))
        wal.append(events(["b"]))
    (segment,) = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0xFF  # last record's bytes never reached the disk intact
    segment.write_bytes(bytes(data))
    with WriteAheadLog(tmp_path) as wal:
        assert ids_of(wal.read_all()) == ["a"]
    # A file extended with zeros by the filesystem after a crash.
    last = segments(tmp_path)[-1]
    with last.open("ab") as handle:
        handle.write(b"\0" * 100)
    with WriteAheadLog(tmp_path) as wal:
        assert ids_of(wal.read_all()) == ["a"]


def test_checksum_mismatch_in_the_middle_is_an_error(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path) as wal:
        wal.append(events(["a"]))
        wal.append(events(["b"]))
    (segment,) = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[len(MAGIC) + 20] ^= 0xFF  # inside the first record, with the second after it
    segment.write_bytes(bytes(data))
    with pytest.raises(WalCorruptError, match=r"checksum mismatch .* at byte 8"):
        WriteAheadLog(tmp_path)
    assert segment.exists(), "a damaged segment is never deleted"


def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    threads, per_thread, batch = 8, 40, 100
    with WriteAheadLog(tmp_path) as wal:
        errors: list[BaseException] = []

        def work(t: int) -> None:
            try:
                for i in range(per_thread):
                    wal.append(events([f"{t}-{i}-{j}" for j in range(batch)]))
            except BaseException as error:  # pragma: no cover - reported below
                errors.append(error)

        started = time.perf_counter()
        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)
        seconds = time.perf_counter() - started
        assert not errors
        stats = wal.stats()
        total = threads * per_thread * batch
        got = ids_of(wal.read_all())
        assert len(got) == total and len(set(got)) == total
        assert stats.appends == threads * per_thread
        assert stats.fsyncs < stats.appends, "group commit: concurrent appends share fsyncs"
        rate = total / seconds
        print(f"WAL: {rate:,.0f} durable events/s, {stats.appends} appends, {stats.fsyncs} fsyncs")
        assert rate >= 10_000


def test_compaction_hands_off_then_deletes(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, segment_bytes=4096) as wal:
        for i in range(10):
            wal.append(events([f"e{i}-{j}" for j in range(10)]))
        sink: dict[str, dict[str, object]] = {}

        def failing(table: pa.Table) -> None:
            for row in table.to_pylist():
                sink.setdefault(row["event_id"], row)
            raise RuntimeError("the lake writer crashed after writing")

        with pytest.raises(RuntimeError):
            wal.compact(failing)
        assert len(wal.read_all()) == 100, "nothing deleted when the hand-off failed"

        handed: list[int] = []

        def lake(table: pa.Table) -> None:
            handed.append(table.num_rows)
            for row in table.to_pylist():
                sink.setdefault(row["event_id"], row)

        wal.append(events(["late"]))
        assert wal.compact(lake) == 101
        assert sum(handed) == 101
        assert len(sink) == 101  # the replayed segment was deduped by event_id
        assert len(wal.read_all()) == 0
        wal.append(events(["after"]))  # appends go on after compaction
        assert ids_of(wal.read_all()) == ["after"]
    assert len(segments(tmp_path)) == 1


def _run_child(root: Path, prefix: str, kill_after: float) -> list[str]:
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(root), prefix, "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked: list[str] = []

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            # A line the kill cut short has no newline: it is not a whole id, skip it.
            if line.endswith("\n") and line.strip() and line.strip() != "READY":
                acked.append(line.strip())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        deadline = time.monotonic() + 15
        while not acked and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.01)
        time.sleep(kill_after)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=10)
        reader.join(timeout=10)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    stderr = child.stderr.read()
    child.stderr.close()
    assert child.returncode == -signal.SIGKILL, stderr
    return acked


def test_kill_minus_nine_loses_no_acknowledged_event(tmp_path: Path) -> None:
    rng = random.Random(7)
    root = tmp_path / "wal"
    acknowledged: list[str] = []
    for round_ in range(4):
        acknowledged += _run_child(root, f"r{round_}", kill_after=rng.uniform(0.05, 0.6))
    assert len(acknowledged) > 100
    sink: dict[str, int] = {}

    def lake(table: pa.Table) -> None:
        for event_id in ids_of(table):
            sink[event_id] = sink.get(event_id, 0) + 1

    with WriteAheadLog(root) as wal:
        present = ids_of(wal.read_all())
        assert len(present) == len(set(present)), "no event is in the log twice"
        missing = set(acknowledged) - set(present)
        assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:3]}"
        wal.compact(lake)
    assert set(acknowledged) <= set(sink)
    assert max(sink.values()) == 1
