"""Content's compiled request path against the numpy forms it replaced (kept here as references):
the session profile, numpy's summation order, the posting total, the binned top-n selection and
the cluster scan of a sparse profile. Items, order and float bits must be identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from shelf.models.retrieval import kernels
from shelf.models.retrieval._base import positional_weights
from shelf.models.retrieval.scores import ItemClusters, LinearScores, weighted_rows


def _reference_session_profile(
    x: sp.csr_matrix,
    history: np.ndarray,
    history_weights: np.ndarray,
    session: np.ndarray,
    half_life: float,
    known: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """``ContentRetriever._query_scores``' numpy form for a shopper with session items."""
    items, weights = [], []
    history_total = 0.0
    if known:
        items.append(history.astype(np.int64))
        weights.append(history_weights.astype(np.float64))
        history_total = float(weights[-1].sum())
    if len(session):
        items.append(session.astype(np.int64))
        weights.append(
            positional_weights(len(session), half_life).astype(np.float64) * max(history_total, 1.0)
        )
    if not items:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    w = np.concatenate(weights)
    features, values = weighted_rows(x, np.concatenate(items), w / max(float(w.sum()), 1e-12))
    return features, np.asarray(values, dtype=np.float32)


@pytest.mark.parametrize("seed", range(12))
def test_session_profile_is_the_numpy_form(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = sp.random(300, 40, density=0.15, format="csr", dtype=np.float32, random_state=seed)
    x.data = np.round(x.data * 8) / 8 + 0.125  # coarse values: many equal products
    half_life = float(rng.choice([0.5, 3.0, 10.0]))
    # history lengths around numpy's summation blocks (8, 128), negative event weights included
    for length in (0, 1, 7, 8, 9, 127, 128, 129, 300):
        history = rng.integers(0, 300, length).astype(np.int32)
        history_weights = rng.choice([-1.0, 0.5, 1.0, 4.0, 8.0], length).astype(np.float32)
        for size in (0, 1, 4, 9):
            session = rng.integers(0, 300, size).astype(np.int64)  # repeats allowed
            for known in (True, False):
                if not known and not size:
                    continue  # an anonymous request without items has no profile (no kernel call)
                h = history if known else history[:0]
                hw = history_weights if known else history_weights[:0]
                want = _reference_session_profile(
                    x, history, history_weights, session, half_life, known
                )
                weights = positional_weights(size, half_life).astype(np.float64)
                got = kernels.session_profile(x.indptr, x.indices, x.data, h, hw, session, weights)
                np.testing.assert_array_equal(got[0], want[0])
                np.testing.assert_array_equal(got[1].view(np.uint32), want[1].view(np.uint32))
                assert got[0].dtype == np.int64 and got[1].dtype == np.float32


def test_pairwise_sum_is_numpys_sum() -> None:
    rng = np.random.default_rng(0)
    for n in [*range(0, 300), 511, 1000, 1031, 5000, 9000]:
        values = rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 6, n)  # rounding in every order
        got, want = kernels.pairwise_sum(values), np.sum(values)
        assert got == want or (n == 0 and got == 0.0), n


def test_posting_total_is_the_summed_lengths() -> None:
    x = sp.random(50, 30, density=0.2, format="csr", dtype=np.float32, random_state=0)
    by_feature = sp.csr_matrix(x.T)
    ptr = by_feature.indptr
    for features in (
        np.empty(0, dtype=np.int64),
        np.arange(30),
        np.array([29, 3, 3, 0], dtype=np.int32),
    ):
        assert kernels.posting_total(ptr, features) == int(
            (ptr[features + 1] - ptr[features]).sum()
        )


def _clusters(seed: int) -> tuple[sp.csr_matrix, ItemClusters]:
    rng = np.random.default_rng(seed)
    matrix = sp.random(400, 30, density=0.2, format="csr", dtype=np.float32, random_state=seed)
    matrix.data = np.round(matrix.data * 4) / 4 + 0.25  # tied scores
    cluster_of = rng.integers(-1, 12, 400)
    centroids = rng.random((12, 30)).astype(np.float32)
    return matrix, ItemClusters(
        matrix, cluster_of, centroids, candidate_factor=2, min_candidates=50
    )


@pytest.mark.parametrize("seed", range(6))
def test_a_sparse_profile_takes_the_dense_profiles_clusters(seed: int) -> None:
    """``top_sparse(features, weights)`` is ``top(p)`` for ``p[features] = weights``, whatever the
    features' order or dtype and with zero weights among them (``p.nonzero()`` skips those)."""
    rng = np.random.default_rng(seed)
    _, clusters = _clusters(seed)
    for _ in range(10):
        features = rng.choice(30, int(rng.integers(0, 12)), replace=False)
        weights = (rng.integers(0, 4, len(features)) / 4).astype(np.float32)  # zeros included
        profile = np.zeros(30, dtype=np.float32)
        profile[features] = weights
        for n in (0, 1, 5, 40, 500):
            want = clusters.top(profile, n)
            for f in (
                features,
                features.astype(np.int32),
                np.sort(features),
            ):  # any order, either dtype
                got = clusters.top_sparse(f, profile[f], n)
                np.testing.assert_array_equal(got[0], want[0])
                np.testing.assert_array_equal(got[1].view(np.uint32), want[1].view(np.uint32))


def test_linear_scores_builds_its_dense_profile_only_when_asked() -> None:
    matrix, clusters = _clusters(0)
    by_feature = sp.csr_matrix(matrix.T)
    column_max = np.asarray(matrix.max(axis=0).toarray()).ravel().astype(np.float64)
    features = np.arange(0, 30, 2, dtype=np.int32)  # their posting lists cover the catalogue: broad
    weights = np.linspace(0.1, 1.0, len(features)).astype(np.float32)
    scores = LinearScores(matrix, by_feature, column_max, features, weights, clusters=clusters)
    np.testing.assert_array_equal(scores.top(5)[0], clusters.top(scores.profile, 5)[0])
    scores = LinearScores(matrix, by_feature, column_max, features, weights, clusters=clusters)
    scores.top(5)
    assert scores._profile is None, "a broad top-n reads the sparse profile"
    want = np.zeros(30, dtype=np.float32)
    want[features] = weights
    np.testing.assert_array_equal(scores.profile, want)
    assert scores.features.dtype == np.int32, "a stored profile row's indices are not copied"
    assert (
        LinearScores(matrix, by_feature, column_max, [1, 2], [1.0, 1.0]).features.dtype == np.int64
    )
