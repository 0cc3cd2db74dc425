"""Breakdowns of per-user metrics by user segment and by item group, and paired bootstrap CIs.

User segments come from the profile table as of the cut (age band, gender, region; "unknown"
where a profile or field is missing), from history length (buckets of training events) and from
new vs returning (cold test users are evaluated apart and reported as "new").
Item groups are the top-level category, a price band (catalogue tertiles) and new launches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shelf.models.base import Interactions
from shelf.schema import category_levels

UNKNOWN = "unknown"
HISTORY_BUCKETS: tuple[tuple[int, int], ...] = ((1, 1), (2, 4), (5, 9), (10, 49), (50, 10**12))


def _bucket_label(low: int, high: int) -> str:
    if low == high:
        return f"{low} event"
    return f"{low}+ events" if high >= 10**12 else f"{low}-{high} events"


def history_buckets(counts: np.ndarray) -> np.ndarray:
    """Label each user by how many training events they have."""
    labels = np.full(len(counts), UNKNOWN, dtype=object)
    for low, high in HISTORY_BUCKETS:
        labels[(counts >= low) & (counts <= high)] = _bucket_label(low, high)
    return labels


def user_segments(train: Interactions, users: np.ndarray) -> dict[str, np.ndarray]:
    """Segment labels (object arrays aligned with ``users``, indices into ``train.users``)."""
    counts = np.bincount(train.user[train.user >= 0], minlength=train.n_users)[users]
    out: dict[str, np.ndarray] = {"history length": history_buckets(counts)}
    profiles = train.user_table
    for column in ("age_band", "gender", "region"):
        labels = np.full(len(users), UNKNOWN, dtype=object)
        if profiles is not None and column in profiles.column_names and profiles.num_rows:
            idx = train.users.lookup(profiles["user_id"].to_numpy(zero_copy_only=False))
            values = profiles[column].to_numpy(zero_copy_only=False)
            per_user = np.full(train.n_users, UNKNOWN, dtype=object)
            ok = idx >= 0
            per_user[idx[ok]] = [UNKNOWN if v is None else str(v) for v in values[ok].tolist()]
            labels = per_user[users]
        if (labels != UNKNOWN).any():
            out[column.replace("_", " ")] = labels
    return out


def item_groups(train: Interactions, new_item_window: timedelta) -> dict[str, np.ndarray]:
    """Group labels per item of ``train.items``: category, price band, new launch."""
    n = train.n_items
    out: dict[str, np.ndarray] = {}
    table = train.item_table
    if table is not None and table.num_rows:
        idx = train.items.lookup(table["item_id"].to_numpy(zero_copy_only=False))
        ok = idx >= 0
        if "category" in table.column_names:
            cats = np.full(n, UNKNOWN, dtype=object)
            values = table["category"].to_numpy(zero_copy_only=False)[ok]
            cats[idx[ok]] = [(category_levels(v) or [UNKNOWN])[0] for v in values.tolist()]
            out["category"] = cats
        if "price" in table.column_names:
            price = np.full(n, np.nan)
            price[idx[ok]] = table["price"].to_numpy(zero_copy_only=False).astype(np.float64)[ok]
            known = ~np.isnan(price)
            bands = np.full(n, UNKNOWN, dtype=object)
            if known.sum() >= 3:
                low, high = np.quantile(price[known], [1 / 3, 2 / 3])
                bands[known & (price <= low)] = "low price"
                bands[known & (price > low) & (price <= high)] = "mid price"
                bands[known & (price > high)] = "high price"
                out["price band"] = bands
    out["new launch"] = np.where(new_items(train, new_item_window), "new launch", "established").astype(object)
    return out


def new_items(train: Interactions, window: timedelta) -> np.ndarray:
    """Items launched (or, without a launch date, first seen) within ``window`` before the cut.

    Catalogue items that no training event touched also count as new.
    """
    n = train.n_items
    end = int(train.timestamp.max()) + 1 if len(train) else 0
    if train.as_of is not None:
        end = int((train.as_of - datetime(1970, 1, 1, tzinfo=train.as_of.tzinfo)).total_seconds() * 1e6)
    start = end - int(window.total_seconds() * 1e6)
    first_seen = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_seen, train.item, train.timestamp)
    launched = first_seen.copy()
    table = train.item_table
    if table is not None and table.num_rows and "launched_at" in table.column_names:
        idx = train.items.lookup(table["item_id"].to_numpy(zero_copy_only=False))
        when = pc.cast(table["launched_at"], pa.int64()).to_numpy(zero_copy_only=False)
        when = np.asarray(when, dtype=np.float64)
        ok = (idx >= 0) & ~np.isnan(when)
        launched[idx[ok]] = when[ok].astype(np.int64)
    return launched >= start


def codes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct labels and an int code per entry."""
    names, inverse = np.unique(labels.astype(str), return_inverse=True)
    return names, inverse


