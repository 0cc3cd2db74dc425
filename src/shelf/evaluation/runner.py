"""Evaluate any set of recommenders on one split, in one run, with the same metrics.

``evaluate(source, split, models)`` builds the split through snapshots (or takes a built one),
fits every model on the training side's :class:`Interactions`, scores the test users in batches
(``score_users``) or the session prefixes (``score_sessions`` when a model has it, otherwise
``retrieve(Query(session_items=...))``), and returns an :class:`EvaluationResult`: one tidy row
per model × view × K × metric, wall times, per-user values for paired bootstrap comparisons and
per-segment breakdowns, and what relevance meant (the target), stated in every table.

Views: ``all`` counts re-engagement with items the user touched before the cut; ``new`` removes
those items from both the ranking (scores set to ``-inf``) and the relevant set, and evaluates
only users with at least one new relevant item. Cold test users (no history), when the split keeps
them, are scored one by one through ``retrieve`` and reported as their own view ``cold``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from shelf.evaluation import metrics as M
from shelf.evaluation.errors import EmptySplitError, ModelOutputError, NoTestUsersError
from shelf.evaluation.peers import Tuned
from shelf.evaluation.segments import (
    BootstrapResult,
    ItemGroupRow,
    SegmentRow,
    breakdown,
    item_group_breakdown,
    item_groups,
    new_items,
    paired_bootstrap,
    user_segments,
)
from shelf.evaluation.splits import SessionSplit, SnapshotSource, UserSplit
from shelf.evaluation.targets import ANY_ENGAGEMENT, Target
from shelf.models.base import IdIndex, Interactions, Query, Retriever, Scored

ModelFactory = Callable[[], Retriever]
VIEWS: tuple[str, ...] = ("all", "new")
BEYOND_METRICS: tuple[str, ...] = ("coverage", "exposure_gini", "novelty", "avg_popularity", "diversity", "new_item_share")


@dataclass(frozen=True)
class EvaluationOptions:
    """How the runner works; none of it changes what a metric means."""

    batch_size: int = 64  # users (or session queries) per dense score block; 64 × 100k float32 stays in L3
    score_ahead: bool = True  # a worker thread scores the next user block while this one is ranked
    score_blas_threads: int | None = 1  # BLAS threads while users are scored ahead (None: leave as is)
    new_item_window: timedelta = timedelta(days=30)  # "new launch" = launched this long before the cut
    tune_metric: str = "ndcg"  # what Tuned peers maximise on the validation cut
    tune_k: int = 10
    probability_bins: int = 10
    bootstrap_resamples: int = 2000


@dataclass(frozen=True)
class MetricRow:
    model: str
    view: str
    k: int
    metric: str
    value: float
    n_users: int


@dataclass
class ModelRun:
    """Everything measured for one model."""

    name: str
    fit_s: float = 0.0
    score_s: float = 0.0  # inside the model's scoring calls (a worker thread when scoring ahead)
    score_wait_s: float = 0.0  # the ranking waited this long for score blocks; equals score_s when not scoring ahead
    params: dict[str, Any] = field(default_factory=dict)
    per_user: dict[tuple[str, str, int], np.ndarray] = field(default_factory=dict)  # (view, metric, k)
    exposure: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    hits_per_item: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    probabilities: M.ProbabilityAccumulator | None = None


@dataclass
class EvaluationResult:
    """Tidy results of one evaluation run."""

    split: str
    target: str
    ks: tuple[int, ...]
    views: tuple[str, ...]
    n_items: int
    rows: list[MetricRow]
    runs: dict[str, ModelRun]
    users: dict[str, np.ndarray]  # raw ids of evaluated users (queries for sessions) per view
    user_labels: dict[str, dict[str, np.ndarray]]  # view -> segment kind -> label per user
    item_labels: dict[str, np.ndarray]  # group kind -> label per item
    relevant_per_item: dict[str, np.ndarray]  # view -> relevant pairs per item
    notes: list[str] = field(default_factory=list)

    def value(self, model: str, metric: str, k: int, view: str = "all") -> float:
        for r in self.rows:
            if (r.model, r.metric, r.k, r.view) == (model, metric, k, view):
                return r.value
        raise KeyError(f"no {metric}@{k} for {model!r} in view {view!r}")

    def table(self, *, metrics: Sequence[str] | None = None, views: Sequence[str] | None = None) -> str:
        """Plain-text table: one line per model × view, one column per metric@K."""
        names = list(metrics) if metrics else [m for m in (*M.ACCURACY_METRICS, *BEYOND_METRICS) if any(r.metric == m for r in self.rows)]
        wanted_views = list(views) if views else [v for v in (*self.views, "cold") if any(r.view == v for r in self.rows)]
        columns = [(m, k) for m in names for k in self.ks]
        header = ["model", "view", "users"] + [f"{m}@{k}" for m, k in columns]
        lines = [f"split: {self.split}", f"relevant: {self.target}", ""]
        body = []
        for model in self.runs:
            for view in wanted_views:
                values = {(r.metric, r.k): r for r in self.rows if r.model == model and r.view == view}
                if not values:
                    continue
                n = max(r.n_users for r in values.values())
                body.append([model, view, str(n)] + [f"{values[c].value:.4f}" if c in values else "-" for c in columns])
        widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)] if body else [len(h) for h in header]
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
        lines.append("")
        lines += [f"{name}: fit {run.fit_s:.2f}s, score {run.score_s:.2f}s" + (f", params {run.params}" if run.params else "") for name, run in self.runs.items()]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_records(self) -> list[dict[str, Any]]:
        return [dict(r.__dict__, split=self.split, target=self.target) for r in self.rows]

    def compare(self, model_a: str, model_b: str, metric: str, k: int, view: str = "all", *, seed: int = 0, n_resamples: int = 2000) -> BootstrapResult:
        """Paired bootstrap CI of ``model_a - model_b`` over the users of ``view``."""
        a = self.runs[model_a].per_user[(view, metric, k)]
        b = self.runs[model_b].per_user[(view, metric, k)]
        return paired_bootstrap(a, b, names=(model_a, model_b), metric=f"{metric}@{k} ({view})", seed=seed, n_resamples=n_resamples)

    def segments(self, model: str, metric: str, k: int, view: str = "all") -> list[SegmentRow]:
        """``metric@k`` broken down by every user segment kind, with user counts."""
        values = self.runs[model].per_user[(view, metric, k)]
        rows: list[SegmentRow] = []
        for kind, labels in self.user_labels.get(view, {}).items():
            rows += breakdown(values, labels, kind)
        cold = self.runs[model].per_user.get(("cold", metric, k))
        if cold is not None and view == "all":
            rows += breakdown(values, np.full(len(values), "returning", dtype=object), "new vs returning")
            rows += breakdown(cold, np.full(len(cold), "new (no history)", dtype=object), "new vs returning")
        return rows

    def item_groups(self, model: str, k: int, view: str = "all") -> list[ItemGroupRow]:
        """Recall and exposure share per item group (category, price band, new launch)."""
        run = self.runs[model]
        rows: list[ItemGroupRow] = []
        for kind, labels in self.item_labels.items():
            rows += item_group_breakdown(labels, self.relevant_per_item[view], run.hits_per_item[(view, k)], run.exposure[(view, k)], kind)
        return rows


# ---------------------------------------------------------------------------------------------
# Shared context


@dataclass(frozen=True)
class _ItemContext:
    popularity: np.ndarray  # share of training users (rows) who touched each item
    is_new: np.ndarray
    category: np.ndarray | None  # int code per item


def _item_context(train: Interactions, opts: EvaluationOptions) -> tuple[_ItemContext, dict[str, np.ndarray]]:
    rows = np.where(train.user >= 0, train.user, -1)
    if not (rows >= 0).any():
        rows = train.session
    ok = rows >= 0
    pairs = np.unique(rows[ok].astype(np.int64) * train.n_items + train.item[ok])
    touched = np.bincount(pairs % train.n_items, minlength=train.n_items).astype(np.float64)
    n_rows = max(int(rows.max()) + 1 if ok.any() else 1, 1)
    popularity = np.maximum(touched, 1.0) / n_rows  # unseen items: as if one user touched them
    groups = item_groups(train, opts.new_item_window)
    category = None
    if "category" in groups:
        _, category = np.unique(groups["category"].astype(str), return_inverse=True)
    return _ItemContext(popularity, new_items(train, opts.new_item_window), category), groups


def _check_block(scores: Any, rows: int, n_items: int, model: str) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.shape != (rows, n_items):
        raise ModelOutputError(f"{model}: score block has shape {scores.shape}, expected ({rows}, {n_items}) over the training item index")
    if not np.issubdtype(scores.dtype, np.floating):
        raise ModelOutputError(f"{model}: scores must be floating point, got {scores.dtype}")
    return scores if scores.flags.writeable else scores.copy()


def _rank_views(scores: np.ndarray, seen_indptr: np.ndarray, seen_indices: np.ndarray, k: int, views: Sequence[str]) -> dict[str, np.ndarray]:
    """Top ``k`` per row for the ``all`` view and, without each row's seen items, the ``new`` view.

    One ranking of the block serves both views: the top ``k + s`` of a row, ``s`` its number of
    seen items, holds its top ``k`` unseen items in order. Rows with many seen items would make
    that ranking wide for the whole block, so they are ranked again with their seen items masked.
    """
    if "new" not in views:
        return {"all": M.top_k(scores, k)}
    n_users, n_items = scores.shape
    counts = np.diff(seen_indptr)
    heavy = counts > max(2 * k, 16)
    width = min(k + int(counts[~heavy].max(initial=0)), n_items)
    wide = M.top_k(scores, width)
    out = {"all": wide[:, :k]} if "all" in views else {}
    new = M.drop_excluded(wide, seen_indptr, seen_indices, k)
    if heavy.any():
        rows = np.flatnonzero(heavy)
        sub = scores[rows]  # a copy: the model's block stays untouched
        lo = seen_indptr[0]
        mask = sp.csr_matrix((np.ones(seen_indptr[-1] - lo, dtype=np.float32), seen_indices[lo : seen_indptr[-1]], seen_indptr - lo), shape=(n_users, n_items))[rows]
        sub[np.repeat(np.arange(len(rows)), np.diff(mask.indptr)), mask.indices] = -np.inf
        new[rows] = M.top_k(sub, k)
    out["new"] = new
    return out


def ranked_from_scored(scored: Scored, items: IdIndex, k: int, model: str) -> np.ndarray:
    """Item indices of a retrieved list, padded with -1 to ``k``; unknown ids or duplicates refused."""
    raw = np.asarray(scored.items, dtype=object)
    idx = items.lookup(raw)
    if (idx < 0).any():
        bad = raw[idx < 0][:5].tolist()
        raise ModelOutputError(f"{model}: returned item id(s) unknown to the training catalogue: {bad}")
    if len(np.unique(idx)) != len(idx):
        values, counts = np.unique(raw.astype(str), return_counts=True)
        raise ModelOutputError(f"{model}: returned duplicated item id(s): {values[counts > 1][:5].tolist()}")
    out = np.full(k, -1, dtype=np.int64)
    out[: min(k, len(idx))] = idx[:k]
    return out


_METRIC_ROWS = 8192  # ranked lists collected before metrics are computed on them in one call


def _csr_rows(matrix: sp.csr_matrix, start: int, stop: int) -> sp.csr_matrix:
    """Rows ``start:stop`` of a CSR matrix, sliced through its arrays (scipy's row slicing is slow)."""
    lo, hi = matrix.indptr[start], matrix.indptr[stop]
    return sp.csr_matrix((matrix.data[lo:hi].copy(), matrix.indices[lo:hi].copy(), matrix.indptr[start : stop + 1] - lo), shape=(stop - start, matrix.shape[1]))


class _Accumulator:
    """Collects per-user values, exposure and hits of one model, batch by batch."""

    def __init__(self, run: ModelRun, ks: tuple[int, ...], n_items: int, ctx: _ItemContext) -> None:
        self.run, self.ks, self.n_items, self.ctx = run, ks, n_items, ctx
        self.parts: dict[tuple[str, str, int], list[np.ndarray]] = {}

    def add(self, view: str, ranked: np.ndarray, relevance: sp.csr_matrix) -> None:
        keep = np.diff(relevance.indptr) > 0
        ranked, relevance = ranked[keep], relevance[keep]
        values = M.ranking_metrics(ranked, relevance, self.ks)
        hits = M.gains_at(ranked, relevance) > 0
        for k in self.ks:
            top = ranked[:, :k]
            extra = {
                "novelty": M.novelty(top, self.ctx.popularity),
                "avg_popularity": M.average_popularity(top, self.ctx.popularity),
                "new_item_share": M.new_item_share(top, self.ctx.is_new),
            }
            if self.ctx.category is not None:
                extra["diversity"] = M.intra_list_diversity(top, self.ctx.category)
            for name, v in {**{m: values[(m, k)] for m in M.ACCURACY_METRICS}, **extra}.items():
                self.parts.setdefault((view, name, k), []).append(v)
            ex = self.run.exposure.setdefault((view, k), np.zeros(self.n_items, dtype=np.int64))
            ex += M.exposure_counts(top, self.n_items)
            hit_items = top[hits[:, :k]]
            hp = self.run.hits_per_item.setdefault((view, k), np.zeros(self.n_items, dtype=np.int64))
            hp += np.bincount(hit_items, minlength=self.n_items)

    def finish(self) -> None:
        for key, parts in self.parts.items():
            self.run.per_user[key] = np.concatenate(parts) if parts else np.array([])


def _rows_of(run: ModelRun, views: Sequence[str], ks: tuple[int, ...]) -> list[MetricRow]:
    rows: list[MetricRow] = []
    for view in views:
        for k in ks:
            for metric in (*M.ACCURACY_METRICS, "novelty", "avg_popularity", "diversity", "new_item_share"):
                v = run.per_user.get((view, metric, k))
                if v is None:
                    continue
                ok = ~np.isnan(v)
                rows.append(MetricRow(run.name, view, k, metric, float(v[ok].mean()) if ok.any() else float("nan"), int(ok.sum())))
            exposure = run.exposure.get((view, k))
            if exposure is not None:
                n = len(run.per_user.get((view, "recall", k), []))
                rows.append(MetricRow(run.name, view, k, "coverage", M.catalogue_coverage(exposure), n))
                rows.append(MetricRow(run.name, view, k, "exposure_gini", M.gini(exposure), n))
    if run.probabilities is not None and run.probabilities.n:
        p = run.probabilities
        n = len(run.per_user.get(("all", "recall", ks[0]), []))
        for metric, value in (("log_loss", p.log_loss()), ("auc", p.auc()), ("ece", p.ece())):
            rows.append(MetricRow(run.name, "all", 0, metric, value, n))
    return rows


# ---------------------------------------------------------------------------------------------
# User splits


@dataclass(frozen=True)
class _UserTask:
    split: UserSplit
    relevance: dict[str, sp.csr_matrix]  # view -> test users × items
    seen: sp.csr_matrix  # test users × items touched before the cut
    target: Target


def _user_task(split: UserSplit, target: Target, views: Sequence[str], notes: list[str]) -> _UserTask:
    train = split.train
    relevance, outside = target.matrix(split.test_events, train.users, train.items)
    relevance = relevance[split.test_users]
    known = train.user >= 0
    seen = sp.csr_matrix(
        (np.ones(int(known.sum()), dtype=np.float32), (train.user[known], train.item[known])),
        shape=(train.n_users, train.n_items),
    )[split.test_users]
    seen.sum_duplicates()
    seen.data[:] = 1.0
    by_view = {"all": relevance}
    if "new" in views:
        new = relevance - relevance.multiply(seen)
        new.eliminate_zeros()
        by_view["new"] = sp.csr_matrix(new)
    if outside:
        notes.append(f"{outside} relevant (user, item) pair(s) name items outside the training catalogue; no model can rank them, left out")
    empty = int((np.diff(relevance.indptr) == 0).sum())
    if empty:
        notes.append(f"{empty} of {len(split.test_users)} test user(s) have no relevant event under the target; left out of the means")
    if relevance.nnz == 0:
        raise NoTestUsersError(f"no test user has a relevant event under the target ({target.describe()})")
    return _UserTask(split, by_view, seen, target)


def _score_blocks(score_users: Callable[[np.ndarray], Any], users: np.ndarray, opts: EvaluationOptions) -> Iterator[tuple[int, Any, float]]:
    """``(first row, score block, seconds inside score_users)`` for each block of ``opts.batch_size`` users.

    With ``opts.score_ahead`` the next block is scored in a worker thread while the caller ranks
    this one: BLAS and numpy release the GIL, so scoring and ranking share the cores. BLAS is held
    to ``opts.score_blas_threads`` meanwhile, as its own threads would fight the ranking for them.
    """
    starts = range(0, len(users), opts.batch_size)

    def score(start: int) -> tuple[int, Any, float]:
        started = time.perf_counter()
        block = score_users(users[start : start + opts.batch_size])
        return start, block, time.perf_counter() - started

    if not opts.score_ahead or len(starts) < 2:
        yield from map(score, starts)
        return
    limits = threadpool_limits(opts.score_blas_threads, "blas") if opts.score_blas_threads else None
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="shelf-score") as pool:
            ahead = pool.submit(score, starts[0])
            for start in starts[1:]:
                block = ahead.result()
                ahead = pool.submit(score, start)
                yield block
            yield ahead.result()
    finally:
        if limits is not None:
            limits.restore_original_limits()


