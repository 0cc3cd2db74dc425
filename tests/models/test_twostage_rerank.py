"""The two-stage's re-ranking options: rerank depth, rank mix, refit on the held cuts, relative features."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from shelf.evaluation.splits import UserSplit
from shelf.features import Attribute, Relative
from shelf.models.base import Context, Query
from shelf.models.io import ModelError
from shelf.models.ranking import LightGBMRanker, LightGBMRankerConfig, NeuralRanker
from shelf.models.ranking.selection import choose_weight
from shelf.models.retrieval import (
    BlendConfig,
    BlendRetriever,
    CoOccurrenceRetriever,
    PopularityRetriever,
    RepeatRetriever,
)
from shelf.models.twostage import (
    Interpolation,
    TwoStage,
    TwoStageConfig,
    _context,
    _dt,
    _fit_stage,
    _position_key,
    _rank_key,
    _ranker_positions,
    _tail_calibrator,
    rerank_two_stage,
    retrieval_query,
)

WINDOW = 5 * 86_400
DEPTH = 10


def small_blend() -> BlendRetriever:
    sources = {"repeat": RepeatRetriever(), "cooccurrence": CoOccurrenceRetriever(), "popularity": PopularityRetriever()}
    return BlendRetriever(sources, BlendConfig(tune=False))


def lambdarank(**kw: object) -> LightGBMRanker:
    fields = {"objective": "lambdarank", "max_rounds": 30, "min_data_in_leaf": 5, "early_stopping_rounds": 10, **kw}
    return LightGBMRanker(LightGBMRankerConfig(**fields))  # type: ignore[arg-type]


def make(**config: object) -> TwoStage:
    fields = {"n_candidates": 30, "label_window_s": WINDOW, "rerank_depth": DEPTH, "mix": "rank", "refit_on_held": True,
              "features": "relative", "ranker_weight": 0.5, **config}
    return TwoStage(small_blend(), lambdarank(n_models=2, bagging_fraction=0.8), config=TwoStageConfig(**fields))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fitted(split: UserSplit) -> TwoStage:
    return make().fit(split.train)


def _query(split: UserSplit, k: int) -> Query:
    return Query(str(split.train.users.ids[split.test_users[k]]), context=Context(timestamp=split.cut))


def test_config_validates_the_new_options() -> None:
    for bad in ({"rerank_depth": 0}, {"rerank_depth": 2.5}, {"mix": "logit"}, {"features": "raw"}):
        with pytest.raises(ModelError):
            TwoStageConfig(**bad).validate()  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="refit"):
        TwoStage(small_blend(), NeuralRanker(), config=TwoStageConfig(refit_on_held=True))
    assert TwoStageConfig().depth == 200 and not TwoStageConfig().every_candidate
    assert TwoStageConfig(n_candidates=50, rerank_depth=80).depth == 50
    assert TwoStageConfig(mix="rank").every_candidate


def test_relative_features_leave_out_item_id_and_raw_counts(fitted: TwoStage) -> None:
    fs = fitted.ranker_.feature_set_
    assert "item_id" not in fs.names and not fs.categorical
    assert not [n for n in fs.names if n.startswith(("item_events", "item_view", "item_purchase", "user_view"))]
    assert {"candidate_rank", "src_popularity_rank", "rel_item_trend", "pct_item_all", "pct_item_trend"} <= set(fs.names)
    assert fs.relative and all(isinstance(f, Relative) for f in fs.relative)
    # the counts the trends read are computed, just not model inputs
    assert "item_events_all" in fs.computed.names and "item_events_5d" in fs.computed.names


def test_every_candidate_within_the_depth_is_an_example(fitted: TwoStage) -> None:
    rs = fitted.ranking_set_
    per_request = np.bincount(rs.request)
    per_request = per_request[per_request > 0]
    assert per_request.max() == DEPTH and np.all(rs.weights == 1.0)
    ranks = rs.examples["candidate_rank"].to_numpy()
    assert ranks.max() == DEPTH - 1
    pct = rs.features.column("pct_item_all")
    assert np.nanmax(pct) == 1.0 and np.nanmin(pct) > 0.0  # percentiles within each request
    assert fitted.fit_stats_["mix"] == "rank" and fitted.fit_stats_["rerank_depth"] == DEPTH


def test_only_the_head_is_reranked_and_the_rest_keeps_the_blend_order(fitted: TwoStage, split: UserSplit) -> None:
    for k in range(4):
        query = _query(split, k)
        found, p, order = fitted.rank(query)
        n = len(found)
        assert n > DEPTH
        assert sorted(order[:DEPTH].tolist()) == list(range(DEPTH))
        np.testing.assert_array_equal(order[DEPTH:], np.arange(DEPTH, n))
        assert np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1
        assert np.all(np.diff(p[order]) <= 1e-12)  # probabilities follow the order (score_users relies on it)


def test_the_rank_mix_is_the_documented_formula(fitted: TwoStage, split: UserSplit) -> None:
    query = _query(split, 1)
    found, _, order = fitted.rank(query)
    head = found.head(DEPTH)
    _, logits = fitted.ranker_.predict_with_logits(fitted.online_.frame(query, head))
    pos = np.arange(DEPTH)
    ranker_pos = np.empty(DEPTH)
    ranker_pos[np.lexsort((pos, -logits))] = pos
    key = -(0.5 * np.log1p(pos) + 0.5 * np.log1p(ranker_pos))
    np.testing.assert_array_equal(order[:DEPTH], np.lexsort((pos, -key)))
    np.testing.assert_allclose(_rank_key(pos, ranker_pos, 0.5), key)
    alone = fitted.with_ranker_weight(1.0)
    _, _, order_alone = alone.rank(query)
    np.testing.assert_array_equal(order_alone[:DEPTH], np.lexsort((pos, -logits)))


def test_rank_mix_at_weight_zero_is_exactly_the_retrievers_order(fitted: TwoStage, split: UserSplit) -> None:
    blend_only = fitted.with_ranker_weight(0.0)
    assert blend_only.interpolation_.mix == "rank"
    for k in range(6):
        query = _query(split, k)
        found, p, order = blend_only.rank(query)
        np.testing.assert_array_equal(order, np.arange(len(found)))
        assert list(blend_only.retrieve(query, 10).items) == list(fitted.retriever.retrieve(retrieval_query(query), 10).items)
    users = split.test_users[:8]
    rows = blend_only.score_users(users)
    for row, u in zip(rows, users.tolist(), strict=True):
        query = Query(str(fitted.user_ids_[u]), context=_context(_dt(fitted.clock_us_)))
        expected = fitted.retriever.retrieve(retrieval_query(query), fitted.config.n_candidates).items.tolist()
        ranked = np.lexsort((np.arange(len(row)), -row))[: len(expected)]
        assert fitted.item_ids_[ranked].tolist() == expected


def test_the_weight_is_chosen_on_the_held_cuts_with_the_rank_mix(split: UserSplit, fitted: TwoStage) -> None:
    auto = fitted.with_ranker(lambdarank())  # same ranking set, ranker_weight 0.5 given: no choice
    assert auto.interpolation_.choice is None
    config = dataclasses.replace(fitted.config, ranker_weight=None)
    ranker, interpolation = _fit_stage(lambdarank(), fitted.ranking_set_, fitted.held_from_us_, config)
    choice = interpolation.choice
    assert choice is not None and interpolation.mix == "rank" and interpolation.weight == choice.weight
    assert set(choice.ndcg) == {0.0, 0.25, 0.5, 0.75, 1.0} and choice.requests > 0
    if choice.weight > 0:
        assert choice.gain_lower_95 > 0


def test_choose_weight_takes_a_mixer() -> None:
    # two requests; the ranker puts the positive first, retrieval puts it last
    request = np.repeat([0, 1], 4)
    positions = np.tile(np.arange(4.0), 2)
    labels = np.tile([0.0, 0.0, 0.0, 1.0], 2)
    logits = np.tile([0.0, 1.0, 2.0, 9.0], 2)
    ranks = _ranker_positions(logits, positions, request)
    np.testing.assert_array_equal(ranks, np.tile([3.0, 2.0, 1.0, 0.0], 2))
    nothing = np.zeros(8)
    choice = choose_weight(nothing, nothing, labels, np.ones(8), request, mixer=lambda w: _rank_key(positions, ranks, w))
    assert choice.ndcg[1.0] == pytest.approx(1.0) and choice.ndcg[0.0] < 0.5


def test_refit_on_held_retrains_on_every_moment_with_the_chosen_length(fitted: TwoStage) -> None:
    rs, start = fitted.ranking_set_, fitted.held_from_us_
    early, interp_early = _fit_stage(lambdarank(), rs, start, dataclasses.replace(fitted.config, refit_on_held=False))
    refit, interp_refit = _fit_stage(lambdarank(), rs, start, fitted.config)
    assert interp_refit.weight == interp_early.weight  # chosen before the refit
    assert interp_refit.final.to_dict() == interp_early.final.to_dict()  # calibrated on held-out scores
    assert refit.booster_.num_trees() == max(early.rounds_[0], 1)
    held = np.flatnonzero(rs.timestamp_us >= start)
    _, a = early.predict_with_logits(rs.features.take(held))
    _, b = refit.predict_with_logits(rs.features.take(held))
    assert not np.allclose(a, b)  # the held moments are now training data
    # the two fits are deterministic: the refit keeps the early fit's calibrator and encoder
    assert refit.calibrator_.to_dict() == early.calibrator_.to_dict() and refit.encoder_.to_dict() == early.encoder_.to_dict()


def test_nan_and_inf_features_never_give_a_nan_score(fitted: TwoStage, split: UserSplit) -> None:
    query = _query(split, 0)
    found, _, _ = fitted.rank(query)
    frame = fitted.online_.frame(query, found.head(DEPTH))
    frame.numeric[:, ::2] = np.nan
    frame.numeric[:, 1::2] = np.inf
    p, logits = fitted.ranker_.predict_with_logits(frame)
    assert np.isfinite(p).all() and np.isfinite(logits).all()
    p_final, order = fitted.interpolation_(p, logits, len(found))
    assert np.isfinite(p_final).all() and sorted(order.tolist()) == list(range(len(found)))
    nan_logits = np.full(DEPTH, np.nan)
    p_final, order = fitted.interpolation_(p, nan_logits, len(found))
    assert np.isfinite(p_final).all() and sorted(order.tolist()) == list(range(len(found)))


def test_save_load_round_trip_with_the_options(fitted: TwoStage, split: UserSplit, tmp_path: Path) -> None:
    folder = fitted.save(tmp_path / "m")
    loaded = TwoStage.load(folder)
    assert loaded.config == fitted.config and loaded.interpolation_.mix == "rank"
    assert len(loaded.ranker_.boosters_) == 2  # the ensemble survives
    users = split.test_users[:5]
    np.testing.assert_array_equal(fitted.score_users(users), loaded.score_users(users))
    for k in range(3):
        query = _query(split, k)
        a, b = fitted.retrieve(query, 12), loaded.retrieve(query, 12)
        assert list(a.items) == list(b.items)
        np.testing.assert_array_equal(a.scores, b.scores)
    assert loaded.ranker_.feature_set_.version == fitted.ranker_.feature_set_.version
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["config"]["mix"] == "rank" and manifest["config"]["rerank_depth"] == DEPTH
    assert not list(folder.rglob("*.pkl")) and not list(folder.rglob("*.pickle"))


def test_the_tail_past_the_depth_gets_the_held_cuts_rate_by_position() -> None:
    """Positions past the rerank depth are calibrated on the held cuts' own engagement there (the
    ranking set only holds the head, so the head's calibrators never saw them)."""
    rng = np.random.default_rng(0)
    start = 1_000
    rows = []
    rates = np.where(np.arange(10, 40) < 20, 0.3, 0.05)  # the held cuts' rates at positions 10..39
    for moment in (10, 2_000):  # one moment before the held cuts, one at them
        for _ in range(400):
            # earlier moments say otherwise: not read while held rows exist
            rate = rates if moment >= start else np.full(len(rates), 0.9)
            rows.append((moment, rng.random(len(rates)) < rate))
    tail = _tail_calibrator(rows, start, 10)
    assert tail is not None
    near, far = tail(_position_key(np.array([12])))[0], tail(_position_key(np.array([35])))[0]
    assert abs(near - 0.3) < 0.05 and abs(far - 0.05) < 0.03
    assert _tail_calibrator([], start, 10) is None


