"""Benchmark: full-catalogue evaluation of a random-score model, 100k users × 100k items.

Run ``python -m bench evaluation [--users N] [--items M] [--runs R]``; writes the medians of R runs
to the ``evaluation`` section of BENCHMARKS.md, with the time split into scoring and evaluation.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from bench.common import command_line, median, write_section
from shelf.evaluation.runner import EvaluationOptions, evaluate
from shelf.evaluation.splits import UserSplit
from shelf.models.base import IdIndex, Interactions, Query, Scored
from shelf.schema import EVENT_SCHEMA

CUT = datetime(2024, 3, 1, tzinfo=UTC)


@dataclass
class RandomScores:
    """Scores = random user factors · random item factors (a cheap, untrained MF stand-in)."""

    factors: int = 16
    seed: int = 0
    name: str = "random"

    def fit(self, data: Interactions) -> RandomScores:
        rng = np.random.default_rng(self.seed)
        self.user_ = rng.standard_normal((data.n_users, self.factors), dtype=np.float32)
        self.item_ = rng.standard_normal((data.n_items, self.factors), dtype=np.float32)
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return self.user_[users] @ self.item_.T

    def retrieve(self, query: Query, n: int) -> Scored:
        raise NotImplementedError


def synthetic_split(n_users: int, n_items: int, history: int = 10, relevant: int = 3, seed: int = 0) -> UserSplit:
    rng = np.random.default_rng(seed)
    users = IdIndex(np.array([f"u{i}" for i in range(n_users)], dtype=object))
    items = IdIndex(np.array([f"i{i}" for i in range(n_items)], dtype=object))
    n_train = n_users * history
    cut_us = int(CUT.timestamp() * 1e6)
    train = Interactions(
        user=np.repeat(np.arange(n_users, dtype=np.int32), history),
        item=rng.zipf(1.3, n_train).astype(np.int64) % n_items,
        session=np.full(n_train, -1, dtype=np.int32),
        kind=np.zeros(n_train, dtype=np.int8),
        timestamp=np.sort(rng.integers(cut_us - 30 * 86_400_000_000, cut_us, n_train)),
        value=np.full(n_train, np.nan, dtype=np.float32),
        users=users, items=items, sessions=IdIndex([]), event_types=("view",), as_of=CUT,
    )
    n_test = n_users * relevant
    test_user = np.repeat(np.arange(n_users), relevant)
    test_item = rng.zipf(1.3, n_test) % n_items
    test = pa.table({
        "event_id": pa.array([f"t{i}" for i in range(n_test)]),
        "user_id": pa.array(users.ids[test_user].tolist(), pa.string()),
        "session_id": pa.nulls(n_test, pa.string()),
        "item_id": pa.array(items.ids[test_item].tolist(), pa.string()),
        "type": pa.array(["purchase"] * n_test),
        "timestamp": pa.array([CUT + timedelta(hours=1)] * n_test, EVENT_SCHEMA.field("timestamp").type),
    })
    return UserSplit("synthetic", train, test, np.arange(n_users), np.array([], dtype=object), CUT, {})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--views", default="all,new")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    split = synthetic_split(args.users, args.items)
    views = tuple(args.views.split(","))
    options = EvaluationOptions()
    totals, scoring, waiting, evaluating = [], [], [], []
    for i in range(args.runs):
        started = time.perf_counter()
        result = evaluate(None, split, {"random": RandomScores}, ks=(10, 20), views=views, options=options)
        total = time.perf_counter() - started
        run = result.runs["random"]
        totals.append(total)
        scoring.append(run.score_s)
        waiting.append(run.score_wait_s)
        evaluating.append(total - run.fit_s - run.score_wait_s)
        print(f"run {i + 1}: total {total:.1f} s, score_users {run.score_s:.1f} s, waited for scores {run.score_wait_s:.1f} s, evaluation {evaluating[-1]:.1f} s", flush=True)
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    body = f"""
A random 16-factor model (`user_factors[users] @ item_factors.T`, float32) scored in blocks of
{options.batch_size} users over the whole catalogue; top-20 per user for the `all` view and, from the
same ranking, without each user's seen items for the `new` view; every accuracy and beyond-accuracy
metric at K = 10, 20. The next block is scored in a worker thread while this one is ranked
(score_ahead={options.score_ahead}, BLAS threads while scoring: {options.score_blas_threads}), so
*score_users* (time inside the model) and *evaluation* (ranking, metrics and setup on the main
thread: total − fit − time waiting for score blocks) overlap and can sum to more than the total.
Median of {args.runs} run(s); the machine is shared, so wall times are noisy.

| users | items | views | ks | score_users s | waited for scores s | evaluation s | total s | BLAS threads (env) |
|---:|---:|---|---|---:|---:|---:|---:|---|
| {args.users:,} | {args.items:,} | {'+'.join(views)} | 10,20 | {median(scoring):.1f} | {median(waiting):.1f} | {median(evaluating):.1f} | {median(totals):.1f} | {threads} |
"""
    write_section("evaluation", "Offline evaluation: full-catalogue top-K and metrics", body, command_line())


if __name__ == "__main__":
    main()
