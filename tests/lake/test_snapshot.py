"""Snapshots: the as_of cut, freezing on a manifest version, read-only SQL, and a property test
against a brute-force filter."""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import T0, at, events, items, users
from shelf.errors import LakeError
from shelf.lake import Lake
from shelf.schema import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA


def test_events_at_or_after_as_of_are_hidden(lake: Lake) -> None:
    with lake.writer() as w:
        w.append_events(events([("a", "i1", 5), ("b", "i1", 1), ("c", "i2", 3), ("d", "i2", 3)]))
    snap = lake.snapshot(at(3))
    assert snap.as_of == at(3)
    assert snap.events(["event_id"])["event_id"].to_pylist() == ["b"]
    assert lake.snapshot(at(3.000001)).events(["event_id"])["event_id"].to_pylist() == ["b", "c", "d"]
    full = lake.snapshot()
    assert full.events().schema == EVENT_SCHEMA
    assert full.events()["event_id"].to_pylist() == ["b", "c", "d", "a"]  # by timestamp
    assert full.count_events() == 4
    assert lake.snapshot(at(-1)).count_events() == 0


def test_empty_lake_snapshot_has_typed_empty_tables(lake: Lake) -> None:
    snap = lake.snapshot(at(10))
    assert snap.events().schema == EVENT_SCHEMA and snap.events().num_rows == 0
    assert snap.items().schema == ITEM_SCHEMA and snap.users().schema == USER_SCHEMA
    assert snap.item_history().num_rows == 0 and snap.count_events() == 0
    assert lake.stats().events == 0


def test_snapshot_is_frozen_against_later_appends(lake: Lake) -> None:
    with lake.writer() as w:
        w.append_events(events(n=3))
        w.append_items(items([("i1", 1.0, 0)]))
    snap = lake.snapshot()
    assert snap.count_events() == 3  # queried once before the append, too
    with lake.writer() as w:
        w.append_events(events(n=10))
        w.append_items(items([("i1", 2.0, 5), ("i2", 1.0, 0)]))
    assert snap.count_events() == 3
    assert snap.items()["price"].to_pylist() == [1.0]
    assert snap.version == 1 and lake.snapshot().version == 2
    assert lake.snapshot().count_events() == 10


def test_sql_sees_the_bound_views_and_only_reads(lake: Lake) -> None:
    with lake.writer() as w:
        w.append_events(events(n=10))
        w.append_items(items([("i1", 1.0, 0), ("i1", 2.0, 4)]))
        w.append_users(users([("u_1", "de", 0)]))
    snap = lake.snapshot(at(4))
    got = snap.sql("SELECT count(*) AS n, max(epoch(timestamp)) AS last FROM events").to_pylist()[0]
    assert got["n"] == 4
    joined = snap.sql("SELECT e.event_id, i.price FROM events e JOIN items i USING (item_id) ORDER BY 1")
    assert joined["price"].to_pylist() == [1.0]  # e1 is on i1, price as of before t=4
    assert snap.sql("SELECT count(*) AS n FROM item_history")["n"][0].as_py() == 1
    assert snap.sql("SELECT count(*) AS n FROM users")["n"][0].as_py() == 1
    for statement in ("COPY (SELECT 1) TO '/tmp/x.csv'", "CREATE TABLE t AS SELECT 1", "SELECT 1; SELECT 2"):
        with pytest.raises(LakeError, match="exactly one read-only SELECT"):
            snap.sql(statement)
    with pytest.raises(LakeError, match="snapshot.sql failed"):
        snap.sql("SELECT nope FROM events")


def test_bad_arguments(lake: Lake) -> None:
    with pytest.raises(LakeError, match="no time zone"):
        lake.snapshot(datetime(2024, 5, 1))
    with pytest.raises(LakeError, match=r"unknown event column\(s\) \['nope'\]"):
        lake.snapshot().events(["event_id", "nope"])


