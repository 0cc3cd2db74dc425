"""Post-hoc calibration of ranker scores into probabilities: Platt scaling or isotonic regression.

Both are fitted on the temporal validation cut (weighted by the inverse negative-sampling rate)
and map a raw logit to a probability. Isotonic is a step function learned by pool-adjacent-
violators, evaluated by linear interpolation between block centres (so ties stay monotone).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shelf.models.io import ModelError


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


class Calibrator:
    """``fit(logits, labels, weights)``, then ``__call__(logits) -> probabilities``."""

    def __init__(self, method: str = "isotonic") -> None:
        if method not in ("isotonic", "platt", "none"):
            raise ModelError(f"calibration must be isotonic, platt or none, got {method!r}")
        self.method = method

    def fit(self, logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> Calibrator:
        z = np.asarray(logits, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64)
        w = np.ones_like(z) if weights is None else np.asarray(weights, dtype=np.float64)
        if self.method == "platt":
            self.a_, self.b_ = _platt(z, y, w)
        elif self.method == "isotonic":
            self.x_, self.y_ = _isotonic(z, y, w)
        return self

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64)
        if self.method == "platt":
            return sigmoid(self.a_ * z + self.b_)
        if self.method == "isotonic":
            return np.interp(z, self.x_, self.y_)
        return sigmoid(z)

    def to_dict(self) -> dict[str, Any]:
        if self.method == "platt":
            return {"method": "platt", "a": self.a_, "b": self.b_}
        if self.method == "isotonic":
            return {"method": "isotonic", "x": self.x_.tolist(), "y": self.y_.tolist()}
        return {"method": "none"}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Calibrator:
        cal = cls(raw["method"])
        if cal.method == "platt":
            cal.a_, cal.b_ = float(raw["a"]), float(raw["b"])
        elif cal.method == "isotonic":
            cal.x_, cal.y_ = np.asarray(raw["x"], dtype=np.float64), np.asarray(raw["y"], dtype=np.float64)
        return cal


def _platt(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted logistic regression of y on z by Newton's method, with Platt's smoothed targets."""
    pos, neg = w[y > 0.5].sum(), w[y <= 0.5].sum()
    target = np.where(y > 0.5, (pos + 1) / (pos + 2), 1 / (neg + 2))
    a, b = 1.0, 0.0
    for _ in range(50):
        p = sigmoid(a * z + b)
        g = np.array([np.sum(w * (p - target) * z), np.sum(w * (p - target))])
        s = w * p * (1 - p)
        h = np.array([[np.sum(s * z * z), np.sum(s * z)], [np.sum(s * z), np.sum(s)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a), float(b)


def _isotonic(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(z, kind="stable")
    z, y, w = z[order], y[order], w[order]
    # pool-adjacent-violators over blocks (value, weight, x-sum)
    vals: list[float] = []
    wts: list[float] = []
    xs: list[float] = []
    for zi, yi, wi in zip(z.tolist(), y.tolist(), w.tolist(), strict=True):
        vals.append(yi)
        wts.append(wi)
        xs.append(zi * wi)
        while len(vals) > 1 and vals[-2] >= vals[-1]:
            v2, w2, x2 = vals.pop(), wts.pop(), xs.pop()
            total = wts[-1] + w2
            vals[-1] = (vals[-1] * wts[-1] + v2 * w2) / total
            xs[-1] += x2
            wts[-1] = total
    centres = np.asarray(xs) / np.asarray(wts)
    return centres, np.clip(np.asarray(vals), 0.0, 1.0)
