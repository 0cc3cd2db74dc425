"""Offline (DuckDB, point-in-time) and online (incremental) engines give the same values."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from shelf.features import (
    DAY,
    FeatureSet,
    OnlineFeatures,
    compute_offline,
    default_feature_set,
    relative_feature_set,
)
from shelf.features.synthetic import synthetic_shop
from shelf.models.base import Context, Query, Scored


@pytest.fixture(scope="module")
def shop() -> tuple[pa.Table, pa.Table, pa.Table]:
    return synthetic_shop(n_users=40, n_items=60, n_sessions=300, seed=1)


def _requests(events: pa.Table, n: int, seed: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    rows = events.to_pylist()
    picks = sorted(rng.choice(len(rows), size=n, replace=False))
    return [rows[int(p)] for p in picks]


@pytest.mark.parametrize("fs", [default_feature_set(), relative_feature_set(window_s=3 * DAY)], ids=["default", "relative"])
def test_offline_and_online_agree(shop: tuple[pa.Table, pa.Table, pa.Table], fs: FeatureSet) -> None:
    # "relative": within-request percentiles rank a request's candidates (one online frame, one
    # offline ``request``), trends read item counts computed as inputs only.
    events, items, users = shop
    rng = np.random.default_rng(0)
    all_items = [f"i{i}" for i in range(60)] + ["i_unseen"]
    requests = _requests(events, 25, seed=2)
    requests.append({**requests[-1], "user_id": None, "session_id": None, "device": None})  # anonymous
    requests.append({**requests[0], "user_id": "u_never_seen"})
    requests.sort(key=lambda r: r["timestamp"])

    examples: dict[str, list[object]] = {k: [] for k in (
        "request", "user_id", "item_id", "timestamp", "session_id", "device", "region",
        "candidate_score", "candidate_rank", "candidate_source")}
    online = OnlineFeatures(fs)
    online.update_items(items)
    online.update_users(users)
    ts = events["timestamp"]
    fed = 0
    online_frames = []
    for request, r in enumerate(requests):
        t = r["timestamp"]
        cut = int(pc.sum(pc.less(ts, pa.scalar(t, ts.type))).as_py() or 0)
        if cut > fed:  # feed what happened before t, in two batches to exercise incremental updates
            mid = (fed + cut) // 2
            online.update(events.slice(fed, mid - fed))
            online.update(events.slice(mid, cut - mid))
            fed = cut
        cands = rng.choice(all_items, size=8, replace=False)
        scores = np.sort(rng.random(8).astype(np.float32))[::-1]
        sources = np.array(["pop", "cooc"] * 4, dtype=object)
        sess = events.filter(pc.and_(pc.equal(events["session_id"], r["session_id"] or "-"), pc.less(ts, pa.scalar(t, ts.type))))
        query = Query(
            user_id=r["user_id"],
            session_items=tuple(sess["item_id"].to_pylist()),
            context=Context(timestamp=t, device=r["device"], region=r["region"]),
        )
        online_frames.append(online.frame(query, Scored(cands, scores, sources)))
        for rank, (c, s, src) in enumerate(zip(cands, scores, sources, strict=True)):
            for k, v in (("request", request), ("user_id", r["user_id"]), ("item_id", c), ("timestamp", t), ("session_id", r["session_id"]),
                         ("device", r["device"]), ("region", r["region"]), ("candidate_score", float(s)),
                         ("candidate_rank", float(rank)), ("candidate_source", src)):
                examples[k].append(v)
    offline = compute_offline(fs, pa.table(examples), events, items, users)
    from shelf.features import FeatureFrame

    on = FeatureFrame.concat(online_frames)
    assert offline.numeric_names == on.numeric_names
    for j, name in enumerate(offline.numeric_names):
        np.testing.assert_allclose(on.numeric[:, j], offline.numeric[:, j], rtol=1e-9, atol=1e-9, err_msg=name)
    for j, name in enumerate(offline.categorical_names):
        assert on.categorical[:, j].tolist() == offline.categorical[:, j].tolist(), name
    # the data exercise the features: most numeric columns vary
    varying = [n for j, n in enumerate(offline.numeric_names) if np.nanstd(offline.numeric[:, j]) > 0]
    assert len(varying) >= 0.7 * len(offline.numeric_names), set(offline.numeric_names) - set(varying)


def test_timestamp_defaults_to_now_and_empty_state_works() -> None:
    fs = default_feature_set()
    online = OnlineFeatures(fs)
    frame = online.frame(Query(user_id="u_x"), Scored(np.array(["a", "b"], dtype=object), np.ones(2, np.float32)),
                         now=datetime(2024, 1, 1, tzinfo=UTC))
    assert frame.numeric.shape == (2, len(fs.numeric))
    assert frame.column("user_recency")[0] == fs["user_recency"].fill  # type: ignore[attr-defined]
