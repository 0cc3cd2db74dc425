"""SASRec training throughput: shelf's SASRec (gBCE) beside RecBole's SASRec, same data, same run.

Data: 20,000 synthetic shopper sequences over 10,000 items. Lengths are 2 + log-normal
(median ~9, mean ~14, a long tail cut into 50-item windows), because real shop sequences are
short (the shared YooChoose and REES46 heads average ~4 events per session / user). The next
item is, 70% of the time, a neighbour of the previous one in a shuffled catalogue order, so
there is a sequential pattern to learn. A second shelf run uses sequences of exactly 51 items
(every window full, 50 targets each) as the worst case.

Units (two, because the frameworks count differently; both are printed):
- "sequences/s (RecBole's count)": training sequences as RecBole counts them, one per user
  prefix, each predicting one next item at max length 50. RecBole expands every user into
  ``n - 1`` such samples; shelf trains all of a window's prefixes in one causal pass, so for
  shelf this number is its next-item targets/s. It is the like-for-like figure: both columns
  count the same (prefix → next item) training examples consumed per second.
- "windows/s": shelf only, forward/backward passes over one window of up to 50 items
  (realistic data: mostly short windows; full data: every window has 50 inputs).

Both use hidden 64, max length 50, 2 layers, 1 head, batch 512, 2 torch threads; RecBole
1.2.1 keeps its default CE loss over the full catalogue and inner size 256. RecBole's import
turns autograd anomaly detection on, which is switched off again. The two are measured
interleaved (shelf epoch, RecBole batches, shelf full-window epoch, repeated) and the medians
are reported, because the machine is shared and timings drift. Run ``python -m bench sasrec
[--reps 3] [--recbole-batches 8]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from bench.common import command_line, median, write_section
from shelf.models.base import IdIndex, Interactions
from shelf.models.retrieval.sasrec import SASRec, SASRecConfig, _build_sequences, _windows

N_ITEMS = 10_000
N_SEQUENCES = 20_000


def synthetic_lengths(rng: np.random.Generator, fixed: int | None) -> np.ndarray:
    if fixed is not None:
        return np.full(N_SEQUENCES, fixed)
    return 2 + np.minimum(rng.lognormal(2.2, 0.9, size=N_SEQUENCES).astype(np.int64), 400)


def synthetic_sequences(seed: int = 0, fixed: int | None = None) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(N_ITEMS)
    out = []
    for length in synthetic_lengths(rng, fixed):
        pos = np.empty(length, dtype=np.int64)
        pos[0] = rng.integers(N_ITEMS)
        step = rng.integers(1, 4, size=length)
        jump = rng.random(length) < 0.3
        for t in range(1, length):  # data generation only, not part of any timing
            pos[t] = rng.integers(N_ITEMS) if jump[t] else (pos[t - 1] + step[t]) % N_ITEMS
        out.append(order[pos])
    return out


def as_interactions(sequences: list[np.ndarray]) -> Interactions:
    lengths = np.array([len(s) for s in sequences])
    n = int(lengths.sum())
    return Interactions(
        user=np.repeat(np.arange(len(sequences)), lengths).astype(np.int32),
        item=np.concatenate(sequences).astype(np.int32),
        session=np.full(n, -1, dtype=np.int32),
        kind=np.zeros(n, dtype=np.int8),
        timestamp=np.arange(n, dtype=np.int64),
        value=np.full(n, np.nan, dtype=np.float32),
        users=IdIndex([f"u{u}" for u in range(len(sequences))]),
        items=IdIndex([f"i{i}" for i in range(N_ITEMS)]),
        sessions=IdIndex([]),
        event_types=("view",),
    )


CONFIG = SASRecConfig(hidden=64, max_len=50, layers=2, heads=1, epochs=1, batch_size=512, num_threads=2)


def shelf_epoch(data: Interactions) -> tuple[Callable[[], float], int, int]:
    """A timer of one training epoch over ``data``, its window count and its target count."""
    inputs, targets, _ = _windows(_build_sequences(data, CONFIG), CONFIG.max_len)

    def run() -> float:
        started = time.perf_counter()
        SASRec(CONFIG).fit(data)
        return time.perf_counter() - started

    return run, len(inputs), int((targets > 0).sum())


def _numpy2_aliases() -> None:
    """RecBole 1.2.1 still uses aliases numpy 2 removed."""
    for old, new in {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_, "string_": np.bytes_,
                     "bool8": np.bool_, "int0": np.intp, "uint0": np.uintp, "float": float, "int": int,
                     "bool": bool, "object": object, "long": np.int64}.items():
        if not hasattr(np, old):
            setattr(np, old, new)


def recbole_steps(sequences: list[np.ndarray]) -> tuple[Callable[[int], tuple[int, float]], int]:
    """A timer of RecBole SASRec training steps (samples, seconds) and its training sample count."""
    _numpy2_aliases()
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec as RecBoleSASRec

    torch.autograd.set_detect_anomaly(False)  # RecBole's import turns it on (halves its speed)
    folder = Path(tempfile.mkdtemp()) / "synth"
    folder.mkdir()
    with (folder / "synth.inter").open("w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        t = 0
        for u, seq in enumerate(sequences):
            for item in seq:
                f.write(f"{u}\t{item}\t{t}\n")
                t += 1
    config = Config(
        model="SASRec",
        dataset="synth",
        config_dict={
            "data_path": str(folder.parent), "hidden_size": 64, "MAX_ITEM_LIST_LENGTH": 50, "n_layers": 2,
            "n_heads": 1, "train_batch_size": 512, "train_neg_sample_args": None, "loss_type": "CE",
            "epochs": 1, "use_gpu": False, "device": "cpu", "show_progress": False, "state": "ERROR",
            "seed": 0, "user_inter_num_interval": "[2,inf)", "item_inter_num_interval": "[0,inf)",
            # Without it RecBole 1.2.1 loads only user and item ids and then fails to sort by time.
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        },
    )
    logging.getLogger().setLevel(logging.ERROR)
    torch.set_num_threads(2)
    torch.autograd.set_detect_anomaly(False)
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    model = RecBoleSASRec(config, train_data.dataset)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def forever() -> Iterator[object]:
        while True:
            yield from train_data

    batches = forever()

    def step() -> int:
        interaction = next(batches)
        optimiser.zero_grad()
        loss = model.calculate_loss(interaction)
        loss.backward()
        optimiser.step()
        return len(interaction)

    def run(n_batches: int) -> tuple[int, float]:
        step()  # warm-up, untimed
        started = time.perf_counter()
        samples = sum(step() for _ in range(n_batches))
        return samples, time.perf_counter() - started

    return run, len(train_data.dataset)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions; medians are reported")
    parser.add_argument("--recbole-batches", type=int, default=8, help="timed RecBole batches per repetition")
    parser.add_argument("--full-sequences", type=int, default=5_120, help="sequences of 51 items for the full-window run")
    parser.add_argument("--skip-recbole", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    sequences = synthetic_sequences()
    full = synthetic_sequences(1, fixed=51)[: args.full_sequences]
    shelf_real, real_windows, real_targets = shelf_epoch(as_interactions(sequences))
    shelf_full, full_windows, full_targets = shelf_epoch(as_interactions(full))
    recbole, recbole_samples = None, 0
    if not args.skip_recbole:
        try:
            recbole, recbole_samples = recbole_steps(sequences)
        except Exception as exc:  # noqa: BLE001 - report why the peer could not run
            print(f"RecBole could not run: {type(exc).__name__}: {exc}")
    shelf_real()  # warm-up (allocator, oneDNN/MKL kernels)
    real_s, full_s, recbole_rate = [], [], []
    loads = []
    for rep in range(args.reps):
        loads.append(os.getloadavg()[0])
        real_s.append(shelf_real())
        if recbole is not None:
            samples, seconds = recbole(args.recbole_batches)
            recbole_rate.append(samples / seconds)
        full_s.append(shelf_full())
        print(f"rep {rep + 1}: shelf {real_s[-1]:.1f} s/epoch, full {full_s[-1]:.1f} s/epoch"
              + (f", RecBole {recbole_rate[-1]:,.0f} samples/s" if recbole_rate else ""), flush=True)
    base = median(recbole_rate) if recbole_rate else float("nan")
    rows = []
    if recbole_rate:
        rows.append(f"| RecBole 1.2.1 SASRec (CE) | realistic lengths, {recbole_samples:,} prefix samples | {base:,.0f} | – | 1.0× |")
    for label, seconds, windows, targets in (
        (f"realistic lengths, {real_windows:,} windows", median(real_s), real_windows, real_targets),
        (f"{len(full):,} × 51 items, every window full", median(full_s), full_windows, full_targets),
    ):
        rate = targets / seconds
        rows.append(f"| shelf SASRec (gBCE) | {label} | {rate:,.0f} | {windows / seconds:,.0f} | {rate / base:.1f}× |")
    body = "\n".join([
        f"Data: {N_SEQUENCES:,} synthetic sequences (mean length {np.mean([len(s) for s in sequences]):.1f}) over "
        f"{N_ITEMS:,} items; hidden 64, max length 50, 2 layers, 1 head, batch 512, 2 threads. Medians of "
        f"{args.reps} interleaved repetitions (shelf: one epoch each; RecBole: {args.recbole_batches} batches each); "
        f"1-minute load average {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} cores.",
        "",
        "\"Sequences/s\" counts training sequences the way RecBole does: one per (prefix → next item) "
        "example at max length 50. For shelf that is its next-item targets/s (one causal pass trains every "
        "prefix of a window); \"windows/s\" is shelf's forward/backward passes over windows of up to 50 items.",
        "",
        "| model | data | sequences/s (RecBole's count = targets/s) | windows/s | vs RecBole |",
        "|---|---|---|---|---|",
        *rows,
    ])
    if args.dry_run:
        print(body)
    else:
        write_section("sasrec", "SASRec training throughput (shelf vs RecBole)", body, command_line())


if __name__ == "__main__":
    main()
