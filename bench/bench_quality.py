"""Recommendation quality on the shared real logs: every peer and every shelf retriever side by side.

For each data set the public files are ingested into a fresh lake (the real pipeline), the split is
built through as-of snapshots, and the evaluation runner scores all models on the same split.
Peers run from their own libraries (implicit ALS/BPR tuned on a validation cut carved from the
training side, never the test). Metrics are deterministic for a seed; fit times and peak memory
are the median of ``--runs`` separate fits.

Data sets and splits:
- REES46 (3-hour slice of Oct 2019): temporal cut 30 minutes before the end, test = last 30 min.
- MovieLens 100K: temporal cut 30 days before the end, test = last 30 days.
- YooChoose (session-rec 100k sample): session next-item; the cut is the first event of the
  published test file, so train = train_full, test = every prefix of each test session. Its
  **new** view keeps the prefixes whose next item is not already in the prefix and removes the
  prefix's items from the ranking (what "something else to look at" is worth).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import SHARED_DATA, PeakMemory, median, write_section
from shelf.errors import ShelfError

PEERS = ["popularity", "trending", "recent+popular", "als", "bpr"]
SHELF = ["shelf-trending", "shelf-repeat", "shelf-cooccurrence", "shelf-als", "shelf-ease", "shelf-neighbours", "shelf-content", "shelf-sasrec",
         "shelf-blend"]
METRICS = ["ndcg", "recall", "hitrate", "mrr", "coverage"]


@dataclass(frozen=True)
class Case:
    name: str
    folders: tuple[str, ...]
    split: Callable[[Any], Any]
    kind: str  # "user" or "session"


def _lake_with(folders: tuple[str, ...], home: Path) -> Any:
    from shelf.datasets import public_dataset
    from shelf.ingest import ingest
    from shelf.lake import Lake
    from shelf.privacy import Pseudonymizer

    lake = Lake.open(home)
    pseudo = Pseudonymizer(b"bench-key-0123456789abcdef")
    for folder in folders:
        name, _, split = folder.partition(":")
        source = public_dataset(name, SHARED_DATA) if not split else _yoochoose(split)
        for kind in ("items", "users", "events"):
            batches = getattr(source, kind)
            if batches is not None:
                ingest(lake, kind, batches(), pseudonymizer=pseudo, home=home, source=folder, rules=source.rules)
    return lake


def _yoochoose(split: str) -> Any:
    from shelf.datasets.public import yoochoose

    return yoochoose(SHARED_DATA / "yoochoose-rsc15-100k", split=split)  # type: ignore[arg-type]


def _temporal(window: timedelta) -> Callable[[Any], Any]:
    def build(lake: Any) -> Any:
        from shelf.evaluation import TemporalSplit
        from shelf.evaluation.splits import end_of_data

        return TemporalSplit(end_of_data(lake) - window, window)

    return build


def _yoochoose_split(lake: Any) -> Any:
    from datetime import UTC, datetime

    from shelf.evaluation import SessionNextItem

    test = _yoochoose("test")
    import pyarrow.compute as pc

    from shelf.privacy import Pseudonymizer
    from shelf.schema import validate_events

    first = None
    for batch in test.events():
        valid = validate_events(batch.table, pseudonymizer=Pseudonymizer(b"x" * 16), rules=test.rules, positions=batch.positions).valid
        low = pc.min(valid["timestamp"]).as_py()
        first = low if first is None else min(first, low)
    assert first is not None
    return SessionNextItem(first.astimezone(UTC), datetime(2014, 4, 9, tzinfo=UTC) - first)


CASES = [
    Case("REES46 (temporal, last 30 min)", ("rees46-oct2019-head",), _temporal(timedelta(minutes=30)), "user"),
    Case("MovieLens 100K (temporal, last 30 days)", ("movielens-100k",), _temporal(timedelta(days=30)), "user"),
    Case("YooChoose 100k (session next item)", ("yoochoose-rsc15-100k:train_full", "yoochoose-rsc15-100k:test"), _yoochoose_split, "session"),
]


def _fit_cost(factory: Callable[[], Any], train: Any, runs: int) -> tuple[float, float]:
    seconds, peaks = [], []
    for _ in range(runs):
        gc.collect()
        with PeakMemory() as mem:
            started = time.perf_counter()
            factory().fit(train)
            seconds.append(time.perf_counter() - started)
        peaks.append(mem.peak_mib - mem.start_mib)
    return median(seconds), median(peaks)


def run_case(case: Case, models: list[str], runs: int, work: Path) -> str:
    from shelf.evaluation import ANY_ENGAGEMENT, evaluate
    from shelf.training.zoo import pick

    home = work / case.name.split()[0].lower()
    shutil.rmtree(home, ignore_errors=True)
    lake = _lake_with(case.folders, home)
    spec = case.split(lake)
    built = spec.build(lake)
    factories = pick(models, seed=0, tune=True)
    # A model that cannot learn from this data at all (ALS/EASE with no known users, content with
    # no catalogue) is reported as such instead of stopping the whole benchmark.
    unfit: dict[str, str] = {}
    costs: dict[str, tuple[float, float]] = {}
    for name in list(models):
        try:
            costs[name] = _fit_cost(factories[name], built.train, runs)
        except ShelfError as error:
            unfit[name] = str(error).splitlines()[0][:160]
    models = [m for m in models if m not in unfit]
    factories = {m: factories[m] for m in models}
    blends: list[Any] = []
    if "shelf-blend" in factories:
        make_blend = factories["shelf-blend"]

        def keep_blend() -> Any:
            model = make_blend()
            blends.append(model)
            return model

        factories["shelf-blend"] = keep_blend
    started = time.perf_counter()
    result = evaluate(None, built, factories, ks=(10, 20), target=ANY_ENGAGEMENT, views=("all", "new"))
    wall = time.perf_counter() - started

    lines = [f"### {case.name}", "", f"split: {result.split}; relevant: {result.target}", ""]
    header = "| model | view | " + " | ".join(f"{m}@{k}" for m in METRICS for k in (10, 20)) + " |"
    lines += [header, "|" + "---|" * (2 + 2 * len(METRICS))]
    for view in result.views:
        for name in models:
            values = " | ".join(f"{result.value(name, m, k, view):.4f}" for m in METRICS for k in (10, 20))
            lines.append(f"| {name} | {view} | {values} |")
    lines.append("")
    peers = [m for m in models if m in PEERS]
    if "shelf-blend" in models and peers:
        lines.append("| view | best peer | peer NDCG@10 | shelf-blend NDCG@10 | ratio | blend − peer, 95% CI (paired bootstrap over users) |")
        lines.append("|---|---|---:|---:|---:|---|")
        for view in result.views:
            best = max(peers, key=lambda p: result.value(p, "ndcg", 10, view))
            peer_value, blend_value = result.value(best, "ndcg", 10, view), result.value("shelf-blend", "ndcg", 10, view)
            ci = result.compare("shelf-blend", best, "ndcg", 10, view)
            ratio = blend_value / peer_value if peer_value > 0 else float("inf")
            lines.append(
                f"| {view} | {best} | {peer_value:.4f} | {blend_value:.4f} | {ratio:.2f}× | "
                f"{ci.difference:+.4f} [{ci.low:+.4f}, {ci.high:+.4f}] |"
            )
        lines.append("")
    if blends:
        lines.append(_tuning_line(blends[-1]))
        lines.append("")
    lines.append(f"Evaluation wall time (fit + score + metrics, all models, one run): {wall:.1f} s. {len(result.notes)} note(s): " + "; ".join(result.notes))
    lines.append("")
    lines.append(f"| model | fit s (median of {runs}) | peak memory MiB above start (median) |")
    lines.append("|---|---:|---:|")
    for name in models:
        seconds, peak = costs[name]
        lines.append(f"| {name} | {seconds:.2f} | {peak:,.1f} |")
    for name, reason in unfit.items():
        lines.append(f"| {name} | cannot fit this data: {reason} | |")
    lines.append("")
    return "\n".join(lines)


def _tuning_line(blend: Any) -> str:
    """What shelf-blend's tuning picked on its hold-out (training side only) for the test fit."""
    report = getattr(blend, "tuning_report_", None)
    if report is None or isinstance(report, str):
        return f"shelf-blend tuning did not run: {report or 'no report'}; the configured weights served."

    def weights(table: dict[str, float] | None) -> str:
        return ", ".join(f"{k} {v:g}" for k, v in (table or {}).items() if v > 0) or "-"

    stages = ", ".join(
        f"{stage} {report.ndcg_default[stage]:.4f} → {report.ndcg_tuned[stage]:.4f}" for stage in report.ndcg_default
    )
    return (
        f"shelf-blend tuning (hold-out carved from the training side, {report.cuts} cut(s), "
        f"{report.user_queries} user / {report.session_queries} session queries; NDCG@10 prior → tuned: {stages}): "
        f"fusion {report.fusion}; user weights: {weights(report.weights)}; session weights: "
        f"{weights(report.session_weights) if report.session_weights is not None else 'as user'}; "
        f"seen items demoted: {'yes' if report.masked_seen else 'no'}."
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench quality")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", default=",".join(PEERS + SHELF))
    parser.add_argument("--cases", default="rees46,movielens,yoochoose")
    # Write the section into a copy instead of BENCHMARKS.md (trying changes without touching the
    # published figures); the copy starts from BENCHMARKS.md when it does not exist yet.
    parser.add_argument("--out", default=None)
    args, _ = parser.parse_known_args(argv)
    if args.out:
        import bench.common as common

        out = Path(args.out)
        if not out.exists() and common.BENCHMARKS.exists():
            shutil.copyfile(common.BENCHMARKS, out)
        common.BENCHMARKS = out
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from shelf.training.zoo import available

    known = available()
    models = [m for m in args.models.split(",") if m in known]
    missing = [m for m in args.models.split(",") if m not in known]
    wanted = args.cases.split(",")
    cases = [c for c in CASES if any(w in c.name.lower() for w in wanted)]
    if not SHARED_DATA.is_dir():
        raise SystemExit(f"shared data not found at {SHARED_DATA}; the quality benchmark needs it")
    work = Path(tempfile.mkdtemp(prefix="shelf-quality-"))
    try:
        sections = [run_case(case, models, args.runs, work) for case in cases]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = (
        "Full-catalogue metrics (no sampled negatives). **all**: re-engaging with items touched before the cut counts; "
        "**new**: only items the user never touched, seen items removed from the ranking. Peers run from their own "
        "libraries; ALS/BPR hyper-parameters are picked on a validation cut before the test cut. shelf-blend tunes "
        "its source weights on a hold-out carved from the training side only.\n\n"
        + (f"Models not available in this build: {', '.join(missing)}.\n\n" if missing else "")
        + "\n".join(sections)
    )
    write_section("quality", "Recommendation quality on real logs (peers and shelf retrievers)", body, f"make bench BENCH_ARGS='quality {' '.join(argv)}'".strip())


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
