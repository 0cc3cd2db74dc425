"""Crash safety: killed writers, leftover files, damaged manifests; compaction."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import at, events, items
from shelf.errors import LakeError
from shelf.lake import FORMAT_VERSION, Lake, LakeOptions

CRASHING_WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from conftest import events
    from shelf.lake import Lake
    lake = Lake.open({home!r})
    w = lake.writer()
    w.append_events(events(n=300))
    w.append_events(events(n=300, start=300))   # waits until the first part is on disk
    print("ready", flush=True)
    time.sleep(60)
    """
)


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_a_writer_killed_mid_session_leaves_the_lake_consistent(tmp_path: Path) -> None:
    home = tmp_path / "home"
    lake = Lake.open(home)
    with lake.writer() as w:
        w.append_events(events(n=100))
    committed = _files(lake.path / "events")
    script = CRASHING_WRITER.format(tests=str(Path(__file__).parent), home=str(home))
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            with pytest.raises(LakeError, match="locked"):
                lake.writer()
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert _files(lake.path / "events") - committed  # the crashed session's parts are on disk...
    snap = lake.snapshot()
    assert snap.count_events() == 100  # ...but invisible
    assert lake.manifest().version == 1
    with lake.writer() as w:  # the kernel released the lock; leftovers are cleaned up
        assert _files(lake.path / "events") == committed
        assert w.append_events(events(n=600)).added == 500
    assert lake.snapshot().events(["event_id"])["event_id"].to_pylist() == [f"e{i}" for i in range(600)]


def test_leftover_temporary_and_orphan_files_are_ignored_then_removed(lake: Lake) -> None:
    with lake.writer() as w:
        w.append_events(events(n=10))
    (part,) = lake.manifest().parts("events")
    orphan = lake.path / "events" / "v00000002-deadbeef-00001.parquet"
    orphan.write_bytes((lake.path / part.path).read_bytes())  # a complete part never committed
    (lake.path / "events" / ".v00000002-deadbeef-00002.parquet.tmp").write_bytes(b"PAR1 torn")
    (lake.path / ".manifest.json.tmp").write_bytes(b'{"torn')
    assert lake.snapshot().count_events() == 10
    with lake.writer() as w:
        assert w.append_events(events(n=12)).added == 2
    assert _files(lake.path / "events") == {Path(p.path).name for p in lake.manifest().parts("events")}
    assert not (lake.path / ".manifest.json.tmp").exists()
    assert lake.snapshot().count_events() == 12


def test_damaged_manifest_is_a_clear_error(lake: Lake) -> None:
    manifest = lake.path / "manifest.json"
    manifest.write_text('{"format": "shelf-lake", "form')
    with pytest.raises(LakeError, match=r"manifest .*manifest.json is damaged \(not valid JSON.*re-ingest"):
        lake.snapshot()
    with pytest.raises(LakeError, match="damaged"):
        Lake.open(lake.path.parent)
    with pytest.raises(LakeError, match="not a shelf lake manifest"):
        manifest.write_text("[1, 2]")
        lake.writer()


def test_edited_manifest_fails_its_checksum(lake: Lake) -> None:
    with lake.writer() as w:
        w.append_events(events(n=3))
    manifest = lake.path / "manifest.json"
    body = json.loads(manifest.read_text())
    body["tables"]["events"][0]["rows"] = 4
    manifest.write_text(json.dumps(body))
    with pytest.raises(LakeError, match="checksum mismatch"):
        lake.snapshot()


def test_a_manifest_from_a_newer_format_is_refused(lake: Lake) -> None:
    manifest = lake.path / "manifest.json"
    body = json.loads(manifest.read_text())
    body["format_version"] = FORMAT_VERSION + 1
    manifest.write_text(json.dumps(body))
    with pytest.raises(LakeError, match=f"newer shelf \\(manifest format {FORMAT_VERSION + 1}; .*Upgrade shelf"):
        lake.snapshot()


def test_opening_a_missing_lake_without_create(tmp_path: Path) -> None:
    with pytest.raises(LakeError, match="no lake at .*ingest data first"):
        Lake.open(tmp_path / "nowhere", create=False)
    Lake.open(tmp_path / "somewhere")
    Lake.open(tmp_path / "somewhere", create=False)


def test_compaction_merges_small_parts_and_is_idempotent(tmp_path: Path) -> None:
    lake = Lake.open(tmp_path, options=LakeOptions(retired_grace_s=3600.0))
    for start in range(0, 50, 10):
        with lake.writer() as w:
            w.append_events(events(n=10, start=start))
            w.append_items(items([(f"i{start}", 1.0, start)]))
    before = lake.snapshot(at(25))
    expected = before.events()
    assert len(lake.manifest().parts("events")) == 5
    assert lake.compact(target_rows=1000) == 10
    manifest = lake.manifest()
    assert len(manifest.parts("events")) == 1 and len(manifest.parts("items")) == 1
    assert len(manifest.retired) == 10
    after = lake.snapshot(at(25))
    assert after.events().equals(expected)
    assert after.items().num_rows == 3
    assert before.events().equals(expected)  # replaced parts stay readable during the grace period
    assert lake.compact(target_rows=1000) == 0
    assert lake.manifest().version == manifest.version
    with lake.writer() as w:  # dedupe still sees the compacted events
        assert w.append_events(events(n=55)).added == 5
    assert lake.stats().events == 55


def test_retired_parts_are_removed_after_the_grace_period(lake: Lake) -> None:
    for start in (0, 10):
        with lake.writer() as w:
            w.append_events(events(n=10, start=start))
    old = {p.path for p in lake.manifest().parts("events")}
    lake.compact(target_rows=100)
    with lake.writer():
        pass
    assert not any((lake.path / p).exists() for p in old)
    assert lake.snapshot().count_events() == 20
