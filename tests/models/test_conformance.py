"""Every retriever runs every check of shelf.models.conformance; adding one is one line below."""

from __future__ import annotations

from pathlib import Path

import pytest

from shelf.models.base import Interactions
from shelf.models.conformance import CHECKS, RetrieverCase, make_interactions
from shelf.models.retrieval import (
    ALSConfig,
    ALSRetriever,
    BlendConfig,
    BlendRetriever,
    ContentRetriever,
    CoOccurrenceRetriever,
    EASERetriever,
    NeighboursConfig,
    NeighboursRetriever,
    PopularityConfig,
    PopularityRetriever,
    RepeatRetriever,
    SequentialRulesRetriever,
    default_blend,
)


def small_blend() -> BlendRetriever:
    sources = {
        "repeat": RepeatRetriever(),
        "cooccurrence": CoOccurrenceRetriever(),
        "popularity": PopularityRetriever(),
    }
    return BlendRetriever(sources, BlendConfig(weights={"repeat": 2.0}))


CASES = [
    RetrieverCase("popularity", PopularityRetriever),
    RetrieverCase("popularity-all-time", lambda: PopularityRetriever(PopularityConfig(half_life_days=None, segments=()))),
    RetrieverCase("repeat", RepeatRetriever),
    RetrieverCase("cooccurrence", CoOccurrenceRetriever),
    RetrieverCase("als", lambda: ALSRetriever(ALSConfig(factors=8, iterations=4, seed=3))),
    RetrieverCase("ease", EASERetriever),
    RetrieverCase("neighbours", NeighboursRetriever),
    RetrieverCase("neighbours-few", lambda: NeighboursRetriever(NeighboursConfig(neighbours=3, half_life_days=None, pool_size=5))),
    RetrieverCase("sequential", SequentialRulesRetriever),
    RetrieverCase("content", ContentRetriever),
    RetrieverCase("blend-small", small_blend, always_fills=True),
    RetrieverCase("blend-default", lambda: default_blend(seed=1), always_fills=True),
]


@pytest.fixture(scope="module")
def data() -> Interactions:
    return make_interactions(seed=0)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_conformance(case: RetrieverCase, check, data: Interactions, tmp_path: Path) -> None:
    check(case, data, tmp_path)
