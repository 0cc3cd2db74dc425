"""Tuning a blend's source weights on temporal hold-out cuts of the *training* data.

The best weights differ a lot between shops (re-purchases dominate groceries, never happen for
films; anonymous sessions dominate some sites), so a blend can learn them: fit copies of the
sources on the events before a cut, ask them for the events just after it, and pick the weights
by coordinate ascent on NDCG@10. Test data is never seen: this runs inside ``fit`` on whatever
the caller trains on.

Robustness, because a small shop's hold-out is a few dozen queries and its NDCG@10 swings by
0.1 on one lucky weight:

* rolling cuts: the latest ``holdout_share`` of the events is the first hold-out; while a stage
  (shoppers with history, anonymous sessions) that has hold-out queries has fewer than
  ``MIN_POOLED_QUERIES`` of them, earlier windows (each shifted back by half a share, fitted on
  what came before them) are added, up to ``MAX_CUTS``. Counted per stage because each stage's
  weights are tuned on its own queries only: REES46's 221 session queries used to stop the cuts
  while its user weights rested on 73 queries from the last 90 seconds;
* a weight (or the fusion) only moves away from the configured one when the mean per-query gain
  exceeds ``GAIN_STANDARD_ERRORS`` standard errors of the paired per-query differences, so with
  few queries the configured weights (the prior) stay unless the evidence is strong.

Fusion contributions are linear in the weights, so each source is scored once per cut and every
weight setting is a weighted sum of precomputed matrices. Up to ``DENSE_TUNING_ITEMS`` items those
matrices are whole rows; above it, each row keeps only the columns that can reach its top 10 under
any weights (every source's candidates plus the best fallback items outside them), which holds
memory and time near ``candidates_per_source × sources`` per query instead of the catalogue size,
and lets one hold-out window give ``LARGE_CATALOGUE_QUERIES`` queries (so one refit of the sources
suffices where small catalogues need up to ``MAX_CUTS``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from shelf.models.base import Interactions, Query
from shelf.models.io import ModelFitError

if TYPE_CHECKING:
    from shelf.models.retrieval.blend import BlendRetriever

FUSIONS = ("rrf", "score")
WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
# Where the grid's top wins, doubling goes on while it keeps winning, up to this: at 8 the grid
# bound the repeat and content weights in most REES46 fits (the optimum lay on its edge). Only on
# the edge, as every grid value costs one scoring of the whole hold-out; the clear-gain rule still
# guards every move.
WEIGHT_CEILING = 64.0
CELL_BUDGET = 20_000_000  # small catalogues: queries × items × sources held at once (float32: 80 MB)
# Hold-out windows at most, each one more fit of every source. With a share of 0.2 stepped back by
# 0.1 that is every window the training side holds; only a stage short of queries on a small
# catalogue (small data, cheap fits) goes that far.
MAX_CUTS = 8
MIN_POOLED_QUERIES = 300  # add earlier cuts while a stage with queries has fewer than this
GAIN_STANDARD_ERRORS = 1.0  # a move must gain this many standard errors of the paired differences
# Above this many items, hold-out rows keep only their candidate columns (see the module docstring);
# the public data sets (at most ~3,000 items) stay on whole rows.
DENSE_TUNING_ITEMS = 5_000
LARGE_CATALOGUE_QUERIES = 500  # queries per stage and cut on a large catalogue (>= MIN_POOLED_QUERIES)
TOP_K = 10


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
    cuts: int = 1


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


def ndcg10_per_query(scores: np.ndarray, relevant: list[np.ndarray], columns: np.ndarray | None = None) -> np.ndarray:
    """NDCG@10 of each row of ``scores`` (queries × items) against its relevant item indices.

    ``columns`` (same shape as ``scores``, -1 for padding) names the item of each column when
    rows hold only some of the catalogue; None means column ``j`` is item ``j``.
    """
    k = min(TOP_K, scores.shape[1])
    if not len(relevant) or k == 0:
        return np.zeros(len(relevant), dtype=np.float64)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1)
    if columns is not None:
        top = np.take_along_axis(columns, top, axis=1)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    # Hits as one sorted-key lookup over all queries (a per-query isin costs more than the ranking).
    lengths = np.fromiter((len(r) for r in relevant), dtype=np.int64, count=len(relevant))
    width = int(max(scores.shape[1], top.max(initial=0) + 1, max((int(r.max()) + 1 for r in relevant if len(r)), default=0)))
    rows = np.repeat(np.arange(len(relevant), dtype=np.int64), lengths)
    keys = np.unique(rows * width + np.concatenate(relevant).astype(np.int64)) if lengths.sum() else np.empty(0, np.int64)
    wanted = np.arange(len(relevant), dtype=np.int64)[:, None] * width + top
    position = np.minimum(np.searchsorted(keys, wanted), max(len(keys) - 1, 0))
    hits = (top >= 0) & (keys[position] == wanted) if len(keys) else np.zeros(top.shape, dtype=bool)
    # Sums looked up per hit pattern, each summed exactly as ``discount[hits].sum()`` would be.
    ideal = np.array([discount[:m].sum() for m in range(k + 1)])[np.minimum(lengths, k)]
    patterns = hits.astype(np.int64) @ (1 << np.arange(k, dtype=np.int64))
    gained = _pattern_sums(k)[patterns]
    with np.errstate(invalid="ignore", divide="ignore"):
        return gained / ideal


@functools.cache
def _pattern_sums(k: int) -> np.ndarray:
    """DCG of every hit pattern of a top ``k`` (bit ``j``: position ``j`` is a hit)."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    bits = (np.arange(1 << k)[:, None] >> np.arange(k)) & 1
    return np.array([discount[b.astype(bool)].sum() for b in bits])


