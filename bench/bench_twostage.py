"""Two-stage (retrieve → rank) against retrieval alone and the peers, on the shared real logs.

Same data sets and splits as ``bench_quality`` (its helpers are imported). Protocol:

1. Choices are made on the **validation cuts** (``split.validation()``, carved from the training
   side; on MovieLens also the two 30-day cuts before it, ``ORIGINS``, each fitted on what came
   before it, pooled user-weighted: one cut holds ~100 users): the number of candidates N, the
   ranker (neural, LightGBM binary or LightGBM lambdarank) and the ranker weight w of the final
   score ``(1 - w) * prior(blend position) + w * p_ranker`` (w = 0 is the blend's own order)
   maximise the mean of NDCG@10 over the ``all`` and ``new`` views; ties go to the smaller N,
   then the smaller w. One candidate generation per N serves every ranker (``with_ranker``) and
   every w. The label window is the test window of the case (the horizon the probabilities are
   evaluated on), not tuned. The grid also holds the re-ranker (``rerank_two_stage``: LightGBM
   lambdarank re-ordering the blend's top 30 of N = 100 on relative features, rank mix,
   refitted on every moment; one fit, every w), and, outside the choice, two models that choose
   w on their own held training cuts: that re-ranker and ``shelf-twostage-neural`` (N = 200).
2. What ``shelf train`` ships (``shelf-twostage``: the re-ranker at w = 0.75, the weight chosen
   on the validation protocols of both logs: this bench's for MovieLens, ``bench rees46-windows``
   for REES46, whose own validation cut holds 4 users), the grid's choice, shelf-blend and the
   peers are evaluated once on the **test cut**, beside ``shelf-twostage-neural`` and the
   re-ranker choosing w on its held cuts (same request moments and label window).
3. Calibration of ``shelf-twostage`` on the test cut is reported twice: the runner's (over the
   whole catalogue of every test user with a relevant event; non-candidates carry the outside
   rate) and over the candidates only (the harder number: every one of the N candidates of
   those users).
4. Latency: ranking 500 candidates of one request (features already computed: encoder, trees
   or forward pass, calibration, mix), for ``shelf-twostage`` and for every ranker kind (their
   validation-side fits, on the same frames), and the whole request (retrieval + online
   features + ranking), on one thread, median and p99 over many requests. Training throughput:
   ranking-set rows per second of ranker fitting.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_quality import CASES, PEERS, _lake_with
from bench.common import SHARED_DATA, write_section

GRID_N = (100, 300)


# Request moments replayed in training, per case (``--n-cuts`` / ``--spacing`` override both):
# every moment, ``spacing`` × the label window apart, back to the start of the data, each with
# its whole label window inside the training side (``n_cuts`` is a cap). REES46's head has one
# busy burst shorter than the label window (the night is quiet): only moments a minute apart
# inside it give the ranker more than ~100 requests (~800 at 60 s); MovieLens's months need a
# quarter window (7.5 days: ~1,500 requests).
CASE_CUTS = {"rees46": {"n_cuts": 120, "spacing_fraction": 1 / 30}, "movielens": {"n_cuts": 24, "spacing_fraction": 0.25}}
CUTS = {"n_cuts": 3, "spacing_fraction": 1.0}  # the running case's (set per case in run_case)
MIN_REQUESTS = 0  # every moment is used already (the cap above), no extension needed

# Validation cuts per case (``--origins`` overrides): the latest window before the test cut, and
# on MovieLens the two windows before it (its 30-day cut holds ~100 users; three hold ~290). The
# REES46 head's earlier 30-minute windows hold 2, 0 and 1 warm users: nothing to pool (its
# larger protocol is ``bench rees46-windows``).
ORIGINS = {"movielens": 3, "rees46": 1}
ORIGINS_OVERRIDE: list[int | None] = [None]


RANKERS = ("gbdt", "lambdarank", "neural")
# The re-ranker (``rerank_two_stage``): lambdarank on the blend's top RERANK_DEPTH of RERANK_N,
# relative features, rank mix, refitted on every moment after the held cuts chose its length
# and weight. One fit serves every weight of the grid (``with_ranker_weight``) and "w auto".
RERANK = "rerank"
RERANK_N = 100
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # ranker_weight grid (0 = the blend's order, 1 = the ranker alone)


def _ranker(kind: str, seed: int) -> Any:
    from shelf.models.ranking import (
        LightGBMRanker,
        LightGBMRankerConfig,
        NeuralRanker,
        NeuralRankerConfig,
    )

    if kind == "neural":
        return NeuralRanker(NeuralRankerConfig(seed=seed))
    if kind == RERANK:
        from shelf.models.twostage import rerank_ranker

        return rerank_ranker(seed)
    return LightGBMRanker(LightGBMRankerConfig(seed=seed, objective="lambdarank" if kind == "lambdarank" else "binary"))


def _factory(n: int, ranker: str, window_s: int, seed: int = 0, keep: list[Any] | None = None, weight: float | None = 1.0) -> Any:
    def make() -> Any:
        from shelf.models.retrieval import default_blend
        from shelf.models.twostage import TwoStage, TwoStageConfig, rerank_two_stage

        if ranker == RERANK:
            model = rerank_two_stage(
                default_blend(seed=seed), seed=seed, n_candidates=n, label_window_s=window_s, n_cuts=int(CUTS["n_cuts"]),
                cut_spacing_s=max(1, round(window_s * CUTS["spacing_fraction"])), ranker_weight=weight, min_requests=MIN_REQUESTS,
            )
            if keep is not None:
                keep.append(model)
            return model
        model = TwoStage(default_blend(seed=seed), _ranker(ranker, seed), config=TwoStageConfig(
            n_candidates=n, label_window_s=window_s, seed=seed, n_cuts=int(CUTS["n_cuts"]),
            cut_spacing_s=max(1, round(window_s * CUTS["spacing_fraction"])), ranker_weight=weight, min_requests=MIN_REQUESTS,
        ))
        if keep is not None:
            keep.append(model)
        return model

    return make


class _Reweighted:
    """A runner-facing view of one shared two-stage fit with another ranker and ``ranker_weight``.

    The first variant the runner fits fits the shared model (candidates, features, the neural
    ranker); the other rankers are trained on its ranking set (``with_ranker``) and every weight
    only recalibrates the interpolated score, so the grid costs one candidate generation per N.
    """

    outputs_probabilities = True

    def __init__(self, shared: dict[str, Any], make: Any, ranker: str, weight: float | None, base: str = "neural") -> None:
        self.shared, self.make, self.ranker, self.weight, self.base = shared, make, ranker, weight, base
        self.name = f"twostage {ranker} w={'auto' if weight is None else f'{weight:g}'}"

    def fit(self, data: Any) -> Any:
        if self.shared.get("data") is not data:
            self.shared.clear()
            base = self.make().fit(data)
            self.shared.update(data=data, rankers={self.base: base})
        rankers = self.shared["rankers"]
        if self.ranker not in rankers:
            rankers[self.ranker] = rankers[self.base].with_ranker(_ranker(self.ranker, 0))
        # w auto: the model's own choice on its held training cuts
        self.model_ = rankers[self.ranker] if self.weight is None else rankers[self.ranker].with_ranker_weight(self.weight)
        return self

    def retrieve(self, query: Any, n: int) -> Any:
        return self.model_.retrieve(query, n)

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return self.model_.score_users(users)


def _weight_grid(n: int, window_s: int, shared: dict[str, Any]) -> dict[str, Any]:
    make = _factory(n, "neural", window_s)
    return {f"N={n} {r} w={w:g}": (lambda r=r, w=w: _Reweighted(shared, make, r, w)) for r in RANKERS for w in WEIGHTS}


def _rerank_grid(window_s: int, shared: dict[str, Any]) -> dict[str, Any]:
    """The re-ranker at every weight (one fit) and with its own held-cut choice ("w auto")."""
    make = _factory(RERANK_N, RERANK, window_s, weight=None)
    out = {f"N={RERANK_N} {RERANK} w={w:g}": (lambda w=w: _Reweighted(shared, make, RERANK, w, base=RERANK)) for w in WEIGHTS}
    out[RERANK_AUTO.format(n=RERANK_N)] = lambda: _Reweighted(shared, make, RERANK, None, base=RERANK)
    return out


RERANK_AUTO = "rerank (N={n}, top 30, w auto)"
DEFAULT_AUTO = "neural (N=200, w auto)"


def _score(result: Any, name: str) -> float:
    return float(np.mean([result.value(name, "ndcg", 10, v) for v in result.views]))


def _candidate_calibration(model: Any, split: Any) -> tuple[float, float, int]:
    """ECE and log loss over every candidate of the test users with a relevant event."""
    from shelf.evaluation import ANY_ENGAGEMENT
    from shelf.models.base import Query
    from shelf.models.ranking import expected_calibration_error, log_loss

    relevance, _ = ANY_ENGAGEMENT.matrix(split.test_events, split.train.users, split.train.items)
    ps, ys = [], []
    for u in split.test_users.tolist():
        row = relevance[u]
        if row.nnz == 0:
            continue
        found, p, _ = model.rank(Query(str(split.train.users.ids[u])))
        relevant = set(split.train.items.ids[row.indices].tolist())
        ps.append(p)
        ys.append(np.fromiter((i in relevant for i in found.items.tolist()), dtype=np.float64, count=len(p)))
    p_all, y_all = np.concatenate(ps), np.concatenate(ys)
    return expected_calibration_error(y_all, p_all), log_loss(y_all, p_all), len(ps)


def _latency(model: Any, split: Any, n_requests: int, others: dict[str, Any] | None = None) -> dict[str, float]:
    """Median / p99 latencies; ``others``: more fitted two-stage models whose ranking stage is
    timed on the same 500-candidate frames (``rank_ms_median[KIND]``)."""
    import torch

    from shelf.models.base import Query

    torch.set_num_threads(1)
    users = split.train.users.ids[split.test_users][:n_requests].tolist()
    users = (users * (n_requests // max(len(users), 1) + 1))[:n_requests]
    founds, full = [], []
    for u in users:
        started = time.perf_counter()
        found, _, _ = model.rank(Query(str(u)), 500)
        full.append(time.perf_counter() - started)
        founds.append((u, found))
    frames = [model.online_.frame(Query(str(u), context=_ctx(model)), found) for u, found in founds]

    def rank_only(m: Any) -> list[float]:
        # the same candidates, as each model's own features describe them (feature sets differ)
        own = frames if m is model else [m.online_.frame(Query(str(u), context=_ctx(m)), found) for u, found in founds]
        out = []
        for frame in own:
            started = time.perf_counter()
            p, logits = m.ranker_.predict_with_logits(frame)  # encode + model + calibration
            m.interpolation_(p, logits)  # blend prior, interpolation, final calibration, order
            out.append(time.perf_counter() - started)
        return out

    mine = rank_only(model)
    stats = {
        "candidates": float(np.median([len(f) for f in frames])),
        "rank_ms_median": 1e3 * float(np.median(mine)),
        "rank_ms_p99": 1e3 * float(np.quantile(mine, 0.99)),
        "request_ms_median": 1e3 * float(np.median(full)),
        "request_ms_p99": 1e3 * float(np.quantile(full, 0.99)),
    }
    for kind, other in (others or {}).items():
        times = rank_only(other)
        stats[f"rank_ms_median[{kind}]"] = 1e3 * float(np.median(times))
        stats[f"rank_ms_p99[{kind}]"] = 1e3 * float(np.quantile(times, 0.99))
    return stats


def _ctx(model: Any) -> Any:
    from shelf.models.base import Context
    from shelf.models.twostage import _dt

    return Context(timestamp=_dt(model.clock_us_))


def run_case(case: Any, work: Path, requests: int, log: list[str]) -> str:
    from shelf.evaluation import ANY_ENGAGEMENT, evaluate
    from shelf.training.zoo import pick

    home = work / case.name.split()[0].lower()
    shutil.rmtree(home, ignore_errors=True)
    lake = _lake_with(case.folders, home)
    spec = case.split(lake)
    built = spec.build(lake)
    window_s = int(spec.test_window.total_seconds())
    views = ("all", "new")
    CUTS.update(cuts_of(case.name))

    # 1. choices on the validation cuts only (the training side's last window, and on MovieLens
    # the windows before it: one 30-day cut holds ~100 users, too few to choose between configs
    # a few percent apart; each origin's models are fitted on what came before it)
    origins = []
    split_k = built
    for _ in range(int(ORIGINS.get(case.name.split()[0].lower(), 1) if ORIGINS_OVERRIDE[0] is None else ORIGINS_OVERRIDE[0])):
        split_k = split_k.validation()
        origins.append(split_k)
    validation = origins[0]
    grid: dict[str, Any] = {}
    fits: dict[int, dict[str, Any]] = {}
    vresults = []
    auto = {RERANK_AUTO.format(n=RERANK_N), DEFAULT_AUTO}
    for k, split_k in enumerate(origins):
        grid = {}
        fits_k: dict[int, dict[str, Any]] = {}
        for n in GRID_N:
            grid.update(_weight_grid(n, window_s, fits_k.setdefault(n, {})))
        grid.update(_rerank_grid(window_s, {}))
        # the model `shelf train` ships, and the re-ranker, each choosing w on its own held cuts
        grid[DEFAULT_AUTO] = _factory(200, "neural", window_s, weight=None)
        grid["shelf-blend"] = pick(["shelf-blend"])["shelf-blend"]
        started = time.perf_counter()
        vresults.append(evaluate(None, split_k, grid, ks=(10,), target=ANY_ENGAGEMENT, views=views))
        log.append(f"{case.name}: validation grid, origin {k + 1} of {len(origins)}, {time.perf_counter() - started:.0f} s")
        if k == 0:
            fits = fits_k  # the latest origin's fits time the ranker kinds below
    vres = vresults[0]
    sizes = [len(s.test_users) for s in origins]

    def pooled(name: str, view: str | None = None) -> float:
        """User-weighted mean over the origins (of the mean over views when ``view`` is None)."""
        per = [(_score(r, name) if view is None else r.value(name, "ndcg", 10, view)) for r in vresults]
        return float(np.average(per, weights=sizes))

    # ties go to the first in grid order: the smaller N, then the smaller ranker weight
    choice = max((k for k in grid if k != "shelf-blend" and k not in auto), key=pooled)
    n_best, ranker_best, w_best = int(choice.split()[0][2:]), choice.split()[1], float(choice.split()[2][2:])
    n_val_users = len(validation.test_users)
    vlines = [f"Validation: {len(origins)} cut(s) ending where the next begins, the latest last before the test cut; users per cut "
              f"(latest first) {', '.join(map(str, sizes))}. NDCG@10 pooled over the cuts (user-weighted); per cut: the mean over views, "
              "latest first.", "",
              "| validation config | NDCG@10 all | NDCG@10 new | per cut | ECE (latest cut) |", "|---|---:|---:|---|---:|"]
    for name in grid:
        ece = f"{vres.value(name, 'ece', 0):.4f}" if name != "shelf-blend" else "–"
        per = " / ".join(f"{_score(r, name):.4f}" for r in vresults)
        vlines.append(f"| {name}{' ← chosen' if name == choice else ''} | {pooled(name, 'all'):.4f} | "
                      f"{pooled(name, 'new'):.4f} | {per} | {ece} |")
    vlines += ["", f"On the latest validation cut ({n_val_users} users), each model choosing w on its own held training cuts:", "",
               "| w chosen on the held training cuts | view | shelf-blend NDCG@10 | NDCG@10 | ratio | − blend, 95% CI |",
               "|---|---|---:|---:|---:|---|"]
    for name in sorted(auto):
        for view in views:
            b, t = vres.value("shelf-blend", "ndcg", 10, view), vres.value(name, "ndcg", 10, view)
            ci = vres.compare(name, "shelf-blend", "ndcg", 10, view)
            vlines.append(f"| {name} | {view} | {b:.4f} | {t:.4f} | {t / b if b > 0 else float('inf'):.3f}× | "
                          f"{ci.difference:+.4f} [{ci.low:+.4f}, {ci.high:+.4f}] |")

    if VALIDATION_ONLY[0]:
        return "\n".join([f"### {case.name} (validation grid only)", "", *vlines, ""])

    # 2. the test cut, once
    kept: list[Any] = []
    name = f"two-stage (N={n_best}, {ranker_best}, w={w_best:g})"
    # What `shelf train` ships (the zoo's ``shelf-twostage``: the re-ranker at w = 0.75), the
    # neural two-stage that shipped before it (``shelf-twostage-neural``, choosing w itself on its
    # held training cuts) and the re-ranker with that cautious choice; same request moments and
    # label window as the grid.
    shipped_kept: list[Any] = []
    neural_kept: list[Any] = []
    from shelf.models.twostage import rerank_two_stage

    shipped_w = rerank_two_stage().config.ranker_weight  # the weight `shelf train` ships (the zoo's shelf-twostage)
    shipped_name = f"shelf-twostage (re-ranker, N={RERANK_N}, top 30, w={shipped_w:g})"
    neural_name = f"shelf-twostage-neural ({DEFAULT_AUTO})"
    rerank_name = f"re-ranker, w auto ({RERANK_AUTO.format(n=RERANK_N)})"
    models = {
        name: _factory(n_best, ranker_best, window_s, keep=kept, weight=w_best),
        shipped_name: _factory(RERANK_N, RERANK, window_s, keep=shipped_kept, weight=shipped_w),
        neural_name: _factory(200, "neural", window_s, keep=neural_kept, weight=None),
        rerank_name: _factory(RERANK_N, RERANK, window_s, weight=None),
        **pick(["shelf-blend", *PEERS], tune=True),
    }
    started = time.perf_counter()
    res = evaluate(None, built, models, ks=(10, 20), target=ANY_ENGAGEMENT, views=views)
    log.append(f"{case.name}: test evaluation {time.perf_counter() - started:.0f} s")
    model = shipped_kept[0]

    lines = [f"### {case.name}", "", f"split: {res.split}; relevant: {res.target}; label window = test window = {spec.test_window}", ""]
    lines += vlines + [""]
    lines.append("| model | view | ndcg@10 | ndcg@20 | recall@10 | recall@20 | hitrate@10 | mrr@10 |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for view in views:
        for m in models:
            vals = [res.value(m, met, k, view) for met, k in (("ndcg", 10), ("ndcg", 20), ("recall", 10), ("recall", 20), ("hitrate", 10), ("mrr", 10))]
            lines.append(f"| {m} | {view} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    lines += ["", "| two-stage | view | shelf-blend NDCG@10 | two-stage NDCG@10 | ratio (target ≥ 1.05×) | two-stage − blend, 95% CI |",
              "|---|---|---:|---:|---:|---|"]
    for label, m in (("shipped shelf-twostage", shipped_name), ("validation-grid choice", name), ("shelf-twostage-neural (w auto)", neural_name),
                     ("re-ranker, w auto", rerank_name)):
        for view in views:
            b, t = res.value("shelf-blend", "ndcg", 10, view), res.value(m, "ndcg", 10, view)
            ci = res.compare(m, "shelf-blend", "ndcg", 10, view)
            ratio = t / b if b > 0 else float("inf")
            lines.append(f"| {label} | {view} | {b:.4f} | {t:.4f} | {ratio:.3f}× {'met' if ratio >= 1.05 else 'NOT met'} | "
                         f"{ci.difference:+.4f} [{ci.low:+.4f}, {ci.high:+.4f}] |")
    auto = neural_kept[0].fit_stats_.get("ranker_weight_choice", {})
    lines += ["", f"shelf-twostage-neural's own choice on its held training cuts ({auto.get('requests', 0)} requests): w = {auto.get('weight')}, "
              f"estimated NDCG@10 per w {auto.get('ndcg')}, lower 95% bound of the chosen gain {auto.get('gain_lower_95')}."]
    ece_c, ll_c, n_users = _candidate_calibration(model, built)
    ece_r = res.value(shipped_name, "ece", 0)
    lines += [
        "",
        f"Calibration of shelf-twostage on the test cut: runner (whole catalogue, non-candidates at the outside rate "
        f"{model.p_outside_:.2e}): ECE {ece_r:.4f} ({'met' if ece_r <= 0.02 else 'NOT met'} ≤ 0.02), log loss "
        f"{res.value(shipped_name, 'log_loss', 0):.4f}, AUC {res.value(shipped_name, 'auc', 0):.4f}; candidates only ({n_users} users × N): ECE {ece_c:.4f} "
        f"({'met' if ece_c <= 0.02 else 'NOT met'} ≤ 0.02), log loss {ll_c:.4f}.",
    ]
    # every ranker kind's ranking stage, timed on the test model's frames (the validation fits at N = max)
    others = dict(fits[max(GRID_N)].get("rankers", {}))
    lat = _latency(model, built, requests, others)
    stats = model.fit_stats_
    per_s = getattr(model.ranker_, "train_examples_per_s_", None)
    lines += [
        "",
        f"Latency of shelf-twostage over {requests} requests, one thread, {lat['candidates']:.0f} candidates each: ranking "
        f"(encode + lambdarank ensemble + rank mix + calibration) median {lat['rank_ms_median']:.2f} ms, p99 {lat['rank_ms_p99']:.2f} ms "
        f"({'met' if lat['rank_ms_median'] <= 5 else 'NOT met'} ≤ 5 ms); whole request (retrieval + online features + ranking) "
        f"median {lat['request_ms_median']:.1f} ms, p99 {lat['request_ms_p99']:.1f} ms. Ranking stage of each ranker kind "
        "(fitted on the validation side, same frames): "
        + "; ".join(f"{r} median {lat[f'rank_ms_median[{r}]']:.2f} ms, p99 {lat[f'rank_ms_p99[{r}]']:.2f} ms "
                    f"({'met' if lat[f'rank_ms_median[{r}]'] <= 5 else 'NOT met'} ≤ 5 ms)" for r in others) + ".",
        f"Training: {stats['requests']} requests at {len(stats['cuts'])} cuts ({stats['training_requests']} train the ranker, "
        f"{stats['held_requests']} at the held cuts from {stats['held_from']} validate it; those whose label window reaches "
        f"the held cuts are purged), {stats['examples']:,} examples "
        f"({stats['positive_share']:.1%} positive); candidates + features {stats['candidates_and_features_s']:.1f} s; "
        f"ranker fit {stats['ranker_fit_s']:.1f} s = {stats['ranker_examples_per_s']:,.0f} examples/s"
        + (f" (neural: {per_s:,.0f} examples/s through the optimiser, all epochs)" if per_s else "")
        + f"; full two-stage fit {res.runs[shipped_name].fit_s:.1f} s (shelf-blend alone {res.runs['shelf-blend'].fit_s:.1f} s).",
        "",
    ]
    return "\n".join(lines)


_OVERRIDE: dict[str, float] = {}  # --n-cuts / --spacing from the command line
VALIDATION_ONLY = [False]  # --validation-only


def cuts_of(case_name: str) -> dict[str, float]:
    key = case_name.split()[0].lower()
    return {**CASE_CUTS.get(key, {"n_cuts": 3, "spacing_fraction": 1.0}), **_OVERRIDE}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench twostage")
    parser.add_argument("--cases", default="rees46,movielens")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--n-cuts", type=int, default=None, help="most request moments replayed in the training window (default: per case)")
    parser.add_argument("--spacing", type=float, default=None, help="spacing of request moments, as a fraction of the label window (default: per case)")
    parser.add_argument("--section", default="twostage", help="BENCHMARKS.md section name (one per concurrent run)")
    # Write the section into a copy instead of BENCHMARKS.md (trying changes without touching the
    # published figures); the copy starts from BENCHMARKS.md when it does not exist yet.
    parser.add_argument("--out", default=None, help="write the section into this copy of BENCHMARKS.md")
    # Stop after the validation grid: iterating on choices must never look at the test cut.
    parser.add_argument("--validation-only", action="store_true", help="run the validation grid only (no test cut)")
    parser.add_argument("--origins", type=int, default=None, help="validation cuts pooled for the choices (default: per case)")
    args, _ = parser.parse_known_args(argv)
    if args.out:
        import bench.common as common

        out = Path(args.out)
        if not out.exists() and common.BENCHMARKS.exists():
            shutil.copyfile(common.BENCHMARKS, out)
        common.BENCHMARKS = out
    VALIDATION_ONLY[0] = args.validation_only
    ORIGINS_OVERRIDE[0] = args.origins
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not SHARED_DATA.is_dir():
        raise SystemExit(f"shared data not found at {SHARED_DATA}; the two-stage benchmark needs it")
    if args.n_cuts is not None:
        _OVERRIDE["n_cuts"] = args.n_cuts
    if args.spacing is not None:
        _OVERRIDE["spacing_fraction"] = args.spacing
    wanted = args.cases.split(",")
    cases = [c for c in CASES if c.kind == "user" and any(w in c.name.lower() for w in wanted)]
    work = Path(tempfile.mkdtemp(prefix="shelf-twostage-"))
    log: list[str] = []
    try:
        sections = [run_case(case, work, args.requests, log) for case in cases]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = (
        "Two-stage = default blend (retrieval) → online features → ranker → final order. ``shelf-twostage`` (what `shelf "
        "train` ships) is the re-ranker: LightGBM lambdarank (a 5-seed ensemble of 50 trees) re-orders the blend's top 30 "
        "of N = 100 on features relative to the request (retrieval ranks, item age, trend and growth, the shopper's "
        "category and brand shares, within-request percentiles over all 100 candidates; no item id, no raw counts), mixes "
        "the two orders as −[(1 − w) log(1 + blend position) + w log(1 + ranker position)] with w = 0.75, is refitted on "
        "every request moment, is calibrated on the held training cuts, and gives candidates past the top 30 the held "
        "cuts' engagement rate at their position. w = 0.75 was chosen on validation only: MovieLens's three cuts below, "
        "and REES46's rolling windows (section \"twostage-rees46-windows\"; its own validation cut holds 4 users). The "
        "other rows: the neural and LightGBM rankers over N = 100 or 300 on the default features (fused and per-source "
        "retrieval scores and ranks, user, item, user × item, context, session), interpolated with the blend's position "
        "prior as (1 − w) · prior + w · p_ranker; \"w auto\" rows choose w on their own held training cuts (0 unless the "
        "ranker wins clearly there). Full-catalogue metrics, same splits as the quality benchmark; the grid's choice is "
        "made on the validation cuts, and the test cut is used once. "
        "Request moments: every moment spaced a fraction of the label window apart, back to the start of the data, each "
        "with its whole label window inside the training side ("
        + "; ".join(f"{c.name.split()[0]}: at most {cuts_of(c.name)['n_cuts']:g} moments {cuts_of(c.name)['spacing_fraction']:.3g} × the window apart" for c in cases)
        + "); the held cuts are the latest moments, about a quarter of the requests, with a label-window gap before them. "
        "The latency row times the re-ranker over 500 candidates; serving ranks only the top 30 (the whole-request figure).\n\n"
        + "\n".join(sections) + "\nWall times: " + "; ".join(log) + "\n"
    )
    write_section(args.section, "Two-stage ranking vs retrieval alone (real logs)", body, f"python -m bench twostage {' '.join(argv)}".strip())


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
