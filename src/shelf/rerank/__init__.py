"""Rerankers: pure business rules over a ranked list (stock, purchases, boosts, pins, new
launches, diversity, exposure fairness), composed by :func:`build_pipeline`."""

from shelf.rerank.catalogue import Catalogue, Chosen, ItemMeta, Reranker, StockedCatalogue
from shelf.rerank.fairness import (
    ExposureEffect,
    ExposureFairness,
    exposure_effect,
    exposure_shares,
    gini,
)
from shelf.rerank.pipeline import (
    AttributeRule,
    Diversity,
    Fairness,
    NewLaunches,
    Pipeline,
    RerankConfig,
    build_pipeline,
)
from shelf.rerank.rules import (
    Boost,
    Bury,
    CategoryCaps,
    Dedupe,
    DropExcluded,
    DropOutOfStock,
    DropPurchased,
    Filters,
    MaximalMarginalRelevance,
    Pin,
    ReserveNewLaunches,
)

__all__ = [
    "AttributeRule",
    "Boost",
    "Bury",
    "Catalogue",
    "CategoryCaps",
    "Chosen",
    "Dedupe",
    "Diversity",
    "DropExcluded",
    "DropOutOfStock",
    "DropPurchased",
    "ExposureEffect",
    "ExposureFairness",
    "Fairness",
    "Filters",
    "ItemMeta",
    "MaximalMarginalRelevance",
    "NewLaunches",
    "Pin",
    "Pipeline",
    "RerankConfig",
    "Reranker",
    "ReserveNewLaunches",
    "StockedCatalogue",
    "build_pipeline",
    "exposure_effect",
    "exposure_shares",
    "gini",
]