def ndcg10(scores: np.ndarray, relevant: list[np.ndarray]) -> float:
    values = ndcg10_per_query(scores, relevant)
    return float(values.mean()) if len(values) else 0.0


def clear_gain(new: np.ndarray, old: np.ndarray) -> float:
    """Mean per-query gain of ``new`` over ``old`` when it exceeds ``GAIN_STANDARD_ERRORS``
    standard errors of the paired differences, else 0."""
    if len(new) == 0:
        return 0.0
    diff = new - old
    gain = float(diff.mean())
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else np.inf
    return gain if gain > max(1e-6, GAIN_STANDARD_ERRORS * se) else 0.0


@dataclass
class _Stage:
    """One stage's pooled hold-out queries over all cuts: contributions per fusion, fill order
    and the relevant items of each query.

    With ``compact`` each row keeps only the columns that can reach its top 10 (``columns``
    names their items, -1 pads); otherwise rows are whole and ``columns`` stays empty.
    """

    compact: bool = False
    contributions: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=lambda: {f: {} for f in FUSIONS})
    fill: list[np.ndarray] = field(default_factory=list)
    columns: list[np.ndarray] = field(default_factory=list)
    relevant: list[np.ndarray] = field(default_factory=list)

    def add(self, probe: Any, scores: Mapping[str, np.ndarray], fill: np.ndarray, relevant: list[np.ndarray]) -> None:
        if not self.compact:
            for name, values in scores.items():
                top, by_fusion = probe.contribution_entries(values, FUSIONS)
                for f in FUSIONS:
                    dense = np.zeros(values.shape, dtype=np.float64)
                    np.put_along_axis(dense, top, by_fusion[f], axis=1)
                    self.contributions[f].setdefault(name, []).append(dense.astype(np.float32))
            self.fill.append(fill)
            self.relevant += relevant
            return
        entries = {name: probe.contribution_entries(values, FUSIONS) for name, values in scores.items()}
        proposed_any = np.zeros(fill.shape, dtype=bool)
        for top, by_fusion in entries.values():
            hit = np.zeros(fill.shape, dtype=bool)
            np.put_along_axis(hit, top, by_fusion[FUSIONS[0]] != 0, axis=1)
            proposed_any |= hit
        columns = _candidate_columns(proposed_any, fill)
        # Where each (row, item) of a source's candidates sits among the row's columns.
        n_items = fill.shape[1]
        keys = (np.arange(len(columns))[:, None] * (n_items + 1) + np.where(columns >= 0, columns, n_items)).ravel()
        for name, (top, by_fusion) in entries.items():
            nonzero = (by_fusion[FUSIONS[0]] != 0).ravel()
            flat = np.searchsorted(keys, (np.arange(len(top))[:, None] * (n_items + 1) + top).ravel()[nonzero])
            for f in FUSIONS:
                compact = np.zeros(columns.size, dtype=np.float32)
                compact[flat] = by_fusion[f].ravel()[nonzero].astype(np.float32)
                self.contributions[f].setdefault(name, []).append(compact.reshape(columns.shape))
        valid = columns >= 0
        self.fill.append(np.where(valid, np.take_along_axis(fill, np.maximum(columns, 0), axis=1), -np.inf).astype(np.float32))
        self.columns.append(columns)
        self.relevant += relevant

    def result(self, fusion: str, start: Mapping[str, float]) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        n = len(self.relevant)
        width = max(p.shape[1] for p in self.fill)
        contributions = {}
        for name, parts in self.contributions[fusion].items():
            if sum(len(p) for p in parts) == n:  # a source skipped on some cut sits out tuning
                contributions[name] = np.concatenate([_pad(p, width, 0.0) for p in parts])
        fill = np.concatenate([_pad(p, width, -np.inf) for p in self.fill])
        columns = np.concatenate([_pad(p, width, -1) for p in self.columns]) if self.compact else None
        return _coordinate_ascent(contributions, fill, self.relevant, start, columns)


