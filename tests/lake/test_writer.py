"""Writer sessions: idempotent appends, versioned items and users, aborts, the lock, schema checks."""

from __future__ import annotations

import pyarrow as pa
import pytest

from conftest import at, events, items, users
from shelf.errors import LakeError
from shelf.lake import AppendReport, Lake, LakeOptions
from shelf.privacy import Pseudonymizer
from shelf.schema import validate_events


def test_same_batch_twice_adds_nothing_the_second_time(lake: Lake) -> None:
    batch = events(n=100)
    with lake.writer() as w:
        assert w.append_events(batch) == AppendReport(added=100, duplicates=0)
    with lake.writer() as w:
        assert w.append_events(batch) == AppendReport(added=0, duplicates=100)
        assert w.reports["events"] == AppendReport(0, 100)
    assert lake.snapshot().count_events() == 100
    assert lake.manifest().version == 1  # a session that adds nothing commits nothing


def test_duplicates_inside_one_batch_and_across_batches_of_a_session(lake: Lake) -> None:
    rows = [("a", "i1", 1.0), ("b", "i1", 2.0), ("a", "i2", 3.0), ("c", "i1", 4.0), ("b", "i9", 5.0)]
    with lake.writer() as w:
        assert w.append_events(events(rows)) == AppendReport(added=3, duplicates=2)
        assert w.append_events(events([("c", "i1", 4.0), ("d", "i1", 6.0)])) == AppendReport(1, 1)
    got = lake.snapshot().events(["event_id", "item_id"]).to_pylist()
    # The first occurrence wins.
    assert got == [
        {"event_id": "a", "item_id": "i1"},
        {"event_id": "b", "item_id": "i1"},
        {"event_id": "c", "item_id": "i1"},
        {"event_id": "d", "item_id": "i1"},
    ]


