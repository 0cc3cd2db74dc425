"""Typed rerank configuration and the pipeline that composes the rules in a documented order.

Default order (:func:`build_pipeline`), and why:

1. ``Dedupe``, ``DropExcluded``, ``DropOutOfStock``, ``DropPurchased``: filters first, so no
   later rule can place an item that must not be shown (and none of them adds items back).
   They run fused, as one :class:`~shelf.rerank.rules.Filters` pass (same result, one lookup
   per candidate).
2. boosts, then buries: they change what "best" means before any slot is allocated.
3. diversity (MMR or per-category caps) over the boosted order.
4. new-launch slots, then the exposure-fairness bounds: quotas are applied to the diversified
   list, and fairness, applied later, wins over the new-launch quota where they conflict.
5. pins last: a merchandiser's explicit pin is never moved by an automatic rule (so pins may
   break a fairness bound; that is the merchandiser's call).

A custom order is one ``Pipeline((...))`` away.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from shelf.models.base import Query, Scored
from shelf.rerank.catalogue import Attribute, Catalogue, Chosen, Reranker, as_chosen
from shelf.rerank.fairness import ExposureFairness, GroupAttribute
from shelf.rerank.rules import (
    Boost,
    Bury,
    CategoryCaps,
    Filters,
    MaximalMarginalRelevance,
    Pin,
    ReserveNewLaunches,
)


@dataclass(frozen=True)
class AttributeRule:
    """Boost, pin or bury the items whose ``attribute`` equals ``value`` (categories: by prefix)."""

    action: Literal["boost", "pin", "bury"]
    attribute: Attribute
    value: str
    factor: float = 1.5  # boost only: score multiplier

    def __post_init__(self) -> None:
        if self.action == "boost" and not self.factor > 0:
            raise ValueError(f"boost factor must be positive, got {self.factor}")


@dataclass(frozen=True)
class NewLaunches:
    share: float = 0.2  # of the n slots
    max_age: timedelta = timedelta(days=30)


@dataclass(frozen=True)
class Diversity:
    method: Literal["mmr", "caps"] = "mmr"
    level: int | None = 1  # category levels compared (None: the full path)
    mmr_lambda: float = 0.7
    max_per_category: int = 3


@dataclass(frozen=True)
class Fairness:
    attribute: GroupAttribute = "brand"
    min_share: float = 0.0
    max_share: float = 0.5


@dataclass(frozen=True)
class RerankConfig:
    """Which business rules apply to one surface (or one request); every field has a safe default."""

    drop_out_of_stock: bool = True
    unknown_stock: Literal["keep", "drop"] = "keep"  # items missing from the catalogue
    drop_purchased: bool = False
    rules: tuple[AttributeRule, ...] = ()
    diversity: Diversity | None = None
    new_launches: NewLaunches | None = None
    fairness: Fairness | None = None


@dataclass(frozen=True)
class Pipeline:
    """Applies rerankers in order and cuts the result to ``n``."""

    steps: tuple[Reranker, ...]

    def __call__(self, query: Query, items: Scored, n: int) -> Scored:
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        if len(self.steps) == 1 and isinstance(self.steps[0], Filters):
            return self.steps[0].head(query, items, n)  # filters alone: stop at n that pass
        for step in self.steps:
            items = step(query, items, n)
        return items.head(n)

    def first(self, query: Query, items: Scored, n: int) -> Chosen:
        """``self(query, items, n)`` as plain lists (what serving writes its response from); a
        pipeline of filters alone reads them straight off the candidates (``Filters.first``)."""
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        if len(self.steps) == 1 and isinstance(self.steps[0], Filters):
            return self.steps[0].first(query, items, n)
        return as_chosen(self(query, items, n))


def _no_purchases(user_id: str) -> Collection[str]:
    return ()


def build_pipeline(
    config: RerankConfig,
    catalogue: Catalogue,
    *,
    purchased: Callable[[str], Collection[str]] = _no_purchases,
) -> Pipeline:
    """The rules ``config`` asks for, in the default order described in this module."""
    steps: list[Reranker] = [
        Filters(
            catalogue if config.drop_out_of_stock else None,
            unknown=config.unknown_stock,
            purchased=purchased if config.drop_purchased else None,
        )
    ]
    steps += [Boost(catalogue, r.attribute, r.value, r.factor) for r in config.rules if r.action == "boost"]
    steps += [Bury(catalogue, r.attribute, r.value) for r in config.rules if r.action == "bury"]
    if config.diversity is not None:
        d = config.diversity
        if d.method == "mmr":
            steps.append(MaximalMarginalRelevance(catalogue, lambda_=d.mmr_lambda, level=d.level))
        else:
            steps.append(CategoryCaps(catalogue, max_per_category=d.max_per_category, level=d.level))
    if config.new_launches is not None:
        steps.append(ReserveNewLaunches(catalogue, share=config.new_launches.share, max_age=config.new_launches.max_age))
    if config.fairness is not None:
        f = config.fairness
        steps.append(ExposureFairness(catalogue, attribute=f.attribute, min_share=f.min_share, max_share=f.max_share))
    # Several pins: the first rule's items end on top, so apply them in reverse.
    pins: Sequence[AttributeRule] = [r for r in config.rules if r.action == "pin"]
    steps += [Pin(catalogue, r.attribute, r.value) for r in reversed(pins)]
    return Pipeline(tuple(steps))
