"""The leakage audit passes the offline engine and catches a feature planted to read the future."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shelf.features import DAY, WEEK, EventAggregate, FeatureSet, audit_leakage, compute_offline
from shelf.features.definitions import FeatureFrame
from shelf.features.synthetic import synthetic_shop


def _examples(events: pa.Table, n: int) -> pa.Table:
    rng = np.random.default_rng(3)
    rows = events.take(np.sort(rng.choice(events.num_rows, n, replace=False)))
    return rows.select(["user_id", "item_id", "timestamp", "session_id", "device", "region"])


def test_audit_passes_point_in_time_features_and_catches_a_planted_leak() -> None:
    events, items, users = synthetic_shop(n_users=30, n_items=40, n_sessions=200, seed=4)
    fs = FeatureSet([
        EventAggregate("user_views_7d", "user", "user", "count", ("view",), WEEK),
        EventAggregate("item_views_7d", "item", "item", "count", ("view",), WEEK),
        EventAggregate("item_recency", "item", "item", "recency", ("view", "purchase"), None, fill=1e6),
    ])
    examples = _examples(events, 40)
    honest = audit_leakage(fs, examples, events, items, users, n_times=4)
    assert honest.ok and honest.examples_checked == 4

    def leaky(fs_: FeatureSet, ex: pa.Table, ev: pa.Table, it: pa.Table | None, us: pa.Table | None) -> FeatureFrame:
        """item_views_7d computed over a window that ends a day *after* t: the planted bug."""
        frame = compute_offline(fs_, ex, ev, it, us)
        shifted = ex.set_column(ex.column_names.index("timestamp"), "timestamp",
                                pc.add(ex["timestamp"], pa.scalar(timedelta(seconds=DAY))))
        future = compute_offline(fs_, shifted, ev, it, us)
        j = frame.numeric_names.index("item_views_7d")
        frame.numeric[:, j] = future.numeric[:, j]
        return frame

    report = audit_leakage(fs, examples, events, items, users, n_times=4, compute=leaky)
    assert set(report.leaking) == {"item_views_7d"}
    assert not report.ok