def test_stats_describe_the_lake(lake: Lake) -> None:
    with lake.writer() as w:
        w.append_events(events(n=6))
        w.append_events(events(n=2, start=6, type_="purchase"))
        w.append_items(items([("i1", 1.0, 0), ("i1", 2.0, 4)]))
    stats = lake.stats()
    assert stats.events == 8 and stats.events_by_type == {"purchase": 2, "view": 6}
    assert stats.first_event == T0 and stats.last_event == at(7)
    assert (stats.distinct_users, stats.distinct_items, stats.distinct_sessions) == (3, 7, 5)
    assert (stats.items, stats.item_versions, stats.users) == (1, 2, 0)
    assert stats.parts == {"events": 2, "items": 1, "users": 0} and stats.bytes_on_disk > 0
    text = str(stats)
    assert "events" in text and "purchase" in text and "8" in text


# ---------------------------------------------------------------------------------------------
# Property: a snapshot equals a brute-force filter of what was appended.

event_rows = st.lists(
    st.tuples(st.sampled_from([f"e{i}" for i in range(12)]), st.sampled_from(["i1", "i2", "i3"]), st.integers(0, 20)),
    max_size=15,
)
version_rows = st.lists(st.tuples(st.sampled_from(["i1", "i2", "i3", "i4"]), st.integers(0, 20)), max_size=10)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(event_rows, min_size=1, max_size=3),
    versions=st.lists(version_rows, min_size=1, max_size=2),
    cut=st.one_of(st.none(), st.integers(-1, 22)),
)
def test_snapshot_equals_brute_force(batches: list[list[tuple[str, str, int]]], versions: list[list[tuple[str, int]]], cut: int | None) -> None:
    # Each batch goes to its own session; the price is a function of the version, so repeats are identical.
    price = lambda item, t: float(int(item[1:]) * 100 + t)  # noqa: E731
    with tempfile.TemporaryDirectory() as home:
        lake = Lake.open(Path(home))
        for i, batch in enumerate(batches):
            with lake.writer() as w:
                w.append_events(events([(e, item, float(t)) for e, item, t in batch]))
                if i < len(versions):
                    w.append_items(items([(item, price(item, t), float(t)) for item, t in versions[i]]))
                    w.append_users(users([(f"u{item}", f"r{t}", float(t)) for item, t in versions[i]]))
        as_of = None if cut is None else at(cut)
        with lake.snapshot(as_of) as snap:
            first: dict[str, tuple[str, int]] = {}
            for batch in batches:
                for e, item, t in batch:
                    first.setdefault(e, (item, t))
            expected_events = sorted(
                (at(t), e, item) for e, (item, t) in first.items() if cut is None or t < cut
            )
            got = snap.events(["timestamp", "event_id", "item_id"])
            assert list(zip(*(got[c].to_pylist() for c in got.column_names), strict=True)) == expected_events
            assert snap.count_events() == len(expected_events)

            all_versions = {(item, t) for vs in versions[: len(batches)] for item, t in vs}
            visible = sorted(v for v in all_versions if cut is None or v[1] < cut)
            latest = {item: t for item, t in visible}  # sorted, so the last write is the latest
            got_items = snap.items()
            assert got_items["item_id"].to_pylist() == sorted(latest)
            assert got_items["price"].to_pylist() == [price(i, latest[i]) for i in sorted(latest)]
            assert got_items["valid_from"].to_pylist() == [at(latest[i]) for i in sorted(latest)]
            history = snap.item_history()
            assert list(zip(history["item_id"].to_pylist(), history["valid_from"].to_pylist(), strict=True)) == [
                (i, at(t)) for i, t in visible
            ]
            got_users = snap.users()
            assert got_users["user_id"].to_pylist() == [f"u{i}" for i in sorted(latest)]
            assert got_users["region"].to_pylist() == [f"r{latest[i]}" for i in sorted(latest)]
