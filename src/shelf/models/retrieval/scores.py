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
  found by max-score pruning over the features' posting lists.

Every form answers ``top(n)`` exactly as ``top_indices(dense, n)`` would (best first, ties to the
lower index), ``at(idx)`` exactly as ``dense[idx]``, and ``dense()`` as the vector itself; that
parity is tested for every retriever.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

NEG_INF = np.float32(-np.inf)
DENSE_SHARE = 0.25  # LinearScores scores everything once pruning would visit this share of items


def top_of(scores: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` best finite values, best first; ties broken by lower position."""
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    if len(scores) > n:
        # -inf sorts lowest, so partitioning the raw vector finds the n-th largest value without
        # first copying out the finite entries (a dense catalogue-sized vector per request).
        kth = np.partition(scores, len(scores) - n)[len(scores) - n]
        chosen = np.empty(0, dtype=np.int64)
        if np.isfinite(kth):
            above = np.flatnonzero(scores > kth)
            tied = np.flatnonzero(scores == kth)[: n - len(above)]
            chosen = np.concatenate([above, tied])
        if len(chosen) < n:  # -inf or NaN among the n largest: take every finite value instead
            chosen = np.flatnonzero(np.isfinite(scores))
    else:
        chosen = np.flatnonzero(np.isfinite(scores))
    order = np.lexsort((chosen, -scores[chosen]))
    return chosen[order][:n]


def weighted_rows(matrix: Any, rows: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sum_k weights[k] * matrix[rows[k]]`` of a CSR matrix as a sparse vector: ascending unique
    column indices and float64 sums. For a handful of rows this is several times cheaper than
    building a one-row sparse matrix and multiplying (scipy's per-call overhead dominates)."""
    ptr, indices, data = matrix.indptr, matrix.indices, matrix.data
    idx_parts, val_parts = [], []
    for r, w in zip(np.asarray(rows, dtype=np.int64).tolist(), np.asarray(weights, dtype=np.float64).tolist(), strict=True):
        start, end = ptr[r], ptr[r + 1]
        if end > start:
            idx_parts.append(indices[start:end])
            val_parts.append(data[start:end] * w)
    if not idx_parts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    idx, inverse = np.unique(np.concatenate(idx_parts), return_inverse=True)
    return idx.astype(np.int64), np.bincount(inverse, weights=np.concatenate(val_parts), minlength=len(idx))


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
    """Only the proposed items: ``idx`` (ascending, unique) with finite ``values``."""

    __slots__ = ("idx", "size", "values")

    def __init__(self, idx: np.ndarray, values: np.ndarray, size: int) -> None:
        idx = np.asarray(idx, dtype=np.int64)
        values = np.asarray(values, dtype=np.float32)
        if len(idx) > 1 and not bool(np.all(idx[1:] > idx[:-1])):
            order = np.argsort(idx, kind="stable")
            idx, values = idx[order], values[order]
        keep = np.isfinite(values)
        if not keep.all():
            idx, values = idx[keep], values[keep]
        self.idx, self.values, self.size = idx, values, size

    @classmethod
    def from_positive(cls, idx: np.ndarray, values: np.ndarray, size: int) -> SparseScores:
        """Keep the strictly positive entries (the ``scores > 0 else -inf`` rule of most sources)."""
        values = np.asarray(values, dtype=np.float32)
        keep = values > 0
        return cls(np.asarray(idx)[keep], values[keep], size)

    def __len__(self) -> int:
        return self.size

    def top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        pos = top_of(self.values, n)  # idx is ascending, so lower position = lower index
        return self.idx[pos], self.values[pos]

    def at(self, idx: np.ndarray) -> np.ndarray:
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


class RankedScores:
    """A dense vector shared by many requests (popularity per segment), with its best items
    ranked once: top-n is a slice of that ranking, grown (doubling) the first time a request
    asks for more. Ranking only a prefix keeps a cache miss O(catalogue), not a full sort.
    """

    __slots__ = ("_bounds", "_lock", "order", "values")

    def __init__(self, values: np.ndarray, prefix: int = 1024) -> None:
        self.values = np.asarray(values, dtype=np.float32)
        self.order = top_of(self.values, prefix)
        self._lock = threading.Lock()
        finite = self.values[np.isfinite(self.values)]
        self._bounds = (float(finite.min()), float(finite.max())) if len(finite) else None

    def __len__(self) -> int:
        return len(self.values)

    def top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        n = max(n, 0)
        order = self.order
        if n > len(order) and len(order) < len(self.values):
            with self._lock:  # shared across serving threads: grow once
                order = self.order
                if n > len(order):
                    order = self.order = top_of(self.values, max(n, 2 * len(order)))
        idx = order[:n]
        return idx, self.values[idx]

    def at(self, idx: np.ndarray) -> np.ndarray:
        return self.values[idx]

    def dense(self) -> np.ndarray:
        return self.values.copy()  # shared across requests: callers get their own

    def bounds(self) -> tuple[float, float] | None:
        return self._bounds


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
    """

    __slots__ = ("_dense", "by_feature", "column_max", "features", "matrix", "profile", "weights")

    def __init__(self, matrix: Any, by_feature: Any, column_max: np.ndarray, features: np.ndarray, weights: np.ndarray) -> None:
        self.matrix = matrix  # items × features, CSR
        self.by_feature = by_feature  # features × items, CSR (posting lists)
        self.column_max = column_max
        self.features = np.asarray(features, dtype=np.int64)
        self.weights = np.asarray(weights, dtype=np.float32)
        self.profile = np.zeros(matrix.shape[1], dtype=np.float32)
        self.profile[self.features] = self.weights
        self._dense: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

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
        bound = self.weights.astype(np.float64) * self.column_max[self.features]
        order = np.argsort(-bound, kind="stable")  # most promising feature first
        lengths = np.diff(self.by_feature.indptr)[self.features[order]]
        if lengths.sum() >= len(self):
            # The profile's features cover the catalogue over (a small vocabulary of broad
            # features): pruning would gather most rows anyway; one pass over the matrix is cheaper.
            return DenseScores(self._full()).top(n)
        # Round one: the most promising features until they reach n items (or all features).
        expanded = int(np.searchsorted(np.cumsum(lengths), n)) + 1
        while True:
            if lengths[:expanded].sum() > DENSE_SHARE * len(self):
                # Broad features overlap (a small vocabulary): pruning would touch most of the
                # catalogue, and one pass over the whole matrix is cheaper than gathering rows.
                return DenseScores(self._full()).top(n)
            cand = self._postings(self.features[order[:expanded]])
            values = self._exact(cand)
            positive = values > 0
            cand, values = cand[positive], values[positive]
            theta = float(np.partition(values, len(values) - n)[len(values) - n]) if len(values) >= n else 0.0
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


QueryScores = DenseScores | SparseScores | RankedScores | LinearScores

__all__ = ["DenseScores", "LinearScores", "QueryScores", "RankedScores", "SparseScores", "top_of", "weighted_rows"]