def _run_users(task: _UserTask, model: Retriever, name: str, ks: tuple[int, ...], views: Sequence[str], ctx: _ItemContext, opts: EvaluationOptions, *, fit: bool = True) -> ModelRun:
    split = task.split
    run = ModelRun(name)
    if fit:
        started = time.perf_counter()
        model.fit(split.train)
        run.fit_s = time.perf_counter() - started
    score_users = getattr(model, "score_users", None)
    if score_users is None:
        raise ModelOutputError(f"{name}: has no score_users; user splits need a BatchRetriever")
    if getattr(model, "outputs_probabilities", False):
        run.probabilities = M.ProbabilityAccumulator(fine_bins=opts.probability_bins * 1000)
    acc = _Accumulator(run, ks, split.train.n_items, ctx)
    kmax = max(ks)
    n = len(split.test_users)
    seen = task.seen
    pending: dict[str, list[np.ndarray]] = {v: [] for v in views}
    done = 0  # users whose ranked lists went to the accumulator

    def flush(stop: int) -> None:
        # Metrics for many blocks at once: their per-call cost is mostly fixed overhead.
        nonlocal done
        for view, parts in pending.items():
            if parts:
                acc.add(view, np.concatenate(parts), _csr_rows(task.relevance[view], done, stop))
                parts.clear()
        done = stop

    waited = time.perf_counter()
    for start, scores, seconds in _score_blocks(score_users, split.test_users, opts):
        run.score_wait_s += time.perf_counter() - waited
        stop = start + len(scores)
        run.score_s += seconds
        scores = _check_block(scores, min(opts.batch_size, n - start), split.train.n_items, name)
        if run.probabilities is not None:
            rel = _csr_rows(task.relevance["all"], start, stop)
            ok = np.diff(rel.indptr) > 0
            run.probabilities.add(scores[ok].ravel(), (rel[ok].toarray() > 0).ravel())
        for view, ranked in _rank_views(scores, seen.indptr[start : stop + 1], seen.indices, kmax, views).items():
            pending[view].append(ranked)
        if stop - done >= _METRIC_ROWS:
            flush(stop)
        waited = time.perf_counter()
    flush(n)
    if split.cold_users.size:
        _run_cold(task, model, name, ks, acc, run)
    acc.finish()
    return run


