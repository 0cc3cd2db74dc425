"""The compiled request kernels against the numpy code they replaced (kept here as references).

Each reference is the numpy form the serving path ran before ``shelf.models.retrieval.kernels``;
the kernels must give the same items, in the same order, with bit-identical floats (the cluster
scan excepted: it sums each item's products left to right, numpy's reduceat summed pairwise).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from shelf.models.retrieval import kernels
from shelf.models.retrieval.blend import BlendConfig, BlendRetriever
from shelf.models.retrieval.popularity import PopularityRetriever
from shelf.models.retrieval.scores import (
    ItemClusters,
    SparseScores,
    positive_rows,
    top_of,
    weighted_rows,
)


def _unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.unique(values, return_inverse=True)  # type: ignore[no-any-return]


def _reference_fuse(idx_parts: list[np.ndarray], contrib_parts: list[np.ndarray], src_parts: list[np.ndarray], n_sources: int, seen: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``BlendRetriever._fuse`` before the kernel: a dense sources × candidates table."""
    items, inverse = _unique_inverse(np.concatenate(idx_parts))
    table = np.zeros((n_sources, len(items)), dtype=np.float64)
    table[np.concatenate(src_parts), inverse] = np.concatenate(contrib_parts)
    fused = np.add.reduce(table, axis=0)
    keep = fused > 0
    if len(seen):
        keep &= ~np.isin(items, seen)
    items, fused, table = items[keep], fused[keep], table[:, keep]
    pos = np.lexsort((items, -fused))[:n]
    return items[pos], fused[pos], table[:, pos].argmax(axis=0)


