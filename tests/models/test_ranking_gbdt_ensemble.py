"""LightGBM ranker options: seed ensembles, regularisation, no early stopping, refit on every row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shelf.features.synthetic import synthetic_shop
from shelf.models.io import ModelError
from shelf.models.ranking import (
    LabelConfig,
    LightGBMRanker,
    LightGBMRankerConfig,
    NeuralRanker,
    NeuralRankerConfig,
    PopularityCandidates,
    RankingSet,
    build_ranking_set,
    sample_requests,
)


@pytest.fixture(scope="module")
def ranking_set() -> RankingSet:
    events, items, users = synthetic_shop(n_users=50, n_items=50, n_sessions=400, seed=7)
    return build_ranking_set(
        events, PopularityCandidates(events), items=items, users=users, requests=sample_requests(events, per_user=4),
        labels=LabelConfig(n_candidates=20, label_window_s=7 * 86_400, negatives_per_positive=1, min_negatives=20),
    )


@pytest.mark.parametrize("objective", ["binary", "lambdarank"])
def test_ensemble_round_trips_and_refit_keeps_the_chosen_length(ranking_set: RankingSet, objective: str, tmp_path: Path) -> None:
    config = LightGBMRankerConfig(objective=objective, max_rounds=25, early_stopping_rounds=5, min_data_in_leaf=5,
                                  n_models=3, bagging_fraction=0.7, lambda_l2=1.0, truncation_level=5)
    ranker = LightGBMRanker(config).fit(ranking_set)
    assert len(ranker.boosters_) == 3 and len(ranker.rounds_) == 3
    p, logits = ranker.predict_with_logits(ranking_set.features)
    assert np.isfinite(p).all() and np.isfinite(logits).all()
    loaded = LightGBMRanker.load(ranker.save(tmp_path / "r"))
    assert len(loaded.boosters_) == 3
    np.testing.assert_array_equal(loaded.predict_with_logits(ranking_set.features)[1], logits)
    refit = ranker.refit(ranking_set)
    assert [b.num_trees() for b in refit.boosters_] == [max(r, 1) for r in ranker.rounds_]
    assert refit.calibrator_ is ranker.calibrator_ and ranker.boosters_[0] is not refit.boosters_[0]
    np.testing.assert_array_equal(ranker.predict_with_logits(ranking_set.features)[1], logits)  # the original is untouched


def test_no_early_stopping_keeps_every_round(ranking_set: RankingSet) -> None:
    ranker = LightGBMRanker(LightGBMRankerConfig(max_rounds=7, early_stopping_rounds=0)).fit(ranking_set)
    assert ranker.booster_.num_trees() == 7 and ranker.rounds_ == [7]


def test_truncated_scores_with_the_first_trees_and_saves_only_them(ranking_set: RankingSet, tmp_path: Path) -> None:
    ranker = LightGBMRanker(LightGBMRankerConfig(max_rounds=12, early_stopping_rounds=0, n_models=2)).fit(ranking_set)
    short = ranker.truncated(4)
    assert short.rounds_ == [4, 4] and ranker.rounds_ == [12, 12]
    x = ranker._matrix(ranking_set.features)
    expected = np.mean([b.predict(x, raw_score=True, num_iteration=4) for b in ranker.boosters_], axis=0)
    np.testing.assert_allclose(short.predict_with_logits(ranking_set.features)[1], expected)
    loaded = LightGBMRanker.load(short.save(tmp_path / "short"))
    assert [b.num_trees() for b in loaded.boosters_] == [4, 4]
    np.testing.assert_allclose(loaded.predict_with_logits(ranking_set.features)[1], expected)
    assert [b.num_trees() for b in short.refit(ranking_set).boosters_] == [4, 4]


def test_bad_options_and_unsupported_refit_fail_loudly(ranking_set: RankingSet) -> None:
    for bad in ({"n_models": 0}, {"bagging_fraction": 0.0}, {"lambda_l2": -1.0}, {"early_stopping_rounds": -1}):
        with pytest.raises(ModelError):
            LightGBMRanker(LightGBMRankerConfig(**bad)).fit(ranking_set)  # type: ignore[arg-type]
    neural = NeuralRanker(NeuralRankerConfig(max_epochs=1, hidden=(8,))).fit(ranking_set)
    with pytest.raises(ModelError, match="refitted"):
        neural.refit(ranking_set)
