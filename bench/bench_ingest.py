"""Bulk ingest, simulator and snapshot benchmarks (issue: Foundation).

Each measurement runs in a fresh child process (so peak RSS is that run's alone) on a fresh lake:
``shelf ingest events`` of synthetic CSV and Parquet files at 1M, 3M and 10M events, the
simulator at the same sizes, and snapshot queries on the 10M-event lake. The figure reported is
the median of ``--runs`` runs (default 3). Memory that "stays flat as input grows" is shown by
peak RSS at each size, beside what the lake's dedupe index held at the end of the ingest: in
memory (filters, fences, the newest keys) and in its scratch files on disk (16 bytes per event).
``--large`` adds ingest-only rows at bigger sizes (default 30M, ``--large-runs`` 1 run each; inputs
are generated in chunks).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from bench.common import ROOT, command_line, median, write_section

TYPES = np.array(["view", "view", "view", "view", "add_to_cart", "purchase", "remove_from_cart", "add_to_wishlist"])


GENERATE_CHUNK = 10_000_000  # inputs larger than this are generated and written in pieces
DAYS_US = 30 * 86_400 * 1_000_000


def synthetic_events(n: int, seed: int = 0, *, first: int = 0, total: int | None = None) -> pa.Table:
    """n raw events as a shop exports them: ISO timestamps with a zone, string ids, prices.

    A piece of a larger file: events ``first`` .. ``first + n - 1`` of ``total`` (their share of
    the 30 days, shoppers drawn from the whole file's population of ``total // 20``).
    """
    total = total or n
    rng = np.random.default_rng(seed)
    start = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1_000_000) + DAYS_US * first // total
    ts = np.sort(start + rng.integers(0, DAYS_US * n // total, size=n))
    users = rng.integers(0, max(1, total // 20), size=n)
    items = rng.zipf(1.3, size=n) % 100_000
    return pa.table(
        {
            "event_id": pa.array(np.char.add("e", np.arange(first, first + n).astype(str))),
            "user_id": pa.array(np.char.add("user-", users.astype(str))),
            "session_id": pa.array(np.char.add("s-", (users * 7 + ts // (3600 * 1_000_000) % 7).astype(str))),
            "item_id": pa.array(np.char.add("item-", items.astype(str))),
            "type": pa.array(TYPES[rng.integers(0, len(TYPES), size=n)]),
            "timestamp": pa.array(ts, type=pa.timestamp("us", tz="UTC")),
            "price": pa.array(np.round(rng.lognormal(3, 1, size=n), 2)),
        }
    )


def write_inputs(folder: Path, n: int) -> dict[str, Path]:
    csv_path, parquet_path = folder / f"events-{n}.csv", folder / f"events-{n}.parquet"
    if csv_path.exists() and parquet_path.exists():
        return {"csv": csv_path, "parquet": parquet_path}
    csv_out: pacsv.CSVWriter | None = None
    parquet_out: pq.ParquetWriter | None = None
    try:
        for piece, first in enumerate(range(0, n, GENERATE_CHUNK)):
            table = synthetic_events(min(GENERATE_CHUNK, n - first), seed=piece, first=first, total=n)
            # A shop's CSV carries text timestamps with a zone, as validation requires.
            as_text = table.set_column(5, "timestamp", pa.compute.strftime(table["timestamp"], format="%Y-%m-%dT%H:%M:%SZ"))
            csv_out = csv_out or pacsv.CSVWriter(csv_path, as_text.schema)
            parquet_out = parquet_out or pq.ParquetWriter(parquet_path, table.schema)
            csv_out.write_table(as_text)
            parquet_out.write_table(table)
    finally:
        for writer in (csv_out, parquet_out):
            if writer is not None:
                writer.close()
    return {"csv": csv_path, "parquet": parquet_path}


def _peak_rss_mib() -> float:
    """This process's peak RSS. ru_maxrss would also count the benchmark parent's memory at the
    fork (Linux keeps it across exec); VmHWM belongs to the address space exec created."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(argv: list[str]) -> None:
    """Runs in a fresh process; prints one JSON line of measurements."""
    mode, arg, home = argv[0], argv[1], Path(argv[2])
    os.environ["SHELF_DEV"] = "1"
    from shelf.cli import main as cli

    started = time.perf_counter()
    result: dict[str, float] = {}
    if mode == "ingest":
        from shelf.lake import keys

        close = keys.KeyIndex.close

        def recording_close(index: keys.KeyIndex) -> None:
            # What the dedupe index held when the session ended (it is closed exactly then).
            result["index_mib"] = index.nbytes / 2**20
            result["index_disk_mib"] = index.disk_bytes / 2**20
            close(index)

        keys.KeyIndex.close = recording_close  # type: ignore[method-assign]
        with contextlib.suppress(SystemExit):
            cli(["--home", str(home), "ingest", "events", arg], standalone_mode=False)
    elif mode == "simulate":
        from shelf.datasets.simulate import SimulationConfig, Simulator

        target = int(arg)
        # ~53 events per shopper over 30 days at the simulator's default rates (measured: 190k
        # shoppers → 10.2M events), so the shop is sized to produce about `target` events.
        config = SimulationConfig(users=max(1_000, target // 53), items=50_000, days=30, seed=1, categories=120, brands=400)
        produced = 0
        for chunk in Simulator(config).events():
            produced += chunk.num_rows
            if produced >= target:
                break
        result["events"] = produced
    elif mode == "snapshot":
        from shelf.lake import Lake

        lake = Lake.open(home, create=False)
        snap = lake.snapshot(datetime(2024, 1, 16, tzinfo=UTC))
        t0 = time.perf_counter()
        result["count"] = snap.count_events()
        result["count_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        day = snap.sql(
            "SELECT type, count(*) FROM events WHERE timestamp >= TIMESTAMPTZ '2024-01-15 00:00:00+00' GROUP BY type"
        )
        result["day_query_s"] = time.perf_counter() - t0
        result["day_rows"] = float(day.num_rows)
        t0 = time.perf_counter()
        result["materialize_rows"] = snap.events(columns=["user_id", "item_id", "timestamp"]).num_rows
        result["materialize_s"] = time.perf_counter() - t0
    result["seconds"] = time.perf_counter() - started
    result["peak_rss_mib"] = _peak_rss_mib()
    print("RESULT " + json.dumps(result))


def run_child(*args: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_ingest", "--child", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"benchmark child failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench ingest")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="1000000,3000000,10000000")
    parser.add_argument("--large", default="30000000", help="ingest-only sizes after the snapshots ('' for none)")
    parser.add_argument("--large-runs", type=int, default=1, help="runs per --large size (each takes minutes)")
    parser.add_argument("--inputs", default=None, help="folder to keep generated input files in (reused when present)")
    args, _ = parser.parse_known_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    large = [int(s) for s in args.large.split(",") if s.strip()]
    work = Path(tempfile.mkdtemp(prefix="shelf-bench-"))
    kept = Path(args.inputs) if args.inputs else None
    if kept is not None:
        kept.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for n in sizes:
            inputs = write_inputs(kept or work, n)
            rows += _ingest_rows(work, inputs, n, args.runs)
            # Re-ingesting the same file adds nothing; measured on the last home.
            again = run_child("ingest", str(inputs["parquet"]), str(work / "home"))
            rows.append(f"| re-ingest parquet (all duplicates) | {n:,} | {again['seconds']:.1f} | {n / again['seconds']:,.0f} | {again['peak_rss_mib']:,.0f} | {_index(again)} |")
            sims = [run_child("simulate", str(n), str(work / "sim")) for _ in range(args.runs)]
            secs = median([r["seconds"] for r in sims])
            rows.append(f"| simulator (generate only) | {int(sims[0]['events']):,} | {secs:.1f} | {sims[0]['events'] / secs:,.0f} | {median([r['peak_rss_mib'] for r in sims]):,.0f} | - |")
        snaps = [run_child("snapshot", "-", str(work / "home")) for _ in range(args.runs)]
        snapshot_rows = [
            f"| count events before as_of ({int(snaps[0]['count']):,}) | {median([s['count_s'] for s in snaps]) * 1000:,.0f} |",
            f"| one day's counts by type (SQL on the snapshot) | {median([s['day_query_s'] for s in snaps]) * 1000:,.0f} |",
            f"| materialise user,item,timestamp ({int(snaps[0]['materialize_rows']):,} rows) | {median([s['materialize_s'] * 1000 for s in snaps]):,.0f} |",
        ]
        for n in large:
            inputs = write_inputs(kept or work, n)
            rows += _ingest_rows(work, inputs, n, args.large_runs)
            if kept is None:
                for path in inputs.values():
                    path.unlink()  # the largest inputs take GBs of disk
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = (
        f"Each figure is the median of {args.runs} runs ({args.large_runs} for the `--large` sizes); each run is a fresh "
        "process on a fresh lake (CLI `shelf ingest events FILE`: read, validate, pseudonymize, dedupe, write Parquet, commit).\n\n"
        "| what | events | seconds | events/s | peak RSS MiB | dedupe index MiB: RAM / disk |\n|---|---:|---:|---:|---:|---:|\n"
        + "\n".join(rows)
        + "\n\nSnapshot queries on the lake of the largest `--sizes` ingest (as_of in the middle of the 30 days):\n\n"
        "| query | ms |\n|---|---:|\n" + "\n".join(snapshot_rows) + "\n"
    )
    write_section("ingest", "Ingest, simulator and snapshots", body, command_line())


def _index(run: dict[str, float]) -> str:
    if "index_mib" not in run:
        return "-"
    return f"{run['index_mib']:,.0f} / {run['index_disk_mib']:,.0f}"


def _ingest_rows(work: Path, inputs: dict[str, Path], n: int, runs_per: int) -> list[str]:
    """One row per input format: the median of ``runs_per`` ingests, each on a fresh lake."""
    rows = []
    for fmt, path in inputs.items():
        runs = []
        for _ in range(runs_per):
            home = work / "home-large" if n > 10_000_000 else work / "home"
            shutil.rmtree(home, ignore_errors=True)
            runs.append(run_child("ingest", str(path), str(home)))
        secs = median([r["seconds"] for r in runs])
        rss = median([r["peak_rss_mib"] for r in runs])
        rows.append(f"| ingest {fmt} | {n:,} | {secs:.1f} | {n / secs:,.0f} | {rss:,.0f} | {_index(runs[len(runs) // 2])} |")
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
    else:
        main(sys.argv[1:])
