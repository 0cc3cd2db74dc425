"""Issue 5 research: a larger REES46 validation protocol, entirely inside the training side.

The bench's REES46 case trains on everything before the last 30 minutes of the sample and tests
on those 30 minutes; its validation cut (the 30 minutes before the test cut) holds 5 warm users,
too few to choose anything. This script replays the bench's validation protocol at many
**rolling origins inside the training side** (the test cut's events are never read: every split
is built through ``CappedSource(lake, test_cut)``, the same cap ``split.validation()`` uses, and
an assertion checks it), pools the users of all windows and compares each two-stage config with
shelf-blend (paired bootstrap 95% CI of the NDCG@10 difference, resampling users, all of a
user's windows together).

Two families of windows (``--family``):

* ``30min``: the K consecutive full 30-minute windows ending at the test cut (k = 1 is the
  bench's own validation cut). The REES46 head holds 2 h 20 min of training side: a burst at
  00:00-00:20, a quiet night (~2 events / minute) and a burst in the last ~3.5 minutes before the
  test cut. Only windows k = 1..4 have any training data before them; they hold 5, 2, 0 and 1
  warm users.
* ``burst``: origins every ``--step`` (20) seconds inside the final burst, each window running from
  the origin to the test cut (so shorter than 30 minutes: 20 s .. 160 s). This is where the warm
  users of the training side are (up to ~70 per origin), and it mirrors the test cut, which falls
  right after that burst: the models are fitted on everything before the origin with the bench's
  own configuration (label window = the case's 30-minute test window, 120 request moments 60 s
  apart), only the evaluation window is shorter.

Same relevance (``ANY_ENGAGEMENT``), views (``all``, ``new``) and metric code (``evaluate``) as
``bench twostage``; the bench's choice criterion is the mean of NDCG@10 over the two views.

Run: ``python -m bench rees46-windows --extras`` (about 25 minutes on 2 cores), then
``... --extras --variant short`` (the 5-minute label-window configs), then
``... --extras --merge --report-only``, which pools the cached per-window results (JSON under
``--cache``) and writes the "twostage-rees46-windows" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

if __package__ in (None, ""):  # run as a file: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench import bench_twostage as B  # noqa: E402
from bench.bench_quality import CASES, _lake_with  # noqa: E402

WINDOW_S = 1800  # the case's test window = the two-stage label window (as in the bench)
VIEWS = ("all", "new")
BASE = "shelf-blend"
CORE = ("shelf-blend", "default (N=200, neural, w auto)", "rerank (N=100, top 30, w auto)", "rerank w=0.25", "rerank w=0.5", "rerank w=1",
        "N=100 neural w=0.5", "N=100 neural w=1", "N=300 neural w=0.5", "N=300 neural w=1")


ONLY: list[str] = []  # --only: name prefixes of the configs to run (shelf-blend always)

SHORT_S = 300  # --variant short: a 5-minute label window (REES46 sessions are short)


def short_configs() -> dict[str, Any]:
    """The re-ranker and the neural two-stage with a 5-minute label window, request moments 60 s
    apart over the whole training side (``B.CUTS`` is set by ``main``)."""
    from shelf.training.zoo import pick

    out: dict[str, Any] = {BASE: pick([BASE])[BASE]}
    rr: dict[str, Any] = {}
    make_rr = B._factory(B.RERANK_N, B.RERANK, SHORT_S, weight=None)
    out["rerank L=5min w auto"] = lambda: B._Reweighted(rr, make_rr, B.RERANK, None, base=B.RERANK)
    for w in (0.25, 0.5):
        out[f"rerank L=5min w={w:g}"] = lambda w=w: B._Reweighted(rr, make_rr, B.RERANK, w, base=B.RERANK)
    shared: dict[str, Any] = {}
    make = B._factory(100, "neural", SHORT_S)
    for w in (0.25, 0.5, 1.0):
        out[f"N=100 neural L=5min w={w:g}"] = lambda w=w: B._Reweighted(shared, make, "neural", w)
    return out


def configs(window_s: int, extras: bool, variant: str = "main") -> dict[str, Any]:
    """Name -> factory. Shared fits: one candidate generation per (N, ranker family)."""
    from shelf.training.zoo import pick

    if variant == "short":
        return short_configs()
    out: dict[str, Any] = {BASE: pick([BASE])[BASE]}
    out["default (N=200, neural, w auto)"] = B._factory(200, "neural", window_s, weight=None)
    rr: dict[str, Any] = {}
    make_rr = B._factory(B.RERANK_N, B.RERANK, window_s, weight=None)
    out["rerank (N=100, top 30, w auto)"] = lambda: B._Reweighted(rr, make_rr, B.RERANK, None, base=B.RERANK)
    for w in (0.25, 0.5, 1.0) + ((0.75,) if extras else ()):
        out[f"rerank w={w:g}"] = lambda w=w: B._Reweighted(rr, make_rr, B.RERANK, w, base=B.RERANK)
    for n in B.GRID_N:
        shared: dict[str, Any] = {}
        make = B._factory(n, "neural", window_s)
        rankers = ("neural", "gbdt", "lambdarank") if extras else ("neural",)
        for r in rankers:
            for w in ((0.25, 0.5, 1.0) if extras and r != "neural" else (0.5, 1.0)):
                out[f"N={n} {r} w={w:g}"] = lambda r=r, w=w, shared=shared, make=make: B._Reweighted(shared, make, r, w)
    return out


def windows(test_cut: Any, family: str, k30: int, step: int, first_s: int, last_s: int) -> list[tuple[str, Any, timedelta]]:
    """(label, origin, length) of every evaluation window; each ends at or before the test cut."""
    out = []
    if family in ("30min", "both"):
        for k in range(1, k30 + 1):
            origin = test_cut - timedelta(seconds=k * WINDOW_S)
            out.append((f"30min k={k}", origin, timedelta(seconds=WINDOW_S)))
    if family in ("burst", "both"):
        for s in range(first_s, last_s - 1, -step):
            out.append((f"burst -{s}s", test_cut - timedelta(seconds=s), timedelta(seconds=s)))
    return out


def run_window(lake: Any, test_cut: Any, origin: Any, length: timedelta, extras: bool, variant: str = "main") -> dict[str, Any]:
    import pyarrow.compute as pc

    from shelf.evaluation import ANY_ENGAGEMENT, TemporalSplit, evaluate
    from shelf.evaluation.splits import CappedSource

    assert origin + length <= test_cut
    capped = CappedSource(lake, test_cut)  # what split.validation() uses: nothing at or after the test cut
    split = TemporalSplit(origin, length).build(capped)
    ts = split.test_events["timestamp"]
    assert pc.max(ts).as_py() < test_cut and pc.min(ts).as_py() >= origin, "window leaks past the test cut"
    assert split.train.as_of is None or split.train.as_of <= origin
    assert pc.max(split.train_inputs["events"]["timestamp"]).as_py() < origin
    models = configs(WINDOW_S, extras, variant)
    if ONLY:
        models = {k: v for k, v in models.items() if k == BASE or k.startswith(tuple(ONLY))}
    started = time.perf_counter()
    res = evaluate(None, split, models, ks=(10,), target=ANY_ENGAGEMENT, views=VIEWS)
    wall = time.perf_counter() - started
    per = {name: {v: run.per_user[(v, "ndcg", 10)].tolist() for v in VIEWS} for name, run in res.runs.items()}
    fits = {name: round(run.fit_s, 2) for name, run in res.runs.items()}
    return {
        "origin": origin.isoformat(), "length_s": length.total_seconds(), "users": {v: res.users[v].astype(str).tolist() for v in VIEWS},
        "test_users": int(len(split.test_users)), "ndcg": per, "fit_s": fits, "wall_s": round(wall, 1), "notes": res.notes,
    }


# ---------------------------------------------------------------------------------------------
# pooling and the paired (cluster) bootstrap


def pooled(results: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per view: the user id of each (user, window) pair and each config's NDCG@10."""
    out: dict[str, Any] = {}
    for v in VIEWS:
        users = [u for r in results for u in r["users"][v]]
        vals = {n: np.array([x for r in results for x in r["ndcg"][n][v]], dtype=float) for n in names}
        out[v] = (np.array(users, dtype=object), vals)
    return out


