"""Tuning a blend's source weights on a temporal hold-out cut of the *training* data.

The best weights differ a lot between shops (re-purchases dominate groceries, never happen for
films; anonymous sessions dominate some sites), so a blend can learn them: fit copies of the
sources on the earlier ``1 - holdout_share`` of the training events, ask them for the later
part, and pick the weights by coordinate ascent on NDCG@10. Test data is never seen: this runs
inside ``fit`` on whatever the caller trains on.

Fusion contributions are linear in the weights, so each source is scored once and every weight
setting is a weighted sum of precomputed matrices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from shelf.models.base import Interactions, Query
from shelf.models.io import ModelFitError

if TYPE_CHECKING:
    from shelf.models.retrieval.blend import BlendRetriever

FUSIONS = ("rrf", "score")
WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
CELL_BUDGET = 20_000_000  # queries × items × sources held at once while tuning (float32: 80 MB)


@dataclass(frozen=True)
class TuningReport:
    """What tuning found: weights per stage and the hold-out NDCG@10 before and after."""

    weights: dict[str, float]
    session_weights: dict[str, float] | None
    user_queries: int
    session_queries: int
    ndcg_default: dict[str, float]
    ndcg_tuned: dict[str, float]
    masked_seen: bool
    fusion: str = "rrf"


def subset(data: Interactions, mask: np.ndarray) -> Interactions:
    """The events where ``mask`` holds, keeping the id indices (so item columns line up)."""
    return dataclasses.replace(
        data,
        user=data.user[mask],
        item=data.item[mask],
        session=data.session[mask],
        kind=data.kind[mask],
        timestamp=data.timestamp[mask],
        value=data.value[mask],
    )


def ndcg10(scores: np.ndarray, relevant: list[np.ndarray]) -> float:
    k = min(10, scores.shape[1])
    if not len(relevant) or k == 0:
        return 0.0
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    total = 0.0
    for row, rel in zip(top, relevant, strict=True):
        hits = np.isin(row, rel)
        total += float(discount[hits].sum() / discount[: min(len(rel), k)].sum())
    return total / len(relevant)


def _coordinate_ascent(
    contributions: Mapping[str, np.ndarray], fill: np.ndarray, relevant: list[np.ndarray], start: Mapping[str, float]
) -> tuple[dict[str, float], float, float]:
    names = list(contributions)

    def objective(w: Mapping[str, float]) -> float:
        fused = np.zeros(fill.shape, dtype=np.float32)
        for name in names:
            if w[name] > 0:
                fused += np.float32(w[name]) * contributions[name]
        return ndcg10(np.where(fused > 0, fused + 2.0, fill), relevant)

    weights = {n: float(start.get(n, 1.0)) for n in names}
    default = best = objective(weights)
    for _ in range(2):
        improved = False
        for name in names:
            for g in WEIGHT_GRID:
                trial = {**weights, name: g}
                if g == weights[name] or not any(v > 0 for v in trial.values()):
                    continue
                value = objective(trial)
                if value > best + 1e-6:
                    best, weights, improved = value, trial, True
        if not improved:
            break
    return weights, default, best


def tune_weights(blend: BlendRetriever, data: Interactions, *, holdout_share: float = 0.2, seed: int = 0) -> TuningReport:
    """Learn ``weights`` (and ``session_weights`` when there are sessions) for ``blend``'s sources."""
    from shelf.models.retrieval.blend import BlendRetriever

    if len(data) < 20:
        raise ModelFitError("blend weight tuning needs at least 20 events")
    cut = np.quantile(data.timestamp, 1.0 - holdout_share)
    early = data.timestamp < cut
    if early.sum() == 0 or (~early).sum() == 0:
        raise ModelFitError("blend weight tuning: all events share one timestamp; nothing to hold out")
    inner = subset(data, early)
    clones = {name: type(src)(src.config) for name, src in blend.sources.items()}
    config = dataclasses.replace(blend.config, tune=False)
    probe = BlendRetriever(clones, config).fit(inner)
    sources = probe.active_sources
    fallback = blend.config.fallback
    rng = np.random.default_rng(seed)
    n_items = data.n_items
    max_queries = max(50, min(1000, CELL_BUDGET // max(1, n_items * len(sources))))
    weights_pos = data.event_weights() > 0
    late = ~early & weights_pos

    # -- shoppers with history: their later items -------------------------------------------------
    inner_seen = sp.csr_matrix(
        (np.ones(int((early & (data.user >= 0)).sum()), np.float32), (data.user[early & (data.user >= 0)], data.item[early & (data.user >= 0)])),
        shape=(data.n_users, n_items),
    )
    inner_seen.sum_duplicates()
    with_history = np.asarray(inner_seen.getnnz(axis=1) > 0)
    sel = late & (data.user >= 0)
    if data.n_users:
        sel &= with_history[np.maximum(data.user, 0)]
    users_all = np.unique(data.user[sel])
    users = np.sort(rng.choice(users_all, size=min(len(users_all), max_queries), replace=False)) if len(users_all) else users_all
    relevant_users: list[np.ndarray] = []
    repeat_pairs = total_pairs = 0
    if len(users):
        late_pairs = sp.csr_matrix((np.ones(int(sel.sum()), np.float32), (data.user[sel], data.item[sel])), shape=(data.n_users, n_items))
        late_pairs.sum_duplicates()
        late_pairs = late_pairs[users]
        relevant_users = [late_pairs.indices[late_pairs.indptr[r] : late_pairs.indptr[r + 1]] for r in range(len(users))]
        overlap = late_pairs.multiply(inner_seen[users])
        repeat_pairs, total_pairs = overlap.nnz, late_pairs.nnz
    # Where shoppers (almost) never come back to an item (films), rank only unseen items, as an
    # offline evaluation of such a shop does; elsewhere repeats are targets too.
    mask_seen = total_pairs > 0 and repeat_pairs / total_pairs < 0.05
    weights = dict(blend.config.weights)
    report_default: dict[str, float] = {}
    report_tuned: dict[str, float] = {}
    user_results: dict[str, tuple[dict[str, float], float, float]] = {}
    if len(users):
        seen_rows = inner_seen[users].toarray() > 0 if mask_seen else None
        user_contributions: dict[str, dict[str, np.ndarray]] = {f: {} for f in FUSIONS}
        fill = np.zeros((len(users), n_items), dtype=np.float32)
        for name, src in sources.items():
            scores = src.score_users(users)
            if seen_rows is not None:
                scores = np.where(seen_rows, -np.inf, scores).astype(np.float32)
            if name == fallback:
                fill = _fill(probe, scores)
            for f in FUSIONS:
                user_contributions[f][name] = probe.contribution_matrix(scores, f).astype(np.float32)
        if seen_rows is not None:
            fill = np.where(seen_rows, -np.inf, fill).astype(np.float32)
        user_results = {f: _coordinate_ascent(user_contributions[f], fill, relevant_users, weights) for f in FUSIONS}

    # -- anonymous sessions: the next item after a prefix ---------------------------------------
    session_weights: dict[str, float] | None = None
    queries: list[Query] = []
    targets: list[np.ndarray] = []
    sess_sel = late & (data.session >= 0)
    if sess_sel.any():
        order = np.lexsort((data.timestamp[sess_sel], data.session[sess_sel]))
        s_ids, s_items = data.session[sess_sel][order], data.item[sess_sel][order]
        bounds = np.flatnonzero(np.diff(np.concatenate([[-1], s_ids, [-2]])))
        starts, ends = bounds[:-1], bounds[1:]
        long_enough = np.flatnonzero(ends - starts >= 2)
        picked = rng.choice(long_enough, size=min(len(long_enough), max_queries), replace=False) if len(long_enough) else []
        for k in np.sort(np.asarray(picked, dtype=np.int64)):
            seq = s_items[starts[k] : ends[k]]
            cut_at = int(rng.integers(1, len(seq)))
            queries.append(Query(session_items=tuple(str(i) for i in probe.item_ids_[seq[:cut_at]])))
            targets.append(np.array([seq[cut_at]]))
    session_results: dict[str, tuple[dict[str, float], float, float]] = {}
    if queries:
        session_contributions: dict[str, dict[str, np.ndarray]] = {f: {} for f in FUSIONS}
        fill = np.zeros((len(queries), n_items), dtype=np.float32)
        for name, src in sources.items():
            scores = np.stack([src.score_query(q) for q in queries])
            if name == fallback:
                fill = _fill(probe, scores)
            for f in FUSIONS:
                session_contributions[f][name] = probe.contribution_matrix(scores, f).astype(np.float32)
        start = dict(blend.config.session_weights or blend.config.weights)
        session_results = {f: _coordinate_ascent(session_contributions[f], fill, targets, start) for f in FUSIONS}

    # One fusion serves both stages: the one with the best query-weighted hold-out NDCG@10
    # (ties keep the configured one).
    def total(f: str) -> float:
        value = 0.0
        if f in user_results:
            value += len(users) * user_results[f][2]
        if f in session_results:
            value += len(queries) * session_results[f][2]
        return value

    fusion = blend.config.fusion
    for f in FUSIONS:
        if total(f) > total(fusion) + 1e-9:
            fusion = f
    if fusion in user_results:
        weights, report_default["user"], report_tuned["user"] = user_results[fusion]
    if fusion in session_results:
        session_weights, report_default["session"], report_tuned["session"] = session_results[fusion]
    # Sources skipped on the inner cut keep their configured weight.
    for name in blend.sources:
        weights.setdefault(name, float(blend.config.weights.get(name, 1.0)))
        if session_weights is not None:
            session_weights.setdefault(name, weights[name])
    return TuningReport(
        weights=weights,
        session_weights=session_weights,
        user_queries=len(users),
        session_queries=len(queries),
        ndcg_default=report_default,
        ndcg_tuned=report_tuned,
        masked_seen=bool(mask_seen),
        fusion=fusion,
    )


def _fill(probe: Any, scores: np.ndarray) -> np.ndarray:
    """Fallback order per row, in [0, 2), below every fused score (which is shifted above 2)."""
    out = np.empty(scores.shape, dtype=np.float32)
    for row in range(len(scores)):
        out[row] = probe._fill_order({probe.config.fallback: scores[row]}) * 0.5
    return out
