"""Top-n selection over catalogue-sized vectors: the same answer as a full sort, whatever the ties."""

from __future__ import annotations

import numpy as np

from shelf.models.retrieval.scores import ItemClusters, kth_largest, top_of


def reference(scores: np.ndarray, n: int) -> list[int]:
    finite = np.flatnonzero(np.isfinite(scores))
    return finite[np.lexsort((finite, -scores[finite]))][:n].tolist()


def test_kth_largest_ignores_nan_and_counts_ties() -> None:
    values = np.array([3.0, np.nan, 1.0, 3.0, -np.inf, 2.0], dtype=np.float32)
    assert [float(kth_largest(values, k)) for k in (1, 2, 3, 4, 5)] == [3.0, 3.0, 2.0, 1.0, -np.inf]


def test_top_of_on_popularity_shaped_vectors() -> None:
    # Most of the catalogue shares one low value (the segment prior), a few items stand out,
    # some are -inf: the shape that made selection near the top slow; the answer must not change.
    rng = np.random.default_rng(7)
    for size, tied_share in ((5_000, 0.99), (20_000, 0.9), (3_000, 0.5)):
        scores = np.full(size, 1e-6, dtype=np.float32)
        distinct = rng.random(size) >= tied_share
        scores[distinct] = rng.random(int(distinct.sum())).astype(np.float32)
        scores[rng.random(size) < 0.01] = -np.inf
        for n in (1, 40, 1024, int(distinct.sum()) + 5, size - 1):
            assert top_of(scores, n).tolist() == reference(scores, n)


def test_cluster_top_keeps_ties_to_the_lower_item() -> None:
    import scipy.sparse as sp

    # Every item has the same single feature: all scores tie, so the answer is the lowest indices.
    matrix = sp.csr_matrix(np.ones((300, 1), dtype=np.float32))
    clusters = ItemClusters(matrix, np.zeros(300, dtype=np.int64), np.ones((1, 1), dtype=np.float32), min_candidates=300)
    items, values = clusters.top(np.ones(1, dtype=np.float32), 10)
    assert items.tolist() == list(range(10)) and np.all(values == 1.0)
