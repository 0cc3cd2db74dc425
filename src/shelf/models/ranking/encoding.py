"""From feature values to model inputs: vocabularies, one-hot or embedding, numeric scaling.

Numeric fallback (documented once, applied at fit and at serving alike): a value that is NaN or
±inf after the feature's transform is replaced by the training median of that feature (0 when
training saw no finite value); then it is standardised with the training mean and standard
deviation and clipped to ±``clip``. No input can therefore produce a NaN score.

Categorical: each field gets a ``Vocabulary`` from the training data (code 0 = out of
vocabulary, also for ``None``). Fields with at most ``onehot_max`` codes are one-hot columns of
the dense input; larger ones (category, brand, item, region) are embedding lookups, unless the
declaration forces one or the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shelf.features import FeatureFrame, FeatureSet, Vocabulary
from shelf.models.io import ModelFitError


def apply_transform(values: np.ndarray, transform: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if transform == "log1p":
        with np.errstate(invalid="ignore", over="ignore"):
            return np.sign(x) * np.log1p(np.abs(x))
    return x


@dataclass(frozen=True)
class EncoderConfig:
    min_count: int = 2  # categories seen fewer times in training go to the OOV bucket
    onehot_max: int = 32
    clip: float = 10.0


class FeatureEncoder:
    """Learns vocabularies and scaling from a training frame; turns frames into arrays."""

    def __init__(self, feature_set: FeatureSet, config: EncoderConfig | None = None) -> None:
        self.feature_set = feature_set
        self.config = config or EncoderConfig()

    # -- fit ----------------------------------------------------------------------------------

    def fit(self, frame: FeatureFrame) -> FeatureEncoder:
        if len(frame) == 0:
            raise ModelFitError("cannot fit a feature encoder on zero examples")
        self.numeric_names_ = tuple(f.name for f in self.feature_set.numeric)
        self.transforms_ = tuple(f.transform for f in self.feature_set.numeric)
        medians, means, stds = [], [], []
        for name, transform in zip(self.numeric_names_, self.transforms_, strict=True):
            x = apply_transform(frame.column(name), transform)
            finite = x[np.isfinite(x)]
            median = float(np.median(finite)) if len(finite) else 0.0
            x = np.where(np.isfinite(x), x, median)
            std = float(x.std())
            medians.append(median)
            means.append(float(x.mean()))
            stds.append(std if std > 1e-12 else 1.0)
        self.median_ = np.asarray(medians, dtype=np.float64)
        self.mean_ = np.asarray(means, dtype=np.float64)
        self.std_ = np.asarray(stds, dtype=np.float64)
        self.categorical_names_ = tuple(f.name for f in self.feature_set.categorical)
        self.vocabularies_ = tuple(
            Vocabulary.build(frame.column(n).tolist(), min_count=self.config.min_count) for n in self.categorical_names_
        )
        modes = []
        for f, vocab in zip(self.feature_set.categorical, self.vocabularies_, strict=True):
            mode = f.encoding
            if mode == "auto":
                mode = "onehot" if len(vocab) <= self.config.onehot_max else "embedding"
            modes.append(mode)
        self.modes_ = tuple(modes)
        return self

    # -- transform ----------------------------------------------------------------------------

    @property
    def embedding_cardinalities(self) -> list[int]:
        return [len(v) for v, m in zip(self.vocabularies_, self.modes_, strict=True) if m == "embedding"]

    @property
    def dense_width(self) -> int:
        return len(self.numeric_names_) + sum(len(v) for v, m in zip(self.vocabularies_, self.modes_, strict=True) if m == "onehot")

    def numeric_matrix(self, frame: FeatureFrame) -> np.ndarray:
        """Transformed numeric features with the NaN/inf fallback, not yet standardised (n, k) float64."""
        idx = [frame.numeric_names.index(n) for n in self.numeric_names_]
        x = frame.numeric[:, idx].astype(np.float64, copy=True)
        for j, t in enumerate(self.transforms_):
            if t != "none":
                x[:, j] = apply_transform(x[:, j], t)
        bad = ~np.isfinite(x)
        if bad.any():
            x[bad] = np.broadcast_to(self.median_, x.shape)[bad]
        return x

    def codes(self, frame: FeatureFrame) -> np.ndarray:
        """Vocabulary codes of every categorical feature, (n, c) int64, 0 = OOV."""
        out = np.zeros((len(frame), len(self.categorical_names_)), dtype=np.int64)
        for j, (name, vocab) in enumerate(zip(self.categorical_names_, self.vocabularies_, strict=True)):
            out[:, j] = vocab.encode(frame.column(name))
        return out

    def transform(self, frame: FeatureFrame) -> tuple[np.ndarray, np.ndarray]:
        """``(dense float32 (n, dense_width), embedding codes int64 (n, n_embeddings))``."""
        x = (self.numeric_matrix(frame) - self.mean_) / self.std_
        np.clip(x, -self.config.clip, self.config.clip, out=x)
        codes = self.codes(frame)
        blocks = [x.astype(np.float32)]
        emb_cols = []
        n = len(frame)
        for j, (vocab, mode) in enumerate(zip(self.vocabularies_, self.modes_, strict=True)):
            if mode == "onehot":
                block = np.zeros((n, len(vocab)), dtype=np.float32)
                block[np.arange(n), codes[:, j]] = 1.0
                blocks.append(block)
            else:
                emb_cols.append(j)
        return np.concatenate(blocks, axis=1), codes[:, emb_cols]

    # -- persistence --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": {"min_count": self.config.min_count, "onehot_max": self.config.onehot_max, "clip": self.config.clip},
            "numeric_names": list(self.numeric_names_),
            "transforms": list(self.transforms_),
            "median": self.median_.tolist(),
            "mean": self.mean_.tolist(),
            "std": self.std_.tolist(),
            "categorical_names": list(self.categorical_names_),
            "vocabularies": [v.to_list() for v in self.vocabularies_],
            "modes": list(self.modes_),
        }

    @classmethod
    def from_dict(cls, feature_set: FeatureSet, raw: dict[str, Any]) -> FeatureEncoder:
        enc = cls(feature_set, EncoderConfig(**raw["config"]))
        enc.numeric_names_ = tuple(raw["numeric_names"])
        enc.transforms_ = tuple(raw["transforms"])
        enc.median_ = np.asarray(raw["median"], dtype=np.float64)
        enc.mean_ = np.asarray(raw["mean"], dtype=np.float64)
        enc.std_ = np.asarray(raw["std"], dtype=np.float64)
        enc.categorical_names_ = tuple(raw["categorical_names"])
        enc.vocabularies_ = tuple(Vocabulary(v) for v in raw["vocabularies"])
        enc.modes_ = tuple(raw["modes"])
        return enc
