"""Exposure fairness across item groups (brands, categories) and how to measure its effect.

A constraint bounds each group's share of the ``n`` slots; :func:`exposure_effect` compares the
exposure distribution (per group share, Gini coefficient across groups) before and after.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from shelf.models.base import Query, Scored
from shelf.rerank.catalogue import NO_META, Catalogue, Entry, category_at, entries, to_scored

GroupAttribute = Literal["brand", "category"]


def group_of(catalogue: Catalogue, item: str, attribute: GroupAttribute, level: int | None = 1) -> str | None:
    meta = catalogue.get(item, NO_META)
    return meta.brand if attribute == "brand" else category_at(meta, level)


@dataclass(frozen=True)
class ExposureFairness:
    """Keeps each group's share of the top ``n`` slots within ``[min_share, max_share]``.

    Greedy, best candidate first: a candidate is skipped when its group is at its cap
    (``floor(max_share * n)``) or when taking it would leave too few slots for groups still below
    their floor (``ceil(min_share * n)``, limited to the candidates a group has). Items without the
    attribute are unconstrained. When no candidate satisfies the bounds (too few groups), the best
    remaining one is taken: the list is never shorter than the candidates allow.
    """

    catalogue: Catalogue
    attribute: GroupAttribute = "brand"
    min_share: float = 0.0
    max_share: float = 1.0
    level: int | None = 1  # for attribute="category"

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_share <= self.max_share <= 1.0:
            raise ValueError(
                f"fairness shares must satisfy 0 <= min_share <= max_share <= 1, got {self.min_share}, {self.max_share}"
            )

    def __call__(self, query: Query, items: Scored, n: int) -> Scored:
        remaining = entries(items)
        slots = min(n, len(remaining))
        groups = [group_of(self.catalogue, e.item, self.attribute, self.level) for e in remaining]
        available = Counter(g for g in groups if g is not None)
        floor_count = {g: min(math.ceil(self.min_share * slots - 1e-9), c) for g, c in available.items()}
        cap = math.floor(self.max_share * slots + 1e-9)
        counts: Counter[str] = Counter()
        pool = list(zip(remaining, groups, strict=True))
        chosen: list[Entry] = []
        for slot in range(slots):
            left_after = slots - slot - 1
            deficit = sum(max(0, floor_count[g] - counts[g]) for g in floor_count)
            pick = None
            for i, (_, g) in enumerate(pool):
                helps = g is not None and counts[g] < floor_count.get(g, 0)
                if g is not None and counts[g] >= cap:
                    continue
                if deficit - (1 if helps else 0) > left_after:
                    continue
                pick = i
                break
            if pick is None:  # bounds cannot all hold: prefer closing a deficit, else the best
                pick = next((i for i, (_, g) in enumerate(pool) if g is not None and counts[g] < floor_count.get(g, 0)), 0)
            entry, g = pool.pop(pick)
            chosen.append(entry)
            if g is not None:
                counts[g] += 1
        return to_scored(chosen + [e for e, _ in pool])


def position_weights(n: int, discount: Literal["none", "log"] = "log") -> np.ndarray:
    """Exposure of each slot: 1 everywhere, or ``1 / log2(rank + 1)`` (rank from 1) as in DCG."""
    if discount == "none":
        return np.ones(n)
    return 1.0 / np.log2(np.arange(2, n + 2))


def exposure_shares(
    lists: Iterable[Scored],
    catalogue: Catalogue,
    attribute: GroupAttribute = "brand",
    *,
    n: int,
    discount: Literal["none", "log"] = "log",
    level: int | None = 1,
) -> dict[str, float]:
    """Each group's share of the total (position-weighted) exposure over the top ``n`` of ``lists``."""
    weights = position_weights(n, discount)
    totals: dict[str, float] = {}
    for scored in lists:
        for rank, item in enumerate(scored.items[:n]):
            g = group_of(catalogue, str(item), attribute, level)
            if g is not None:
                totals[g] = totals.get(g, 0.0) + float(weights[rank])
    grand = sum(totals.values())
    return {g: v / grand for g, v in sorted(totals.items())} if grand > 0 else {}


def gini(values: Sequence[float]) -> float:
    """Gini coefficient of non-negative values: 0 equal, towards 1 concentrated."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if len(x) == 0 or x.sum() <= 0:
        return 0.0
    ranks = np.arange(1, len(x) + 1)
    return float((2.0 * (ranks * x).sum()) / (len(x) * x.sum()) - (len(x) + 1) / len(x))


@dataclass(frozen=True)
class ExposureEffect:
    """Exposure per group and its inequality before and after a reranker."""

    share_before: dict[str, float]
    share_after: dict[str, float]
    gini_before: float
    gini_after: float


def exposure_effect(
    before: Sequence[Scored],
    after: Sequence[Scored],
    catalogue: Catalogue,
    attribute: GroupAttribute = "brand",
    *,
    n: int,
    groups: Iterable[str] | None = None,
    discount: Literal["none", "log"] = "log",
) -> ExposureEffect:
    """Compare exposure over ``groups`` (default: every group seen before or after).

    A group that gets no exposure counts as 0 in the Gini coefficient, so pass the full set of
    groups (e.g. every brand among the candidates) to measure who is left out.
    """
    share_before = exposure_shares(before, catalogue, attribute, n=n, discount=discount)
    share_after = exposure_shares(after, catalogue, attribute, n=n, discount=discount)
    universe = sorted(set(groups) if groups is not None else set(share_before) | set(share_after))
    return ExposureEffect(
        share_before={g: share_before.get(g, 0.0) for g in universe},
        share_after={g: share_after.get(g, 0.0) for g in universe},
        gini_before=gini([share_before.get(g, 0.0) for g in universe]),
        gini_after=gini([share_after.get(g, 0.0) for g in universe]),
    )
