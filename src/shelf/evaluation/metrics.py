"""Full-catalogue ranking metrics, beyond-accuracy metrics and calibration, vectorised over users.

Conventions (stated once, used everywhere)
------------------------------------------
- Rankings are over the whole catalogue: no sampled negatives. :func:`top_k` takes a dense
  ``users × items`` score block and returns the K best item indices per user.
- Ties are broken by item index (lower first), so results are deterministic; the boundary at K is
  resolved exactly, not by whatever ``argpartition`` happened to pick.
- A score of ``-inf`` means "not recommended": such slots become ``-1`` (fewer than K
  recommendations) and count as misses. NaN scores are refused (:class:`ModelOutputError`).
- Relevance is a sparse ``users × items`` matrix of positive gains (see ``targets``). Users without
  any relevant item get NaN for every accuracy metric and are left out of means.
- Precision@K divides by K even when fewer than K items were recommended; Recall@K divides by the
  number of relevant items; NDCG@K uses linear gains and ``1/log2(rank + 1)`` discounts, the
  ideal DCG taking the user's K largest gains; MRR and MAP are cut at K (MRR@K, MAP@K, with AP
  normalised by ``min(|relevant|, K)``); HitRate@K is 1 when any relevant item is in the top K.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from shelf.evaluation.errors import InvalidCutoffError, ModelOutputError

ACCURACY_METRICS: tuple[str, ...] = ("ndcg", "recall", "precision", "hitrate", "mrr", "map")


def check_cutoffs(ks: Sequence[int], n_items: int) -> tuple[int, ...]:
    """Validate cut-offs: positive integers no larger than the catalogue."""
    if not ks:
        raise InvalidCutoffError("give at least one cut-off K")
    out = tuple(sorted({int(k) for k in ks}))
    if out[0] < 1:
        raise InvalidCutoffError(f"cut-offs must be positive, got {list(ks)}")
    if out[-1] > n_items:
        raise InvalidCutoffError(
            f"K={out[-1]} is larger than the catalogue ({n_items} items); every list would be padded"
        )
    return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best items per row, best first; ``-1`` where the score is ``-inf``.

    Parameters
    ----------
    scores:
        ``(n_users, n_items)`` float array; higher is better.
    k:
        Cut-off, ``1 <= k <= n_items``.

    Returns
    -------
    ``(n_users, k)`` int64 array. Ties are broken by lower item index.
    """
    if scores.ndim != 2:
        raise ModelOutputError(f"scores must be a 2-D users × items block, got shape {scores.shape}")
    n, m = scores.shape
    if not 1 <= k <= m:
        raise InvalidCutoffError(f"K={k} must be between 1 and the catalogue size {m}")
    if n == 0:
        return np.empty((0, k), dtype=np.int64)
    scores = np.ascontiguousarray(scores)
    # Every item of the top K scores at least the K-th largest of any set of block maxima (K
    # blocks each hold an item at least that good), so only items at or above that bound are
    # candidates, and they lie in blocks whose maximum reaches it (about K of them). One pass
    # over the block for the maxima, then only those blocks are read again. Equal-width blocks
    # (the last one may be shorter) so the chosen ones can be gathered through a strided view.
    width = max(8, m // (16 * k))
    starts = np.arange(0, m, width)
    block_max = np.maximum.reduceat(scores, starts, axis=1)
    if np.isnan(block_max).any():
        raise ModelOutputError("the model returned NaN scores; NaN cannot be ranked")
    n_blocks = len(starts)
    if n_blocks > k:
        bound = np.partition(block_max, n_blocks - k, axis=1)[:, n_blocks - k]
        # flatnonzero is far faster than 2-D nonzero.
        brow, bidx = np.divmod(np.flatnonzero(block_max >= bound[:, None]), n_blocks)
        n_full = m // width
        full = bidx < n_full
        frow, fidx = brow[full], bidx[full]
        blocks = np.lib.stride_tricks.as_strided(
            scores, (n, n_full, width), (scores.strides[0], width * scores.itemsize, scores.itemsize), writeable=False
        )
        prow, pcol = np.divmod(np.flatnonzero(blocks[frow, fidx] >= bound[frow, None]), width)
        rows, cols = frow[prow], fidx[prow] * width + pcol
        if not full.all():
            cut = n_full * width
            trow = brow[~full]
            tr, tc = np.divmod(np.flatnonzero(scores[trow, cut:] >= bound[trow, None]), m - cut)
            rows, cols = np.concatenate([rows, trow[tr]]), np.concatenate([cols, cut + tc])
        vals = scores[rows, cols]
    else:
        rows, cols = np.divmod(np.arange(n * m, dtype=np.int64), m)
        vals = scores.reshape(-1)
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    counts = np.bincount(rows, minlength=n)
    first = np.cumsum(counts) - counts
    keep = (np.arange(len(rows)) - first[rows]) < k
    ranked = cols[keep].reshape(n, k).astype(np.int64)
    ranked[vals[keep].reshape(n, k) == -np.inf] = -1
    return ranked


def drop_excluded(ranked: np.ndarray, indptr: np.ndarray, indices: np.ndarray, k: int) -> np.ndarray:
    """Remove each row's excluded items from a ranking, keep the order, cut at ``k``, pad with ``-1``.

    Parameters
    ----------
    ranked:
        ``(n_users, width)`` item indices from :func:`top_k` (``-1`` = no recommendation).
    indptr, indices:
        CSR row pointers (``n_users + 1``, may start above 0) and item indices of the excluded items.
    k:
        Length of the returned lists.

    Returns
    -------
    ``(n_users, k)`` int64 array. Equal to ``top_k`` of the scores with the excluded items set to
    ``-inf`` whenever ``width >= k + (excluded items of the row)`` or the row holds its whole catalogue.
    """
    n, width = ranked.shape
    counts = np.diff(indptr)
    if width < k:
        ranked = np.concatenate([ranked, np.full((n, k - width), -1, dtype=ranked.dtype)], axis=1)
        width = k
    # One key per (row, item); -1 padding maps to a key no excluded item has.
    span = int(max(ranked.max(initial=-1), indices.max(initial=-1))) + 2
    excluded = np.repeat(np.arange(n, dtype=np.int64), counts) * span + indices[indptr[0] : indptr[-1]]
    keys = np.arange(n, dtype=np.int64)[:, None] * span + ranked
    keep = (ranked >= 0) & ~np.isin(keys, excluded)
    # A stable sort of "dropped" flags moves kept items to the front in their ranked order.
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    out = np.take_along_axis(ranked, order, axis=1).astype(np.int64)
    out[~np.take_along_axis(keep, order, axis=1)] = -1
    return out


def gains_at(ranked: np.ndarray, relevance: sp.csr_matrix) -> np.ndarray:
    """Gain of each recommended item (0 for misses and padding); rows of both must align."""
    relevance = sp.csr_matrix(relevance)
    relevance.sum_duplicates()
    relevance.sort_indices()
    n, m = relevance.shape
    if ranked.shape[0] != n:
        raise ValueError(f"{ranked.shape[0]} ranked rows for {n} relevance rows")
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(relevance.indptr))
    keys = rows * m + relevance.indices.astype(np.int64)
    query = np.arange(n, dtype=np.int64)[:, None] * m + np.maximum(ranked, 0)
    pos = np.searchsorted(keys, query)
    pos_c = np.minimum(pos, max(len(keys) - 1, 0))
    found = (pos < len(keys)) & (ranked >= 0)
    if len(keys):
        found &= keys[pos_c] == query
        return np.where(found, relevance.data[pos_c], 0.0).astype(np.float64)
    return np.zeros(ranked.shape, dtype=np.float64)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def ideal_dcg(relevance: sp.csr_matrix, k: int) -> np.ndarray:
    """Per-row DCG of the ideal ordering (largest gains first), cut at ``k``."""
    relevance = sp.csr_matrix(relevance)
    n = relevance.shape[0]
    counts = np.diff(relevance.indptr)
    rows = np.repeat(np.arange(n), counts)
    data = relevance.data.astype(np.float64)
    order = np.lexsort((-data, rows))
    rows, data = rows[order], data[order]
    position = np.arange(len(rows)) - np.repeat(relevance.indptr[:-1], counts)
    keep = (position < k) & (data > 0)
    return np.bincount(rows[keep], weights=data[keep] * _discounts(k)[position[keep]], minlength=n)


