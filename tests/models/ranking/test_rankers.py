"""Both rankers: fit, calibrated scores, score() through online features, save/load, bad input."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from shelf.features import FeatureFrame, OnlineFeatures
from shelf.models.base import Context, Query, Scored
from shelf.models.io import ModelFitError, ModelFormatError, NotFittedError
from shelf.models.ranking import (
    LightGBMRanker,
    LightGBMRankerConfig,
    NeuralRanker,
    NeuralRankerConfig,
    PopularityCandidates,
    Ranker,
    RankerBase,
    RankingSet,
    expected_calibration_error,
    roc_auc,
)

FAST = {
    "neural": lambda: NeuralRanker(NeuralRankerConfig(max_epochs=8, patience=2, hidden=(32,))),
    "lightgbm": lambda: LightGBMRanker(LightGBMRankerConfig(max_rounds=60, early_stopping_rounds=10)),
}


@pytest.fixture(scope="module", params=sorted(FAST))
def fitted(request: pytest.FixtureRequest, ranking_set: RankingSet) -> RankerBase:
    return FAST[request.param]().fit(ranking_set)


def test_protocol_and_probabilities(fitted: RankerBase, ranking_set: RankingSet) -> None:
    assert isinstance(fitted, Ranker)
    _, valid = ranking_set.split_by_time(0.2)
    p = fitted.predict_frame(valid.features)
    assert p.shape == (len(valid),) and np.all((p >= 0) & (p <= 1))
    assert roc_auc(valid.labels, p, valid.weights) > 0.6
    assert expected_calibration_error(valid.labels, p, weights=valid.weights) < 0.1


def _online(shop: tuple[pa.Table, pa.Table, pa.Table], fitted: RankerBase) -> OnlineFeatures:
    events, items, users = shop
    online = fitted.online_features()
    online.update_items(items)
    online.update_users(users)
    online.update(events)
    return online


def test_score_reorders_candidates_by_probability(fitted: RankerBase, shop: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    events = shop[0]
    t = events["timestamp"][-1].as_py() + timedelta(seconds=1)
    cands = PopularityCandidates(events)(None, t, 30)
    user = events.filter(pa.compute.is_valid(events["user_id"]))["user_id"][0].as_py()
    query = Query(user_id=user, session_items=("i1", "i2"), context=Context(timestamp=t, device="mobile", region="north"))
    out = fitted.with_features(_online(shop, fitted)).score(query, cands)
    assert sorted(out.items.tolist()) == sorted(cands.items.tolist())
    assert np.all(np.diff(out.scores) <= 0) and np.all(np.isfinite(out.scores))
    assert len(fitted.score(query, Scored.empty())) == 0


def test_unseen_categories_go_to_oov(fitted: RankerBase, shop: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    t = shop[0]["timestamp"][-1].as_py() + timedelta(seconds=1)
    query = Query(user_id="u_brand_new", context=Context(timestamp=t, device="smart-fridge", region="atlantis"))
    cands = Scored(np.array(["i_never_seen", "i3"], dtype=object), np.array([2.0, 1.0], np.float32),
                   np.array(["a-new-retriever", "popularity"], dtype=object))
    out = fitted.with_features(_online(shop, fitted)).score(query, cands)
    assert np.all(np.isfinite(out.scores)) and len(out) == 2


def test_nan_and_infinite_inputs_never_give_nan(fitted: RankerBase, ranking_set: RankingSet) -> None:
    frame = ranking_set.features.take(np.arange(50))
    numeric = frame.numeric.copy()
    numeric[::3] = np.nan
    numeric[1::3] = np.inf
    numeric[2::3] = -np.inf
    categorical = np.full_like(frame.categorical, None)
    p = fitted.predict_frame(FeatureFrame(frame.numeric_names, numeric, frame.categorical_names, categorical))
    assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))


def test_save_load_round_trip(fitted: RankerBase, ranking_set: RankingSet, tmp_path: Path) -> None:
    fitted.save(tmp_path / "r")
    assert not list((tmp_path / "r").glob("*.pkl"))
    card = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert card["meta"]["feature_set_version"] == ranking_set.feature_set.version
    loaded = type(fitted).load(tmp_path / "r")
    assert loaded.feature_set_.version == ranking_set.feature_set.version
    frame = ranking_set.features.take(np.arange(100))
    np.testing.assert_allclose(loaded.predict_frame(frame), fitted.predict_frame(frame), rtol=1e-6, atol=1e-7)
    other = LightGBMRanker if isinstance(fitted, NeuralRanker) else NeuralRanker
    with pytest.raises(ModelFormatError, match="expected"):
        other.load(tmp_path / "r")
    with pytest.raises(ModelFormatError, match="no manifest.json"):
        type(fitted).load(tmp_path / "missing")
    weights = tmp_path / "r" / fitted.model_file
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ModelFormatError, match="checksum"):
        type(fitted).load(tmp_path / "r")


def test_scoring_500_candidates_is_batched_and_fast(fitted: RankerBase, ranking_set: RankingSet) -> None:
    rows = np.resize(np.arange(len(ranking_set)), 500)
    frame = ranking_set.features.take(rows)
    fitted.predict_frame(frame)
    best = min(_timed(lambda: fitted.predict_frame(frame)) for _ in range(5))
    assert best < 0.05  # generous bound for a shared CI machine; the report quotes the measured figure


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_unfitted_and_degenerate_data_are_refused(ranking_set: RankingSet) -> None:
    with pytest.raises(NotFittedError):
        NeuralRanker().predict_frame(ranking_set.features)
    all_zero = replace(ranking_set, labels=np.zeros_like(ranking_set.labels))
    with pytest.raises(ModelFitError, match="labels are all 0"):
        LightGBMRanker().fit(all_zero)


def test_lightgbm_lambdarank_groups_requests_and_is_calibrated(ranking_set: RankingSet) -> None:
    from shelf.models.ranking.gbdt import _groups

    np.testing.assert_array_equal(_groups(np.array([3, 3, 5, 5, 5, 7])), [2, 3, 1])
    assert _groups(np.empty(0, dtype=np.int64)).size == 0
    ranker = LightGBMRanker(LightGBMRankerConfig(objective="lambdarank", max_rounds=40, early_stopping_rounds=10)).fit(ranking_set)
    _, valid = ranking_set.split_by_time(0.2)
    p = ranker.predict_frame(valid.features)
    assert np.all((p >= 0) & (p <= 1)) and roc_auc(valid.labels, p, valid.weights) > 0.6
    with pytest.raises(Exception, match="objective"):
        LightGBMRanker(LightGBMRankerConfig(objective="poisson")).fit(ranking_set)