def test_tail_probabilities_follow_the_tail_calibrator(fitted: TwoStage, split: UserSplit) -> None:
    interpolation = fitted.interpolation_
    assert interpolation.tail is not None and 0.0 <= interpolation.tail_floor < 1.0
    found, p, _ = fitted.rank(_query(split, 1))
    positions = np.arange(DEPTH, len(found))
    want = np.minimum(np.maximum(interpolation.tail(_position_key(positions)), interpolation.tail_floor), p[:DEPTH].min())
    np.testing.assert_allclose(p[DEPTH:], want)
    assert Interpolation.from_dict(json.loads(json.dumps(interpolation.to_dict()))).tail is not None  # saved with the model


def test_probability_mix_with_a_rerank_depth(split: UserSplit) -> None:
    model = make(mix="probability", refit_on_held=False, features="default").fit(split.train)
    assert any(isinstance(f, Attribute) and f.field == "item_id" for f in model.ranker_.feature_set_)
    query = _query(split, 2)
    found, p, order = model.rank(query)
    assert sorted(order[:DEPTH].tolist()) == list(range(DEPTH))
    np.testing.assert_array_equal(order[DEPTH:], np.arange(DEPTH, len(found)))
    assert np.all(np.diff(p[order]) <= 1e-12)
    _, _, order0 = model.with_ranker_weight(0.0).rank(query)
    np.testing.assert_array_equal(order0, np.arange(len(found)))


