"""Training data for rankers: requests, candidates from retrieval, engagement labels, features.

A *request* is a moment ``t`` when a known shopper was on the site (one of their events); its
context (session, device, region) is that event's. Retrieval as it stood at ``t`` proposes
candidates (``CandidateGenerator``); a candidate is *positive* when the shopper engaged with it in
the label window ``(t, t + label_window]``. Negatives are sampled from the candidates retrieval
actually produced (not from the catalogue: the ranker only ever sees retrieved items), and carry
the inverse of their sampling rate as weight, so weighted cross-entropy, calibration and ECE
describe the full candidate distribution, not the sampled one.

Positives are kept only when retrieval proposed them: an engaged item retrieval did not return
has no candidate score or rank, and would teach the model that "missing rank" means "positive".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shelf.features import DAY, WEEK, FeatureFrame, FeatureSet, compute_offline, default_feature_set
from shelf.models.base import Scored
from shelf.models.io import ModelFitError
from shelf.schema import TIMESTAMP_TYPE

ENGAGEMENT_TYPES: tuple[str, ...] = ("view", "add_to_cart", "add_to_wishlist", "purchase", "rating")


@runtime_checkable
class CandidateGenerator(Protocol):
    """Retrieval as it stood at ``t``: up to ``n`` candidates for ``user_id`` from events before ``t``."""

    def __call__(self, user_id: str | None, t: datetime, n: int) -> Scored: ...


class PopularityCandidates:
    """The in-memory twin of retrieval: the most-engaged items in ``[t - window, t)``.

    Point-in-time by construction: only events strictly before ``t`` are counted.
    """

    name = "popularity"

    def __init__(self, events: pa.Table, window_s: int = WEEK) -> None:
        self.window_s = window_s
        order = np.argsort(_micros(events["timestamp"]), kind="stable")
        self._ts = _micros(events["timestamp"])[order]
        item_ids = events["item_id"].to_numpy(zero_copy_only=False)[order].astype(str)
        self._item_ids, self._item = np.unique(item_ids, return_inverse=True)
        self._item_ids = self._item_ids.astype(object)
        self._cache: dict[int, np.ndarray] = {}

    def counts(self, t_us: int) -> np.ndarray:
        cached = self._cache.get(t_us)
        if cached is None:
            lo = np.searchsorted(self._ts, t_us - self.window_s * 1_000_000, side="left")
            hi = np.searchsorted(self._ts, t_us, side="left")
            cached = np.bincount(self._item[lo:hi], minlength=len(self._item_ids)).astype(np.float32)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[t_us] = cached
        return cached

    def __call__(self, user_id: str | None, t: datetime, n: int) -> Scored:
        counts = self.counts(int(round(t.timestamp() * 1_000_000)))
        found = np.flatnonzero(counts > 0)
        top = found[np.lexsort((found, -counts[found]))][:n]
        return Scored(self._item_ids[top], counts[top], np.full(len(top), self.name, dtype=object))


@dataclass(frozen=True)
class RankingSet:
    """Examples (one row per request × candidate) with labels, weights and point-in-time features.

    ``examples`` has ``request``, ``user_id``, ``item_id``, ``timestamp`` and the context and
    candidate columns; ``labels`` are 0/1 float32, ``weights`` inverse sampling rates.
    """

    examples: pa.Table
    features: FeatureFrame
    labels: np.ndarray
    weights: np.ndarray
    request: np.ndarray  # int64 request id per row
    timestamp_us: np.ndarray  # int64 request time per row
    feature_set: FeatureSet

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray) -> RankingSet:
        return RankingSet(
            self.examples.take(pa.array(rows)),
            self.features.take(rows),
            self.labels[rows],
            self.weights[rows],
            self.request[rows],
            self.timestamp_us[rows],
            self.feature_set,
        )

    def with_features(self, feature_set: FeatureSet) -> RankingSet:
        """The same examples, declaring a subset of the features (for ablations)."""
        missing = set(feature_set.names) - set(self.feature_set.names)
        if missing:
            raise ModelFitError(f"feature(s) {sorted(missing)} were not computed for this ranking set")
        return RankingSet(self.examples, self.features, self.labels, self.weights, self.request, self.timestamp_us, feature_set)

    def split_by_time(self, fraction: float) -> tuple[RankingSet, RankingSet]:
        """``(earlier, later)``: the last ``fraction`` of requests by time go to ``later``."""
        if not 0.0 < fraction < 1.0:
            raise ModelFitError(f"split fraction must lie in (0, 1), got {fraction}")
        cut = np.quantile(self.timestamp_us, 1.0 - fraction, method="lower")
        later = self.timestamp_us > cut
        if later.all() or not later.any():
            raise ModelFitError("cannot split by time: all requests share one time; add requests or lower the fraction")
        return self.take(np.flatnonzero(~later)), self.take(np.flatnonzero(later))


def sample_requests(events: pa.Table, per_user: int = 3, seed: int = 0) -> pa.Table:
    """Up to ``per_user`` request moments per known shopper, each one of their events."""
    rng = np.random.default_rng(seed)
    known = events.filter(pc.is_valid(events["user_id"]))
    users = known["user_id"].to_numpy(zero_copy_only=False).astype(str)
    order = rng.permutation(len(users))
    picked: list[int] = []
    counts: dict[str, int] = {}
    for i in order.tolist():
        u = users[i]
        if counts.get(u, 0) < per_user:
            counts[u] = counts.get(u, 0) + 1
            picked.append(i)
    rows = known.take(pa.array(sorted(picked), type=pa.int64()))
    return rows.select(["user_id", "timestamp", "session_id", "device", "region"]).sort_by("timestamp")


def _micros(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def engaged_items(requests: pa.Table, events: pa.Table, label_window_s: int, types: Sequence[str]) -> list[set[str]]:
    """For each request row, the items its shopper engaged with in ``(t, t + window]``."""
    con = duckdb.connect()
    try:
        con.register("r", requests.append_column("rid", pa.array(np.arange(requests.num_rows, dtype=np.int64))))
        con.register("e", events.select(["user_id", "item_id", "type", "timestamp"]))
        kinds = ", ".join("'" + t.replace("'", "''") + "'" for t in types)
        table = con.sql(
            f"""SELECT r.rid, list(DISTINCT e.item_id) AS items FROM r JOIN e
                ON e.user_id = r.user_id AND e.timestamp > r.timestamp
                AND e.timestamp <= r.timestamp + to_microseconds({int(label_window_s) * 1_000_000})
                AND e.type IN ({kinds})
                GROUP BY r.rid"""
        ).to_arrow_table()
    finally:
        con.close()
    out: list[set[str]] = [set() for _ in range(requests.num_rows)]
    for rid, items in zip(table["rid"].to_pylist(), table["items"].to_pylist(), strict=True):
        out[rid] = set(items)
    return out


@dataclass(frozen=True)
class LabelConfig:
    """How examples are labelled and sampled."""

    n_candidates: int = 100
    label_window_s: int = DAY
    negatives_per_positive: int = 4
    min_negatives: int = 4  # per request, also when it has no positive
    engagement_types: tuple[str, ...] = ENGAGEMENT_TYPES
    seed: int = 0


def build_ranking_set(
    events: pa.Table,
    generator: CandidateGenerator,
    *,
    items: pa.Table | None = None,
    users: pa.Table | None = None,
    requests: pa.Table | None = None,
    feature_set: FeatureSet | None = None,
    labels: LabelConfig | None = None,
) -> RankingSet:
    """Requests → candidates → labels → point-in-time features, as one ``RankingSet``."""
    cfg = labels or LabelConfig()
    fs = feature_set or default_feature_set()
    requests = sample_requests(events, seed=cfg.seed) if requests is None else requests
    if requests.num_rows == 0:
        raise ModelFitError("no requests to build a ranking set from (no events of known shoppers)")
    rng = np.random.default_rng(cfg.seed)
    engaged = engaged_items(requests, events, cfg.label_window_s, cfg.engagement_types)
    req_rows = requests.to_pylist()
    cols: dict[str, list[object]] = {k: [] for k in (
        "request", "user_id", "item_id", "timestamp", "session_id", "device", "region",
        "candidate_score", "candidate_rank", "candidate_source", "label", "weight")}
    # Per-source retrieval values (``source_features`` of a blend's candidates) become example
    # columns that ``SourceScore`` features read; absent keys read as NaN.
    extra: dict[str, list[float]] = {}
    for rid, (r, positives) in enumerate(zip(req_rows, engaged, strict=True)):
        cands = generator(r["user_id"], r["timestamp"], cfg.n_candidates)
        if not len(cands):
            continue
        per_source = getattr(cands, "source_features", None) or {}
        for key in per_source:
            if key not in extra:
                extra[key] = [float("nan")] * len(cols["request"])
        ids = np.asarray(cands.items, dtype=object)
        is_pos = np.fromiter((i in positives for i in ids.tolist()), dtype=bool, count=len(ids))
        neg = np.flatnonzero(~is_pos)
        k = min(len(neg), max(cfg.min_negatives, cfg.negatives_per_positive * int(is_pos.sum())))
        chosen_neg = rng.choice(neg, size=k, replace=False) if k else neg[:0]
        neg_weight = len(neg) / k if k else 1.0
        rows = np.concatenate([np.flatnonzero(is_pos), chosen_neg])
        sources = cands.sources if cands.sources is not None else np.full(len(ids), None, dtype=object)
        for j in rows.tolist():
            cols["request"].append(rid)
            cols["user_id"].append(r["user_id"])
            cols["item_id"].append(ids[j])
            cols["timestamp"].append(r["timestamp"])
            cols["session_id"].append(r.get("session_id"))
            cols["device"].append(r.get("device"))
            cols["region"].append(r.get("region"))
            cols["candidate_score"].append(float(cands.scores[j]))
            cols["candidate_rank"].append(float(j))
            cols["candidate_source"].append(sources[j])
            cols["label"].append(float(is_pos[j]))
            cols["weight"].append(1.0 if is_pos[j] else neg_weight)
            for key, values in extra.items():
                column = per_source.get(key)
                values.append(float("nan") if column is None else float(column[j]))
    if not cols["request"]:
        raise ModelFitError("retrieval proposed no candidates for any request")
    examples = pa.table({
        **{k: v for k, v in cols.items() if k != "timestamp"},
        "timestamp": pa.array(cols["timestamp"], type=TIMESTAMP_TYPE),
        **{key: pa.array(values, type=pa.float64()) for key, values in extra.items()},
    })
    frame = compute_offline(fs, examples, events, items, users)
    return RankingSet(
        examples=examples,
        features=frame,
        labels=np.asarray(cols["label"], dtype=np.float32),
        weights=np.asarray(cols["weight"], dtype=np.float32),
        request=np.asarray(cols["request"], dtype=np.int64),
        timestamp_us=_micros(examples["timestamp"]),
        feature_set=fs,
    )