@dataclass(frozen=True)
class SegmentRow:
    kind: str  # "gender", "history length", ...
    segment: str
    n_users: int
    mean: float


def breakdown(values: np.ndarray, labels: np.ndarray, kind: str) -> list[SegmentRow]:
    """Mean of ``values`` (NaN ignored) per label, with the number of users behind each mean."""
    names, inverse = codes(labels)
    ok = ~np.isnan(values)
    n = np.bincount(inverse[ok], minlength=len(names))
    total = np.bincount(inverse[ok], weights=values[ok], minlength=len(names))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = total / n
    return [SegmentRow(kind, str(names[i]), int(n[i]), float(means[i])) for i in range(len(names))]


@dataclass(frozen=True)
class ItemGroupRow:
    kind: str
    group: str
    n_items: int
    n_relevant: int  # relevant (user, item) pairs in the test
    recall: float  # hits / relevant pairs, pooled over users
    exposure_share: float  # share of all recommendation slots


def item_group_breakdown(
    groups: np.ndarray, relevant_per_item: np.ndarray, hits_per_item: np.ndarray, exposure: np.ndarray, kind: str
) -> list[ItemGroupRow]:
    names, inverse = codes(groups)
    size = np.bincount(inverse, minlength=len(names))
    rel = np.bincount(inverse, weights=relevant_per_item, minlength=len(names))
    hits = np.bincount(inverse, weights=hits_per_item, minlength=len(names))
    shown = np.bincount(inverse, weights=exposure, minlength=len(names))
    slots = max(float(exposure.sum()), 1.0)
    rows = []
    for i, name in enumerate(names.tolist()):
        recall = float(hits[i] / rel[i]) if rel[i] else float("nan")
        rows.append(ItemGroupRow(kind, name, int(size[i]), int(rel[i]), recall, float(shown[i] / slots)))
    return rows


# ---------------------------------------------------------------------------------------------
# Paired bootstrap


@dataclass(frozen=True)
class BootstrapResult:
    """Mean difference ``a - b`` over users with a percentile confidence interval."""

    metric: str
    model_a: str
    model_b: str
    n_users: int
    mean_a: float
    mean_b: float
    difference: float
    low: float
    high: float
    confidence: float
    n_resamples: int

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return (
            f"{self.metric}: {self.model_a} - {self.model_b} = {self.difference:+.4f} "
            f"[{self.low:+.4f}, {self.high:+.4f}] ({self.confidence:.0%} paired bootstrap over "
            f"{self.n_users} users, {self.n_resamples} resamples)"
        )


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    *,
    names: Sequence[str] = ("a", "b"),
    metric: str = "",
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Percentile CI of mean(a - b), resampling users with replacement (same users for both).

    Users where either value is NaN are left out (they were not evaluable for one model).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values must align: {a.shape} vs {b.shape}")
    ok = ~(np.isnan(a) | np.isnan(b))
    diff = a[ok] - b[ok]
    n = len(diff)
    if n == 0:
        raise ValueError("no user has a value for both models")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diff[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return BootstrapResult(
        metric, names[0], names[1], n, float(a[ok].mean()), float(b[ok].mean()), float(diff.mean()),
        float(low), float(high), confidence, n_resamples,
    )


def segment_table(rows: Mapping[str, list[SegmentRow]]) -> str:
    """Plain-text table of segment rows, one block per model."""
    lines = []
    for model, segs in rows.items():
        for r in segs:
            lines.append(f"{model:<16} {r.kind:<16} {r.segment:<20} {r.n_users:>8} {r.mean:>8.4f}")
    return "\n".join(lines)
