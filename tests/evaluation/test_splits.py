from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from shelf.evaluation.errors import EmptySplitError, LeakageError, NoTestUsersError
from shelf.evaluation.splits import (
    LastNDays,
    LeaveLastOut,
    SessionNextItem,
    TableSnapshot,
    TableSource,
    TemporalSplit,
    audit_leakage,
    session_split_from_tables,
)

from .conftest import START, event_table

CUT = START + timedelta(days=45)


def _max_ts(table: pa.Table) -> datetime:
    return pc.max(table["timestamp"]).as_py()


def test_temporal_cut_never_leaks(shop) -> None:
    events, items, users = shop
    split = TemporalSplit(CUT, timedelta(days=15)).build(TableSource(events, items, users))
    assert _max_ts(split.train_inputs["events"]) < CUT
    assert pc.min(split.test_events["timestamp"]).as_py() >= CUT
    assert pc.max(split.test_events["timestamp"]).as_py() < CUT + timedelta(days=15)
    assert int(split.train.timestamp.max()) < int(CUT.timestamp() * 1e6)
    # items launched after the cut are not in the training catalogue
    launched = dict(zip(items["item_id"].to_pylist(), items["launched_at"].to_pylist(), strict=True))
    assert all(launched[i] < CUT for i in split.train.items.ids.tolist() if i in launched)
    # every test user has history
    assert set(split.train.users.ids[split.test_users]) == set(pc.unique(split.test_events["user_id"]).to_pylist())
    val = split.validation()
    assert val.cut == CUT - timedelta(days=15)
    assert _max_ts(val.test_events) < CUT


class LeakySource(TableSource):
    """A buggy lake whose snapshot ignores as_of for events."""

    def snapshot(self, as_of):
        good = super().snapshot(as_of)
        return TableSnapshot(as_of, self._events, good._items, good._users)


def test_audit_catches_a_planted_leak(shop) -> None:
    events, items, users = shop
    with pytest.raises(LeakageError, match="at or after the cut"):
        TemporalSplit(CUT, timedelta(days=15)).build(LeakySource(events, items, users))
    late_item = items.slice(0, 1).set_column(items.schema.get_field_index("valid_from"), "valid_from", pa.array([CUT], items.schema.field("valid_from").type))
    with pytest.raises(LeakageError, match="items"):
        audit_leakage({"items": late_item}, CUT)


def test_cold_users_are_their_own_segment(shop) -> None:
    events, items, users = shop
    newcomer = event_table([{"user_id": "new1", "item_id": "i001", "timestamp": CUT + timedelta(days=1)},
                            {"user_id": "new1", "item_id": "i002", "timestamp": CUT + timedelta(days=2)}])
    source = TableSource(pa.concat_tables([events, newcomer]), items, users)
    without = TemporalSplit(CUT, timedelta(days=15)).build(source)
    assert without.cold_users.size == 0 and "new1" not in without.test_events["user_id"].to_pylist()
    split = TemporalSplit(CUT, timedelta(days=15), include_cold=True).build(source)
    assert split.cold_users.tolist() == ["new1"]
    assert "new1" not in split.train.users
    assert split.cold_events.num_rows == 2


def test_no_test_users_and_empty_windows(shop) -> None:
    events, items, users = shop
    source = TableSource(events, items, users)
    with pytest.raises(EmptySplitError):
        TemporalSplit(START + timedelta(days=400), timedelta(days=5)).build(source)
    with pytest.raises(EmptySplitError):
        TemporalSplit(START - timedelta(days=5), timedelta(days=1)).build(source)
    only_new = event_table([{"user_id": "a", "item_id": "x", "timestamp": START},
                            {"user_id": "b", "item_id": "y", "timestamp": CUT}])
    with pytest.raises(NoTestUsersError):
        TemporalSplit(CUT, timedelta(days=1)).build(TableSource(only_new))


def test_last_n_days(shop) -> None:
    events, items, users = shop
    split = LastNDays(10).build(TableSource(events, items, users))
    end = _max_ts(events)
    assert end - timedelta(days=10) < split.cut <= end - timedelta(days=10) + timedelta(seconds=1)
    assert _max_ts(split.train_inputs["events"]) < split.cut


def test_leave_last_out_holds_out_each_users_last_event() -> None:
    t = [START + timedelta(hours=h) for h in range(6)]
    events = event_table([
        {"user_id": "a", "item_id": "x", "timestamp": t[0]},
        {"user_id": "a", "item_id": "y", "timestamp": t[1]},
        {"user_id": "a", "item_id": "z", "timestamp": t[4]},
        {"user_id": "b", "item_id": "x", "timestamp": t[2]},
        {"user_id": "b", "item_id": "z", "timestamp": t[3]},
        {"user_id": "c", "item_id": "y", "timestamp": t[5]},  # one event: no history, not tested
    ])
    split = LeaveLastOut().build(TableSource(events))
    test = sorted(zip(split.test_events["user_id"].to_pylist(), split.test_events["item_id"].to_pylist(), strict=True))
    assert test == [("a", "z"), ("b", "z")]
    assert split.train_inputs["events"].num_rows == 4
    assert split.user_cuts == {"a": int(t[4].timestamp() * 1e6), "b": int(t[3].timestamp() * 1e6)}
    with pytest.raises(LeakageError):
        from shelf.evaluation.splits import audit_user_cuts

        audit_user_cuts(events, split.user_cuts)
    val = split.validation()  # second-to-last out, from the training side only
    assert val.test_events["item_id"].to_pylist() == ["y"]  # only "a" still has history


def _session_events(prefix: str, start: datetime, items: list[list[str]]) -> list[dict]:
    rows = []
    for s, seq in enumerate(items):
        for j, it in enumerate(seq):
            rows.append({"session_id": f"{prefix}{s}", "item_id": it, "timestamp": start + timedelta(minutes=10 * s + j)})
    return rows


def test_session_next_item_prefixes() -> None:
    train = event_table(_session_events("tr", START, [["a", "b", "c"], ["b", "c", "d"], ["a", "d"]]))
    test = event_table(_session_events("te", START + timedelta(days=2), [["a", "b", "c"], ["d"], ["b", "zz", "c"]]))
    split = session_split_from_tables(train, test)
    ids = split.train.items.ids
    got = [([ids[i] for i in p], ids[t]) for p, t in zip(split.prefixes, split.targets.tolist(), strict=True)]
    # session "d" (length 1) gives no query; target "zz" is unknown to training: dropped and counted
    assert got == [(["a"], "b"), (["a", "b"], "c"), (["b"], "c")]
    assert split.prefix_raw[2] == ("b", "zz")
    assert split.unknown_targets == 1
    assert split.cut == START + timedelta(days=2)
    leaky_train = pa.concat_tables([train, test.slice(0, 1)])
    with pytest.raises(LeakageError):
        session_split_from_tables(leaky_train, test)


def test_session_split_through_snapshots() -> None:
    rows = _session_events("s", START, [["a", "b", "c"]] * 5)
    rows += _session_events("t", START + timedelta(days=3), [["a", "b"], ["c", "a", "b"]])
    source = TableSource(event_table(rows))
    split = SessionNextItem(START + timedelta(days=3), timedelta(days=1)).build(source)
    assert len(split.targets) == 3
    assert np.all(split.train.timestamp < int((START + timedelta(days=3)).timestamp() * 1e6))