def ranking_metrics(ranked: np.ndarray, relevance: sp.csr_matrix, ks: Sequence[int]) -> dict[tuple[str, int], np.ndarray]:
    """Per-user accuracy metrics at every K.

    Parameters
    ----------
    ranked:
        ``(n_users, max(ks))`` item indices from :func:`top_k` (``-1`` = no recommendation).
    relevance:
        ``(n_users, n_items)`` sparse positive gains.
    ks:
        Cut-offs, each at most ``ranked.shape[1]``.

    Returns
    -------
    ``{(metric, k): float64 array of n_users}``; NaN for users without relevant items.
    """
    relevance = sp.csr_matrix(relevance, dtype=np.float64)
    relevance.eliminate_zeros()
    if ranked.shape[1] < max(ks):
        raise InvalidCutoffError(f"ranked lists hold {ranked.shape[1]} items, fewer than K={max(ks)}")
    gains = gains_at(ranked, relevance)
    hits = gains > 0
    n_rel = np.diff(relevance.indptr).astype(np.float64)
    empty = n_rel == 0
    discount = _discounts(ranked.shape[1])
    cum_hits = np.cumsum(hits, axis=1)
    precision_at_j = cum_hits / np.arange(1, ranked.shape[1] + 1)
    any_hit = hits.any(axis=1)
    first = np.where(any_hit, hits.argmax(axis=1), -1)
    out: dict[tuple[str, int], np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in ks:
            n_hits = cum_hits[:, k - 1].astype(np.float64)
            dcg = (gains[:, :k] * discount[:k]).sum(axis=1)
            idcg = ideal_dcg(relevance, k)
            in_k = (first >= 0) & (first < k)
            rr = np.where(in_k, 1.0 / (first + 1.0), 0.0)
            ap = (precision_at_j[:, :k] * hits[:, :k]).sum(axis=1) / np.minimum(n_rel, k)
            values = {
                "ndcg": dcg / idcg,
                "recall": n_hits / n_rel,
                "precision": n_hits / k,
                "hitrate": (n_hits > 0).astype(np.float64),
                "mrr": rr,
                "map": ap,
            }
            for name, v in values.items():
                out[(name, k)] = np.where(empty, np.nan, v)
    return out


# ---------------------------------------------------------------------------------------------
# Beyond accuracy


def exposure_counts(ranked: np.ndarray, n_items: int) -> np.ndarray:
    """How many lists show each item (padding ignored)."""
    valid = ranked[ranked >= 0]
    return np.bincount(valid, minlength=n_items).astype(np.int64)


def catalogue_coverage(exposure: np.ndarray) -> float:
    """Share of the catalogue shown to at least one user."""
    return float((exposure > 0).mean()) if len(exposure) else 0.0


def gini(values: np.ndarray) -> float:
    """Gini coefficient of a non-negative distribution (0 = equal exposure, ->1 = all on one item)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    total = x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float((2.0 * np.sum(np.arange(1, n + 1) * x)) / (n * total) - (n + 1.0) / n)


def _per_list_mean(ranked: np.ndarray, per_item: np.ndarray) -> np.ndarray:
    valid = ranked >= 0
    values = np.where(valid, per_item[np.maximum(ranked, 0)], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return values.sum(axis=1) / valid.sum(axis=1)


def novelty(ranked: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """Per-list mean self-information ``-log2 p(i)``; ``popularity`` is the share of training users
    who touched each item (items nobody touched get ``1 / n_users`` via the caller)."""
    return _per_list_mean(ranked, -np.log2(np.clip(popularity, 1e-12, 1.0)))


def average_popularity(ranked: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """Per-list mean popularity of the recommended items (ARP)."""
    return _per_list_mean(ranked, popularity.astype(np.float64))


def new_item_share(ranked: np.ndarray, is_new: np.ndarray) -> np.ndarray:
    """Per-list share of recommended items that are new launches."""
    return _per_list_mean(ranked, is_new.astype(np.float64))


def intra_list_diversity(ranked: np.ndarray, category: np.ndarray) -> np.ndarray:
    """Per-list share of item pairs from different categories (``category``: int code per item).

    Lists with fewer than two items get NaN.
    """
    valid = ranked >= 0
    codes = np.where(valid, category[np.maximum(ranked, 0)], -1)
    length = valid.sum(axis=1).astype(np.float64)
    same = (codes[:, :, None] == codes[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    same_pairs = same.sum(axis=(1, 2)) - length  # drop each item paired with itself
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(length >= 2, 1.0 - same_pairs / (length * (length - 1.0)), np.nan)


# ---------------------------------------------------------------------------------------------
# Probabilities


def _check_probabilities(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{len(y)} labels for {len(p)} probabilities")
    if len(p) and (np.isnan(p).any() or p.min() < 0 or p.max() > 1):
        raise ModelOutputError("probabilities must lie in [0, 1] and not be NaN")
    return y, p


def log_loss(y: np.ndarray, p: np.ndarray, eps: float = 1e-15) -> float:
    """Mean binary cross-entropy (natural log); probabilities clipped to [eps, 1 - eps]."""
    y, p = _check_probabilities(y, p)
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN when only one class is present."""
    y, p = _check_probabilities(y, p)
    pos = y > 0
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    sorted_p = p[order]
    # Mid-ranks for ties.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_p)) + 1]
    ends = np.r_[starts[1:], len(p)]
    mid = (starts + ends + 1) / 2.0
    ranks = np.empty(len(p))
    ranks[order] = np.repeat(mid, ends - starts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass(frozen=True)
class ReliabilityCurve:
    """Equal-width bins over [0, 1]: mean prediction, observed positive rate and count per bin."""

    mean_predicted: np.ndarray
    observed_rate: np.ndarray
    counts: np.ndarray

    @property
    def ece(self) -> float:
        total = self.counts.sum()
        if total == 0:
            return float("nan")
        used = self.counts > 0
        gap = np.abs(self.mean_predicted[used] - self.observed_rate[used])
        return float((self.counts[used] * gap).sum() / total)


def reliability_curve(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> ReliabilityCurve:
    """Reliability diagram data with ``n_bins`` equal-width bins (empty bins hold NaN)."""
    y, p = _check_probabilities(y, p)
    acc = ProbabilityAccumulator(fine_bins=n_bins)
    acc.add(p, y)
    return acc.reliability(n_bins)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """ECE: count-weighted mean |mean prediction - positive rate| over equal-width bins."""
    return reliability_curve(y, p, n_bins).ece


@dataclass
class ProbabilityAccumulator:
    """Streams (probability, label) pairs of a whole users × catalogue matrix in blocks.

    Log loss is exact; ECE and the reliability curve use ``fine_bins`` merged into equal-width bins
    (``fine_bins`` must be a multiple of the bins asked for); AUC is computed from the fine
    histogram, exact up to ties within one fine bin (width ``1/fine_bins``).
    """

    fine_bins: int = 10_000
    positives: np.ndarray = field(init=False)
    totals: np.ndarray = field(init=False)
    sum_p: np.ndarray = field(init=False)
    loss_sum: float = 0.0

    def __post_init__(self) -> None:
        self.positives = np.zeros(self.fine_bins, dtype=np.float64)
        self.totals = np.zeros(self.fine_bins, dtype=np.float64)
        self.sum_p = np.zeros(self.fine_bins, dtype=np.float64)

    def add(self, p: np.ndarray, y: np.ndarray) -> None:
        y, p = _check_probabilities(y, p)
        b = np.minimum((p * self.fine_bins).astype(np.int64), self.fine_bins - 1)
        self.totals += np.bincount(b, minlength=self.fine_bins)
        self.positives += np.bincount(b, weights=y, minlength=self.fine_bins)
        self.sum_p += np.bincount(b, weights=p, minlength=self.fine_bins)
        q = np.clip(p, 1e-15, 1 - 1e-15)
        self.loss_sum += float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).sum())

    @property
    def n(self) -> float:
        return float(self.totals.sum())

    def log_loss(self) -> float:
        return self.loss_sum / self.n if self.n else float("nan")

    def auc(self) -> float:
        pos = self.positives
        neg = self.totals - self.positives
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        neg_below = np.cumsum(neg) - neg
        return float((pos * neg_below).sum() + 0.5 * (pos * neg).sum()) / float(n_pos * n_neg)

    def reliability(self, n_bins: int = 10) -> ReliabilityCurve:
        if self.fine_bins % n_bins:
            raise ValueError(f"{n_bins} bins do not divide {self.fine_bins} fine bins")
        f = self.fine_bins // n_bins
        counts = self.totals.reshape(n_bins, f).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_p = self.sum_p.reshape(n_bins, f).sum(axis=1) / counts
            rate = self.positives.reshape(n_bins, f).sum(axis=1) / counts
        return ReliabilityCurve(mean_p, rate, counts.astype(np.int64))

    def ece(self, n_bins: int = 10) -> float:
        return self.reliability(n_bins).ece
