"""Behaviour of individual retrievers beyond the shared conformance checks."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from shelf.errors import ShelfError
from shelf.models.base import Context, Interactions, Query
from shelf.models.conformance import NEW_ITEM, make_interactions
from shelf.models.io import ModelError, ModelFormatError, load_bundle, save_bundle
from shelf.models.retrieval import (
    ALSConfig,
    ALSRetriever,
    BlendConfig,
    BlendRetriever,
    ContentRetriever,
    CoOccurrenceRetriever,
    EASEConfig,
    EASERetriever,
    PopularityConfig,
    PopularityRetriever,
    RepeatRetriever,
    default_blend,
    load_retriever,
)


@pytest.fixture(scope="module")
def data() -> Interactions:
    return make_interactions(seed=0)


def test_errors_are_shelf_errors() -> None:
    assert issubclass(ModelError, ShelfError)
    with pytest.raises(ModelError):
        ALSRetriever(ALSConfig(factors=0))
    with pytest.raises(ModelError):
        PopularityRetriever(PopularityConfig(segments=("planet",)))


def test_io_refuses_pickle_free_violations_and_reports_kind(tmp_path: Path) -> None:
    save_bundle(tmp_path / "m", kind="x", config={"a": 1}, arrays={"ids": np.array(["a", "b"], dtype=object)})
    bundle = load_bundle(tmp_path / "m", kind="x")
    assert bundle.arrays["ids"].dtype == object and bundle.arrays["ids"].tolist() == ["a", "b"]
    with pytest.raises(ModelFormatError, match="expected 'y'"):
        load_bundle(tmp_path / "m", kind="y")
    (tmp_path / "m" / "manifest.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="corrupted"):
        load_bundle(tmp_path / "m")


def test_load_retriever_picks_class_from_manifest(data: Interactions, tmp_path: Path) -> None:
    model = RepeatRetriever().fit(data)
    model.save(tmp_path / "r")
    assert isinstance(load_retriever(tmp_path / "r"), RepeatRetriever)
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["kind"] == "repeat"


def test_trending_prefers_recent_events(data: Interactions) -> None:
    fresh = PopularityRetriever(PopularityConfig(half_life_days=0.0001, segments=())).fit(data)
    last_positive = np.flatnonzero(data.event_weights() > 0)[-1]
    assert fresh.retrieve(Query(), 1).items.tolist() == [data.items.ids[data.item[last_positive]]]


def test_segment_popularity_differs_by_region_and_falls_back(data: Interactions) -> None:
    pop = PopularityRetriever(PopularityConfig(segment_prior=1.0)).fit(data)
    north = pop.retrieve(Query(context=Context(region="north")), 10).items.tolist()
    south = pop.retrieve(Query(context=Context(region="south")), 10).items.tolist()
    unknown = pop.retrieve(Query(context=Context(region="mars")), 10)
    assert north != south
    np.testing.assert_array_equal(unknown.items, pop.retrieve(Query(), 10).items)
    night = pop.retrieve(Query(context=Context(timestamp=datetime(2024, 5, 3, 2, tzinfo=UTC))), 5)
    assert len(night) == 5


def test_repeat_returns_own_items_recent_first(data: Interactions) -> None:
    rep = RepeatRetriever().fit(data)
    user = str(data.users.ids[0])
    own = set(data.items.ids[data.item[data.user == 0]].tolist())
    result = rep.retrieve(Query(user_id=user), 50)
    assert set(result.items.tolist()) <= own and len(result) > 0
    session = rep.retrieve(Query(session_items=("item1", "item2")), 5)
    assert session.items.tolist() == ["item2", "item1"]


def test_cooccurrence_similar_and_sessions(data: Interactions) -> None:
    co = CoOccurrenceRetriever().fit(data)
    similar = co.similar("item0", 5)
    assert 0 < len(similar) <= 5 and "item0" not in similar.items.tolist()
    # items of one taste group (index % 4) co-occur: most neighbours share item0's group
    assert sum(int(i[4:]) % 4 == 0 for i in similar.items.tolist()) >= 3
    assert len(co.similar("no-such-item", 5)) == 0
    assert len(co.retrieve(Query(session_items=("item0",)), 5)) > 0


def test_content_recommends_and_relates_new_item(data: Interactions) -> None:
    content = ContentRetriever().fit(data)
    neighbours = content.similar(NEW_ITEM, 5)
    assert len(neighbours) == 5
    others = content.similar("item0", 60)
    assert NEW_ITEM in others.items.tolist()[:10]  # same category, brand and colour


def test_als_fold_in_personalises_new_user(data: Interactions) -> None:
    als = ALSRetriever(ALSConfig(factors=8, iterations=5, seed=0)).fit(data)
    assert len(als.retrieve(Query(user_id="u_new"), 5)) == 0
    als.fold_in("u_new", ["item0", "item4", "item8", "no-such-item"], ["purchase", "view", "add_to_cart", "view"])
    result = als.retrieve(Query(user_id="u_new"), 10)
    assert len(result) == 10
    # the user bought into taste group 0; ALS should lean towards it
    assert sum(int(i[4:]) % 4 == 0 for i in result.items.tolist()) >= 4
    assert NEW_ITEM not in result.items.tolist()  # no factors for an item nobody touched
    before = als.user_factors_[als.user_index("u_new")].copy()
    als.fold_in("u_new", ["item1"], ["purchase"])
    assert not np.allclose(before, als.user_factors_[als.user_index("u_new")])


def test_ease_keeps_max_items(data: Interactions) -> None:
    ease = EASERetriever(EASEConfig(max_items=10)).fit(data)
    scores = ease.score_users(np.arange(3))
    assert (np.isfinite(scores).sum(axis=1) <= 10).all()
    assert ease.weights_.shape == (10, 10) and ease.weights_.dtype == np.float32


def test_blend_keeps_sources_and_per_source_scores(data: Interactions) -> None:
    blend = BlendRetriever(
        {"repeat": RepeatRetriever(), "cooccurrence": CoOccurrenceRetriever(), "popularity": PopularityRetriever()},
        BlendConfig(weights={"repeat": 1.0, "cooccurrence": 1.0, "popularity": 0.5}),
    ).fit(data)
    cands = blend.candidates(Query(user_id=str(data.users.ids[0])), 20)
    assert cands.stage == "user"
    assert set(cands.scored.sources.tolist()) <= {"repeat", "cooccurrence", "popularity", "catalogue"}
    assert set(cands.source_scores) == {"repeat", "cooccurrence", "popularity"}
    assert all(len(v) == 20 for v in cands.source_scores.values())
    assert not np.isnan(cands.source_scores["popularity"]).any()


def test_cold_start_chain_always_gives_k(data: Interactions) -> None:
    blend = BlendRetriever({"repeat": RepeatRetriever(), "popularity": PopularityRetriever()}).fit(data)
    assert blend.stage(Query(user_id=str(data.users.ids[0]))) == "user"
    assert blend.stage(Query(session_items=("item3",))) == "session"
    assert blend.stage(Query(context=Context(region="north"))) == "context"
    for query in (Query(session_items=("item3",)), Query(), Query(user_id="u_nobody")):
        result = blend.retrieve(query, data.n_items)  # more than repeat can ever give
        assert len(result) == data.n_items and len(set(result.items.tolist())) == data.n_items
    result = blend.retrieve(Query(session_items=("item3",), exclude=frozenset({"item3"})), 500)
    assert len(result) == data.n_items - 1


def test_blend_skips_content_without_catalogue_and_tunes() -> None:
    bare = make_interactions(seed=1, catalogue=False, users=False)
    blend = default_blend(seed=0).fit(bare)
    assert "content" in blend.skipped_sources_
    assert set(blend.weights_) == set(blend.sources)
    assert len(blend.retrieve(Query(), 10)) == 10


def test_blend_demotes_seen_items_when_tuning_finds_no_repeats(data: Interactions, tmp_path: Path) -> None:
    blend = BlendRetriever(
        {"repeat": RepeatRetriever(), "cooccurrence": CoOccurrenceRetriever(), "popularity": PopularityRetriever()},
        BlendConfig(weights={"repeat": 1.0, "cooccurrence": 1.0, "popularity": 0.5}),
    ).fit(data)
    blend.demote_seen_ = True  # what tuning sets where shoppers never come back to an item
    u = 0
    seen = set(blend.seen_.indices[blend.seen_.indptr[u] : blend.seen_.indptr[u + 1]].tolist())
    assert seen
    scores = blend.score_users(np.array([u]))[0]
    unseen = np.setdiff1d(np.arange(data.n_items), sorted(seen))
    assert np.isfinite(scores).all() and scores[sorted(seen)].max() < scores[unseen].min()
    result = blend.retrieve(Query(user_id=str(data.users.ids[u])), data.n_items)
    assert len(result) == data.n_items  # seen items still fill the end of a long list
    first = {blend.items_lookup([i])[0] for i in result.items[: len(unseen)].tolist()}
    assert not first & seen
    blend.save(tmp_path / "b")
    loaded = BlendRetriever.load(tmp_path / "b")
    assert loaded.demote_seen_ and loaded.fusion_ == blend.fusion_
    np.testing.assert_array_equal(loaded.score_users(np.array([u])), blend.score_users(np.array([u])))


def test_blend_tuning_picks_a_fusion(data: Interactions) -> None:
    blend = default_blend(seed=0).fit(data)
    report = blend.tuning_report_
    assert not isinstance(report, str) and report is not None
    assert blend.fusion_ == report.fusion in ("rrf", "score")


def test_as_tuned_refits_with_the_tuning_outcome_without_tuning(data: Interactions, monkeypatch: pytest.MonkeyPatch) -> None:
    """``as_tuned`` carries weights, fusion and the seen-items rule; its fit never tunes, and on
    the same data it answers exactly as the tuned blend does."""
    from shelf.models.retrieval import tuning

    tuned = default_blend(seed=0).fit(data)
    tuned.demote_seen_ = True  # as tuning sets it where shoppers never come back (carried too)
    calls: list[int] = []
    real = tuning.tune_weights
    monkeypatch.setattr(tuning, "tune_weights", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = tuned.as_tuned()
    assert not again.is_fitted and again.config.tune is False
    again.fit(data)
    assert calls == [] and again.tuning_report_ is None
    assert (again.weights_, again.session_weights_, again.fusion_, again.demote_seen_) == (
        tuned.weights_, tuned.session_weights_, tuned.fusion_, True)
    users = np.arange(min(8, data.n_users))
    np.testing.assert_array_equal(again.score_users(users), tuned.score_users(users))
    for u in users.tolist():
        query = Query(user_id=str(data.users.ids[u]))
        a, b = again.retrieve(query, 15), tuned.retrieve(query, 15)
        assert a.items.tolist() == b.items.tolist() and np.array_equal(a.scores, b.scores)


def test_blend_fold_in_reaches_sources(data: Interactions) -> None:
    blend = default_blend(seed=0).fit(data)
    blend.fold_in("u_fresh", ["item0", "item4"], ["purchase", "purchase"])
    assert blend.stage(Query(user_id="u_fresh")) == "user"
    assert len(blend.retrieve(Query(user_id="u_fresh"), 10)) == 10


def test_nan_after_training_is_refused(data: Interactions, monkeypatch: pytest.MonkeyPatch) -> None:
    from shelf.models.io import ModelFitError
    from shelf.models.retrieval import ease as ease_module

    monkeypatch.setattr(ease_module.scipy.linalg, "inv", lambda a, **k: np.full_like(a, np.nan))
    with pytest.raises(ModelFitError, match="NaN"):
        EASERetriever().fit(data)


def test_tuning_moves_a_weight_only_on_a_clear_gain() -> None:
    from shelf.models.retrieval.tuning import clear_gain

    old = np.zeros(40)
    noisy = np.r_[np.ones(3), np.zeros(37)] * np.r_[1, -1, 1, np.ones(37)]  # +1/40 mean, SE ≈ mean
    assert clear_gain(noisy, old) == 0.0
    assert clear_gain(old + 0.1 + 0.01 * np.arange(40) % 2, old) > 0
    assert clear_gain(old, old) == 0.0


def test_sequential_rules_point_forward(data: Interactions) -> None:
    from shelf.models.retrieval import SequentialRulesRetriever

    model = SequentialRulesRetriever().fit(data)
    a, b = model.rules_.nonzero()
    assert len(a) and (model.rules_.sum(axis=1).A.ravel()[np.unique(a)] == pytest.approx(1.0, rel=1e-5))
    assert len(model.retrieve(Query(session_items=(str(data.items.ids[a[0]]),)), 5)) >= 1


def test_tuning_on_candidate_columns_matches_whole_rows() -> None:
    """Large catalogues tune on each row's candidate columns only; without ties that finds the
    same per-query NDCG and weights as whole rows."""
    from shelf.models.retrieval.tuning import _Stage, ndcg10_per_query

    rng = np.random.default_rng(3)
    probe = BlendRetriever({"a": RepeatRetriever(), "b": PopularityRetriever()}, BlendConfig(candidates_per_source=4, fallback="b"))
    queries, items = 40, 80
    scores = {name: rng.random((queries, items)).astype(np.float32) for name in ("a", "b")}
    scores["a"][rng.random((queries, items)) < 0.9] = -np.inf  # a source that proposes few items
    fill = rng.random((queries, items)).astype(np.float32)
    relevant = [rng.choice(items, size=int(rng.integers(1, 4)), replace=False) for _ in range(queries)]
    dense, compact = _Stage(compact=False), _Stage(compact=True)
    dense.add(probe, scores, fill, relevant)
    compact.add(probe, scores, fill, relevant)
    assert compact.fill[0].shape[1] < items
    for fusion in ("rrf", "score"):
        w_dense, before_dense, after_dense = dense.result(fusion, {"a": 1.0, "b": 0.5})
        w_compact, before_compact, after_compact = compact.result(fusion, {"a": 1.0, "b": 0.5})
        assert w_dense == w_compact
        np.testing.assert_array_equal(before_dense, before_compact)
        np.testing.assert_array_equal(after_dense, after_compact)
    # The vectorised NDCG agrees with the definition.
    top = np.argsort(-fill, axis=1)[:, :10]
    discount = 1.0 / np.log2(np.arange(2, 12))
    expected = [discount[np.isin(row, rel)].sum() / discount[: min(len(rel), 10)].sum() for row, rel in zip(top, relevant, strict=True)]
    np.testing.assert_allclose(ndcg10_per_query(fill, relevant), expected)


def test_ease_gram_in_column_blocks_is_exact(data: Interactions, monkeypatch: pytest.MonkeyPatch) -> None:
    from shelf.models.retrieval import ease as ease_module

    monkeypatch.setattr(ease_module, "GRAM_BLOCK", 3)
    x = data.matrix().astype(np.float32)
    np.testing.assert_array_equal(ease_module._gram(x), (x.T @ x).toarray())


def test_content_refit_with_a_new_vocabulary_scores_against_the_new_vectors() -> None:
    """A refit replaces the item vectors; the cached features×items matrix must follow."""
    import pyarrow as pa

    from shelf.models.base import Interactions, Query
    from shelf.models.retrieval import ContentRetriever
    from shelf.privacy import Pseudonymizer
    from shelf.schema import validate_events, validate_items

    events = validate_events(
        pa.table({"user_id": ["u", "u"], "item_id": ["a", "b"], "type": ["view", "view"],
                  "timestamp": ["2024-01-01T00:00:00Z", "2024-01-01T01:00:00Z"]}),
        pseudonymizer=Pseudonymizer(b"test-key-0123456789abcdef"),
    ).valid
    few = validate_items(pa.table({"item_id": ["a", "b", "c"], "brand": ["x", "x", "y"]})).valid
    many = validate_items(pa.table({"item_id": ["a", "b", "c"], "brand": ["x", "x", "y"], "category": ["k/l", "k/m", "n"],
                                    "title": ["red shoe", "blue shoe", "hat"]})).valid
    model = ContentRetriever()
    user = events["user_id"][0].as_py()
    model.fit(Interactions.from_events(events, item_table=few)).retrieve(Query(user_id=user), 2)
    refitted = model.fit(Interactions.from_events(events, item_table=many))
    assert len(refitted.retrieve(Query(user_id=user), 2)) >= 1


def test_popularity_warm_ranks_ahead_what_requests_then_get() -> None:
    data = make_interactions(seed=1)
    model = PopularityRetriever().fit(data)
    now = datetime(2024, 5, 1, 14, tzinfo=UTC)
    assert model.warm(now) >= 1
    cache = model.__dict__["_ranked_cache"][1]
    warmed = dict(cache)
    queries = [Query(user_id=str(u), context=Context(timestamp=now)) for u in data.users.ids[:20]]
    queries += [Query(context=Context(timestamp=now, region=r)) for r in (None, *model.segment_values_.get("region", ())[:3])]
    for query in queries:
        ranked = model.query_scores(query)
        key = tuple(sorted(model._segment_codes(query).items()))
        if key in warmed:
            assert ranked is warmed[key], "served from the warmed entry"
        np.testing.assert_array_equal(ranked.dense(), model._scores_for(dict(key)))
