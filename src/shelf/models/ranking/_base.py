"""What every ranker shares: the temporal validation cut, encoding, calibration, scoring, save/load.

A ranker implements ``_train(train, valid)`` (learn; early-stop on ``valid``), ``_logits(frame)``
(raw scores, batched over all rows), ``_save_model(folder)`` and ``_load_model(folder)``.

Saved as a folder, no pickle::

    ranker.json     kind, config, feature set (declarations + version), encoder (vocabularies,
                    scaling), calibrator; written last, so a half-written folder is refused
    model.*         the learned weights (safetensors for torch, LightGBM's text format)
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np

from shelf.features import FeatureFrame, FeatureSet, OnlineFeatures
from shelf.models.base import Query, Scored
from shelf.models.io import (
    ModelError,
    ModelFitError,
    ModelFormatError,
    NotFittedError,
    config_from_dict,
    config_to_dict,
)
from shelf.models.ranking.calibration import Calibrator
from shelf.models.ranking.data import RankingSet
from shelf.models.ranking.encoding import EncoderConfig, FeatureEncoder

RANKER_FORMAT = "shelf-ranker"
RANKER_FORMAT_VERSION = 1
RANKER_MANIFEST = "ranker.json"


class FeatureSource(Protocol):
    """Computes features of candidates for a request (``OnlineFeatures`` at serving)."""

    def frame(self, query: Query, candidates: Scored) -> FeatureFrame: ...


@runtime_checkable
class Ranker(Protocol):
    name: str

    def fit(self, data: RankingSet) -> Self: ...

    def score(self, query: Query, candidates: Scored) -> Scored: ...


class RankerBase:
    """Shared behaviour; subclasses set ``name``, ``config_class`` and the ``_`` hooks.

    ``config`` must have ``validation_fraction``, ``calibration`` and ``encoder`` fields.
    """

    name: ClassVar[str] = "ranker"
    config_class: ClassVar[type]
    model_file: ClassVar[str] = "model.bin"
    config: Any

    def __init__(self, config: Any = None, *, features: FeatureSource | None = None) -> None:
        cfg: Any = self.config_class() if config is None else config
        if not isinstance(cfg, self.config_class):
            raise ModelError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(cfg).__name__}")
        if not 0.0 < cfg.validation_fraction < 1.0:
            raise ModelError(f"validation_fraction must lie in (0, 1), got {cfg.validation_fraction}")
        Calibrator(cfg.calibration)  # validates the method name
        self.config = cfg
        self.features = features

    # -- hooks ----------------------------------------------------------------------------------

    def _train(self, train: RankingSet, valid: RankingSet) -> None:
        raise NotImplementedError

    def _logits(self, frame: FeatureFrame) -> np.ndarray:
        raise NotImplementedError

    def _save_model(self, folder: Path) -> None:
        raise NotImplementedError

    def _load_model(self, folder: Path) -> None:
        raise NotImplementedError

    # -- fitting --------------------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "calibrator_")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit(data) or load(path) first")

    def fit(self, data: RankingSet) -> Self:
        """Train on the earlier requests, early-stop and calibrate on the later ones."""
        if len(data) == 0:
            raise ModelFitError(f"{type(self).__name__}: empty ranking set")
        if data.labels.min() == data.labels.max():
            raise ModelFitError(f"{type(self).__name__}: labels are all {data.labels[0]:g}; need positives and negatives")
        train, valid = data.split_by_time(self.config.validation_fraction)
        self.feature_set_ = data.feature_set
        self.encoder_ = FeatureEncoder(data.feature_set, self.config.encoder).fit(train.features)
        self._train(train, valid)
        logits = self._logits(valid.features)
        if not np.all(np.isfinite(logits)):
            raise ModelFitError(f"{type(self).__name__}: training produced NaN or infinite scores")
        self.calibrator_ = Calibrator(self.config.calibration).fit(logits, valid.labels, valid.weights)
        return self

    # -- scoring --------------------------------------------------------------------------------

    def predict_frame(self, frame: FeatureFrame) -> np.ndarray:
        """Calibrated engagement probabilities, one per row (float64, never NaN)."""
        self._check_fitted()
        if len(frame) == 0:
            return np.empty(0, dtype=np.float64)
        p = self.calibrator_(self._logits(frame))
        return np.where(np.isfinite(p), p, 0.0)

    def predict_with_logits(self, frame: FeatureFrame) -> tuple[np.ndarray, np.ndarray]:
        """``(calibrated probabilities, raw logits)`` per row, both finite float64.

        Isotonic calibration maps whole logit ranges to one probability; the logits break those
        ties when candidates are ordered (probability first, logit second).
        """
        self._check_fitted()
        if len(frame) == 0:
            return np.empty(0, dtype=np.float64), np.empty(0, dtype=np.float64)
        logits = np.nan_to_num(self._logits(frame), nan=-40.0, posinf=40.0, neginf=-40.0)
        p = self.calibrator_(logits)
        return np.where(np.isfinite(p), p, 0.0), logits

    def with_features(self, features: FeatureSource) -> Self:
        """Use ``features`` (e.g. ``OnlineFeatures``) to compute candidate features in ``score``."""
        self.features = features
        return self

    def online_features(self) -> OnlineFeatures:
        """A fresh online state for this ranker's feature set (feed it events, then ``with_features``)."""
        self._check_fitted()
        return OnlineFeatures(self.feature_set_)

    def score(self, query: Query, candidates: Scored) -> Scored:
        """Candidates reordered by calibrated engagement probability (the new ``scores``)."""
        self._check_fitted()
        if len(candidates) == 0:
            return Scored.empty()
        if self.features is None:
            raise ModelError(f"{type(self).__name__}.score needs a feature source; call with_features(OnlineFeatures(...))")
        p = self.predict_frame(self.features.frame(query, candidates))
        order = np.lexsort((np.arange(len(p)), -p))
        return Scored(
            np.asarray(candidates.items, dtype=object)[order],
            p[order].astype(np.float32),
            None if candidates.sources is None else np.asarray(candidates.sources, dtype=object)[order],
        )

    # -- persistence ----------------------------------------------------------------------------

    def save(self, path: Path | str) -> Path:
        self._check_fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        manifest = folder / RANKER_MANIFEST
        if manifest.exists():
            manifest.unlink()
        self._save_model(folder)
        config = config_to_dict(self.config)
        config["encoder"] = dataclasses.asdict(self.config.encoder)
        body = {
            "format": RANKER_FORMAT,
            "format_version": RANKER_FORMAT_VERSION,
            "kind": self.name,
            "config": config,
            "feature_set": json.loads(self.feature_set_.to_json()),
            "feature_set_version": self.feature_set_.version,
            "encoder": self.encoder_.to_dict(),
            "calibrator": self.calibrator_.to_dict(),
        }
        tmp = folder / (RANKER_MANIFEST + ".tmp")
        tmp.write_text(json.dumps(body, allow_nan=False, sort_keys=True))
        os.replace(tmp, manifest)
        return folder

    @classmethod
    def load(cls, path: Path | str, *, features: FeatureSource | None = None) -> Self:
        folder = Path(path)
        manifest = folder / RANKER_MANIFEST
        if not manifest.is_file():
            raise ModelFormatError(f"{folder}: no {RANKER_MANIFEST}; not a saved ranker (or its save did not finish)")
        try:
            body = json.loads(manifest.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFormatError(f"{manifest}: corrupted ({e})") from e
        if body.get("format") != RANKER_FORMAT:
            raise ModelFormatError(f"{manifest}: not a shelf ranker")
        if int(body.get("format_version", 0)) > RANKER_FORMAT_VERSION:
            raise ModelFormatError(f"{folder}: saved by a newer shelf (format {body['format_version']}); upgrade to load it")
        if body.get("kind") != cls.name:
            raise ModelFormatError(f"{folder}: holds a {body.get('kind')!r} ranker, expected {cls.name!r}")
        config = dict(body["config"])
        encoder_config = EncoderConfig(**config.pop("encoder"))
        model = cls(config_from_dict(cls.config_class, {**config, "encoder": encoder_config}), features=features)
        model.feature_set_ = FeatureSet.from_json(json.dumps(body["feature_set"]))
        model.encoder_ = FeatureEncoder.from_dict(model.feature_set_, body["encoder"])
        model.calibrator_ = Calibrator.from_dict(body["calibrator"])
        model._load_model(folder)
        return model