def cluster_bootstrap(pool: dict[str, Any], a: str, b: str, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Difference a - b of pooled NDCG@10 per view and of the views' mean, with 95% CIs that
    resample users (all of a user's windows together: the burst windows overlap)."""
    rng = np.random.default_rng(seed)
    ids = sorted({u for v in VIEWS for u in pool[v][0].tolist()})
    index = {u: i for i, u in enumerate(ids)}
    n = len(ids)
    per_view = {}
    for v in VIEWS:
        users, vals = pool[v]
        code = np.array([index[u] for u in users.tolist()], dtype=np.int64)
        d = vals[a] - vals[b]
        per_view[v] = (code, d, vals[a], vals[b])
    boots = {v: np.empty(n_resamples) for v in VIEWS}
    ratios = {v: np.empty(n_resamples) for v in VIEWS}
    for i in range(n_resamples):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(float)
        for v in VIEWS:
            code, d, xa, xb = per_view[v]
            ww = w[code]
            s = ww.sum()
            boots[v][i] = (ww * d).sum() / s if s else np.nan
            sb = (ww * xb).sum()
            ratios[v][i] = (ww * xa).sum() / sb if sb else np.nan
    mean_boot = (boots["all"] + boots["new"]) / 2
    out: dict[str, Any] = {"users": n}
    for v in VIEWS:
        code, d, xa, xb = per_view[v]
        out[v] = {
            "pairs": len(d), "a": float(xa.mean()), "b": float(xb.mean()), "diff": float(d.mean()),
            "low": float(np.nanquantile(boots[v], 0.025)), "high": float(np.nanquantile(boots[v], 0.975)),
            "ratio": float(xa.mean() / xb.mean()) if xb.mean() > 0 else float("inf"),
            "ratio_low": float(np.nanquantile(ratios[v], 0.025)), "ratio_high": float(np.nanquantile(ratios[v], 0.975)),
            "wins": int((d > 1e-12).sum()), "losses": int((d < -1e-12).sum()),
        }
    a_mean = (out["all"]["a"] + out["new"]["a"]) / 2
    b_mean = (out["all"]["b"] + out["new"]["b"]) / 2
    out["mean"] = {"a": a_mean, "b": b_mean, "diff": a_mean - b_mean, "ratio": a_mean / b_mean if b_mean > 0 else float("inf"),
                   "low": float(np.nanquantile(mean_boot, 0.025)), "high": float(np.nanquantile(mean_boot, 0.975))}
    return out


def report(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    names = list(results[0]["ndcg"])
    lines = ["# Issue 5: REES46 rolling-origin validation inside the training side", ""]
    lines += [f"Command: `{meta['command']}`; test cut (never evaluated): {meta['test_cut']}; total wall {meta['wall_s']:.0f} s.", ""]
    families = sorted({r["label"].split()[0] for r in results})
    groups = [(f, [r for r in results if r["label"].startswith(f)]) for f in families]
    if len(groups) > 1:
        groups.append(("all windows", results))
    for title, rs in groups:
        rs = [r for r in rs if sum(len(r["users"][v]) for v in VIEWS)]
        if not rs:
            continue
        pool = pooled(rs, names)
        lines += [f"## Pooled: {title} ({len(rs)} windows with users)", ""]
        n_pairs = {v: len(pool[v][0]) for v in VIEWS}
        n_users = {v: len(set(pool[v][0].tolist())) for v in VIEWS}
        lines += [f"User-window pairs: all {n_pairs['all']} ({n_users['all']} distinct users), new {n_pairs['new']} ({n_users['new']} distinct users).", ""]
        lines += ["| config | NDCG@10 all | ratio all | Δ all, 95% CI | NDCG@10 new | ratio new | Δ new, 95% CI | mean(all,new) ratio | Δ mean, 95% CI | W/L all |",
                  "|---|---:|---:|---|---:|---:|---|---:|---|---|"]
        for n in names:
            c = cluster_bootstrap(pool, n, BASE)
            ra, rn, m = c["all"], c["new"], c["mean"]
            if n == BASE:
                lines.append(f"| **{n}** | {ra['a']:.4f} | 1.000× | – | {rn['a']:.4f} | 1.000× | – | 1.000× | – | – |")
                continue
            lines.append(
                f"| {n} | {ra['a']:.4f} | {ra['ratio']:.3f}× | {ra['diff']:+.4f} [{ra['low']:+.4f}, {ra['high']:+.4f}] | "
                f"{rn['a']:.4f} | {rn['ratio']:.3f}× | {rn['diff']:+.4f} [{rn['low']:+.4f}, {rn['high']:+.4f}] | "
                f"{m['ratio']:.3f}× | {m['diff']:+.4f} [{m['low']:+.4f}, {m['high']:+.4f}] | {ra['wins']}/{ra['losses']} |")
        lines.append("")
    core = [n for n in names if n in CORE]
    lines += ["## Per window: NDCG@10 all / new of the core configs", ""]
    lines.append("| window | origin | length | users all / new | wall s | " + " | ".join(core) + " |")
    lines.append("|---|---|---:|---|---:|" + "---|" * len(core))
    for r in results:
        nu = f"{len(r['users']['all'])} / {len(r['users']['new'])}"
        cells = []
        for n in core:
            vals = [np.mean(r["ndcg"][n][v]) if r["ndcg"][n][v] else float("nan") for v in VIEWS]
            cells.append(" / ".join(f"{x:.3f}" for x in vals))
        lines.append(f"| {r['label']} | {r['origin'][11:19]} | {r['length_s']:.0f} s | {nu} | {r['wall_s']:.0f} | " + " | ".join(cells) + " |")
    lines += ["", "## Per window: ratio to shelf-blend of mean(NDCG@10 all, NDCG@10 new), every config", ""]
    others = [n for n in names if n != BASE]
    lines.append("| config | " + " | ".join(r["label"] for r in results) + " |")
    lines.append("|---|" + "---:|" * len(results))

    def mean_views(r: dict[str, Any], n: str) -> float:
        return float(np.mean([np.mean(r["ndcg"][n][v]) for v in VIEWS if r["ndcg"][n][v]]))

    for n in others:
        cells = []
        for r in results:
            b = mean_views(r, BASE)
            cells.append(f"{mean_views(r, n) / b:.3f}" if b > 0 else "–")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    skipped = meta.get("skipped", [])
    if skipped:
        lines += ["", "Windows without any evaluable user (skipped): " + "; ".join(skipped)]
    lines += ["", "Fit seconds per config (median over windows): " + "; ".join(
        f"{n} {np.median([r['fit_s'][n] for r in results]):.1f}" for n in names)]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="bench rees46-windows")
    p.add_argument("--family", default="both", choices=("30min", "burst", "both"))
    p.add_argument("--k30", type=int, default=4, help="30-minute windows (k >= 5 has no training data before it)")
    p.add_argument("--step", type=int, default=20, help="seconds between burst origins")
    p.add_argument("--first", type=int, default=160, help="earliest burst origin, seconds before the test cut")
    p.add_argument("--last", type=int, default=20, help="latest burst origin, seconds before the test cut")
    p.add_argument("--extras", action="store_true", help="also gbdt / lambdarank rankers and more weights (cheap: shared fits)")
    p.add_argument("--variant", default="main", choices=("main", "short"), help="short: 5-minute label window configs")
    p.add_argument("--merge", action="store_true", help="report: merge the cached short-variant configs into the main results")
    p.add_argument("--cache", default="/tmp/shelf-bench-rees46-windows")
    p.add_argument("--out", default="/tmp/shelf-bench-rees46-windows.md")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--section", default=None, help="also write the report into this BENCHMARKS.md section")
    p.add_argument("--only", default="", help="comma-separated name prefixes: run shelf-blend and those configs only "
                   "(e.g. 'rerank' after a change to the re-ranker; use a fresh --cache)")
    args = p.parse_args(argv)
    ONLY[:] = [x for x in args.only.split(",") if x]
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    case = next(c for c in CASES if c.name.lower().startswith("rees46"))
    B.CUTS.update(B.cuts_of(case.name))  # the bench's request moments for REES46: 120 moments 60 s apart
    if args.variant == "short":
        B.CUTS.update(n_cuts=140, spacing_fraction=60 / SHORT_S)  # 60 s apart, back to the start of the data
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="i5-rees46-"))
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    try:
        lake = _lake_with(case.folders, work / "rees46")
        test_cut = case.split(lake).cut  # the spec only: the test split itself is never built
        for label, origin, length in windows(test_cut, args.family, args.k30, args.step, args.first, args.last):
            f = cache / f"{label.replace(' ', '_')}{'_x' if args.extras else ''}{'_short' if args.variant == 'short' else ''}.json"
            if f.exists():
                r = json.loads(f.read_text())
            elif args.report_only:
                continue
            else:
                try:
                    r = run_window(lake, test_cut, origin, length, args.extras, args.variant)
                except Exception as e:  # empty windows: no warm user / no history
                    if type(e).__name__ in ("NoTestUsersError", "EmptySplitError", "ModelFitError"):
                        skipped.append(f"{label} ({type(e).__name__}: {str(e)[:90]})")
                        print(f"{label}: skipped ({e})", flush=True)
                        continue
                    raise
                r["label"] = label
                f.write_text(json.dumps(r))
            if args.merge and args.variant == "main":
                g = cache / f"{label.replace(' ', '_')}_short.json"
                if g.exists():
                    extra = json.loads(g.read_text())
                    assert extra["users"] == r["users"]
                    if extra["ndcg"][BASE] != r["ndcg"][BASE]:
                        print(f"{label}: shelf-blend differs between runs (max |d| "
                              f"{max(abs(a - b) for v in VIEWS for a, b in zip(extra['ndcg'][BASE][v], r['ndcg'][BASE][v], strict=True)):.2e})")
                    r["ndcg"].update({k: x for k, x in extra["ndcg"].items() if k != BASE})
                    r["fit_s"].update({k: x for k, x in extra["fit_s"].items() if k != BASE})
                    r["wall_s"] = r["wall_s"] + extra["wall_s"]
            print(f"{label}: {len(r['users']['all'])}/{len(r['users']['new'])} users, {r['wall_s']} s", flush=True)
            results.append(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # From the cache: the windows' own wall times (the runs that computed them), not this report's.
    wall = sum(float(r["wall_s"]) for r in results) if args.report_only else time.perf_counter() - started
    meta = {"command": "python -m bench rees46-windows " + " ".join(argv), "test_cut": str(test_cut), "wall_s": wall,
            "skipped": skipped}
    text = report(results, meta)
    Path(args.out).write_text(text)
    if args.report_only and args.merge:
        from bench.common import command_line, write_section

        body = text.split("\n", 2)[2]  # without the report's own title
        body = (
            "Per-window results were computed by `python -m bench rees46-windows --extras` and "
            "`python -m bench rees46-windows --extras --variant short` (cached under `--cache`), pooled by the command "
            "below. Nothing here reads the test cut; see `bench/bench_rees46_windows.py` for the protocol.\n\n" + body
        )
        write_section("twostage-rees46-windows", "Two-stage on REES46: rolling-origin validation inside the training side", body, command_line())
    elif args.section:
        from bench.common import command_line, write_section

        body = text.split("\n", 2)[2]
        if ONLY:
            body = (f"Only shelf-blend and the configs named {', '.join(ONLY)}* were run, with the code this section was written "
                    "from (per-window results cached under `--cache`); nothing here reads the test cut.\n\n" + body)
        write_section(args.section, "Two-stage on REES46, rolling-origin validation: " + (", ".join(ONLY) or "every config"), body, command_line())
    else:
        print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