def _pad(block: np.ndarray, width: int, value: float) -> np.ndarray:
    """``block`` widened to ``width`` columns with ``value`` (compact rows of different cuts)."""
    if block.shape[1] == width:
        return block
    return np.concatenate([block, np.full((len(block), width - block.shape[1]), value, dtype=block.dtype)], axis=1)


def _candidate_columns(proposed: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Per row, the items that can reach the top ``TOP_K`` under some weights, padded with -1.

    Those are the items some source proposes (``proposed``; only they can be fused) plus the
    ``TOP_K`` best-filled items outside them (the filler ranks below every fused item). Items keep
    their catalogue order within a row.
    """
    keep = proposed.copy()
    outside = np.where(proposed, -np.inf, fill)
    k = min(TOP_K, fill.shape[1])
    best_fill = np.argpartition(-outside, k - 1, axis=1)[:, :k]
    np.put_along_axis(keep, best_fill, True, axis=1)
    counts = keep.sum(axis=1)
    rows, cols = np.nonzero(keep)
    out = np.full((len(fill), int(counts.max(initial=0))), -1, dtype=np.int64)
    out[rows, np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)] = cols
    return out


def _coordinate_ascent(
    contributions: Mapping[str, np.ndarray], fill: np.ndarray, relevant: list[np.ndarray], start: Mapping[str, float],
    columns: np.ndarray | None = None,
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Weights from ``start``, per-query NDCG@10 at ``start`` and at the weights found.

    Each pass tries every grid value of one source at a time (doubling past the grid's top while
    that keeps winning) and takes the best, but only when its gain over the current weights is
    clear (see ``clear_gain``)."""
    names = list(contributions)

    def objective(w: Mapping[str, float]) -> np.ndarray:
        fused = np.zeros(fill.shape, dtype=np.float32)
        for name in names:
            if w[name] > 0:
                fused += np.float32(w[name]) * contributions[name]
        return ndcg10_per_query(np.where(fused > 0, fused + 2.0, fill), relevant, columns)

    weights = {n: float(start.get(n, 1.0)) for n in names}
    default = best = objective(weights)
    for _ in range(2):
        improved = False
        for name in names:
            choice, choice_values, choice_gain = None, best, 0.0
            for g in WEIGHT_GRID:
                trial = {**weights, name: g}
                if g == weights[name] or not any(v > 0 for v in trial.values()):
                    continue
                values = objective(trial)
                gain = clear_gain(values, best)
                if gain > choice_gain:
                    choice, choice_values, choice_gain = g, values, gain
            top = choice if choice is not None else weights[name]
            g = top * 2
            while top >= WEIGHT_GRID[-1] and g <= WEIGHT_CEILING:
                values = objective({**weights, name: g})
                gain = clear_gain(values, best)
                if gain <= choice_gain:
                    break
                choice, choice_values, choice_gain = g, values, gain
                g *= 2
            if choice is not None:
                weights, best, improved = {**weights, name: choice}, choice_values, True
        if not improved:
            break
    return weights, default, best


def _cuts(data: Interactions, holdout_share: float) -> list[tuple[float, float]]:
    """Hold-out windows as (start, end) timestamps, the latest first, each shifted back by half
    a share; an empty window or an empty training side ends the list."""
    out = []
    ts = data.timestamp
    for c in range(MAX_CUTS):
        hi_q = 1.0 - c * holdout_share / 2
        lo_q = hi_q - holdout_share
        if lo_q <= 0:
            break
        lo = float(np.quantile(ts, lo_q))
        hi = float(np.quantile(ts, hi_q)) if c else np.inf
        if not ((ts < lo).any() and ((ts >= lo) & (ts < hi)).any()):
            break
        out.append((lo, hi))
    return out


def needs_more_cuts(counts: tuple[int, ...], *, compact: bool) -> bool:
    """Whether the hold-out queries so far (one count per stage) call for an earlier window.

    Each stage's weights are tuned on its own queries, so a stage with some but fewer than
    ``MIN_POOLED_QUERIES`` asks for more; a stage the data never feeds (no known users, no
    sessions) does not. Large catalogues (``compact``) count the stages together, as one window
    already gives each up to ``LARGE_CATALOGUE_QUERIES`` queries and every further cut is a refit
    of minutes.
    """
    if not any(counts):
        return True
    if compact:
        return sum(counts) < MIN_POOLED_QUERIES
    return any(0 < c < MIN_POOLED_QUERIES for c in counts)


def tune_weights(blend: BlendRetriever, data: Interactions, *, holdout_share: float = 0.2, seed: int = 0) -> TuningReport:
    """Learn ``weights`` (and ``session_weights`` when there are sessions) for ``blend``'s sources."""
    if len(data) < 20:
        raise ModelFitError("blend weight tuning needs at least 20 events")
    cuts = _cuts(data, holdout_share)
    if not cuts:
        raise ModelFitError("blend weight tuning: all events share one timestamp; nothing to hold out")
    rng = np.random.default_rng(seed)
    n_items = data.n_items
    compact = n_items > DENSE_TUNING_ITEMS
    if compact:
        max_queries = LARGE_CATALOGUE_QUERIES
    else:
        max_queries = max(50, min(1000, CELL_BUDGET // max(1, n_items * len(blend.active_sources))))
    positive = data.event_weights() > 0

    # Whether shoppers come back to items at all is read off every window before any fitting:
    # where they (almost) never do (films), only unseen items are ranked, as an offline evaluation
    # of such a shop does; elsewhere repeats are targets too.
    repeat_pairs = total_pairs = 0
    user_side = []
    for lo, hi in cuts:
        early = data.timestamp < lo
        late = ~early & (data.timestamp < hi) & positive
        seen = _pairs_matrix(data, early)
        with_history = np.asarray(seen.getnnz(axis=1) > 0)
        sel = late & (data.user >= 0)
        if data.n_users:
            sel &= with_history[np.maximum(data.user, 0)]
        later = _pairs_matrix(data, sel)
        repeat_pairs += later.multiply(seen).nnz
        total_pairs += later.nnz
        user_side.append((early, late, seen, sel))
    mask_seen = total_pairs > 0 and repeat_pairs / total_pairs < 0.05

    users_stage, sessions_stage = _Stage(compact), _Stage(compact)
    for early, late, inner_seen, sel in user_side:
        pooled = len(users_stage.relevant) + len(sessions_stage.relevant)
        if not needs_more_cuts((len(users_stage.relevant), len(sessions_stage.relevant)), compact=compact):
            break
        budget = max(50, max_queries - pooled)  # small catalogues: queries × items held stays near CELL_BUDGET
        probe = _fit_probe(blend, subset(data, early))
        _add_user_queries(users_stage, probe, data, inner_seen, sel, mask_seen, rng, budget)
        _add_session_queries(sessions_stage, probe, data, late & (data.session >= 0), rng, budget)

    start_users = dict(blend.config.weights)
    start_sessions = dict(blend.config.session_weights or blend.config.weights)
    results: dict[str, dict[str, tuple[dict[str, float], np.ndarray, np.ndarray]]] = {}
    for f in FUSIONS:
        results[f] = {}
        if users_stage.relevant:
            results[f]["user"] = users_stage.result(f, start_users)
        if sessions_stage.relevant:
            results[f]["session"] = sessions_stage.result(f, start_sessions)

    # One fusion serves both stages; another than the configured one only on a clear gain over
    # all hold-out queries.
    def pooled_values(f: str) -> np.ndarray:
        return np.concatenate([results[f][s][2] for s in ("user", "session") if s in results[f]] or [np.zeros(0)])

    fusion: str = blend.config.fusion
    for f in FUSIONS:
        if f != fusion and clear_gain(pooled_values(f), pooled_values(fusion)) > 0:
            fusion = f
    weights = dict(start_users)
    session_weights: dict[str, float] | None = None
    report_default: dict[str, float] = {}
    report_tuned: dict[str, float] = {}
    if "user" in results[fusion]:
        w, before, after = results[fusion]["user"]
        weights = {**weights, **w}
        report_default["user"], report_tuned["user"] = float(before.mean()), float(after.mean())
    if "session" in results[fusion]:
        w, before, after = results[fusion]["session"]
        session_weights = {**start_sessions, **w}
        report_default["session"], report_tuned["session"] = float(before.mean()), float(after.mean())
    # Sources skipped on a cut keep their configured weight.
    for name in blend.sources:
        weights.setdefault(name, float(blend.config.weights.get(name, 1.0)))
        if session_weights is not None:
            session_weights.setdefault(name, weights[name])
    return TuningReport(
        weights=weights,
        session_weights=session_weights,
        user_queries=len(users_stage.relevant),
        session_queries=len(sessions_stage.relevant),
        ndcg_default=report_default,
        ndcg_tuned=report_tuned,
        masked_seen=bool(mask_seen),
        fusion=fusion,
        cuts=max(len(users_stage.fill), len(sessions_stage.fill)),
    )


def _pairs_matrix(data: Interactions, mask: np.ndarray) -> sp.csr_matrix:
    """users × items, 1 where a known user has an event under ``mask``."""
    keep = mask & (data.user >= 0)
    m = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (data.user[keep], data.item[keep])), shape=(data.n_users, data.n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def _fit_probe(blend: BlendRetriever, inner: Interactions) -> BlendRetriever:
    from shelf.models.retrieval.blend import BlendRetriever

    clones = {name: type(src)(src.config) for name, src in blend.sources.items()}
    return BlendRetriever(clones, dataclasses.replace(blend.config, tune=False)).fit(inner)


def _add_user_queries(
    stage: _Stage, probe: BlendRetriever, data: Interactions, inner_seen: sp.csr_matrix, sel: np.ndarray,
    mask_seen: bool, rng: np.random.Generator, max_queries: int,
) -> None:
    """Shoppers with history before the cut, asked for their items after it."""
    users = np.unique(data.user[sel])
    if not len(users):
        return
    users = np.sort(rng.choice(users, size=min(len(users), max_queries), replace=False))
    late_pairs = _pairs_matrix(data, sel)[users]
    relevant = [late_pairs.indices[late_pairs.indptr[r] : late_pairs.indptr[r + 1]] for r in range(len(users))]
    seen_rows = inner_seen[users].toarray() > 0 if mask_seen else None
    fallback = probe.config.fallback
    fill = np.zeros((len(users), data.n_items), dtype=np.float32)
    scores = {}
    for name, src in probe.active_sources.items():
        values = src.score_users(users)
        if seen_rows is not None:
            values = np.where(seen_rows, -np.inf, values).astype(np.float32)
        if name == fallback:
            fill = _fill(probe, values)
        scores[name] = values
    if seen_rows is not None:
        fill = np.where(seen_rows, -np.inf, fill).astype(np.float32)
    stage.add(probe, scores, fill, relevant)


def _add_session_queries(
    stage: _Stage, probe: BlendRetriever, data: Interactions, sel: np.ndarray, rng: np.random.Generator, max_queries: int
) -> None:
    """Anonymous sessions after the cut: a random prefix of each, asked for the next item."""
    if not sel.any():
        return
    order = np.lexsort((data.timestamp[sel], data.session[sel]))
    s_ids, s_items = data.session[sel][order], data.item[sel][order]
    bounds = np.flatnonzero(np.diff(np.concatenate([[-1], s_ids, [-2]])))
    starts, ends = bounds[:-1], bounds[1:]
    long_enough = np.flatnonzero(ends - starts >= 2)
    if not len(long_enough):
        return
    picked = np.sort(rng.choice(long_enough, size=min(len(long_enough), max_queries), replace=False))
    queries: list[Query] = []
    relevant: list[np.ndarray] = []
    for k in picked:
        seq = s_items[starts[k] : ends[k]]
        cut_at = int(rng.integers(1, len(seq)))
        queries.append(Query(session_items=tuple(str(i) for i in probe.item_ids_[seq[:cut_at]])))
        relevant.append(np.array([seq[cut_at]]))
    fallback = probe.config.fallback
    fill = np.zeros((len(queries), data.n_items), dtype=np.float32)
    scores = {}
    for name, src in probe.active_sources.items():
        values = np.stack([src.score_query(q) for q in queries])
        if name == fallback:
            fill = _fill(probe, values)
        scores[name] = values
    stage.add(probe, scores, fill, relevant)


def _fill(probe: Any, scores: np.ndarray) -> np.ndarray:
    """Fallback order per row, in [0, 2), below every fused score (which is shifted above 2)."""
    out = np.empty(scores.shape, dtype=np.float32)
    for row in range(len(scores)):
        out[row] = probe._fill_order({probe.config.fallback: scores[row]}) * 0.5
    return out
