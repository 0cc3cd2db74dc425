"""What every ranker shares: the temporal validation cut, encoding, calibration, scoring, save/load.

A ranker implements ``_train(train, valid)`` (learn; early-stop on ``valid``), ``_logits(frame)``
(raw scores, batched over all rows), ``_save_model(folder)`` and ``_load_model(folder)``.

Saved as a folder, no pickle::

    manifest.json   written by ``shelf.models.io`` (last, so a half-written folder is refused):
                    kind, config, the weights file's checksum, and as metadata the feature set
                    (declarations + version), encoder (vocabularies, scaling) and calibrator
    model.*         the learned weights (safetensors for torch, LightGBM's text format)
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np

from shelf.features import FeatureFrame, FeatureSet, OnlineFeatures
from shelf.models.base import Query, Scored
from shelf.models.io import (
    MANIFEST,
    ModelError,
    ModelFitError,
    NotFittedError,
    config_from_dict,
    config_to_dict,
    read_manifest,
    write_manifest,
)
from shelf.models.ranking.calibration import Calibrator
from shelf.models.ranking.data import RankingSet
from shelf.models.ranking.encoding import EncoderConfig, FeatureEncoder


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
    supports_refit: ClassVar[bool] = False  # ``refit`` (``_refit``) is implemented
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

    def refit(self, data: RankingSet) -> Self:
        """A copy retrained on every row of ``data`` (validation rows included), keeping what this
        fit chose on its validation cut: the training length (early stopping), the encoder and
        the calibrator (fitted on this fit's out-of-sample validation scores).

        What a ranker fitted on earlier requests gives up to the latest ones (where the shop is
        most like tomorrow) it gets back here, once the choices that need held-out rows are made.
        """
        self._check_fitted()
        if not self.supports_refit:
            raise ModelError(f"{type(self).__name__} cannot be refitted on all rows (use LightGBMRanker)")
        if len(data) == 0 or data.labels.min() == data.labels.max():
            raise ModelFitError(f"{type(self).__name__}: refit needs positives and negatives")
        twin = copy.copy(self)
        twin._refit(data)
        logits = twin._logits(data.features)
        if not np.all(np.isfinite(logits)):
            raise ModelFitError(f"{type(self).__name__}: refit produced NaN or infinite scores")
        return twin

    def _refit(self, data: RankingSet) -> None:
        raise NotImplementedError

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
        manifest = folder / MANIFEST
        if manifest.exists():
            manifest.unlink()  # the folder is invalid until the new manifest lands
        self._save_model(folder)
        config = config_to_dict(self.config)
        config["encoder"] = dataclasses.asdict(self.config.encoder)
        meta = {
            "feature_set": json.loads(self.feature_set_.to_json()),
            "feature_set_version": self.feature_set_.version,
            "encoder": self.encoder_.to_dict(),
            "calibrator": self.calibrator_.to_dict(),
        }
        return write_manifest(folder, kind=self.name, config=config, meta=meta, data_file=self.model_file)

    @classmethod
    def load(cls, path: Path | str, *, features: FeatureSource | None = None) -> Self:
        folder = Path(path)
        manifest, _ = read_manifest(folder, kind=cls.name)  # format, version, kind, weights checksum
        body = {"config": manifest["config"], **manifest["meta"]}
        config = dict(body["config"])
        encoder_config = EncoderConfig(**config.pop("encoder"))
        model = cls(config_from_dict(cls.config_class, {**config, "encoder": encoder_config}), features=features)
        model.feature_set_ = FeatureSet.from_json(json.dumps(body["feature_set"]))
        model.encoder_ = FeatureEncoder.from_dict(model.feature_set_, body["encoder"])
        model.calibrator_ = Calibrator.from_dict(body["calibrator"])
        model._load_model(folder)
        return model
