"""The LightGBM alternative behind the same ``Ranker`` protocol.

Numeric features enter after their transform and the NaN/inf fallback (no scaling: trees do not
need it); categorical features enter as vocabulary codes declared categorical to LightGBM (0 =
OOV). Early stopping on the temporal validation cut; the model is saved in LightGBM's own text
format, never pickled.
"""

from __future__ import annotations

import copy
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
    probabilities). Serving cost grows with trees × leaves × ``n_models``; the defaults keep 500
    candidates under a few milliseconds on one core (``max_rounds`` caps the trees early stopping
    may keep; ``early_stopping_rounds = 0`` keeps all ``max_rounds``).

    ``bagging_fraction`` (< 1: each tree sees that share of the rows), ``lambda_l2`` and
    ``truncation_level`` (lambdarank: the top positions whose swaps count; 0 = LightGBM's
    default) are passed to LightGBM. ``n_models`` > 1 trains that many boosters with seeds
    ``seed, seed + 1, ...`` and averages their raw scores (a bagging ensemble: lambdarank on a few
    hundred requests varies a lot from seed to seed). ``refit`` retrains on all the rows with the
    number of trees early stopping chose (``TwoStageConfig.refit_on_held``).
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
    bagging_fraction: float = 1.0
    lambda_l2: float = 0.0
    truncation_level: int = 0
    n_models: int = 1


# Separates the boosters of an ensemble in ``model.txt`` (LightGBM's text format never holds it).
_SEPARATOR = "\n# ---- shelf: next booster ----\n"


class LightGBMRanker(RankerBase):
    name = "lightgbm-ranker"
    config_class = LightGBMRankerConfig
    model_file = "model.txt"
    supports_refit = True

    @property
    def boosters_(self) -> list:  # type: ignore[type-arg]
        """Every booster of the ensemble (``booster_`` is the first)."""
        return self.__dict__.get("_boosters") or [self.booster_]

    def _matrix(self, frame: FeatureFrame) -> np.ndarray:
        return np.concatenate([self.encoder_.numeric_matrix(frame), self.encoder_.codes(frame).astype(np.float64)], axis=1)

    def _train(self, train: RankingSet, valid: RankingSet) -> None:
        import lightgbm as lgb

        c = self.config
        _check(c)
        n_num = len(self.encoder_.numeric_names_)
        names = [*self.encoder_.numeric_names_, *self.encoder_.categorical_names_]
        cats = list(range(n_num, len(names)))
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
            "lambda_l2": c.lambda_l2,
        }
        if c.bagging_fraction < 1.0:
            params.update(bagging_fraction=c.bagging_fraction, bagging_freq=1)
        if c.objective == "lambdarank" and c.truncation_level > 0:
            params["lambdarank_truncation_level"] = c.truncation_level
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
        stop = [lgb.early_stopping(c.early_stopping_rounds, verbose=False)] if c.early_stopping_rounds > 0 else []
        boosters = [
            lgb.train({**params, "seed": c.seed + k}, dtrain, num_boost_round=c.max_rounds, valid_sets=[dvalid], callbacks=stop)
            for k in range(c.n_models)
        ]
        self._set_boosters(boosters)
        self._params = params

    def _set_boosters(self, boosters: list) -> None:  # type: ignore[type-arg]
        self.booster_ = boosters[0]
        self._boosters = boosters

    @property
    def rounds_(self) -> list[int]:
        """Trees each booster uses (early stopping's choice, or ``truncated``'s)."""
        limit = self.__dict__.get("_limit")
        used = [int(b.best_iteration) if b.best_iteration > 0 else int(b.current_iteration()) for b in self.boosters_]
        return used if limit is None else [min(limit, int(b.current_iteration())) for b in self.boosters_]

    def truncated(self, rounds: int) -> LightGBMRanker:
        """A copy that scores with the first ``rounds`` trees of each booster (shared, not copied).

        Its calibrator is this fit's (fitted on all the trees' scores): meant for choosing a
        training length by order, as ``TwoStageConfig.ranker_rounds`` does with the rank mix.
        """
        self._check_fitted()
        if rounds < 1:
            raise ModelError(f"rounds must be >= 1, got {rounds}")
        twin = copy.copy(self)
        twin._limit = int(rounds)
        return twin

    def _refit(self, data: RankingSet) -> None:
        import lightgbm as lgb

        c = self.config
        names = [*self.encoder_.numeric_names_, *self.encoder_.categorical_names_]
        cats = list(range(len(self.encoder_.numeric_names_), len(names)))
        params = dict(self._params)
        if c.objective == "lambdarank":
            dall = lgb.Dataset(self._matrix(data.features), data.labels, group=_groups(data.request),
                               feature_name=names, categorical_feature=cats)
        else:
            dall = lgb.Dataset(self._matrix(data.features), data.labels, weight=data.weights,
                               feature_name=names, categorical_feature=cats)
        rounds = self.rounds_
        self._set_boosters([lgb.train({**params, "seed": c.seed + k}, dall, num_boost_round=max(r, 1)) for k, r in enumerate(rounds)])

    def _logits(self, frame: FeatureFrame) -> np.ndarray:
        x = self._matrix(frame)
        boosters = self.boosters_
        limit = self.__dict__.get("_limit")
        total = np.zeros(len(frame), dtype=np.float64)
        for b in boosters:
            total += np.asarray(b.predict(x, raw_score=True, num_threads=1, num_iteration=limit), dtype=np.float64)
        return total / len(boosters)

    def _save_model(self, folder: Path) -> None:
        limit = self.__dict__.get("_limit")
        (folder / self.model_file).write_text(_SEPARATOR.join(b.model_to_string(num_iteration=limit) for b in self.boosters_))

    def _load_model(self, folder: Path) -> None:
        import lightgbm as lgb

        path = folder / self.model_file
        if not path.is_file():
            raise ModelFormatError(f"{path}: missing")
        try:
            self._set_boosters([lgb.Booster(model_str=text) for text in path.read_text().split(_SEPARATOR)])
        except lgb.basic.LightGBMError as e:
            raise ModelFormatError(f"{path}: unreadable LightGBM model ({e})") from e


def _check(c: LightGBMRankerConfig) -> None:
    if c.objective not in ("binary", "lambdarank"):
        raise ModelError(f"objective must be binary or lambdarank, got {c.objective!r}")
    if c.n_models < 1 or c.max_rounds < 1 or c.early_stopping_rounds < 0 or c.truncation_level < 0:
        raise ModelError("n_models and max_rounds must be >= 1, early_stopping_rounds and truncation_level >= 0")
    if not 0.0 < c.bagging_fraction <= 1.0 or c.lambda_l2 < 0:
        raise ModelError("bagging_fraction must lie in (0, 1] and lambda_l2 be >= 0")


def _groups(request: np.ndarray) -> np.ndarray:
    """Sizes of the runs of equal request ids (LightGBM's query groups)."""
    request = np.asarray(request)
    if len(request) == 0:
        return np.empty(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, request[1:] != request[:-1]])
    return np.diff(np.r_[starts, len(request)])
