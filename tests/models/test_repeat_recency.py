"""The repeat source's order of last touch, the batch top-n's tie order, and when tuning adds cuts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from shelf.models.base import Interactions, Query
from shelf.models.conformance import TEST_KEY
from shelf.models.io import ModelError
from shelf.models.retrieval import RepeatRetriever
from shelf.models.retrieval.repeat import RepeatConfig
from shelf.privacy import Pseudonymizer
from shelf.schema import validate_events


def interactions(rows: list[tuple[str, str, str]]) -> Interactions:
    """One event a minute, in the given order: (user, item, type)."""
    raw = pa.table(
        {
            "user_id": [u for u, _, _ in rows],
            "session_id": ["s-" + u for u, _, _ in rows],
            "item_id": [i for _, i, _ in rows],
            "type": [t for _, _, t in rows],
            "timestamp": [f"2024-05-01T10:{m:02d}:00Z" for m in range(len(rows))],
        }
    )
    return Interactions.from_events(validate_events(raw, pseudonymizer=Pseudonymizer(TEST_KEY)).valid)


def first_user(data: Interactions) -> str:
    """The (pseudonymised) id of the user of the first event."""
    return str(data.users.ids[data.user[np.argmin(data.timestamp)]])


# Minutes apart, so the 3-day clock decay leaves them all at full weight: only the order of the
# shopper's own steps can tell them apart.
VISIT = [("u", "a", "view"), ("u", "a", "view"), ("u", "a", "view"), ("u", "b", "view"), ("u", "c", "view")]


def test_repeat_follows_the_order_of_last_touch_within_a_visit() -> None:
    data = interactions(VISIT)
    u = first_user(data)
    recent = RepeatRetriever().fit(data).retrieve(Query(user_id=u), 3).items.tolist()
    assert recent == ["c", "b", "a"]  # last touched first, although "a" was viewed three times
    counts = RepeatRetriever(RepeatConfig(half_life_events=None)).fit(data).retrieve(Query(user_id=u), 3).items.tolist()
    assert counts[0] == "a"  # without the event decay the list follows view counts


def test_a_purchase_stays_ahead_of_the_view_right_after_it() -> None:
    data = interactions([("u", "a", "purchase"), ("u", "b", "view"), ("u", "c", "view")])
    # a: 8 x 0.5**(2/0.5) = 0.5, b: 0.5**(1/0.5) = 0.25, c: 1 (the newest touch still leads)
    assert RepeatRetriever().fit(data).retrieve(Query(user_id=first_user(data)), 3).items.tolist() == ["c", "a", "b"]


def test_fold_in_ages_the_history_by_the_new_events() -> None:
    others = [("v", "b", "view"), ("v", "c", "view")]  # so that the first fit knows every item
    first = interactions(VISIT[:3] + others)
    u = first_user(first)
    folded = RepeatRetriever().fit(first)
    folded.fold_in(u, ["b", "c"])
    refit = RepeatRetriever().fit(interactions(VISIT + others))
    got = folded.score_users(np.array([folded.user_index(u)]))[0][folded.item_indices(["a", "b", "c"])]
    want = refit.score_users(np.array([refit.user_index(u)]))[0][refit.item_indices(["a", "b", "c"])]
    np.testing.assert_allclose(got, want, rtol=1e-3)  # the refit's 3-day clock moves them by < 0.1%


def test_half_life_events_must_be_positive() -> None:
    with pytest.raises(ModelError):
        RepeatRetriever(RepeatConfig(half_life_events=0.0))


def test_row_wise_top_breaks_ties_like_each_request() -> None:
    from shelf.models.retrieval.scores import top_of, top_of_rows

    rng = np.random.default_rng(5)
    for _ in range(300):
        rows, cols = int(rng.integers(1, 6)), int(rng.integers(1, 40))
        scores = rng.integers(0, 4, size=(rows, cols)).astype(np.float32)
        scores[rng.random((rows, cols)) < 0.25] = -np.inf
        scores[rng.random((rows, cols)) < 0.05] = np.nan
        n = int(rng.integers(1, cols + 3))
        got = top_of_rows(scores, n)
        assert got.shape == (rows, min(n, cols))
        for r in range(rows):
            finite = top_of(scores[r], n)
            rest = np.flatnonzero(~np.isfinite(scores[r]))  # non-finite last, lower column first
            assert got[r].tolist() == np.r_[finite, rest][: min(n, cols)].tolist()


def test_a_stage_short_of_queries_asks_for_more_cuts() -> None:
    from shelf.models.retrieval.tuning import MIN_POOLED_QUERIES, needs_more_cuts

    few, plenty = MIN_POOLED_QUERIES // 4, MIN_POOLED_QUERIES + 1
    assert needs_more_cuts((0, 0), compact=False)  # nothing yet
    assert needs_more_cuts((few, plenty), compact=False)  # the user stage is short, however many sessions
    assert not needs_more_cuts((0, plenty), compact=False)  # no known users at all: nothing to wait for
    assert not needs_more_cuts((plenty, plenty), compact=False)
    # Large catalogues, where each cut is a refit of minutes, count the stages together.
    assert not needs_more_cuts((few, plenty), compact=True)
    assert needs_more_cuts((few, few), compact=True)
