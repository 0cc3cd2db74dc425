"""Diagnostics of a probabilistic ranker: calibration, precision-recall, confusion, partial dependence.

All take labels ``y`` (0/1), probabilities ``p`` and optional per-example ``weights`` (the inverse
negative-sampling rate, so that numbers describe the full candidate distribution).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shelf.features import FeatureFrame

if TYPE_CHECKING:
    from shelf.models.ranking._base import RankerBase


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per probability bin: mean predicted probability, observed positive rate, total weight."""

    predicted: np.ndarray
    observed: np.ndarray
    weight: np.ndarray


def _w(y: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    return np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)


def reliability_curve(y: np.ndarray, p: np.ndarray, n_bins: int = 10, weights: np.ndarray | None = None) -> ReliabilityCurve:
    """Equal-width bins over [0, 1]; empty bins are left out."""
    y, p, w = np.asarray(y, np.float64), np.asarray(p, np.float64), _w(y, weights)
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    tot = np.bincount(bins, weights=w, minlength=n_bins)
    pred = np.bincount(bins, weights=w * p, minlength=n_bins)
    obs = np.bincount(bins, weights=w * y, minlength=n_bins)
    keep = tot > 0
    return ReliabilityCurve(pred[keep] / tot[keep], obs[keep] / tot[keep], tot[keep])


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10, weights: np.ndarray | None = None) -> float:
    """Weighted mean |observed - predicted| over the bins of the reliability curve."""
    c = reliability_curve(y, p, n_bins, weights)
    return float(np.sum(c.weight * np.abs(c.observed - c.predicted)) / max(c.weight.sum(), 1e-12))


def precision_recall_curve(y: np.ndarray, p: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(precision, recall, thresholds, average_precision)``, thresholds descending."""
    y, p, w = np.asarray(y, np.float64), np.asarray(p, np.float64), _w(y, weights)
    order = np.argsort(-p, kind="stable")
    p, y, w = p[order], y[order], w[order]
    last = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]  # last index of each distinct threshold
    tp = np.cumsum(w * y)[last]
    fp = np.cumsum(w * (1 - y))[last]
    total_pos = max(float((w * y).sum()), 1e-12)
    precision = tp / np.maximum(tp + fp, 1e-12)
    recall = tp / total_pos
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return precision, recall, p[last], ap


def confusion_matrix(y: np.ndarray, p: np.ndarray, threshold: float = 0.5, weights: np.ndarray | None = None) -> np.ndarray:
    """2×2 ``[[tn, fp], [fn, tp]]`` (weighted counts) at ``p >= threshold``."""
    y, w = np.asarray(y) > 0.5, _w(np.asarray(y), weights)
    hat = np.asarray(p) >= threshold
    return np.array([[w[~y & ~hat].sum(), w[~y & hat].sum()], [w[y & ~hat].sum(), w[y & hat].sum()]])


def roc_auc(y: np.ndarray, p: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Weighted ROC AUC (ties count one half); NaN when one class is absent."""
    y, p, w = np.asarray(y) > 0.5, np.asarray(p, np.float64), _w(np.asarray(y), weights)
    pos, neg = w[y].sum(), w[~y].sum()
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(p, kind="stable")
    p, y, w = p[order], y[order], w[order]
    _, start, counts = np.unique(p, return_index=True, return_counts=True)
    group = np.repeat(np.arange(len(start)), counts)
    neg_w = np.bincount(group, weights=w * ~y)
    pos_w = np.bincount(group, weights=w * y)
    neg_below = np.r_[0.0, np.cumsum(neg_w)[:-1]]
    return float(np.sum(pos_w * (neg_below + 0.5 * neg_w)) / (pos * neg))


def log_loss(y: np.ndarray, p: np.ndarray, weights: np.ndarray | None = None) -> float:
    y, w = np.asarray(y, np.float64), _w(np.asarray(y), weights)
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return float(-np.sum(w * (y * np.log(p) + (1 - y) * np.log(1 - p))) / w.sum())


def partial_dependence(ranker: RankerBase, frame: FeatureFrame, feature: str, grid: np.ndarray | None = None, max_rows: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Mean predicted probability with numeric ``feature`` set to each grid value (default: deciles)."""
    j = frame.numeric_names.index(feature)
    rows = frame if len(frame) <= max_rows else frame.take(np.random.default_rng(0).choice(len(frame), max_rows, replace=False))
    if grid is None:
        finite = rows.numeric[:, j][np.isfinite(rows.numeric[:, j])]
        grid = np.unique(np.quantile(finite, np.linspace(0, 1, 11))) if len(finite) else np.zeros(1)
    out = np.empty(len(grid))
    for g, value in enumerate(grid):
        numeric = rows.numeric.copy()
        numeric[:, j] = value
        out[g] = ranker.predict_frame(FeatureFrame(rows.numeric_names, numeric, rows.categorical_names, rows.categorical)).mean()
    return np.asarray(grid, dtype=np.float64), out


def top_features(ranker: RankerBase, frame: FeatureFrame, labels: np.ndarray, k: int = 5, seed: int = 0) -> list[tuple[str, float]]:
    """Numeric features ranked by permutation importance (drop in AUC when shuffled)."""
    rng = np.random.default_rng(seed)
    base = roc_auc(labels, ranker.predict_frame(frame))
    drops = []
    for j, name in enumerate(frame.numeric_names):
        if name not in ranker.encoder_.numeric_names_:
            continue
        numeric = frame.numeric.copy()
        numeric[:, j] = rng.permutation(numeric[:, j])
        shuffled = FeatureFrame(frame.numeric_names, numeric, frame.categorical_names, frame.categorical)
        drops.append((name, base - roc_auc(labels, ranker.predict_frame(shuffled))))
    return sorted(drops, key=lambda t: -t[1])[:k]


def plot_diagnostics(y: np.ndarray, p: np.ndarray, path: Path | str, weights: np.ndarray | None = None,
                     dependence: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> Path:
    """Reliability curve, precision-recall curve and partial dependence plots in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 + len(dependence or {})
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 4))
    c = reliability_curve(y, p, weights=weights)
    axes[0].plot([0, 1], [0, 1], "k:", label="perfect")
    axes[0].plot(c.predicted, c.observed, "o-", label=f"ECE {expected_calibration_error(y, p, weights=weights):.3f}")
    axes[0].set(xlabel="predicted probability", ylabel="observed rate", title="reliability")
    axes[0].legend()
    precision, recall, _, ap = precision_recall_curve(y, p, weights)
    axes[1].plot(recall, precision)
    axes[1].set(xlabel="recall", ylabel="precision", title=f"precision-recall (AP {ap:.3f})")
    for ax, (name, (grid, values)) in zip(axes[2:], (dependence or {}).items(), strict=False):
        ax.plot(grid, values, "o-")
        ax.set(xlabel=name, ylabel="mean probability", title="partial dependence")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
