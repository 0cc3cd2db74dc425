"""One query's scores over a retriever's catalogue, in whatever form is cheapest to hold.

A blend needs three things from each source per request: its best ``n`` items, its score for a
handful of listed items, and (for filling) the range of its finite scores. Computing a dense
vector over the whole catalogue for that costs O(catalogue) per source per request (see the
in-process rows of BENCHMARKS.md "serving"); most sources only ever propose a few hundred items. So a
retriever answers with one of:

* :class:`DenseScores`: the dense vector (ALS, EASE, SASRec: every item gets a score);
* :class:`SparseScores`: only the items with a finite score (repeat, co-occurrence, rules,
  content): O(proposed items);
* :class:`RankedScores`: a dense vector whose ranking is computed once and shared by many
  requests (popularity per segment): top-n is a slice;
* :class:`LinearScores`: a sparse profile times a sparse item matrix (content), whose top-n is
  found by max-score pruning over the features' posting lists, or, on a big catalogue where
  pruning cannot skip anything, approximately from :class:`ItemClusters`.

Every form answers ``top(n)`` exactly as ``top_indices(dense, n)`` would (best first, ties to the
lower index), ``at(idx)`` exactly as ``dense[idx]``, and ``dense()`` as the vector itself; that
parity is tested for every retriever. The one exception is opt-in and size-gated: a
``LinearScores`` given ``ItemClusters`` (content on catalogues of ``ContentConfig.approximate_from``
items or more) answers a broad profile's ``top(n)`` from the closest clusters only (see there).
"""

from __future__ import annotations

import functools
import threading
from types import ModuleType
from typing import Any

import numpy as np

NEG_INF = np.float32(-np.inf)
TOPS_KEPT = 64  # RankedScores keeps its answers for this many sizes n
DENSE_SHARE = 0.25  # LinearScores scores everything once pruning would visit this share of items


@functools.cache
def compiled() -> ModuleType:
    """``shelf.models.retrieval.kernels``, imported on first use (importing shelf does not
    import numba) and kept: ~0.2 µs a call where an import statement costs ~1 µs (measured)."""
    from shelf.models.retrieval import kernels

    return kernels


def kth_largest(values: np.ndarray, n: int) -> Any:
    """The ``n``-th largest value (1-based; ``n <= len(values)``), NaN never counted.

    Partitions the *negated* copy at ``n - 1``: numpy's introselect is ~30x slower selecting near
    the top of an array whose low end is one long run of ties (``partition(size - n)`` on a
    popularity vector where most items share the prior: 12 ms instead of 0.4 ms at 100k items,
    which put every cold segment's first request in the latency tail), and fast this way round.
    -inf becomes +inf and sorts last, as NaN does, so neither is picked while n finite values exist.
    """
    negated = np.negative(values)
    negated.partition(n - 1)
    return -negated[n - 1]


def top_of(scores: np.ndarray, n: int, *, finite: bool = False) -> np.ndarray:
    """Positions of the ``n`` best finite values, best first; ties broken by lower position.

    ``finite=True``: the caller guarantees every value is finite (a short list is then one
    stable sort, the same order).
    """
    # Array methods rather than the np.* wrappers throughout: this runs several times per request.
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    scores = np.asarray(scores)
    size = len(scores)
    if finite and size <= n:
        return (-scores).argsort(kind="stable")
    if size > n:
        # The n-th largest value without first copying out the finite entries (a dense
        # catalogue-sized vector per request); -inf or NaN there means fewer than n finite values.
        kth = kth_largest(scores, n)
        chosen = np.empty(0, dtype=np.int64)
        if finite or np.isfinite(kth):
            above = (scores > kth).nonzero()[0]
            tied = (scores == kth).nonzero()[0][: n - len(above)]
            chosen = np.concatenate([above, tied])
        if len(chosen) < n:  # -inf or NaN among the n largest: take every finite value instead
            chosen = np.isfinite(scores).nonzero()[0]
    else:
        chosen = np.isfinite(scores).nonzero()[0]
    order = np.lexsort((chosen, -scores[chosen]))
    return chosen[order][:n]