def _run_cold(task: _UserTask, model: Retriever, name: str, ks: tuple[int, ...], acc: _Accumulator, run: ModelRun) -> None:
    split = task.split
    cold = IdIndex(split.cold_users)
    relevance, _ = task.target.matrix(split.cold_events, cold, split.train.items)
    kmax = max(ks)
    started = time.perf_counter()
    ranked = np.stack([ranked_from_scored(model.retrieve(Query(user_id=str(u)), kmax), split.train.items, kmax, name) for u in cold.ids.tolist()])
    run.score_s += time.perf_counter() - started
    run.score_wait_s += time.perf_counter() - started
    acc.add("cold", ranked, relevance)


# ---------------------------------------------------------------------------------------------
# Session splits


def _run_sessions(split: SessionSplit, model: Retriever, name: str, ks: tuple[int, ...], views: Sequence[str], ctx: _ItemContext, opts: EvaluationOptions, *, fit: bool = True) -> ModelRun:
    run = ModelRun(name)
    if fit:
        started = time.perf_counter()
        model.fit(split.train)
        run.fit_s = time.perf_counter() - started
    n_items, kmax = split.train.n_items, max(ks)
    acc = _Accumulator(run, ks, n_items, ctx)
    batch_scores = getattr(model, "score_sessions", None)
    for start in range(0, len(split.targets), opts.batch_size):
        stop = min(start + opts.batch_size, len(split.targets))
        prefixes = split.prefixes[start:stop]
        targets = split.targets[start:stop]
        b = stop - start
        relevance = sp.csr_matrix((np.ones(b, dtype=np.float32), (np.arange(b), targets)), shape=(b, n_items))
        in_prefix = np.array([t in set(p.tolist()) for p, t in zip(prefixes, targets.tolist(), strict=True)], dtype=bool)
        new_rel = sp.csr_matrix((np.ones(int((~in_prefix).sum()), dtype=np.float32), (np.flatnonzero(~in_prefix), targets[~in_prefix])), shape=(b, n_items))
        started = time.perf_counter()
        if batch_scores is not None:
            scores = _check_block(batch_scores(prefixes), b, n_items, name)
            run.score_s += time.perf_counter() - started
            run.score_wait_s += time.perf_counter() - started
            lengths = np.array([len(p) for p in prefixes], dtype=np.int64)
            cols = np.concatenate(prefixes).astype(np.int64) if lengths.sum() else np.array([], dtype=np.int64)
            ranked = _rank_views(scores, np.r_[0, np.cumsum(lengths)], cols, kmax, views)
            if "all" in views:
                acc.add("all", ranked["all"], relevance)
            if "new" in views:
                acc.add("new", ranked["new"], new_rel)
        else:
            all_rows, new_rows = [], []
            for q in range(start, stop):
                prefix = split.prefix_raw[q]
                scored = model.retrieve(Query(session_items=prefix), kmax + len(set(prefix)))
                full = ranked_from_scored(scored, split.train.items, kmax + len(set(prefix)), name)
                all_rows.append(full[:kmax])
                fresh = full[(full >= 0) & ~np.isin(full, split.prefixes[q])]
                new_rows.append(np.r_[fresh, np.full(kmax, -1)][:kmax])
            run.score_s += time.perf_counter() - started
            run.score_wait_s += time.perf_counter() - started
            if "all" in views:
                acc.add("all", np.stack(all_rows), relevance)
            if "new" in views:
                acc.add("new", np.stack(new_rows), new_rel)
    acc.finish()
    return run


