"""SASRec training throughput: shelf's SASRec (gBCE) beside RecBole's SASRec, same data, same run.

Data: 20,000 synthetic shopper sequences over 10,000 items. Lengths are 2 + log-normal
(median ~9, mean ~14, a long tail cut into 50-item windows), because real shop sequences are
short (the shared YooChoose and REES46 heads average ~4 events per session / user). The next
item is, 70% of the time, a neighbour of the previous one in a shuffled catalogue order, so
there is a sequential pattern to learn. A second shelf run uses sequences of exactly 51 items
(every window full) as the worst case.

Units (they differ, so both are printed):
- shelf trains each window (≤ 50 inputs) on all its next-item targets in one pass: "sequences/s"
  is windows/s and "targets/s" counts next-item predictions trained per second.
- RecBole (1.2.1, its default CE loss over the full catalogue, inner size 256, 2 heads) expands
  each user into one training sample per prefix (n - 1 samples, each padded to 50, one target
  each): its "sequences/s" is samples/s and equals its targets/s.

Both use hidden 64, max length 50, 2 layers, batch 512, 2 threads. Run:
``.venv/bin/python bench/bench_sasrec.py [--recbole-batches 20]``. Timings on a shared machine are
noisy; both frameworks are measured in the same process, one after the other.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

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


def shelf_throughput(data: Interactions, epochs: int) -> tuple[float, float, int]:
    config = SASRecConfig(hidden=64, max_len=50, layers=2, heads=1, epochs=epochs, batch_size=512, num_threads=2)
    inputs, targets, _ = _windows(_build_sequences(data, config), config.max_len)
    SASRec(SASRecConfig(**{**config.to_json(), "epochs": 1})).fit(data)  # warm-up
    start = time.perf_counter()
    SASRec(config).fit(data)
    seconds = time.perf_counter() - start
    windows, n_targets = len(inputs) * epochs, int((targets > 0).sum()) * epochs
    return windows / seconds, n_targets / seconds, len(inputs)


def _numpy2_aliases() -> None:
    """RecBole 1.2.1 still uses aliases numpy 2 removed."""
    for old, new in {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_, "string_": np.bytes_,
                     "bool8": np.bool_, "int0": np.intp, "uint0": np.uintp, "float": float, "int": int,
                     "bool": bool, "object": object, "long": np.int64}.items():
        if not hasattr(np, old):
            setattr(np, old, new)


def recbole_throughput(sequences: list[np.ndarray], batches: int) -> tuple[float, int]:
    _numpy2_aliases()
    import logging

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
            "train_batch_size": 512, "train_neg_sample_args": None, "loss_type": "CE", "epochs": 1,
            "use_gpu": False, "device": "cpu", "show_progress": False, "state": "ERROR", "seed": 0,
            "user_inter_num_interval": "[2,inf)", "item_inter_num_interval": "[0,inf)",
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
    samples, elapsed = 0, 0.0
    for step, interaction in enumerate(train_data):
        if step > batches:
            break
        start = time.perf_counter()
        optimiser.zero_grad()
        loss = model.calculate_loss(interaction)
        loss.backward()
        optimiser.step()
        if step > 0:  # first batch is warm-up
            elapsed += time.perf_counter() - start
            samples += len(interaction)
    return samples / elapsed, len(train_data.dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--recbole-batches", type=int, default=20)
    parser.add_argument("--skip-recbole", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    sequences = synthetic_sequences()
    seq_s, tgt_s, windows = shelf_throughput(as_interactions(sequences), args.epochs)
    full_seq_s, full_tgt_s, full_windows = shelf_throughput(as_interactions(synthetic_sequences(1, fixed=51)), 1)
    print(f"data: {N_SEQUENCES:,} sequences, mean length {np.mean([len(s) for s in sequences]):.1f}, {N_ITEMS:,} items, {windows:,} windows")
    print("| model | data | sequences/s | next-item targets/s | ratio (seq/s) | ratio (targets/s) |")
    print("|---|---|---|---|---|---|")
    rb: tuple[float, int] | None = None
    if not args.skip_recbole:
        try:
            rb = recbole_throughput(sequences, args.recbole_batches)
        except Exception as exc:  # noqa: BLE001 - report why the peer could not run
            print(f"RecBole could not run: {type(exc).__name__}: {exc}")
    base = rb[0] if rb else float("nan")
    if rb:
        print(f"| RecBole 1.2.1 SASRec (CE) | realistic lengths ({rb[1]:,} prefix samples) | {rb[0]:,.0f} | {rb[0]:,.0f} | 1.0× | 1.0× |")
    print(f"| shelf SASRec gBCE | realistic lengths | {seq_s:,.0f} | {tgt_s:,.0f} | {seq_s / base:.1f}× | {tgt_s / base:.1f}× |")
    print(f"| shelf SASRec gBCE | all windows full (50) | {full_seq_s:,.0f} | {full_tgt_s:,.0f} | {full_seq_s / base:.1f}× | {full_tgt_s / base:.1f}× |")


if __name__ == "__main__":
    main()
