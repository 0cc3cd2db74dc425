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
from shelf.models.io import ModelFormatError
from shelf.models.ranking._base import RankerBase
from shelf.models.ranking.data import RankingSet
from shelf.models.ranking.encoding import EncoderConfig


@dataclass(frozen=True)
class LightGBMRankerConfig:
    num_leaves: int = 31
    learning_rate: float = 0.05
    min_data_in_leaf: int = 20
    feature_fraction: float = 0.9
    max_rounds: int = 500
    early_stopping_rounds: int = 30
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
        params = {
            "objective": "binary",
            "num_leaves": c.num_leaves,
            "learning_rate": c.learning_rate,
            "min_data_in_leaf": c.min_data_in_leaf,
            "feature_fraction": c.feature_fraction,
            "num_threads": 1,
            "seed": c.seed,
            "deterministic": True,
            "verbosity": -1,
        }
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