def _reference_weighted_rows(matrix: sp.csr_matrix, rows: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``scores.weighted_rows`` before the kernel: gather, round each product, bincount."""
    ptr, indices, data = matrix.indptr, matrix.indices, matrix.data
    starts = ptr[rows]
    lengths = ptr[rows + 1] - starts
    ends = lengths.cumsum()
    total = int(ends[-1]) if len(ends) else 0
    if total == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    positions = np.arange(total, dtype=np.int64) + (starts - (ends - lengths)).repeat(lengths)
    scaled = data[positions] * np.asarray(weights, dtype=np.float64).astype(data.dtype).repeat(lengths)
    idx, inverse = _unique_inverse(indices[positions])
    return idx.astype(np.int64), np.bincount(inverse, weights=scaled, minlength=len(idx))


@pytest.mark.parametrize("seed", range(40))
def test_fuse_is_the_dense_table(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_items, n_sources = int(rng.integers(1, 300)), int(rng.integers(1, 6))
    idx_parts, contrib_parts, src_parts = [], [], []
    for s in range(n_sources):
        if rng.random() < 0.2:
            continue  # a source that proposed nothing
        listed = rng.permutation(n_items)[: rng.integers(1, n_items + 1)]
        # Coarse contributions: plenty of ties, within and across sources; some exact zeros.
        contrib = rng.integers(0, 4, len(listed)) / 4.0 if rng.random() < 0.5 else 1.0 / (10.0 + np.arange(1, len(listed) + 1))
        idx_parts.append(listed.astype(np.int64))
        contrib_parts.append(np.asarray(contrib, dtype=np.float64))
        src_parts.append(np.full(len(listed), s, dtype=np.int64))
    if not idx_parts:
        return
    seen = rng.choice(n_items, min(n_items, int(rng.integers(0, 10))), replace=False).astype(np.int64)
    n = int(rng.integers(0, n_items + 5))
    got = kernels.fuse(np.concatenate(idx_parts), np.concatenate(contrib_parts), np.concatenate(src_parts), seen, n)
    want = _reference_fuse(idx_parts, contrib_parts, src_parts, n_sources, seen, n)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("fusion", ["rrf", "score"])
@pytest.mark.parametrize("seed", range(20))
def test_fuse_sources_is_the_contributions_then_fuse(fusion: str, seed: int) -> None:
    """``fuse_sources`` equals what the blend ran before it: ``_contributions`` per source
    list, the source of each entry repeated, then ``fuse``."""
    rng = np.random.default_rng(seed)
    config = BlendConfig(fusion=fusion, rrf_k=float(rng.choice([0.0, 10.0, 60.0])), fallback=None)
    blend = BlendRetriever({"popularity": PopularityRetriever()}, config)
    n_items = int(rng.integers(1, 300))
    idx_parts, value_parts, weights, voters = [], [], [], []
    for s in range(int(rng.integers(1, 6))):
        if rng.random() < 0.2:
            continue  # a source that did not vote
        listed = rng.permutation(n_items)[: rng.integers(1, n_items + 1)].astype(np.int64)
        # Best first, with ties (and one-value lists: a zero span) among the values.
        values = np.sort(rng.choice(rng.random(int(rng.integers(1, 9))), len(listed)))[::-1].astype(np.float32)
        idx_parts.append(listed)
        value_parts.append(values)
        weights.append(float(rng.choice([0.25, 1.0, 3.0, 64.0])))
        voters.append(s)
    seen = rng.choice(n_items, min(n_items, int(rng.integers(0, 10))), replace=False).astype(np.int64)
    n = int(rng.integers(0, n_items + 5))
    got = blend._fuse(idx_parts, value_parts, weights, voters, seen, n)
    if not idx_parts:
        assert all(len(g) == 0 for g in got)
        return
    contributions = [blend._contributions(i, v, w) for i, v, w in zip(idx_parts, value_parts, weights, strict=True)]
    sources = [np.full(len(i), s, dtype=np.int64) for i, s in zip(idx_parts, voters, strict=True)]
    want = kernels.fuse(np.concatenate(idx_parts), np.concatenate(contributions), np.concatenate(sources), seen, n)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)  # bit-identical fused scores


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_positive_rows_are_the_positive_weighted_rows(dtype: type) -> None:
    """``positive_rows`` (unordered, one pass) answers as ``from_positive(weighted_rows(...))``."""
    rng = np.random.default_rng(5)
    matrix = sp.random(300, 400, density=0.05, format="csr", dtype=dtype, random_state=6)
    matrix.data -= dtype(0.3)  # negative and zero entries too: only positive sums are proposed
    matrix.data[::7] = 0.0
    for size in (0, 1, 3, 30, 200):
        rows = rng.integers(0, 300, size).astype(np.int64)
        weights = rng.random(size)
        got = positive_rows(matrix, rows, weights, 400)
        want = SparseScores.from_positive(*weighted_rows(matrix, rows, weights), 400, ascending=True)
        np.testing.assert_array_equal(np.sort(got.idx), want.idx)
        for n in (0, 1, 10, 1000):
            for g, w in zip(got.top(n), want.top(n), strict=True):
                np.testing.assert_array_equal(g, w)
        probe = rng.integers(0, 400, 50)
        np.testing.assert_array_equal(got.at(probe), want.at(probe))
        np.testing.assert_array_equal(got.dense(), want.dense())
        assert got.bounds() == want.bounds()


@pytest.mark.parametrize("seed", range(10))
def test_sparse_top_is_top_of(seed: int) -> None:
    """``SparseScores.top`` (compiled, ties to the lower item) orders as ``top_of`` over the
    ascending items did."""
    rng = np.random.default_rng(seed)
    m = int(rng.integers(0, 500))
    idx = np.sort(rng.choice(2000, m, replace=False)).astype(np.int64)
    values = (rng.integers(1, 6, m) / 3.0).astype(np.float32)  # many ties
    scores = SparseScores(idx, values, 2000)
    for n in (0, 1, 7, m // 2, m, m + 3):
        pos = top_of(values, n, finite=True)
        np.testing.assert_array_equal(scores.top(n)[0], idx[pos])
        np.testing.assert_array_equal(scores.top(n)[1], values[pos])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weighted_rows_is_the_bincount(dtype: type) -> None:
    rng = np.random.default_rng(1)
    for width in (7, 50, 5000):
        matrix = sp.random(300, width, density=0.05, format="csr", dtype=dtype, random_state=2)
        for size in (0, 1, 3, 30, 200):
            rows = rng.integers(0, 300, size).astype(np.int64)  # repeats included
            weights = rng.random(size)
            got, want = weighted_rows(matrix, rows, weights), _reference_weighted_rows(matrix, rows, weights)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])  # bit-identical sums
            assert got[0].dtype == np.int64 and got[1].dtype == np.float64


@pytest.mark.parametrize("seed", range(20))
def test_top_by_key_is_a_lexsort(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(0, 400))
    values = (rng.integers(0, 6, m) / 3.0).astype(np.float32 if seed % 2 else np.float64)  # many ties
    keys = rng.permutation(10 * m + 1)[:m].astype(np.int64)
    for n in (0, 1, 7, m // 2, m, m + 3):
        np.testing.assert_array_equal(kernels.top_by_key(values, keys, n), np.lexsort((keys, -values))[:n])


@pytest.mark.parametrize("seed", range(40))
def test_top_pairs_is_a_lexsort_of_float32(seed: int) -> None:
    """Best first, ties to the lower key, whichever of its bins the values fall in: spread,
    bunched into one bin, all equal, many ties, a wide range, negatives, both zeros, tiny, empty."""
    rng = np.random.default_rng(seed)
    m = int(rng.integers(0, 2000)) if seed % 5 else int(rng.integers(0, 4))
    kind = seed % 6
    if kind == 0:
        values = rng.standard_normal(m).astype(np.float32)  # negatives and positives
    elif kind == 1:
        values = ((rng.integers(-3, 6, m)) / 3.0).astype(np.float32)  # many ties, zeros
    elif kind == 2:
        values = np.full(m, 0.5, dtype=np.float32)  # one bin holds everything
    elif kind == 3:
        values = np.float32(0.5) + rng.random(m).astype(np.float32) * np.float32(1e-6)  # bunched
    elif kind == 4:
        values = (rng.random(m) * 10.0 ** rng.uniform(-30, 30, m)).astype(np.float32)  # a wide range
    else:
        values = rng.exponential(size=m).astype(np.float32)
    if m:
        values[rng.integers(m)] = np.float32(-0.0)  # ties with 0.0, as floats compare
    keys = (rng.choice(2**32, m, replace=False) if seed % 2 else rng.permutation(10 * m + 1)[:m]).astype(np.int64)  # up to the largest key
    for n in (0, 1, 7, 200, 204, m // 3, m // 2, m - 1, m, m + 3):
        want = np.lexsort((keys, -values))[: max(n, 0)]
        got_keys, got_values = kernels.top_pairs(values, keys, n)
        np.testing.assert_array_equal(got_keys, keys[want])
        np.testing.assert_array_equal(got_values.view(np.uint32), (values[want] + np.float32(0)).view(np.uint32))  # -0.0 comes back as 0.0
        assert got_keys.dtype == np.int64 and got_values.dtype == np.float32


@pytest.mark.parametrize("seed", range(10))
def test_sum_by_item_is_unique_then_bincount(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(0, 200))
    items = rng.integers(0, max(m // 3, 1), m).astype(np.int64)  # repeats
    weights = (rng.standard_normal(m) * 10).astype(np.float32 if seed % 2 else np.float64)
    want_items, inverse = np.unique(items, return_inverse=True)
    want_sums = np.bincount(inverse, weights=weights.astype(np.float64), minlength=len(want_items))
    got_items, got_sums = kernels.sum_by_item(items, weights)
    np.testing.assert_array_equal(got_items, want_items)
    np.testing.assert_array_equal(got_sums, want_sums)  # bit-identical: the same order of additions
    assert got_items.dtype == np.int64 and got_sums.dtype == np.float64


@pytest.mark.parametrize("seed", range(6))
def test_history_profiles_spelled_out(seed: int) -> None:
    """Each user's row: weights h / (row total, summed left to right in float64) rounded to
    float32, products rounded to float32, each feature's products summed in float64 in the
    row's order, features ascending."""
    n_users, n_items, n_features = 30, 40, 25
    history = sp.random(n_users, n_items, density=0.2, format="csr", random_state=seed, dtype=np.float32)
    history.data = (history.data * 5).astype(np.float32)
    if seed % 2:
        history.data[::7] = np.float32(0.0)  # explicit zeros, and rows that sum to nothing
    x = sp.random(n_items, n_features, density=0.3, format="csr", random_state=seed + 1, dtype=np.float32)
    indptr, features, sums = kernels.history_profiles(history.indptr, history.indices, history.data, x.indptr, x.indices, x.data, n_features)
    for u in range(n_users):
        row = slice(history.indptr[u], history.indptr[u + 1])
        items, h = history.indices[row], history.data[row]
        total = 0.0
        for value in h:
            total += float(value)
        total = max(total, 1e-12)
        acc: dict[int, float] = {}
        for item, value in zip(items, h, strict=True):
            w = np.float32(float(value) / total)
            for q in range(x.indptr[item], x.indptr[item + 1]):
                acc[int(x.indices[q])] = acc.get(int(x.indices[q]), 0.0) + float(np.float32(x.data[q] * w))
        got = slice(indptr[u], indptr[u + 1])
        assert features[got].tolist() == sorted(acc)
        np.testing.assert_array_equal(sums[got], np.array([acc[f] for f in sorted(acc)], dtype=np.float64))


@pytest.mark.parametrize("fusion", ["rrf", "score"])
@pytest.mark.parametrize("seed", range(12))
def test_fusing_with_bans_is_an_isin_filter_per_list_then_fuse(fusion: str, seed: int) -> None:
    """What the blend ran before the bans moved into the fusion: each list without its banned
    items (np.isin), cut to ``keep`` (a list left empty does not vote), then the fusion."""
    rng = np.random.default_rng(100 + seed)
    blend = BlendRetriever({"popularity": PopularityRetriever()}, BlendConfig(fusion=fusion, fallback=None))
    n_items = int(rng.integers(5, 200))
    keep = int(rng.integers(1, 30))
    banned = np.unique(rng.integers(0, n_items, int(rng.integers(1, 12)))).astype(np.int64)
    idx_parts, value_parts, weights, voters = [], [], [], []
    for s in range(int(rng.integers(1, 6))):
        listed = rng.permutation(n_items)[: min(n_items, keep + len(banned))].astype(np.int64)
        if s == 0:
            listed = banned[: keep + len(banned)].copy()  # a list of banned items only
        values = np.sort(rng.random(len(listed)).astype(np.float32))[::-1].copy()
        idx_parts.append(listed)
        value_parts.append(values)
        weights.append(float(rng.choice([0.3, 1.0])))
        voters.append(s)
    seen = rng.choice(n_items, 3, replace=False).astype(np.int64)
    n = int(rng.integers(1, 40))
    got = blend._fuse(idx_parts, value_parts, weights, voters, seen, n, banned, keep)
    allowed = [~np.isin(i, banned) for i in idx_parts]
    kept = [(i[a][:keep], v[a][:keep]) for i, v, a in zip(idx_parts, value_parts, allowed, strict=True)]
    voting = [k for k, (i, _) in enumerate(kept) if len(i)]
    want = blend._fuse([kept[k][0] for k in voting], [kept[k][1] for k in voting], [weights[k] for k in voting], [voters[k] for k in voting], seen, n)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def _reference_cluster_top(clusters: ItemClusters, profile: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The clusters' answer spelled out: closeness, clusters in order until the budget, each
    item's products summed left to right in float32, best n (ties to the lower item)."""
    used = profile.nonzero()[0]
    close = np.zeros(clusters.centroids_by_feature.shape[1], dtype=np.float32)
    for f in used:
        close += profile[f] * clusters.centroids_by_feature[f]
    order = np.argsort(-close, kind="stable")
    budget = max(clusters.candidate_factor * n, clusters.min_candidates)
    reach = int(np.searchsorted(clusters.sizes[order].cumsum(), budget)) + 1
    items, values = [], []
    for c in order[:reach]:
        for row in range(clusters.starts[c], clusters.starts[c + 1]):
            s = np.float32(0.0)
            for e in range(clusters.row_starts[row], clusters.row_starts[row + 1]):
                s = np.float32(s + clusters.data[e] * profile[clusters.indices[e]])
            if s > 0:
                items.append(int(clusters.items[row]))
                values.append(s)
    items_a, values_a = np.array(items, dtype=np.int64), np.array(values, dtype=np.float32)
    pos = np.lexsort((items_a, -values_a))[:n]
    return items_a[pos], values_a[pos]


@pytest.mark.parametrize("n_clusters", [12, 80])  # 80: past SELECT_CLUSTERS, the sorted order
def test_cluster_top_is_the_spelled_out_scan(n_clusters: int) -> None:
    rng = np.random.default_rng(3)
    n_items, n_features = 400, 30
    matrix = sp.random(n_items, n_features, density=0.2, format="csr", dtype=np.float32, random_state=4)
    matrix.data = np.round(matrix.data * 4) / 4 + 0.25  # coarse values: tied scores
    cluster_of = rng.integers(-1, n_clusters, n_items)
    centroids = rng.random((n_clusters, n_features)).astype(np.float32)
    for factor, floor in ((1, 1), (3, 10), (10, 1000), (1, 10**6)):
        clusters = ItemClusters(matrix, cluster_of, centroids, candidate_factor=factor, min_candidates=floor)
        for _ in range(10):
            profile = np.zeros(n_features, dtype=np.float32)
            used = rng.choice(n_features, rng.integers(1, 10), replace=False)
            profile[used] = (rng.integers(1, 4, len(used)) / 4).astype(np.float32)
            for n in (1, 5, 40):
                got, want = clusters.top(profile, n), _reference_cluster_top(clusters, profile, n)
                np.testing.assert_array_equal(got[0], want[0])
                np.testing.assert_array_equal(got[1], want[1])
