"""NeighboursRetriever: what shoppers with the same taste engaged with lately."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from shelf.models.base import Interactions, Query
from shelf.models.io import ModelFitError
from shelf.models.retrieval import NeighboursConfig, NeighboursRetriever
from shelf.privacy import Pseudonymizer
from shelf.schema import validate_events

ROWS = [  # (user, item, day)
    ("a", "x", 1), ("a", "y", 1), ("a", "z", 10), ("a", "old", 2),
    ("b", "x", 9), ("b", "y", 9),
    ("c", "p", 10), ("c", "q", 10),
    ("d", "w", 10),
]


def _data(rows: list[tuple[str, str, int]], *, users: bool = True) -> tuple[Interactions, dict[str, str]]:
    table = pa.table({
        "user_id": [u for u, _, _ in rows],
        "session_id": [f"s-{u}-{d}" for u, _, d in rows],
        "item_id": [i for _, i, _ in rows],
        "type": ["view"] * len(rows),
        "timestamp": [f"2024-01-{d:02d}T12:00:00Z" for _, _, d in rows],
    })
    if not users:
        table = table.drop_columns(["user_id"])
    events = validate_events(table, pseudonymizer=Pseudonymizer(b"test-key-0123456789abcdef")).valid
    ids = {} if not users else dict(zip([u for u, _, _ in rows], events["user_id"].to_pylist(), strict=True))
    return Interactions.from_events(events), ids


def test_neighbours_propose_what_alike_shoppers_picked_up_lately() -> None:
    data, ids = _data(ROWS)
    model = NeighboursRetriever(NeighboursConfig(neighbours=10, half_life_days=1.0)).fit(data)
    scores = model.score_query(Query(user_id=ids["b"]))
    at = {i: scores[model.items.get(i)] for i in ("x", "y", "z", "old", "p", "q", "w")}
    # a shares b's taste: a's fresh item outranks a's old one; c and d share nothing with b.
    assert at["z"] > at["old"] > 0
    assert all(at[i] == -np.inf for i in ("p", "q", "w"))
    # Batch scoring agrees with the per-request path.
    row = model.score_users(np.array([model.user_index(ids["b"])]))[0]
    np.testing.assert_allclose(row, scores)


def test_a_shopper_is_not_their_own_neighbour() -> None:
    data, ids = _data(ROWS)
    model = NeighboursRetriever().fit(data)
    assert np.all(np.isneginf(model.score_query(Query(user_id=ids["d"]))))


def test_sessions_find_neighbours_too_and_unknown_shoppers_get_nothing_from_nothing() -> None:
    data, _ = _data(ROWS)
    model = NeighboursRetriever().fit(data)
    top = model.retrieve(Query(session_items=("x", "y")), 1)
    assert top.items.tolist() == ["z"]
    assert len(model.retrieve(Query(user_id="stranger"), 5)) == 0


def test_neighbours_need_known_users() -> None:
    data, _ = _data(ROWS, users=False)
    with pytest.raises(ModelFitError, match="known users"):
        NeighboursRetriever().fit(data)
