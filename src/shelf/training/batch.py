"""Batch recommendations for raw user ids, answered as the live API would answer each one."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shelf.models.base import Query


def recommend_users(model: Any, user_ids: Sequence[str], pseudonymize: Callable[[str], str], out: Path, *, n: int) -> int:
    """Write ``user,item,rank,score`` for each raw user id; returns the rows written.

    Unknown shoppers get the model's cold-start answer, so every user gets up to ``n`` items.
    """
    written = 0
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user", "item", "rank", "score"])
        for raw in user_ids:
            scored = model.retrieve(Query(user_id=pseudonymize(raw)), n)
            for rank, (item, score) in enumerate(zip(scored.items.tolist(), scored.scores.tolist(), strict=True), start=1):
                writer.writerow([raw, item, rank, f"{score:.6g}"])
                written += 1
    return written