def test_rerank_two_stage_builds_the_recipe() -> None:
    model = rerank_two_stage(small_blend(), label_window_s=WINDOW, n_cuts=4)
    c = model.config
    assert (c.n_candidates, c.rerank_depth, c.mix, c.refit_on_held, c.features, c.ranker_weight) == (100, 30, "rank", True, "relative", 0.75)
    assert c.relative_to_all
    assert c.label_window_s == WINDOW and c.n_cuts == 4
    assert model.ranker.config.objective == "lambdarank" and model.ranker.config.n_models == 5
    assert "item_id" not in model.feature_set.names


def test_ranker_rounds_are_chosen_on_the_held_cuts(fitted: TwoStage) -> None:
    rs, start = fitted.ranking_set_, fitted.held_from_us_
    config = dataclasses.replace(fitted.config, ranker_rounds=(3, 10, 30), refit_on_held=False)
    ranker, interpolation = _fit_stage(lambdarank(early_stopping_rounds=0), rs, start, config)
    full, _ = _fit_stage(lambdarank(early_stopping_rounds=0), rs, start, dataclasses.replace(config, ranker_rounds=()))
    scores = {r: Interpolation.fit(full.truncated(r), rs, 0.5, "isotonic", start, "rank").held_ndcg() for r in (3, 10, 30)}
    best = max(scores, key=lambda r: (scores[r], -r))
    assert ranker.rounds_ == [best] and interpolation.held_ndcg() == pytest.approx(scores[best])
    refit, _ = _fit_stage(lambdarank(early_stopping_rounds=0), rs, start, dataclasses.replace(config, refit_on_held=True))
    assert refit.booster_.num_trees() == best
    with pytest.raises(ModelError):
        TwoStageConfig(ranker_rounds=(10,)).validate()  # the probability mix needs calibrated scores