def test_dedupe_stays_exact_when_the_key_index_spills_to_disk(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    from shelf.lake import keys

    # Tiny sizes: a few hundred events put most keys in scratch files, in several levels of runs.
    for name, value in (("MEMORY_RUN_KEYS", 40), ("BLOCK_KEYS", 4), ("CHUNK_KEYS", 16), ("FAN_IN", 2), ("FIRST_FILTER_KEYS", 16)):
        monkeypatch.setattr(keys, name, value)
    with lake.writer() as w:
        for start in range(0, 300, 30):
            assert w.append_events(events(n=30, start=start)) == AppendReport(30, 0)
        assert w.append_events(events(n=50, start=280)) == AppendReport(30, 20)  # 280..299 are in
    # A new session (as after a restart) rebuilds the index from the committed parts.
    with lake.writer() as w:
        assert w.append_events(events(n=330, start=0)) == AppendReport(0, 330)
        repeated = events([("e5", "i1", 1.0), ("new-1", "i1", 2.0), ("new-1", "i2", 3.0), ("e329", "i1", 4.0)])
        assert w.append_events(repeated) == AppendReport(added=1, duplicates=3)
        assert w.append_events(events(n=5, start=325)) == AppendReport(added=0, duplicates=5)
    assert lake.snapshot().count_events() == 331
    assert not list(lake.path.glob(keys.SCRATCH_PREFIX + "*"))  # scratch files never show up


def test_validated_events_append_and_parts_are_sorted_by_time(lake: Lake, dev_key: bytes) -> None:
    raw = pa.table(
        {
            "event_id": ["x3", "x1", "x2"],
            "user_id": ["alice", "bob", "alice"],
            "item_id": ["i1", "i2", "i3"],
            "type": ["view", "purchase", "view"],
            "timestamp": ["2024-05-01T10:00:03Z", "2024-05-01T10:00:01Z", "2024-05-01T10:00:02Z"],
        }
    )
    batch = validate_events(raw, pseudonymizer=Pseudonymizer(dev_key))
    assert not batch.errors
    with lake.writer() as w:
        assert w.append_events(batch.valid).added == 3
    import pyarrow.parquet as pq

    (part,) = lake.manifest().parts("events")
    stored = pq.read_table(lake.path / part.path)
    assert stored["event_id"].to_pylist() == ["x1", "x2", "x3"]
    assert part.rows == 3 and part.min_time_us is not None and part.max_time_us is not None
    assert lake.snapshot().events(["user_id"])["user_id"][0].as_py().startswith("u_")


def test_record_batch_and_empty_table_are_accepted(lake: Lake) -> None:
    with lake.writer() as w:
        assert w.append_events(events(n=0)) == AppendReport()
        assert w.append_events(events(n=3).to_batches()[0]) == AppendReport(3, 0)
    assert lake.snapshot().count_events() == 3


def test_item_price_change_is_visible_only_from_its_valid_from(lake: Lake) -> None:
    with lake.writer() as w:
        w.append_items(items([("i1", 10.0, 0), ("i2", 5.0, 0)]))
    with lake.writer() as w:
        assert w.append_items(items([("i1", 12.0, 100)])) == AppendReport(1, 0)
    prices = lambda snap: dict(zip(snap.items()["item_id"].to_pylist(), snap.items()["price"].to_pylist(), strict=True))  # noqa: E731
    assert prices(lake.snapshot(at(100))) == {"i1": 10.0, "i2": 5.0}  # at t itself: not yet
    assert prices(lake.snapshot(at(100.000001))) == {"i1": 12.0, "i2": 5.0}
    assert prices(lake.snapshot()) == {"i1": 12.0, "i2": 5.0}
    assert lake.snapshot(at(0)).items().num_rows == 0  # first version at as_of: invisible
    assert lake.snapshot().item_history()["price"].to_pylist() == [10.0, 12.0, 5.0]


def test_identical_versions_add_nothing_and_conflicts_are_refused(lake: Lake) -> None:
    with lake.writer() as w:
        assert w.append_users(users([("u1", "de", 0), ("u1", "de", 0), ("u2", "fr", 0)])) == AppendReport(2, 1)
        assert w.append_users(users([("u1", "de", 0), ("u1", "at", 50)])) == AppendReport(1, 1)
    with lake.writer() as w:
        assert w.append_users(users([("u1", "de", 0), ("u1", "at", 50)])) == AppendReport(0, 2)
        with pytest.raises(LakeError, match="conflicting users versions.*already holds.*'u1'"):
            w.append_users(users([("u1", "ch", 50)]))
        with pytest.raises(LakeError, match="this batch holds different records"):
            w.append_users(users([("u3", "ch", 1), ("u3", "de", 1)]))
    snap = lake.snapshot()
    assert snap.users()["region"].to_pylist() == ["at", "fr"]
    assert snap.user_history().num_rows == 3


def test_an_exception_aborts_the_session_and_leaves_nothing(lake: Lake) -> None:
    with lake.writer() as w:
        w.append_events(events(n=5))
    before = sorted(p.name for p in (lake.path / "events").iterdir())
    with pytest.raises(RuntimeError, match="boom"), lake.writer() as w:
        w.append_events(events(n=50, start=100))
        w.append_items(items([("i1", 1.0, 0)]))
        raise RuntimeError("boom")
    assert sorted(p.name for p in (lake.path / "events").iterdir()) == before
    assert list((lake.path / "items").iterdir()) == []
    assert lake.snapshot().count_events() == 5
    assert lake.manifest().version == 1
    with lake.writer() as w:  # the lock was released
        assert w.append_events(events(n=50, start=100)).added == 50


def test_a_finished_session_refuses_more_appends(lake: Lake) -> None:
    w = lake.writer()
    w.abort()
    with pytest.raises(LakeError, match="aborted"):
        w.append_events(events(n=1))


def test_the_lock_refuses_a_second_writer(lake: Lake) -> None:
    with lake.writer():
        with pytest.raises(LakeError, match=r"locked by another writer \(held by pid .*lock file .*\.lock"):
            lake.writer()
        with pytest.raises(LakeError, match="after waiting 0.2 s"):
            lake.writer(timeout_s=0.2)
        with pytest.raises(LakeError, match="locked"):
            lake.compact()
    with lake.writer():
        pass


def test_wrong_schema_is_refused_with_every_problem(lake: Lake) -> None:
    bad = events(n=2).drop_columns(["page"]).append_column("extra", pa.array([1, 2]))
    bad = bad.set_column(bad.column_names.index("price"), "price", pa.array(["1", "2"]))
    with lake.writer() as w:
        with pytest.raises(LakeError, match=r"missing column\(s\) \['page'\].*unknown column\(s\) \['extra'\].*'price' is string, expected double.*validate_events"):
            w.append_events(bad)
        with pytest.raises(LakeError, match="'event_id' holds 1 null"):
            w.append_events(events(n=2).set_column(0, "event_id", pa.array(["a", None])))
        with pytest.raises(LakeError, match="append_items takes a pyarrow Table"):
            w.append_items([{"item_id": "x"}])  # type: ignore[arg-type]
        # Column order and equivalent string encodings are fine.
        reordered = events(n=2).select(list(reversed(events(n=2).column_names)))
        reordered = reordered.set_column(reordered.column_names.index("item_id"), "item_id", reordered["item_id"].cast(pa.large_string()))
        assert w.append_events(reordered).added == 2


def test_options_are_checked() -> None:
    with pytest.raises(LakeError, match="compression 'gzip'"):
        LakeOptions(compression="gzip")