def top_of_rows(scores: np.ndarray, n: int) -> np.ndarray:
    """Row-wise ``top_of`` for a 2-D block: each row's ``n`` best columns, best first, ties to the
    lower column (non-finite values last, lower column first), so a batch of queries ranks its
    candidates exactly as ``QueryScores.top`` ranks one query's.

    Why not argpartition alone: it leaves ties in any order, and under reciprocal-rank fusion a
    tie's rank is its contribution, so batch scores (evaluation, weight tuning) would drift from
    what a request serves wherever a source ties (content items with identical metadata).
    """
    n = min(n, scores.shape[1])
    if n <= 0:
        return np.empty((scores.shape[0], 0), dtype=np.int64)
    # Non-finite values rank last as -inf (NaN included), tied among themselves by column.
    key = np.where(np.isfinite(scores), scores, -np.inf)
    kth = -np.partition(-key, n - 1, axis=1)[:, n - 1 : n]
    above = key > kth
    tied = key == kth
    # Of the values tied with the n-th best, only the lowest columns fit.
    room = n - above.sum(axis=1, keepdims=True)
    keep = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= room))  # int32: half the default's block
    # Exactly n per row, columns ascending within a row.
    columns = np.nonzero(keep)[1].reshape(len(scores), n)
    values = np.take_along_axis(key, columns, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")  # stable: ties keep ascending columns
    return np.take_along_axis(columns, order, axis=1)


def weighted_rows(matrix: Any, rows: np.ndarray, weights: np.ndarray, *, ordered: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``sum_k weights[k] * matrix[rows[k]]`` of a CSR matrix as a sparse vector: unique column
    indices (ascending; in order of first appearance with ``ordered=False``, for a caller to whom
    order does not matter) and float64 sums. For a handful of rows this is several times cheaper
    than building a one-row sparse matrix and multiplying (scipy's per-call overhead dominates).

    Each product is rounded to the matrix's dtype, as ``row * weight`` would be, and every
    column's products are summed in input order in float64 (what ``np.bincount`` does), in one
    compiled pass (``kernels.group_columns``; its numpy form is the reference in the tests).
    """
    kernels = compiled()
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64).astype(matrix.data.dtype)
    columns, sums = kernels.group_columns(matrix.indptr, matrix.indices, matrix.data, rows, weights)
    if not ordered:
        return columns, sums
    order = columns.argsort()  # numpy's vectorised sort beats a compiled one here; columns are unique
    return columns[order], sums[order]


def positive_rows(matrix: Any, rows: np.ndarray, weights: np.ndarray, size: int) -> SparseScores:
    """``SparseScores.from_positive(*weighted_rows(matrix, rows, weights), size)`` in one compiled
    pass (``kernels.positive_columns``), its items left in the order they were met: a request
    only asks such scores for a top-n, which does not need them sorted (``SparseScores``)."""
    kernels = compiled()
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return SparseScores(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32), size)
    weights = np.asarray(weights, dtype=np.float64).astype(matrix.data.dtype)
    columns, values = kernels.positive_columns(matrix.indptr, matrix.indices, matrix.data, rows, weights)
    return SparseScores.unordered(columns, values, size)


class DenseScores:
    """A float32 vector over the catalogue, ``-inf`` where nothing is proposed."""

    __slots__ = ("_bounds", "values")

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self._bounds: tuple[float, float] | None = None

    def __len__(self) -> int:
        return len(self.values)

    def top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        idx = top_of(self.values, n)
        return idx, self.values[idx]

    def at(self, idx: np.ndarray) -> np.ndarray:
        return self.values[idx]

    def dense(self) -> np.ndarray:
        return self.values

    def bounds(self) -> tuple[float, float] | None:
        """(lowest, highest) finite score, None when nothing is proposed."""
        if self._bounds is None:
            finite = self.values[np.isfinite(self.values)]
            if not len(finite):
                return None
            self._bounds = (float(finite.min()), float(finite.max()))
        return self._bounds


class SparseScores:
    """Only the proposed items: ``idx`` (unique; ascending unless built by ``unordered``, and
    sorted the first time ``at`` needs it) with finite ``values``.

    Per query, never shared between requests (so sorting in place needs no lock).
    """

    __slots__ = ("_ordered", "idx", "size", "values")

    def __init__(self, idx: np.ndarray, values: np.ndarray, size: int) -> None:
        idx = np.asarray(idx, dtype=np.int64)
        values = np.ascontiguousarray(values, dtype=np.float32)  # top() reads its bits
        if len(idx) > 1 and not bool(np.all(idx[1:] > idx[:-1])):
            order = np.argsort(idx, kind="stable")
            idx, values = idx[order], values[order]
        keep = np.isfinite(values)
        if not keep.all():
            idx, values = idx[keep], values[keep]
        self.idx, self.values, self.size, self._ordered = idx, values, size, True

    @classmethod
    def unordered(cls, idx: np.ndarray, values: np.ndarray, size: int) -> SparseScores:
        """Unique int64 ``idx`` in any order with finite float32 ``values`` (the caller
        guarantees all three: ``positive_rows``); sorted only if ``at`` is asked."""
        out = cls.__new__(cls)
        out.idx, out.values, out.size, out._ordered = idx, values, size, False
        return out

    @classmethod
    def from_positive(cls, idx: np.ndarray, values: np.ndarray, size: int, *, ascending: bool = False) -> SparseScores:
        """Keep the strictly positive entries (the ``scores > 0 else -inf`` rule of most sources).

        ``ascending=True``: the caller guarantees ``idx`` ascends without repeats (what
        ``weighted_rows`` and ``np.unique`` return), so only finiteness is checked.
        """
        values = np.asarray(values, dtype=np.float32)
        keep = values > 0
        if not ascending:
            return cls(np.asarray(idx)[keep], values[keep], size)
        idx, values = np.asarray(idx, dtype=np.int64)[keep], values[keep]
        if not np.isfinite(values).all():
            keep = np.isfinite(values)
            idx, values = idx[keep], values[keep]
        out = cls.__new__(cls)
        out.idx, out.values, out.size, out._ordered = idx, values, size, True
        return out

    def __len__(self) -> int:
        return self.size

    def top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n <= 0 or not len(self.idx):
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        kernels = compiled()
        # Ties to the lower item whatever the order held (the items are unique); one compiled
        # call instead of top_of's partition, masks and lexsort (the same order: tested).
        return kernels.top_pairs(self.values, self.idx, n)  # type: ignore[no-any-return]

    def at(self, idx: np.ndarray) -> np.ndarray:
        if not self._ordered:
            order = self.idx.argsort()
            self.idx, self.values, self._ordered = self.idx[order], self.values[order], True
        idx = np.asarray(idx, dtype=np.int64)
        out = np.full(len(idx), NEG_INF, dtype=np.float32)
        if len(self.idx) and len(idx):
            pos = np.minimum(np.searchsorted(self.idx, idx), len(self.idx) - 1)
            hit = self.idx[pos] == idx
            out[hit] = self.values[pos[hit]]
        return out

    def dense(self) -> np.ndarray:
        out = np.full(self.size, NEG_INF, dtype=np.float32)
        out[self.idx] = self.values
        return out

    def bounds(self) -> tuple[float, float] | None:
        if not len(self.values):
            return None
        return float(self.values.min()), float(self.values.max())


class _SparseBacked:
    """Scores of one query whose ``at``, ``dense`` and ``bounds`` are those of a ``SparseScores``
    built the first time one of them is asked (``sparse``): a blend's request asks only ``top``."""

    __slots__ = ()

    def sparse(self) -> SparseScores:
        raise NotImplementedError

    def at(self, idx: np.ndarray) -> np.ndarray:
        return self.sparse().at(idx)

    def dense(self) -> np.ndarray:
        return self.sparse().dense()

    def bounds(self) -> tuple[float, float] | None:
        return self.sparse().bounds()


class RankedRow(_SparseBacked):
    """A sparse row whose entries are held ranked (best first, ties to the lower item; the caller
    guarantees it, and that the values are finite and positive): top-n is two slices, no compiled
    call, no gather (a repeat history row, ranked once per fit or load: ~10 µs of a known
    shopper's request, measured in-process). ``at``, ``dense`` and ``bounds`` answer as the
    ``SparseScores`` of the same entries, built when first asked. Per query."""

    __slots__ = ("_sparse", "items", "size", "values")

    def __init__(self, items: np.ndarray, values: np.ndarray, size: int) -> None:
        self.items, self.values, self.size = items, values, size
        self._sparse: SparseScores | None = None

    def __len__(self) -> int:
        return self.size

    def top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        n = max(n, 0)
        return self.items[:n].astype(np.int64), self.values[:n]

    def sparse(self) -> SparseScores:
        if self._sparse is None:
            self._sparse = SparseScores(self.items, self.values, self.size)
        return self._sparse


class NeighbourScores(_SparseBacked):
    """The co-occurrence scores of one request (``kernels.neighbour_scores``: the summed,
    recency-weighted neighbour rows of the query items), computed when first asked: ``top(n)``
    sums and selects in one compiled call (``kernels.neighbour_top``), which is all a blend's
    request asks; ``at``, ``dense`` and ``bounds`` answer from the sums as ``SparseScores``.
    Per query, never shared between requests."""

    __slots__ = ("_args", "_sums", "size")

    def __init__(self, matrix: Any, history: np.ndarray, session: np.ndarray, weights: np.ndarray, size: int) -> None:
        self._args = (matrix.indptr, matrix.indices, matrix.data, history, session, weights)
        self._sums: SparseScores | None = None
        self.size = size

    def __len__(self) -> int:
        return self.size

    def sparse(self) -> SparseScores:
        """Every proposed item with its score (computed once)."""
        if self._sums is None:
            kernels = compiled()
            self._sums = SparseScores.unordered(*kernels.neighbour_scores(*self._args), self.size)
        return self._sums

    def top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self._sums is not None:
            return self._sums.top(n)
        kernels = compiled()
        return kernels.neighbour_top(*self._args, max(n, 0))  # type: ignore[no-any-return]


class RankedScores:
    """A dense vector shared by many requests (popularity per segment), with its best items
    ranked once: top-n is a slice of that ranking, grown (doubling) the first time a request
    asks for more. Ranking only a prefix keeps a cache miss O(catalogue), not a full sort.
    """

    __slots__ = ("_bounds", "_lock", "_tops", "order", "values")

    def __init__(self, values: np.ndarray, prefix: int = 1024) -> None:
        self.values = np.asarray(values, dtype=np.float32)
        self.order = top_of(self.values, prefix)
        self._lock = threading.Lock()
        self._bounds: tuple[float, float] | None | bool = False  # False: not computed yet
        self._tops: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.values)

    def top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``n`` (read-only arrays, shared): requests ask for a few sizes only
        (candidates per source, plus their bans), each answered once: ~2 µs less per source and
        request than a slice and a gather each time (measured in-process)."""
        n = max(n, 0)
        found = self._tops.get(n)
        if found is not None:
            return found
        order = self.order
        if n > len(order) and len(order) < len(self.values):
            with self._lock:  # shared across serving threads: grow once
                order = self.order
                if n > len(order):
                    order = self.order = top_of(self.values, max(n, 2 * len(order)))
        idx = order[:n]
        values = self.values[idx]
        idx.flags.writeable = values.flags.writeable = False
        if len(self._tops) < TOPS_KEPT:  # racing threads store equal answers
            self._tops[n] = (idx, values)
        return idx, values

    def at(self, idx: np.ndarray) -> np.ndarray:
        return self.values[idx]

    def dense(self) -> np.ndarray:
        return self.values.copy()  # shared across requests: callers get their own

    def bounds(self) -> tuple[float, float] | None:
        # Computed on first use (only filling needs it): another catalogue pass at a cold
        # segment's first request otherwise. Racing threads compute the same value.
        if self._bounds is False:
            finite = self.values[np.isfinite(self.values)]
            self._bounds = (float(finite.min()), float(finite.max())) if len(finite) else None
        return self._bounds  # type: ignore[return-value]


class ItemClusters:
    """Items grouped by content cluster, for an approximate top-n of ``X @ p`` that does not
    read the whole catalogue (the inverted-file idea, over a sparse matrix).

    ``centroids`` (clusters × features) are the unit-length means of spherical k-means over the
    item rows; ``cluster_of[i]`` is item i's cluster (-1: an item without features, which never
    scores above 0). A query scores the centroids over its profile's features only (the
    centroids are kept features × clusters, so those are a few contiguous rows: a dense product
    over every feature read the whole matrix, ~15 ms per request at 1M items), takes the clusters
    in that order until they hold ``max(candidate_factor * n, min_candidates)`` items, and scores exactly those items from a copy
    of their rows laid out cluster by cluster (contiguous slices), all in one compiled pass
    (``kernels.cluster_top``). Items in clusters further from the profile are not looked at:
    that is the approximation. Scores are float32 sums of the same products as ``X @ p``, each
    row summed left to right, so a value can differ from ``dense()``'s in its last bit.
    """

    __slots__ = ("candidate_factor", "centroids_by_feature", "data", "indices", "items", "min_candidates", "row_starts", "sizes", "starts")

    def __init__(self, matrix: Any, cluster_of: np.ndarray, centroids: np.ndarray, candidate_factor: int = 5, min_candidates: int = 1000) -> None:
        self.candidate_factor, self.min_candidates = candidate_factor, min_candidates
        cluster_of = np.asarray(cluster_of, dtype=np.int64)
        self.centroids_by_feature = np.ascontiguousarray(np.asarray(centroids, dtype=np.float32).T)
        n_clusters = self.centroids_by_feature.shape[1]
        placed = np.flatnonzero((cluster_of >= 0) & (np.diff(matrix.indptr) > 0))
        order = placed[np.argsort(cluster_of[placed], kind="stable")]  # by cluster, then item
        self.items = order
        self.sizes = np.bincount(cluster_of[order], minlength=n_clusters).astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        rows = matrix[order]  # items' rows, cluster by cluster
        self.data = np.asarray(rows.data, dtype=np.float32)
        self.indices = np.asarray(rows.indices, dtype=np.uint32)  # unsigned: cluster_top reads it unchecked
        self.row_starts = np.asarray(rows.indptr, dtype=np.int64)

    def budget(self, n: int) -> int:
        """How many items a top-``n`` scores: those of the closest clusters, until they hold this many."""
        return max(self.candidate_factor * n, self.min_candidates)

    def top(self, profile: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``n`` positive scores among the items of the clusters closest to ``profile``
        (a dense vector over the features)."""
        used = profile.nonzero()[0]
        return self.top_sparse(used, profile[used], n)

    def top_sparse(self, features: np.ndarray, weights: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``top`` of the profile ``p[features] = weights``, given as it is held (a request's
        profile is sparse: building ``p`` outside the compiled pass cost a few numpy calls)."""
        if n <= 0 or not len(self.items):
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        # One compiled pass (closeness, cluster order, the chosen clusters' rows, the best n): the
        # numpy form was ~15 array operations on ~20k entries, ~150 µs of a known shopper's request.
        return compiled().cluster_top(  # type: ignore[no-any-return]
            features, weights, self.centroids_by_feature, self.sizes, self.starts, self.row_starts, self.data, self.indices, self.items, self.budget(n), n
        )


class LinearScores:
    """``X @ p`` for a sparse item matrix ``X`` (items × features, non-negative) and a sparse
    non-negative profile ``p``, with only positive scores proposed; ``top(n)`` is exact without
    scoring the whole catalogue.

    Top-n uses max-score pruning: a feature can add at most ``p_f * max_i X[i, f]`` to any item.
    Once the n-th best exact score among the items scored so far beats the summed bounds of the
    features not yet expanded, no item reached only through those features can enter the top n
    (nor tie with it), so their posting lists are never touched. Broad features (a price band,
    a top-level category) have small bounds and are skipped; a profile reaches the answer in at
    most two rounds. Exact scores come from the items' own rows, summed in row order, which is
    exactly what ``dense()`` computes for them.

    When pruning would read most of the catalogue anyway (a broad profile over a small, broad
    vocabulary), ``top`` scores the whole matrix once; or, given ``clusters``, scores only the
    items of the clusters closest to the profile (:class:`ItemClusters`, approximate). Given
    ``clusters``, a profile whose pruning would gather more rows than the clusters score
    (``ItemClusters.budget``) takes that approximate path too: it is the cheaper one.
    """

    __slots__ = ("_dense", "_profile", "by_feature", "clusters", "column_max", "features", "matrix", "weights")

    def __init__(
        self,
        matrix: Any,
        by_feature: Any,
        column_max: np.ndarray,
        features: np.ndarray,
        weights: np.ndarray,
        clusters: ItemClusters | None = None,
    ) -> None:
        self.matrix = matrix  # items × features, CSR
        self.by_feature = by_feature  # features × items, CSR (posting lists)
        self.column_max = column_max
        # int32 kept as it is (a stored profile row's indices): a copy per request otherwise.
        features = np.asarray(features)
        self.features = features if features.dtype == np.int32 else np.asarray(features, dtype=np.int64)
        self.weights = np.asarray(weights, dtype=np.float32)
        self._profile: np.ndarray | None = None
        self._dense: np.ndarray | None = None
        self.clusters = clusters

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def profile(self) -> np.ndarray:
        """The profile as a dense float32 vector over the features, built the first time it is
        asked: a broad top-n (every request on a big catalogue) reads the sparse one."""
        if self._profile is None:
            profile = np.zeros(self.matrix.shape[1], dtype=np.float32)
            profile[self.features] = self.weights
            self._profile = profile
        return self._profile

    def _exact(self, idx: np.ndarray) -> np.ndarray:
        if not len(idx):
            return np.empty(0, dtype=np.float32)
        return np.asarray(self.matrix[idx] @ self.profile, dtype=np.float32)

    def _postings(self, features: np.ndarray) -> np.ndarray:
        ptr = self.by_feature.indptr
        parts = [self.by_feature.indices[ptr[f] : ptr[f + 1]] for f in features]
        return np.unique(np.concatenate(parts).astype(np.int64)) if parts else np.empty(0, dtype=np.int64)

    def top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n <= 0 or not len(self.features):
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        ptr = self.by_feature.indptr
        if compiled().posting_total(ptr, self.features) >= len(self):
            # The profile's features cover the catalogue over (a small vocabulary of broad
            # features): pruning would gather most rows anyway; one pass over the matrix is cheaper.
            return self._broad(n)
        lengths = ptr[self.features + 1] - ptr[self.features]  # posting list lengths
        bound = self.weights.astype(np.float64) * self.column_max[self.features]
        order = np.argsort(-bound, kind="stable")  # most promising feature first
        lengths = lengths[order]
        # Round one: the most promising features until they reach n items (or all features).
        expanded = int(np.searchsorted(np.cumsum(lengths), n)) + 1
        while True:
            gathered = lengths[:expanded].sum()
            if self.clusters is not None and gathered > self.clusters.budget(n):
                # A catalogue large enough for clusters: exact pruning that gathers more rows than
                # the clusters would score costs more than they do (25,000 gathered rows: ~3 ms
                # against ~0.15 ms), so that profile takes the approximate path too.
                return self._broad(n)
            if gathered > DENSE_SHARE * len(self):
                # Broad features overlap (a small vocabulary): pruning would touch most of the
                # catalogue, and one pass over the whole matrix is cheaper than gathering rows.
                return self._broad(n)
            cand = self._postings(self.features[order[:expanded]])
            values = self._exact(cand)
            positive = values > 0
            cand, values = cand[positive], values[positive]
            theta = float(kth_largest(values, n)) if len(values) >= n else 0.0
            rest = bound[order[expanded:]]
            # The unexpanded features' bounds, summed from the smallest: keep expanding until
            # their total (with room for float32 rounding) falls strictly below theta.
            tail = np.cumsum(rest[::-1])[::-1] * (1 + 1e-5) + 1e-7 if len(rest) else rest
            needed = int(np.count_nonzero(tail >= theta)) if theta > 0 else len(rest)
            if needed == 0:
                break
            expanded += needed
        pos = top_of(values, n)  # cand ascends, so lower position = lower index on ties
        return cand[pos], values[pos]

    def _broad(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-n of a profile that reaches most of the catalogue: every row, or the closest clusters."""
        if self.clusters is not None:
            return self.clusters.top_sparse(self.features, self.weights, n)
        return DenseScores(self._full()).top(n)

    def at(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        values = self._exact(idx)
        return np.where(values > 0, values, NEG_INF).astype(np.float32)

    def _full(self) -> np.ndarray:
        if self._dense is None:
            values = np.asarray(self.matrix @ self.profile, dtype=np.float32)
            values[values <= 0] = NEG_INF
            self._dense = values
        return self._dense

    def dense(self) -> np.ndarray:
        return self._full().copy()

    def bounds(self) -> tuple[float, float] | None:
        values = self._full()
        finite = values[np.isfinite(values)]
        return (float(finite.min()), float(finite.max())) if len(finite) else None


QueryScores = DenseScores | SparseScores | NeighbourScores | RankedRow | RankedScores | LinearScores

__all__ = ["DenseScores", "ItemClusters", "LinearScores", "NeighbourScores", "QueryScores", "RankedRow", "RankedScores", "SparseScores", "positive_rows", "top_of", "top_of_rows", "weighted_rows"]
