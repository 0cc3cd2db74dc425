"""What serving finds inside a bundle's model: the item-to-item sources and what it warms."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from shelf.evaluation import TableSource, TemporalSplit
from shelf.evaluation.splits import end_of_data
from shelf.features.synthetic import synthetic_shop
from shelf.models.base import Interactions
from shelf.models.ranking import LightGBMRanker, LightGBMRankerConfig
from shelf.models.retrieval import (
    BlendConfig,
    BlendRetriever,
    CoOccurrenceRetriever,
    PopularityRetriever,
    RepeatRetriever,
)
from shelf.models.twostage import TwoStage, TwoStageConfig
from shelf.serving.online import OnlineState
from shelf.serving.recommender import BundleRecommender, named_sources


def blend() -> BlendRetriever:
    sources = {"repeat": RepeatRetriever(), "cooccurrence": CoOccurrenceRetriever(), "popularity": PopularityRetriever()}
    return BlendRetriever(sources, BlendConfig(tune=False))


@pytest.fixture(scope="module")
def train() -> Interactions:
    events, items, users = synthetic_shop(n_users=60, n_items=80, n_sessions=600, days=40, seed=1)
    source = TableSource(events, items, users)
    return TemporalSplit(end_of_data(source) - timedelta(days=5), timedelta(days=5)).build(source).train


@pytest.fixture(scope="module")
def two_stage(train: Interactions) -> TwoStage:
    ranker = LightGBMRanker(LightGBMRankerConfig(max_rounds=20, min_data_in_leaf=5))
    return TwoStage(blend(), ranker, config=TwoStageConfig(n_candidates=30, label_window_s=5 * 86_400, negatives_per_positive=5)).fit(train)


def test_a_two_stage_bundle_answers_similar_items_from_its_retrieval_stage(two_stage: TwoStage, train: Interactions) -> None:
    assert set(named_sources(two_stage)) == {"repeat", "cooccurrence", "popularity"}
    rec = BundleRecommender(two_stage, "v1", OnlineState())
    assert [name for name, _ in rec.item_sources] == ["cooccurrence"]
    cooc = two_stage.retriever.active_sources["cooccurrence"]
    item = next(str(i) for i in train.items.ids if len(cooc.similar(str(i), 5)))
    got = rec.similar(item, 5)
    assert len(got) == 5 and item not in got.items.tolist()
    assert got.sources[0] == "cooccurrence"
    assert got.items[0] == cooc.similar(item, 5).items[0]


def test_loading_a_bundle_warms_every_source_it_holds(two_stage: TwoStage, tmp_path: Path) -> None:
    fresh = TwoStage.load(two_stage.save(tmp_path / "model"))
    assert "_items_index" not in fresh.retriever.active_sources["repeat"].__dict__  # lazily built otherwise
    BundleRecommender(fresh, "v1", OnlineState())
    for name, source in fresh.retriever.active_sources.items():
        assert "_items_index" in source.__dict__ and "_users_index" in source.__dict__, name
    assert "_items_index" in fresh.retriever.__dict__


def test_a_blend_bundle_keeps_its_own_sources(train: Interactions) -> None:
    model = blend().fit(train)
    assert named_sources(model) == model.active_sources
    lone = RepeatRetriever().fit(train)
    assert named_sources(lone) == {lone.name: lone}
