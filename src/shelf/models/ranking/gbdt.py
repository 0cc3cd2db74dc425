"""The LightGBM alternative behind the same ``Ranker`` protocol.

Numeric features enter after their transform and the NaN/inf fallback (no scaling: trees do not
need it); categorical features enter as vocabulary codes declared categorical to LightGBM (0 =
OOV). Early stopping on the temporal validation cut; the model is saved in LightGBM's own text
format, never pickled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shelf.features import FeatureFrame
from shelf.models.io import ModelError, ModelFormatError
from shelf.models.ranking._base import RankerBase
from shelf.models.ranking.data import RankingSet
from shelf.models.ranking.encoding import EncoderConfig


@dataclass(frozen=True)
class LightGBMRankerConfig:
    """LightGBM parameters.

    ``objective``: ``binary`` (weighted log loss: probabilities before calibration) or
    ``lambdarank`` (NDCG within each request; the calibrator turns its scores into
    probabilities). Serving cost grows with trees × leaves; the defaults keep 500 candidates
    under a few milliseconds on one core (``max_rounds`` caps the trees early stopping may keep).
    """

    num_leaves: int = 7
    learning_rate: float = 0.15
    min_data_in_leaf: int = 20
    feature_fraction: float = 0.9
    max_rounds: int = 100
    early_stopping_rounds: int = 20
    objective: str = "binary"
    validation_fraction: float = 0.2
    calibration: str = "isotonic"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    seed: int = 0


class LightGBMRanker(RankerBase):
    name = "lightgbm-ranker"
    config_class = LightGBMRankerConfig
    model_file = "model.txt"

    def _matrix(self, frame: FeatureFrame) -> np.ndarray:
        return np.concatenate([self.encoder_.numeric_matrix(frame), self.encoder_.codes(frame).astype(np.float64)], axis=1)

    def _train(self, train: RankingSet, valid: RankingSet) -> None:
        import lightgbm as lgb

        c = self.config
        n_num = len(self.encoder_.numeric_names_)
        names = [*self.encoder_.numeric_names_, *self.encoder_.categorical_names_]
        cats = list(range(n_num, len(names)))
        if c.objective not in ("binary", "lambdarank"):
            raise ModelError(f"objective must be binary or lambdarank, got {c.objective!r}")
        params = {
            "objective": c.objective,
            "num_leaves": c.num_leaves,
            "learning_rate": c.learning_rate,
            "min_data_in_leaf": c.min_data_in_leaf,
            "feature_fraction": c.feature_fraction,
            "num_threads": 1,
            "seed": c.seed,
            "deterministic": True,
            "verbosity": -1,
        }
        if c.objective == "lambdarank":
            # Rows of one request are contiguous (the ranking set is built request by request).
            params.update(metric="ndcg", eval_at=[10])
            dtrain = lgb.Dataset(self._matrix(train.features), train.labels, group=_groups(train.request),
                                 feature_name=names, categorical_feature=cats, free_raw_data=False)
            dvalid = lgb.Dataset(self._matrix(valid.features), valid.labels, group=_groups(valid.request), reference=dtrain)
        else:
            dtrain = lgb.Dataset(self._matrix(train.features), train.labels, weight=train.weights,
                                 feature_name=names, categorical_feature=cats, free_raw_data=False)
            dvalid = lgb.Dataset(self._matrix(valid.features), valid.labels, weight=valid.weights, reference=dtrain)
        self.booster_ = lgb.train(
            params, dtrain, num_boost_round=c.max_rounds, valid_sets=[dvalid],
            callbacks=[lgb.early_stopping(c.early_stopping_rounds, verbose=False)],
        )

    def _logits(self, frame: FeatureFrame) -> np.ndarray:
        return np.asarray(self.booster_.predict(self._matrix(frame), raw_score=True, num_threads=1), dtype=np.float64)

    def _save_model(self, folder: Path) -> None:
        (folder / self.model_file).write_text(self.booster_.model_to_string())

    def _load_model(self, folder: Path) -> None:
        import lightgbm as lgb

        path = folder / self.model_file
        if not path.is_file():
            raise ModelFormatError(f"{path}: missing")
        try:
            self.booster_ = lgb.Booster(model_str=path.read_text())
        except lgb.basic.LightGBMError as e:
            raise ModelFormatError(f"{path}: unreadable LightGBM model ({e})") from e


def _groups(request: np.ndarray) -> np.ndarray:
    """Sizes of the runs of equal request ids (LightGBM's query groups)."""
    request = np.asarray(request)
    if len(request) == 0:
        return np.empty(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, request[1:] != request[:-1]])
    return np.diff(np.r_[starts, len(request)])
