"""Feature-group ablation: retrain without each group and report the metric change with a CI.

The ranking set is cut by time into train (earlier) and test (later) requests. The full model and
one model per dropped group are trained on the same train part and scored on the same test rows;
the change in metric gets a paired bootstrap confidence interval over test *requests* (rows of
one request move together, since they share a shopper and a moment).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from shelf.features import FeatureSet
from shelf.models.io import ModelError
from shelf.models.ranking._base import RankerBase
from shelf.models.ranking.data import RankingSet
from shelf.models.ranking.diagnostics import log_loss, roc_auc

METRICS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]] = {
    "auc": roc_auc,
    "logloss": log_loss,
}


@dataclass(frozen=True)
class AblationResult:
    """``delta = ablated - full`` (for AUC, negative means the group helped)."""

    group: str
    metric: str
    full: float
    ablated: float
    delta: float
    ci_low: float
    ci_high: float


def ablate(
    data: RankingSet,
    make_ranker: Callable[[], RankerBase],
    groups: Sequence[str] | None = None,
    *,
    metric: str = "auc",
    test_fraction: float = 0.25,
    n_boot: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[AblationResult]:
    """One result per group in ``groups`` (default: every group of the data's feature set)."""
    if metric not in METRICS:
        raise ModelError(f"unknown ablation metric {metric!r}; expected one of {sorted(METRICS)}")
    score = METRICS[metric]
    fs: FeatureSet = data.feature_set
    groups = list(groups) if groups is not None else list(fs.groups)
    unknown = set(groups) - set(fs.groups)
    if unknown:
        raise ModelError(f"feature group(s) {sorted(unknown)} are not in the feature set (groups: {fs.groups})")
    train, test = data.split_by_time(test_fraction)
    full_p = make_ranker().fit(train).predict_frame(test.features)
    requests, inverse = np.unique(test.request, return_inverse=True)
    rng = np.random.default_rng(seed)
    # one resample of requests, shared by every group, so differences are paired
    boots = [rng.integers(0, len(requests), len(requests)) for _ in range(n_boot)]
    rows_of = [np.flatnonzero(inverse == r) for r in range(len(requests))]
    results = []
    for group in groups:
        sub = fs.without([group])
        p = make_ranker().fit(train.with_features(sub)).predict_frame(test.features)
        full = score(test.labels, full_p, test.weights)
        ablated = score(test.labels, p, test.weights)
        deltas = []
        for b in boots:
            rows = np.concatenate([rows_of[i] for i in b])
            y, w = test.labels[rows], test.weights[rows]
            d = score(y, p[rows], w) - score(y, full_p[rows], w)
            if np.isfinite(d):
                deltas.append(d)
        alpha = (1 - confidence) / 2
        lo, hi = (np.quantile(deltas, [alpha, 1 - alpha]) if deltas else (np.nan, np.nan))
        results.append(AblationResult(group, metric, full, ablated, ablated - full, float(lo), float(hi)))
    return results
