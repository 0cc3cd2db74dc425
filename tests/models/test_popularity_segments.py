"""Segment popularity: the sparse form of the segment mix equals its definition."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from shelf.models.base import Context, Interactions, Query
from shelf.models.conformance import make_interactions
from shelf.models.retrieval import PopularityConfig, PopularityRetriever


@pytest.fixture(scope="module")
def data() -> Interactions:
    return make_interactions(seed=0)


def definition(pop: PopularityRetriever, codes: dict[str, int]) -> np.ndarray:
    """Mean over segments of (row + prior * base) / (row total + prior), densely, as documented."""
    counts = pop.global_.astype(np.float64)
    base = counts / counts.sum()
    prior = pop.config.segment_prior
    rows = [pop.segment_counts_[s].getrow(c).toarray().ravel().astype(np.float64) for s, c in codes.items()]
    return np.mean([(row + prior * base) / (row.sum() + prior) for row in rows], axis=0)


@pytest.mark.parametrize("prior", [0.0, 1.0, 50.0])
def test_segment_scores_match_their_definition(data: Interactions, prior: float) -> None:
    pop = PopularityRetriever(PopularityConfig(segment_prior=prior)).fit(data)
    queries = [
        Query(context=Context(region="north")),
        Query(context=Context(region="south", timestamp=datetime(2024, 5, 3, 2, tzinfo=UTC))),
        Query(context=Context(timestamp=datetime(2024, 5, 3, 14, tzinfo=UTC))),
        Query(user_id=str(data.users.ids[0]), context=Context(timestamp=datetime(2024, 5, 3, 20, tzinfo=UTC))),
    ]
    checked = 0
    for query in queries:
        codes = pop._segment_codes(query)
        if not codes:
            continue
        got = pop._scores_for(codes)
        np.testing.assert_allclose(got, definition(pop, codes).astype(np.float32), rtol=1e-6)
        assert abs(float(got.sum()) - 1.0) < 1e-4  # still a distribution
        checked += 1
    assert checked >= 3


def test_scores_are_unchanged_by_repeated_and_cached_calls(data: Interactions) -> None:
    pop = PopularityRetriever().fit(data)
    codes = pop._segment_codes(Query(context=Context(region="north")))
    first = pop._scores_for(codes).copy()
    np.testing.assert_array_equal(pop._scores_for(codes), first)
    with pytest.raises(ValueError):
        pop._distribution()[0] = 1.0  # the shared distribution cannot be written through
