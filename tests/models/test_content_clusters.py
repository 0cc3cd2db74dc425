"""Content on big catalogues: item clusters answer broad profiles approximately, and only there.

``ContentConfig.approximate_from`` gates the clusters by catalogue size; here it is lowered so the
small conformance catalogue gets them. With a candidate budget as large as the catalogue every
cluster is read, so the answer is the exact one; with a small budget the answer is a subset of
the catalogue scored exactly as ``at()`` scores it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from shelf.models.base import Interactions, Query
from shelf.models.conformance import make_interactions
from shelf.models.retrieval import ContentRetriever, load_retriever
from shelf.models.retrieval.content import ContentConfig
from shelf.models.retrieval.scores import DenseScores, weighted_rows


@pytest.fixture(scope="module")
def data() -> Interactions:
    return make_interactions(seed=0)


def _queries(data: Interactions) -> list[Query]:
    users = [Query(user_id=str(u)) for u in data.users.ids[:15]]
    sessions = [Query(session_items=tuple(str(i) for i in data.items.ids[k : k + 3])) for k in range(0, 30, 5)]
    return users + sessions


def test_small_catalogues_and_none_stay_exact(data: Interactions) -> None:
    assert ContentRetriever().fit(data).centroids_ is None, "below approximate_from: no clusters"
    assert ContentRetriever(ContentConfig(approximate_from=None)).fit(data)._clusters() is None


def test_a_budget_covering_the_catalogue_gives_the_exact_answer(data: Interactions) -> None:
    config = ContentConfig(approximate_from=1, cluster_size=8, min_candidates=10**6)
    approx, exact = ContentRetriever(config).fit(data), ContentRetriever(replace(config, approximate_from=None)).fit(data)
    assert approx.centroids_ is not None and len(approx.centroids_) > 1
    for query in _queries(data):
        a, e = approx.query_scores(query), exact.query_scores(query)
        a.top(1)  # force the broad path below whatever pruning would decide
        got_items, got_values = a.clusters.top(a.profile, 20)
        want_items, want_values = DenseScores(e.dense()).top(20)
        np.testing.assert_allclose(got_values, want_values, rtol=1e-6)
        assert set(got_items[got_values > want_values[-1] * (1 + 1e-6)]) <= set(want_items.tolist())
        np.testing.assert_array_equal(a.dense(), e.dense())  # dense() and at() never approximate


def test_a_small_budget_reads_fewer_items_and_scores_them_exactly(data: Interactions, tmp_path: Path) -> None:
    model = ContentRetriever(ContentConfig(approximate_from=1, cluster_size=8, candidate_factor=1, min_candidates=1)).fit(data)
    for query in _queries(data):
        scores = model.query_scores(query)
        items, values = scores.clusters.top(scores.profile, 5)
        assert len(items) <= 5 and len(set(items.tolist())) == len(items)
        assert np.all(values > 0) and np.all(np.diff(values) <= 0), "positive, best first"
        np.testing.assert_allclose(values, scores.at(items), rtol=1e-6)
    loaded = load_retriever(model.save(tmp_path / "content"))
    assert isinstance(loaded, ContentRetriever)
    np.testing.assert_array_equal(loaded.cluster_of_, model.cluster_of_)
    for query in _queries(data):
        a, b = loaded.retrieve(query, 7), model.retrieve(query, 7)
        assert a.items.tolist() == b.items.tolist() and np.array_equal(a.scores, b.scores)


def test_weighted_rows_matches_the_row_by_row_sum() -> None:
    rng = np.random.default_rng(0)
    matrix = sp.random(200, 50, density=0.1, format="csr", dtype=np.float32, random_state=1)
    for size in (0, 1, 5, 30):
        rows = rng.integers(0, 200, size)
        weights = rng.random(size)
        idx, values = weighted_rows(matrix, rows, weights)
        dense = np.zeros(50)
        for r, w in zip(rows, weights, strict=True):
            dense += (matrix[r].toarray()[0] * np.float32(w)).astype(np.float64)
        assert np.array_equal(idx, np.flatnonzero(np.bincount(matrix[rows].indices, minlength=50))) if size else len(idx) == 0
        np.testing.assert_allclose(values, dense[idx], rtol=1e-12)


def test_weighted_rows_sums_alike_over_few_and_many_columns() -> None:
    """Few columns (content's features) are binned densely, many (co-occurrence's items) sorted."""
    rng = np.random.default_rng(3)
    for width in (50, 20_000):
        matrix = sp.random(300, width, density=min(1.0, 20 / width), format="csr", dtype=np.float32, random_state=2)
        for size in (1, 4, 40):
            rows = rng.integers(0, 300, size)
            weights = rng.random(size)
            idx, values = weighted_rows(matrix, rows, weights)
            expect = np.zeros(width)
            for r, w in zip(rows, weights, strict=True):
                expect += (matrix[r].toarray()[0] * np.float32(w)).astype(np.float64)
            assert idx.tolist() == np.flatnonzero(np.bincount(matrix[rows].indices, minlength=width)).tolist()
            np.testing.assert_allclose(values, expect[idx], rtol=1e-12)


def test_stored_history_profiles_are_the_per_request_ones(data: Interactions, tmp_path: Path) -> None:
    """Known shoppers without session items read their profile from ``profiles_`` (computed at
    fit, saved with the model): the same features and weights, bit for bit, as building it from
    their history per request, which bundles saved before it existed still do."""
    model = ContentRetriever().fit(data)
    assert model.profiles_ is not None and model.profiles_.shape == (data.n_users, model.item_vectors_.shape[1])
    loaded = load_retriever(model.save(tmp_path / "content"))
    legacy = ContentRetriever().fit(data)
    legacy.profiles_ = None  # what a bundle without stored profiles loads as
    users = [str(u) for u in data.users.ids]
    checked = 0
    for user in users:
        stored, built, reloaded = model.query_scores(Query(user_id=user)), legacy.query_scores(Query(user_id=user)), loaded.query_scores(Query(user_id=user))
        for other in (built, reloaded):
            np.testing.assert_array_equal(stored.features, other.features)
            np.testing.assert_array_equal(stored.weights, other.weights)
            np.testing.assert_array_equal(stored.top(10)[0], other.top(10)[0])
        checked += len(stored.features) > 0
    assert checked > len(users) // 2
    # With session items the profile is built per request, history included.
    query = Query(user_id=users[0], session_items=(str(data.items.ids[0]),))
    np.testing.assert_array_equal(model.query_scores(query).weights, legacy.query_scores(query).weights)
    assert not np.array_equal(model.query_scores(query).weights, model.query_scores(Query(user_id=users[0])).weights)
