"""Choosing how much to trust the ranker over retrieval's own order, on a held request cut.

The two-stage score is ``(1 - w) * prior(position) + w * p_ranker``. ``choose_weight`` picks
``w`` from a grid on the held training cuts (the latest request moments of the training window):
for each request it estimates NDCG@k of the order each weight gives, and keeps a weight above 0 only when its gain over ``w = 0`` (retrieval's
order) is positive at the lower end of a one-sided 95% bootstrap interval over requests.

Why so conservative: the held cut is small on a small shop (tens of requests), and the ranker
early-stopped on the same cut, so its gains there are optimistic. Staying with retrieval's order
unless the ranker wins clearly means the default pipeline does no harm where it cannot learn.

Candidates are a sample (every positive, some negatives weighted by their inverse sampling
rate), so a positive's position in the full candidate list is estimated as one plus the summed
weights of the rows ranked above it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

WEIGHT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class WeightChoice:
    """The chosen weight and the evidence: mean NDCG@k per weight and the chosen gain's bound."""

    weight: float
    requests: int
    ndcg: dict[float, float] = field(default_factory=dict)
    gain_lower_95: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "weight": self.weight,
            "requests": self.requests,
            "ndcg": {str(w): round(v, 6) for w, v in self.ndcg.items()},
            "gain_lower_95": round(self.gain_lower_95, 6),
        }


def estimated_ndcg(score: np.ndarray, labels: np.ndarray, weights: np.ndarray, request: np.ndarray, k: int = 10) -> np.ndarray:
    """Per-request NDCG@k of ordering each request's rows by ``score`` (descending); requests without a positive are NaN.

    Ties are broken against the positive (a tie cannot earn credit).
    """
    order = np.lexsort((labels, -score, request))  # by request, score descending, negatives first on ties
    req, y, w = request[order], labels[order] > 0, weights[order]
    starts = np.flatnonzero(np.r_[True, req[1:] != req[:-1]])
    cum = np.cumsum(w) - w  # weight of everything before the row, across requests
    base = np.repeat(cum[starts], np.diff(np.r_[starts, len(req)]))
    position = 1.0 + (cum - base)  # estimated 1-based rank in the full candidate list
    gains = np.where(y & (position <= k), 1.0 / np.log2(1.0 + position), 0.0)
    dcg = np.add.reduceat(gains, starts)
    positives = np.add.reduceat(y.astype(np.int64), starts)
    ideal_terms = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(ideal_terms)[np.minimum(positives, k) - 1]
    return np.where(positives > 0, dcg / np.where(positives > 0, ideal, 1.0), np.nan)


def choose_weight(
    prior: np.ndarray,
    p_ranker: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    request: np.ndarray,
    *,
    grid: Sequence[float] = WEIGHT_GRID,
    k: int = 10,
    resamples: int = 1000,
    seed: int = 0,
    mixer: Callable[[float], np.ndarray] | None = None,
) -> WeightChoice:
    """The weight of ``grid`` whose gain over ``w = 0`` is largest among those that win clearly (else 0).

    ``mixer(w)``: the score of each row at weight ``w`` when the final score is not the
    probability mix (``TwoStage``'s rank mix); it must break its ties by retrieval's order.
    """
    if 0.0 not in grid:
        raise ValueError("the weight grid must contain 0 (retrieval's own order), the fallback")
    per_weight: dict[float, np.ndarray] = {}
    for w in grid:
        if mixer is not None:
            per_weight[float(w)] = estimated_ndcg(np.asarray(mixer(float(w)), dtype=np.float64), labels, weights, request, k)
            continue
        mixed = prior if w <= 0 else p_ranker if w >= 1 else (1.0 - w) * prior + w * p_ranker
        # Ties in the mixed score fall back to retrieval's order (the prior, then nothing).
        score = mixed + 1e-12 * prior
        per_weight[float(w)] = estimated_ndcg(score, labels, weights, request, k)
    valid = ~np.isnan(per_weight[0.0])
    n = int(valid.sum())
    means = {w: float(np.nanmean(v)) if n else 0.0 for w, v in per_weight.items()}
    if n < 2:
        return WeightChoice(0.0, n, means, 0.0)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(resamples, n))
    best, best_gain, best_lower = 0.0, 0.0, 0.0
    for w, values in per_weight.items():
        if w == 0.0:
            continue
        diff = values[valid] - per_weight[0.0][valid]
        gain = float(diff.mean())
        lower = float(np.quantile(diff[picks].mean(axis=1), 0.05))
        if lower > 0 and gain > best_gain:
            best, best_gain, best_lower = w, gain, lower
    return WeightChoice(best, n, means, best_lower)
