"""Leakage audit: recompute features on data truncated at each example's time and compare.

A feature computed point-in-time cannot change when everything at or after ``t`` is removed from
the tables. One that does has read the future. The audit picks a sample of example times, cuts
the events (``timestamp < t``) and catalogue/profile versions (``valid_from < t``) at each, recomputes
the examples at that time and reports every feature whose value moved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shelf.features.definitions import FeatureFrame, FeatureSet
from shelf.features.offline import compute_offline

Compute = Callable[[FeatureSet, pa.Table, pa.Table, "pa.Table | None", "pa.Table | None"], FeatureFrame]


@dataclass(frozen=True)
class LeakageReport:
    """Features whose values changed when the future was removed, with how many examples moved."""

    leaking: dict[str, int]
    times_checked: int
    examples_checked: int

    @property
    def ok(self) -> bool:
        return not self.leaking


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype == object:
        return np.array([x == y for x, y in zip(a.tolist(), b.tolist(), strict=True)], dtype=bool)
    return np.isclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True)


def audit_leakage(
    feature_set: FeatureSet,
    examples: pa.Table,
    events: pa.Table,
    items: pa.Table | None = None,
    users: pa.Table | None = None,
    *,
    n_times: int = 8,
    seed: int = 0,
    compute: Compute = compute_offline,
) -> LeakageReport:
    """Compare features on full tables with features on tables cut at ``t``, for sampled times.

    ``compute`` is the feature computation under audit (the offline engine by default).
    """
    full = compute(feature_set, examples, events, items, users)
    times = pc.unique(examples["timestamp"]).to_pylist()
    rng = np.random.default_rng(seed)
    chosen = [times[i] for i in rng.choice(len(times), size=min(n_times, len(times)), replace=False)]
    leaking: dict[str, int] = {}
    checked = 0
    for t in chosen:
        scalar = pa.scalar(t, type=examples.schema.field("timestamp").type)
        rows = np.flatnonzero(pc.equal(examples["timestamp"], scalar).to_numpy(zero_copy_only=False))
        cut_events = events.filter(pc.less(events["timestamp"], scalar))
        cut_items = None if items is None else items.filter(pc.less(items["valid_from"], scalar))
        cut_users = None if users is None else users.filter(pc.less(users["valid_from"], scalar))
        cut = compute(feature_set, examples.take(rows), cut_events, cut_items, cut_users)
        before = full.take(rows)
        checked += len(rows)
        for names, a, b in (
            (full.numeric_names, before.numeric, cut.numeric),
            (full.categorical_names, before.categorical, cut.categorical),
        ):
            for j, name in enumerate(names):
                moved = int((~_same(a[:, j], b[:, j])).sum())
                if moved:
                    leaking[name] = leaking.get(name, 0) + moved
    return LeakageReport(leaking, len(chosen), checked)