# ---------------------------------------------------------------------------------------------
# Entry point


def evaluate(
    source: SnapshotSource | None,
    split: Any,
    models: Mapping[str, ModelFactory],
    ks: Sequence[int] = (10, 20),
    target: Target = ANY_ENGAGEMENT,
    views: Sequence[str] = VIEWS,
    *,
    options: EvaluationOptions | None = None,
) -> EvaluationResult:
    """Evaluate every model of ``models`` on the same split.

    Parameters
    ----------
    source:
        Where snapshots come from (``Lake`` or :class:`TableSource`); ``None`` when ``split`` is built.
    split:
        A split specification with ``build(source)`` (e.g. :class:`TemporalSplit`) or a built
        :class:`UserSplit` / :class:`SessionSplit`.
    models:
        Name -> factory returning an unfitted retriever. :class:`Tuned` factories pick their
        hyper-parameters on ``split.validation()`` first (never on the test).
    ks:
        Cut-offs; each at most the catalogue size.
    target:
        What counts as relevant (user splits; session splits always predict the next item).
    views:
        ``"all"`` and/or ``"new"``.
    """
    opts = options or EvaluationOptions()
    if not models:
        raise ValueError("give at least one model to evaluate")
    unknown_views = set(views) - set(VIEWS)
    if unknown_views or not views:
        raise ValueError(f"views must be among {VIEWS}, got {list(views)}")
    built = split if isinstance(split, UserSplit | SessionSplit) else split.build(source)
    train = built.train
    ks_checked = M.check_cutoffs(ks, train.n_items)
    notes: list[str] = []
    ctx, groups = _item_context(train, opts)
    runs: dict[str, ModelRun] = {}
    if isinstance(built, UserSplit):
        task = _user_task(built, target, views, notes)
        validation: list[_UserTask] = []

        def tune_score(model: Retriever) -> float:
            if not validation:
                vsplit = built.validation()
                validation.append(_user_task(vsplit, target, ("all",), []))
            vtask = validation[0]
            vctx, _ = _item_context(vtask.split.train, opts)
            vrun = _run_users(vtask, model, "tuning", (min(opts.tune_k, vtask.split.train.n_items),), ("all",), vctx, opts)
            return float(np.nanmean(vrun.per_user[("all", opts.tune_metric, min(opts.tune_k, vtask.split.train.n_items))]))

        for name, factory in models.items():
            params = factory.choose(tune_score) if isinstance(factory, Tuned) else {}
            run = _run_users(task, factory(), name, ks_checked, views, ctx, opts)
            run.params = params
            runs[name] = run
        users = {v: train.users.ids[built.test_users][np.diff(task.relevance[v].indptr) > 0] for v in task.relevance}
        labels_all = user_segments(train, built.test_users)
        user_labels = {v: {kind: lab[np.diff(task.relevance[v].indptr) > 0] for kind, lab in labels_all.items()} for v in task.relevance}
        relevant_per_item = {v: np.bincount(r.indices, minlength=train.n_items) for v, r in task.relevance.items()}
        target_text = target.describe()
        shown_views = tuple(views) + (("cold",) if built.cold_users.size else ())
    else:
        val_cache: list[SessionSplit] = []

        def tune_session(model: Retriever) -> float:
            if not val_cache:
                val_cache.append(built.validation())
            vs = val_cache[0]
            vctx, _ = _item_context(vs.train, opts)
            k = min(opts.tune_k, vs.train.n_items)
            return float(np.nanmean(_run_sessions(vs, model, "tuning", (k,), ("all",), vctx, opts).per_user[("all", opts.tune_metric, k)]))

        for name, factory in models.items():
            params = factory.choose(tune_session) if isinstance(factory, Tuned) else {}
            run = _run_sessions(built, factory(), name, ks_checked, views, ctx, opts)
            run.params = params
            runs[name] = run
        in_prefix = np.array([t in set(p.tolist()) for p, t in zip(built.prefixes, built.targets.tolist(), strict=True)], dtype=bool)
        users = {"all": built.sessions, "new": built.sessions[~in_prefix]}
        users = {v: users[v] for v in views}
        user_labels = {v: {} for v in views}
        relevant_per_item = {"all": np.bincount(built.targets, minlength=train.n_items), "new": np.bincount(built.targets[~in_prefix], minlength=train.n_items)}
        target_text = "the next item of the session (one relevant item per prefix)"
        if built.unknown_targets:
            notes.append(f"{built.unknown_targets} next-item target(s) were never seen in training; left out (no model can rank them)")
        shown_views = tuple(views)
    if isinstance(built, UserSplit) and len(built.test_users) == 0:
        raise EmptySplitError("no test users")
    rows = [r for run in runs.values() for r in _rows_of(run, shown_views, ks_checked)]
    return EvaluationResult(built.name, target_text, ks_checked, tuple(views), train.n_items, rows, runs, users, user_labels, groups, relevant_per_item, notes)


def events_table(result: EvaluationResult) -> pa.Table:
    """The tidy rows as an Arrow table (model, view, k, metric, value, n_users, split, target)."""
    return pa.Table.from_pylist(result.to_records())
