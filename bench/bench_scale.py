"""A 10M-event simulated shop, end to end on this machine: simulate → lake → train → bundle.

Each stage runs as the CLI would run it, in one child process per stage (so each stage's peak RSS is
its own): ``shelf simulate`` straight into the lake, then ``shelf train`` of the blend (the
retrieval stage issue 4 asks to scale; ``--model`` picks another) from the latest snapshot. Reported: events, wall time and peak RSS per stage. One run (it takes minutes);
the figure is that run's, not a median, and the section says so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, write_section


def _child(argv: list[str]) -> None:
    stage, home = argv[0], argv[1]
    os.environ["SHELF_DEV"] = "1"
    from shelf.cli import main as cli

    started = time.perf_counter()
    args = ["--home", home, *argv[2:]]
    try:
        cli(args, standalone_mode=False)
    except SystemExit as stop:
        if stop.code:
            raise
    result = {
        "stage": stage,
        "seconds": time.perf_counter() - started,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print("RESULT " + json.dumps(result))


def _run(stage: str, home: Path, *args: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_scale", "--child", stage, str(home), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"stage {stage} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench scale")
    parser.add_argument("--users", type=int, default=190_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--model", default="shelf-blend")
    args, _ = parser.parse_known_args(argv)
    work = Path(tempfile.mkdtemp(prefix="shelf-scale-"))
    home = work / "home"
    try:
        simulate = _run("simulate", home, "simulate", "--users", str(args.users), "--items", str(args.items), "--days", str(args.days), "--seed", "1")
        sys.path.insert(0, str(ROOT / "src"))
        from shelf.lake import Lake

        stats = Lake.open(home, create=False).stats()
        train = _run("train", home, "train", "--model", args.model)
        card_files = sorted((home / "registry" / "bundles").glob("*/card.json"))
        card = json.loads(card_files[-1].read_text()) if card_files else {}
        disk = sum(p.stat().st_size for p in (home / "lake").rglob("*") if p.is_file())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = (
        f"One run (minutes long; not a median). Simulated shop: {args.users:,} users, {args.items:,} items, {args.days} days.\n\n"
        "| stage | events | wall s | peak RSS MiB |\n|---|---:|---:|---:|\n"
        f"| `shelf simulate` into the lake | {stats.events:,} | {simulate['seconds']:.0f} | {simulate['peak_rss_mib']:,.0f} |\n"
        f"| `shelf train --model {args.model}` (snapshot → validation → fit → bundle) | {stats.events:,} | {train['seconds']:.0f} | {train['peak_rss_mib']:,.0f} |\n\n"
        f"Lake on disk: {disk / 2**20:,.0f} MiB. Model fit alone: {card.get('parameters', {}).get('fit_seconds', '?')} s; "
        f"validation all/ndcg@10 {card.get('metrics', {}).get('all/ndcg@10', '?')}, new/ndcg@10 {card.get('metrics', {}).get('new/ndcg@10', '?')}.\n"
    )
    # One section per model: the blend's (the retrieval stage) and the shipped default's side by side.
    name, title = ("scale", "A 10M-event shop end to end (2 cores, 24 GB)") if args.model == "shelf-blend" else (
        f"scale-{args.model}", f"A 10M-event shop end to end, {args.model} (2 cores, 24 GB)")
    write_section(name, title, body, f"make bench BENCH_ARGS='scale {' '.join(argv)}'".strip())


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
    else:
        main(sys.argv[1:])
