"""Relative features: declarations, the derivations both engines share, point-in-time safety."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from shelf.features import (
    DAY,
    EventAggregate,
    FeatureDefinitionError,
    FeatureSet,
    OnlineFeatures,
    Relative,
    audit_leakage,
    compute_offline,
    relative_feature_set,
)
from shelf.features.offline import derive_relative, within_group_percentile
from shelf.features.synthetic import synthetic_shop
from shelf.models.base import Context, Query, Scored

EVERY = ("view", "add_to_cart", "purchase")
COUNT_W = EventAggregate("item_n_3d", "item", "item", "count", EVERY, 3 * DAY)
COUNT_2W = EventAggregate("item_n_6d", "item", "item", "count", EVERY, 6 * DAY)
COUNT_ALL = EventAggregate("item_n_all", "item", "item", "count", EVERY, None)
AGE = EventAggregate("item_age", "item", "item", "age", EVERY, None, fill=0.0)


def test_within_group_percentile_ranks_ties_and_nan_like_pandas() -> None:
    x = np.array([3.0, 1.0, 3.0, np.nan, 5.0, 2.0, np.inf, 2.0])
    g = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    got = within_group_percentile(x, g)
    # group 0: 1 < 3 = 3 (NaN not counted): 1/3, 2.5/3, 2.5/3; group 1: 2 = 2 < 5 < inf
    expected = [2.5 / 3, 1 / 3, 2.5 / 3, np.nan, 3 / 4, 1.5 / 4, 1.0, 1.5 / 4]
    np.testing.assert_allclose(got, expected)
    assert np.isnan(within_group_percentile(np.array([np.nan]), np.zeros(1))).all()


def test_trend_and_growth_follow_their_formulas() -> None:
    trend = Relative("trend", "item", "trend", (COUNT_W, COUNT_ALL, AGE), scale=3 * DAY)
    growth = Relative("growth", "item", "growth", (COUNT_W, COUNT_2W))
    fs = FeatureSet([trend, growth])
    parts = {"item_n_3d": np.array([6.0, 0.0, np.nan]), "item_n_6d": np.array([8.0, 4.0, 1.0]),
             "item_n_all": np.array([20.0, 4.0, 1.0]), "item_age": np.array([30.0 * DAY, DAY, np.nan])}
    derive_relative(fs, parts, np.zeros(3, dtype=np.int64))
    # lifetime rate over one window: 20 * 3 / 30 = 2; an item younger than the window: its count
    np.testing.assert_allclose(parts["trend"][:2], [math.log(7 / 3), math.log(1 / 5)])
    np.testing.assert_allclose(parts["growth"], [math.log(7 / 3), math.log(1 / 5), math.log(1 / 2)])  # NaN count -> fill 0
    assert np.isfinite(parts["trend"]).all()


def test_declarations_validate_and_round_trip_through_json() -> None:
    with pytest.raises(FeatureDefinitionError):
        Relative("p", "item", "percentile", (COUNT_W, COUNT_ALL))
    with pytest.raises(FeatureDefinitionError):
        Relative("p", "item", "median", (COUNT_W,))  # type: ignore[arg-type]
    with pytest.raises(FeatureDefinitionError):
        Relative("p", "item", "trend", (COUNT_W, COUNT_ALL, AGE), scale=0.0)
    with pytest.raises(FeatureDefinitionError, match="two different declarations"):
        FeatureSet([Relative("p", "item", "percentile", (COUNT_W,)), EventAggregate("item_n_3d", "item", "item", "count", ("view",), DAY)])
    fs = relative_feature_set(["popularity", "cooccurrence"], window_s=DAY)
    back = FeatureSet.from_json(fs.to_json())
    assert back.version == fs.version and back.names == fs.names and back.computed.names == fs.computed.names
    assert "item_id" not in fs.names and not [n for n in fs.names if n.startswith("item_events")]
    nested = Relative("pct_trend", "item", "percentile", (Relative("t", "item", "trend", (COUNT_W, COUNT_ALL, AGE), scale=DAY),))
    assert FeatureSet.from_json(FeatureSet([nested]).to_json()).version == FeatureSet([nested]).version


def test_age_is_the_time_since_the_first_event_online_and_offline() -> None:
    events, items, users = synthetic_shop(n_users=20, n_items=20, n_sessions=120, seed=3)
    fs = FeatureSet([AGE])
    t = events["timestamp"][events.num_rows - 1].as_py()
    online = OnlineFeatures(fs)
    online.update(events.slice(0, events.num_rows - 1))
    cands = np.array(["i0", "i1", "i_new"], dtype=object)
    on = online.frame(Query("u0", context=Context(timestamp=t)), Scored(cands, np.ones(3, np.float32)))
    ts = {i: [] for i in cands}
    for item, when in zip(events["item_id"].to_pylist(), events["timestamp"].to_pylist(), strict=True):
        if item in ts and when < t:
            ts[item].append(when)
    expected = [(t - min(ts[i])).total_seconds() if ts[i] else 0.0 for i in cands]
    np.testing.assert_allclose(on.column("item_age"), expected)
    examples = pa.table({"user_id": ["u0"] * 3, "item_id": cands.tolist(), "timestamp": pa.array([t] * 3, type=events["timestamp"].type)})
    np.testing.assert_allclose(compute_offline(fs, examples, events).column("item_age"), expected)


def test_the_leakage_audit_passes_relative_features() -> None:
    events, items, users = synthetic_shop(n_users=30, n_items=40, n_sessions=200, seed=4)
    rng = np.random.default_rng(0)
    anchors = events.take(np.sort(rng.choice(events.num_rows, 6, replace=False))).to_pylist()
    rows = [{"request": k, "user_id": a["user_id"], "item_id": f"i{j}", "timestamp": a["timestamp"]}
            for k, a in enumerate(anchors) for j in rng.choice(40, 8, replace=False).tolist()]
    examples = pa.Table.from_pylist(rows).cast(pa.schema([("request", pa.int64()), ("user_id", pa.string()),
                                                          ("item_id", pa.string()), ("timestamp", events["timestamp"].type)]))
    report = audit_leakage(relative_feature_set(window_s=3 * DAY), examples, events, items, users, n_times=4)
    assert report.ok, report.leaking
