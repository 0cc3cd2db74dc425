"""The two-stage recommender: fit, serve, score for the runner, save/load, fallbacks, ablation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from shelf.evaluation import evaluate
from shelf.evaluation.splits import UserSplit
from shelf.features import FeatureSet, SourceScore
from shelf.features.synthetic import synthetic_shop
from shelf.models.base import Context, Query
from shelf.models.io import ModelError, ModelFormatError, NotFittedError
from shelf.models.ranking import (
    LightGBMRanker,
    LightGBMRankerConfig,
    NeuralRanker,
    NeuralRankerConfig,
)
from shelf.models.retrieval import (
    BlendConfig,
    BlendRetriever,
    CoOccurrenceRetriever,
    PopularityRetriever,
    RepeatRetriever,
)
from shelf.models.twostage import (
    TwoStage,
    TwoStageConfig,
    _context,
    _dt,
    ablation_models,
    retrieval_query,
)

WINDOW = 5 * 86_400


def small_blend() -> BlendRetriever:
    sources = {"repeat": RepeatRetriever(), "cooccurrence": CoOccurrenceRetriever(), "popularity": PopularityRetriever()}
    return BlendRetriever(sources, BlendConfig(tune=False))


def make(gbdt: bool = False) -> TwoStage:
    ranker = (
        LightGBMRanker(LightGBMRankerConfig(max_rounds=40, min_data_in_leaf=5))
        if gbdt else NeuralRanker(NeuralRankerConfig(max_epochs=3, hidden=(16,)))
    )
    return TwoStage(small_blend(), ranker, config=TwoStageConfig(n_candidates=30, label_window_s=WINDOW, negatives_per_positive=5))


@pytest.fixture(scope="module")
def fitted(split: UserSplit) -> TwoStage:
    return make().fit(split.train)


def test_fit_builds_ranking_set_from_cuts_and_adds_source_features(fitted: TwoStage) -> None:
    stats = fitted.fit_stats_
    assert len(stats["cuts"]) >= 2 and stats["examples"] > 0 and 0 < stats["positive_share"] < 1
    names = {f.retriever for f in fitted.ranker_.feature_set_.of_type(SourceScore)}
    assert names == {"repeat", "cooccurrence", "popularity"}
    assert fitted.feature_set_version == fitted.ranker_.feature_set_.version
    assert 0.0 <= fitted.p_outside_ < 0.5


def test_retrieve_and_score_users_shapes_and_probabilities(fitted: TwoStage, split: UserSplit) -> None:
    user = str(split.train.users.ids[split.test_users[0]])
    got = fitted.retrieve(Query(user), 10)
    assert len(got) == 10 and len(set(got.items.tolist())) == 10
    assert np.all(np.diff(got.scores) <= 0) and got.scores.min() >= 0 and got.scores.max() <= 1
    scores = fitted.score_users(split.test_users[:7])
    assert scores.shape == (7, split.train.n_items) and scores.dtype == np.float32
    assert np.isfinite(scores).all() and scores.min() >= 0 and scores.max() <= 1
    # candidates sit above everything else, and the top of a row is what retrieve returns first
    row = scores[0]
    assert (row > fitted.p_outside_).sum() == min(fitted.config.n_candidates, split.train.n_items)
    top = split.train.items.ids[np.argsort(-row, kind="stable")[:10]]
    assert list(top) == list(got.items)


def test_nan_and_inf_features_fall_back_to_finite_probabilities(fitted: TwoStage, split: UserSplit) -> None:
    user = str(split.train.users.ids[split.test_users[0]])
    query = Query(user, context=Context(timestamp=split.cut))
    found, _, _ = fitted.rank(query)
    frame = fitted.online_.frame(query, found)
    frame.numeric[:, ::2] = np.nan
    frame.numeric[:, 1::2] = np.inf
    p = fitted.ranker_.predict_frame(frame)
    assert np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1


def test_unseen_category_goes_to_oov(fitted: TwoStage, split: UserSplit) -> None:
    user = str(split.train.users.ids[split.test_users[0]])
    query = Query(user, context=Context(timestamp=split.cut))
    found, _, _ = fitted.rank(query)
    frame = fitted.online_.frame(query, found)
    frame.categorical[:, frame.categorical_names.index("item_category")] = "never/seen/before"
    codes = fitted.ranker_.encoder_.codes(frame)
    assert (codes[:, fitted.ranker_.encoder_.categorical_names_.index("item_category")] == 0).all()
    p = fitted.ranker_.predict_frame(frame)
    assert np.isfinite(p).all()


def test_unknown_user_takes_the_cold_start_path(fitted: TwoStage) -> None:
    got = fitted.retrieve(Query("nobody-knows-me"), 12)
    assert len(got) == 12 and np.isfinite(got.scores).all()
    anonymous = fitted.retrieve(Query(None, session_items=("i1", "i2")), 5)
    assert len(anonymous) == 5


def test_save_load_round_trip_is_identical(fitted: TwoStage, split: UserSplit, tmp_path: Path) -> None:
    fitted.save(tmp_path / "m")
    loaded = TwoStage.load(tmp_path / "m")
    users = split.test_users[:5]
    np.testing.assert_array_equal(fitted.score_users(users), loaded.score_users(users))
    user = str(split.train.users.ids[users[0]])
    a, b = fitted.retrieve(Query(user), 10), loaded.retrieve(Query(user), 10)
    assert list(a.items) == list(b.items)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert loaded.feature_set_version == fitted.feature_set_version
    assert not list((tmp_path / "m").rglob("*.pkl"))
    (tmp_path / "m" / "manifest.json").unlink()
    with pytest.raises(ModelFormatError):
        TwoStage.load(tmp_path / "m")


def test_ranker_weight_zero_keeps_the_retrievers_order(fitted: TwoStage, split: UserSplit) -> None:
    blend_only = fitted.with_ranker_weight(0.0)
    assert blend_only.ranker_ is fitted.ranker_ and blend_only.config.ranker_weight == 0.0
    when = Context(timestamp=split.cut)
    for u in split.test_users[:8].tolist():
        query = Query(str(split.train.users.ids[u]), context=when)
        found, p, order = blend_only.rank(query)
        np.testing.assert_array_equal(order, np.arange(len(found)))  # candidates come in retrieval order
        assert np.all((p >= 0) & (p <= 1)) and np.all(np.diff(p[order]) <= 1e-12)
        got = blend_only.retrieve(query, 10)
        # the retrieval stage is asked without the clock (``retrieval_query``)
        assert list(got.items) == list(fitted.retriever.retrieve(retrieval_query(query), 10).items)
    # the runner's view: the top of each row is the retriever's top
    rows = blend_only.score_users(split.test_users[:4])
    for row, u in zip(rows, split.test_users[:4].tolist(), strict=True):
        top = split.train.items.ids[np.argsort(-row, kind="stable")[:10]]
        assert list(top) == list(fitted.retriever.retrieve(Query(str(split.train.users.ids[u])), 10).items)


def test_ranker_weight_one_is_the_ranker_alone(fitted: TwoStage, split: UserSplit) -> None:
    query = Query(str(split.train.users.ids[split.test_users[1]]), context=Context(timestamp=split.cut))
    alone = fitted.with_ranker_weight(1.0)
    found, _, order = alone.rank(query)
    p_ranker, logits = alone.ranker_.predict_with_logits(alone.online_.frame(query, found))
    np.testing.assert_array_equal(order, np.lexsort((np.arange(len(found)), -logits, -p_ranker)))
    half = fitted.with_ranker_weight(0.5)
    _, p_half, order_half = half.rank(query)
    assert sorted(order_half.tolist()) == list(range(len(found))) and np.all((p_half >= 0) & (p_half <= 1))


def test_every_cut_sees_its_whole_label_window(split: UserSplit) -> None:
    model = TwoStage(small_blend(), config=TwoStageConfig(label_window_s=WINDOW, n_cuts=4, cut_spacing_s=WINDOW // 4))
    cuts = model._cuts(split.train)
    end = int(split.train.timestamp.max()) + 1 if split.train.as_of is None else None
    assert len(cuts) == 4 and np.all(np.diff(cuts) == (WINDOW // 4) * 1_000_000)
    from shelf.models.twostage import _us

    end = _us(split.train.as_of) if split.train.as_of is not None else end
    assert cuts[-1] + WINDOW * 1_000_000 == end
    # too few requests in the latest moments: earlier ones (same spacing) are added, at most 4x
    more = TwoStage(small_blend(), config=TwoStageConfig(label_window_s=WINDOW, n_cuts=2, cut_spacing_s=WINDOW // 4, min_requests=10**6))
    extended = more._cuts(split.train)
    assert len(extended) == 8 and extended[-2:] == cuts[-2:] and np.all(np.diff(extended) == (WINDOW // 4) * 1_000_000)
    few = TwoStage(small_blend(), config=TwoStageConfig(label_window_s=WINDOW, n_cuts=2, cut_spacing_s=WINDOW // 4, min_requests=1))
    assert few._cuts(split.train) == cuts[-2:]


def test_held_cuts_hold_a_share_of_the_requests_and_never_the_first_moment() -> None:
    from shelf.models.twostage import _held_start, _validation_share

    # moments 10, 20, 30, 40 with 6, 2, 1, 1 requests (two rows each); no gap
    moments = np.repeat([10, 20, 30, 40], [12, 4, 2, 2])
    request = np.repeat(np.arange(10), 2)
    assert _held_start(moments, request, 0.05) == 40  # the last moment alone is enough
    assert _held_start(moments, request, 0.2) == 30  # about 20% of the requests are held
    assert _held_start(moments, request, 0.4) == 20
    assert _held_start(moments, request, 0.99) == 20  # the first moment always trains
    # the ranker's time split puts exactly the held moments in its validation part
    fraction = _validation_share(moments, 30)
    cut = np.quantile(moments, 1.0 - fraction, method="lower")
    assert set(moments[moments > cut].tolist()) == {30, 40}
    with pytest.raises(ModelError, match="validation_share"):
        TwoStageConfig(validation_share=1.0).validate()


def test_training_moments_whose_label_window_reaches_the_held_cuts_are_purged() -> None:
    from shelf.models.twostage import _held_start, _kept_rows

    # a busy burst (moments 0..4, 10 requests each) shorter than the label window (10), then quiet moments
    moments = np.repeat([0, 1, 2, 3, 4, 12, 14, 16, 18], [10, 10, 10, 10, 10, 3, 3, 3, 3])
    request = np.arange(len(moments))
    start = _held_start(moments, request, 0.25, gap_us=10)
    assert start == 12  # the quiet moments are held, the burst trains (its end is purged: it reaches 12)
    kept = _kept_rows(moments, start, 10)
    assert set(moments[kept].tolist()) == {0, 1, 2, 12, 14, 16, 18}
    # evenly busy moments half a label window apart: the gap costs one moment
    even = np.repeat([0, 5, 10, 15, 20, 25], 4)
    start = _held_start(even, np.arange(len(even)), 0.25, gap_us=10)
    kept_moments = set(even[_kept_rows(even, start, 10)].tolist())
    assert start == 25 and kept_moments == {0, 5, 10, 15, 25}  # 20's window reaches 25: purged
    # cuts all closer than the window: the last moment is held, nothing purged
    close = np.repeat([0, 1, 2], 3)
    start = _held_start(close, np.arange(9), 0.25, gap_us=10)
    assert start == 2 and len(_kept_rows(close, start, 10)) == 9


def test_reweighted_model_round_trips(fitted: TwoStage, split: UserSplit, tmp_path: Path) -> None:
    half = fitted.with_ranker_weight(0.5)
    half.save(tmp_path / "h")
    loaded = TwoStage.load(tmp_path / "h")
    assert loaded.config.ranker_weight == 0.5
    np.testing.assert_array_equal(half.score_users(split.test_users[:3]), loaded.score_users(split.test_users[:3]))
    with pytest.raises(ModelError, match="refit"):
        loaded.with_ranker_weight(0.0)


def test_another_ranker_reuses_the_ranking_set(fitted: TwoStage, split: UserSplit) -> None:
    from shelf.models.ranking import LightGBMRanker, LightGBMRankerConfig

    other = fitted.with_ranker(LightGBMRanker(LightGBMRankerConfig(seed=0)))
    assert other.ranker_.name == "lightgbm-ranker" and fitted.ranker_.name == "neural-ranker"
    assert other.ranking_set_ is fitted.ranking_set_ and other.retriever is fitted.retriever
    scores = other.score_users(split.test_users[:2])
    assert np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 1))
    with pytest.raises(ModelError):
        fitted.with_ranker(object())  # type: ignore[arg-type]


def test_unfitted_and_bad_config_fail_loudly() -> None:
    with pytest.raises(NotFittedError):
        make().retrieve(Query("u"), 3)
    with pytest.raises(ModelError):
        TwoStageConfig(n_cuts=1).validate()
    with pytest.raises(ModelError):
        TwoStage(small_blend(), config=TwoStageConfig(n_candidates=0))
    with pytest.raises(ModelError, match="ranker_weight"):
        TwoStageConfig(ranker_weight=1.5).validate()


def test_runner_evaluates_it_with_calibration_metrics(split: UserSplit) -> None:
    result = evaluate(None, split, {"two-stage": lambda: make(gbdt=True)}, ks=(5,))
    ndcg = result.value("two-stage", "ndcg", 5)
    assert 0 < ndcg <= 1
    for metric in ("log_loss", "auc", "ece"):
        value = result.value("two-stage", metric, 0)
        assert np.isfinite(value)
    assert 0 <= result.value("two-stage", "ece", 0) <= 1


def test_ablation_retrains_only_the_ranker(fitted: TwoStage, split: UserSplit) -> None:
    twin = fitted.without(["candidate"])
    assert twin.retriever is fitted.retriever and twin.ranker_ is not fitted.ranker_
    assert "candidate" not in twin.ranker_.feature_set_.groups
    assert twin.score_users(split.test_users[:3]).shape == (3, split.train.n_items)
    with pytest.raises(ModelError):
        fitted.without(["candidate"]).without(["candidate"])
    factories = ablation_models(lambda: fitted, ["context"], name="ts")
    result = evaluate(None, split, factories, ks=(5,), views=("all",))
    ci = result.compare("ts without context", "ts", "ndcg", 5)
    assert ci.low <= ci.difference <= ci.high


def test_events_with_unknown_feature_declarations_round_trip() -> None:
    fs = FeatureSet([SourceScore("src_x_score", "candidate", "x", "score")])
    assert FeatureSet.from_json(fs.to_json()).version == fs.version
    table = pa.table({"user_id": ["u"], "item_id": ["i"], "timestamp": pa.array([0], pa.int64()).cast(pa.timestamp("us", tz="UTC"))})
    from shelf.features import compute_offline

    frame = compute_offline(fs, table, synthetic_shop(n_users=3, n_items=4, n_sessions=3, days=2)[0])
    assert np.isnan(frame.numeric[0, 0])


@pytest.mark.slow
def test_shelf_train_and_evaluate_ablate_on_a_lake(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from shelf.cli import main
    from shelf.registry import Registry

    def shelf(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, ["--home", str(tmp_path), *args], env={"SHELF_DEV": "1"}, catch_exceptions=False)

    assert shelf("simulate", "--users", "120", "--items", "60", "--days", "6", "--seed", "3").exit_code == 0
    trained = shelf("train", "--model", "shelf-twostage-gbdt")
    assert trained.exit_code == 0, trained.output
    registry = Registry(tmp_path)
    version = registry.versions()[-1]
    card = registry.card(version)
    loaded = TwoStage.load(registry.path(version) / "model")
    assert card.feature_set_version.startswith("fs-") and card.feature_set_version == loaded.feature_set_version
    result = shelf("evaluate", "--models", "shelf-twostage-gbdt", "--ablate", "context", "--k", "10", "--views", "all", "--no-tune")
    assert result.exit_code == 0, result.output
    assert "ablation shelf-twostage-gbdt without context (all): ndcg@10 change" in result.output
    assert "log_loss" in result.output or "ece" in result.output or "shelf-twostage-gbdt without context" in result.output


def test_the_default_ranker_weight_is_chosen_on_the_last_cut_and_recorded(fitted: TwoStage, tmp_path: Path) -> None:
    assert fitted.config.ranker_weight is None
    stats = fitted.fit_stats_
    choice = stats["ranker_weight_choice"]
    assert stats["ranker_weight"] == fitted.interpolation_.weight == choice["weight"]
    assert choice["requests"] > 0 and set(choice["ndcg"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
    if choice["weight"] > 0:
        assert choice["gain_lower_95"] > 0
    loaded = TwoStage.load(fitted.save(tmp_path / "m"))
    assert loaded.interpolation_.weight == fitted.interpolation_.weight


def test_at_weight_zero_the_runner_sees_the_retrievers_order(fitted: TwoStage, split: UserSplit) -> None:
    # The runner ranks score_users' float32 rows, ties to the lower item index; calibrated
    # probabilities tie in isotonic steps, so the order must survive the cast, not just the ties.
    blend_order = fitted.with_ranker_weight(0.0)
    scores = blend_order.score_users(split.test_users[:10])
    for row, u in zip(scores, split.test_users[:10].tolist(), strict=True):
        query = Query(str(fitted.user_ids_[u]), context=_context(_dt(fitted.clock_us_)))  # as score_users asks
        expected = blend_order.retriever.retrieve(retrieval_query(query), fitted.config.n_candidates).items.tolist()
        ranked = np.lexsort((np.arange(len(row)), -row))[: len(expected)]
        assert fitted.item_ids_[ranked].tolist() == expected


def test_score_users_keeps_the_order_of_tied_probabilities_in_float32(fitted: TwoStage, split: UserSplit, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every candidate calibrated to the same probability (one isotonic step near 0.6, where a
    # float32 step is 6e-8): the rows must still rank the candidates in the model's order.
    model = fitted.with_ranker_weight(0.0)
    rank = model.rank

    def tied(query: Query, n: int | None = None):  # type: ignore[no-untyped-def]
        found, p, order = rank(query, n)
        return found, np.full_like(p, 0.6), order

    monkeypatch.setattr(model, "rank", tied)
    users = split.test_users[:5]
    scores = model.score_users(users)
    for row, u in zip(scores, users.tolist(), strict=True):
        found, _, order = rank(Query(str(fitted.user_ids_[u]), context=_context(_dt(fitted.clock_us_))))
        ranked = np.lexsort((np.arange(len(row)), -row))[: len(order)]
        assert fitted.item_ids_[ranked].tolist() == found.items[order].tolist()


def test_at_weight_zero_the_runner_sees_the_retrievers_own_batch_scores(fitted: TwoStage, split: UserSplit) -> None:
    # The benchmark compares two-stage's score_users with the retriever's own score_users at the
    # same moment: at w = 0 their rows must rank the same top items. The blend's popularity is
    # segmented by the request's time-of-day band, which its batch path (no clock) never sees;
    # a two-stage that asked with its clock got another candidate list (MovieLens: 86 of 106
    # validation users had another top 10, 0.992x at w = 0).
    model = fitted.with_ranker_weight(0.0)
    users = split.test_users[:12]
    ours, theirs = model.score_users(users), fitted.retriever.score_users(users)
    for a, b in zip(ours, theirs, strict=True):
        top_a = np.lexsort((np.arange(len(a)), -a))[:10]
        top_b = np.lexsort((np.arange(len(b)), -b))[:10]
        assert top_a.tolist() == top_b.tolist()


def test_warm_ranks_the_retrieval_stages_unbanded_popularity(fitted: TwoStage) -> None:
    """The retrieval stage is asked without the clock: its popularity segments are ranked at
    bundle load without a time-of-day band, so the first requests find them ranked."""
    from shelf.models.retrieval.popularity import PopularityRetriever

    banded = [
        s for s in fitted.retriever.active_sources.values() if isinstance(s, PopularityRetriever) and "time_of_day" in s.segment_values_
    ]
    assert banded, "the default blend's popularity segments by time of day"
    for source in banded:
        source.__dict__.pop("_ranked_cache", None)
        source.warm()  # what serving does for every source: the current band only
        _, cache = source.__dict__["_ranked_cache"]
        assert all("time_of_day" in dict(key) for key in cache)
    fitted.warm()
    for source in banded:
        _, cache = source.__dict__["_ranked_cache"]
        assert any("time_of_day" not in dict(key) for key in cache), "no segment ranked without a band"


def test_the_blend_is_tuned_once_and_every_moment_refits_with_that_outcome(split: UserSplit, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-moment re-tuning made the fused score mean something different at every moment (a
    feature the ranker could not use) and cost several fits per moment."""
    from shelf.models.retrieval import tuning

    calls: list[int] = []
    real = tuning.tune_weights
    monkeypatch.setattr(tuning, "tune_weights", lambda *a, **k: calls.append(1) or real(*a, **k))
    blend = BlendRetriever(small_blend().sources, BlendConfig(tune=True))
    model = TwoStage(blend, NeuralRanker(NeuralRankerConfig(max_epochs=1, hidden=(8,))),
                     config=TwoStageConfig(n_candidates=30, label_window_s=WINDOW, negatives_per_positive=5)).fit(split.train)
    assert len(model.fit_stats_["cuts"]) >= 2
    assert len(calls) == 1, f"tuned {len(calls)} times"
    assert model.retriever.config.tune and model.retriever.tuning_report_ is not None  # the served one is tuned