def test_relative_to_all_compares_the_head_with_every_candidate(split: UserSplit, tmp_path: Path) -> None:
    """Only the head's rows are examples, but their within-request percentiles are taken over all
    the candidates, in training and at serving alike."""
    model = make(relative_to_all=True).fit(split.train)
    rs = model.ranking_set_
    assert rs.examples["candidate_rank"].to_numpy().max() == DEPTH - 1
    assert np.bincount(rs.request)[np.bincount(rs.request) > 0].max() == DEPTH
    pct = rs.features.column("pct_item_all")
    assert np.nanmin(pct) > 0.0 and np.nanmax(pct) <= 1.0  # percentiles among all 30 candidates
    # serving: the head's frame is the first rows of the frame over every candidate
    query = _query(split, 0)
    found = model.retriever.retrieve(retrieval_query(query), model.config.n_candidates)
    ours, p, order = model.rank(query)
    assert ours.items[:DEPTH].tolist() == found.items[:DEPTH].tolist()
    whole = model.online_.frame(query, ours.head(model.config.n_candidates))
    head_only = model.online_.frame(query, ours.head(DEPTH))
    # percentiles differ between the two framings (the test would not tell them apart otherwise)
    assert not np.allclose(whole.column("pct_item_all")[:DEPTH], head_only.column("pct_item_all"), equal_nan=True)
    # rank() hands the ranker the head's rows of the whole-list frame (recorded on the way through)
    seen = []
    predict = model.ranker_.predict_with_logits
    model.ranker_.predict_with_logits = lambda frame: (seen.append(frame), predict(frame))[1]  # type: ignore[method-assign]
    try:
        _, _, order_again = model.rank(query)
    finally:
        del model.ranker_.predict_with_logits
    assert len(seen) == 1 and len(seen[0]) == DEPTH
    np.testing.assert_array_equal(seen[0].numeric, whole.numeric[:DEPTH])
    np.testing.assert_array_equal(order_again, order)
    assert np.isfinite(p).all()
    loaded = TwoStage.load(model.save(tmp_path / "model"))
    assert loaded.config.relative_to_all
    _, p_loaded, order_loaded = loaded.rank(query)
    np.testing.assert_array_equal(order_loaded, order)
    np.testing.assert_allclose(p_loaded, p)
