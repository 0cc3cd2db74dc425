from __future__ import annotations

import pyarrow as pa
import pytest

from shelf.features.synthetic import synthetic_shop
from shelf.models.ranking import (
    LabelConfig,
    PopularityCandidates,
    RankingSet,
    build_ranking_set,
    sample_requests,
)


@pytest.fixture(scope="session")
def shop() -> tuple[pa.Table, pa.Table, pa.Table]:
    return synthetic_shop(n_users=60, n_items=60, n_sessions=500, seed=5)


@pytest.fixture(scope="session")
def ranking_set(shop: tuple[pa.Table, pa.Table, pa.Table]) -> RankingSet:
    events, items, users = shop
    return build_ranking_set(
        events, PopularityCandidates(events), items=items, users=users,
        requests=sample_requests(events, per_user=5),
        labels=LabelConfig(n_candidates=25, label_window_s=7 * 86_400),
    )
