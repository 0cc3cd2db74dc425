"""The request paths of the co-occurrence, repeat and popularity sources against the forms they
replaced (kept here as references): same items, same order, bit-identical scores."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
import scipy.sparse as sp

from shelf.models.base import Context, Interactions, Query
from shelf.models.conformance import make_interactions
from shelf.models.retrieval import (
    CoOccurrenceRetriever,
    PopularityConfig,
    PopularityRetriever,
    RepeatRetriever,
    kernels,
)
from shelf.models.retrieval import _base as base
from shelf.models.retrieval.scores import RankedScores, SparseScores, positive_rows, top_of


@pytest.fixture(scope="module")
def data() -> Interactions:
    return make_interactions(seed=0)


def _reference_positional_weights(length: int, half_life: float) -> np.ndarray:
    """``positional_weights`` before its cache."""
    if length == 0:
        return np.empty(0, dtype=np.float32)
    age = np.arange(length - 1, -1, -1, dtype=np.float64)
    return np.power(0.5, age / max(half_life, 1e-9)).astype(np.float32)


def _same_scores(
    got: SparseScores | RankedScores, want: SparseScores | RankedScores, size: int
) -> None:
    for n in (0, 1, 7, 200, size + 5):
        for g, w in zip(got.top(n), want.top(n), strict=True):
            np.testing.assert_array_equal(g, w)  # same items, same order, bit-identical values
    probe = np.arange(size)
    np.testing.assert_array_equal(got.at(probe), want.at(probe))
    np.testing.assert_array_equal(got.dense(), want.dense())
    assert got.bounds() == want.bounds()
    for g, w in zip(
        got.top(size), want.top(size), strict=True
    ):  # again, once at() has computed more
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("half_life", [0.0, 0.5, 3.0, 5.0])
def test_positional_weights_are_cached_read_only_and_unchanged(half_life: float) -> None:
    for length in (0, 1, 2, 30, base.POSITIONAL_CACHE_LENGTH, base.POSITIONAL_CACHE_LENGTH + 1):
        got = base.positional_weights(length, half_life)
        np.testing.assert_array_equal(got, _reference_positional_weights(length, half_life))
        assert got.dtype == np.float32
        again = base.positional_weights(length, half_life)
        if length <= base.POSITIONAL_CACHE_LENGTH:
            assert again is got and not got.flags.writeable  # shared: nobody writes through it
        else:
            assert again is not got and got.flags.writeable  # long sequences are not kept


def _reference_neighbours(
    matrix: sp.csr_matrix,
    history: np.ndarray,
    session: np.ndarray,
    query_items: int,
    half_life: float,
) -> SparseScores:
    """``CoOccurrenceRetriever._query_scores`` before ``kernels.neighbour_scores``."""
    seq = np.concatenate([history, session]).astype(np.int64)[-query_items:]
    return positive_rows(
        matrix, seq, _reference_positional_weights(len(seq), half_life), matrix.shape[1]
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("history_type", [np.int32, np.int64])
def test_neighbour_scores_are_the_positive_rows_of_the_latest_items(
    dtype: type, history_type: type
) -> None:
    rng = np.random.default_rng(3)
    matrix = sp.random(200, 200, density=0.08, format="csr", dtype=dtype, random_state=4)
    matrix.data -= dtype(0.3)  # negative and zero entries: only positive sums are proposed
    matrix.data[::5] = 0.0
    matrix.data[::11] = 0.25  # ties
    for n_history in (0, 1, 5, 40):
        for n_session in (0, 1, 4, 40):
            history = rng.integers(0, 20, n_history).astype(history_type)  # repeated items too
            session = rng.integers(0, 200, n_session).astype(np.int64)
            for query_items in (1, 3, 30, 100):  # shorter and longer than the items held
                want = _reference_neighbours(matrix, history, session, query_items, 5.0)
                length = min(n_history + n_session, query_items)
                weights = base.positional_weights(length, 5.0).astype(np.float64).astype(dtype)
                idx, values = kernels.neighbour_scores(
                    matrix.indptr, matrix.indices, matrix.data, history, session, weights
                )
                np.testing.assert_array_equal(idx, want.idx)  # the same order of first appearance
                np.testing.assert_array_equal(values, want.values)
                assert idx.dtype == np.int64 and values.dtype == np.float32
                for n in (0, 1, 50, 1000):  # summed and selected in one call: the same best n
                    top = kernels.neighbour_top(
                        matrix.indptr, matrix.indices, matrix.data, history, session, weights, n
                    )
                    for g, w in zip(top, want.top(n), strict=True):
                        np.testing.assert_array_equal(g, w)


def test_cooccurrence_query_scores_are_unchanged(data: Interactions) -> None:
    model = CoOccurrenceRetriever().fit(data)
    size = len(model.item_ids_)
    items = [str(i) for i in data.items.ids]
    queries = [Query(), Query(session_items=("no-such-item",))]
    queries += [Query(user_id=str(u)) for u in data.users.ids[:30]]
    queries += [Query(session_items=tuple(items[3 : 3 + k])) for k in (1, 4, 40)]
    queries += [Query(user_id=str(u), session_items=tuple(items[5:9])) for u in data.users.ids[:10]]
    for query in queries:
        u = model.user_index(query.user_id)
        history = (
            model.recent_items_[model.recent_indptr_[u] : model.recent_indptr_[u + 1]]
            if u >= 0
            else np.empty(0, dtype=np.int32)
        )
        want = _reference_neighbours(
            model.similarity_,
            history,
            model._session_indices(query),
            model.config.query_items,
            model.config.query_half_life,
        )
        _same_scores(model.query_scores(query), want, size)


def test_repeat_history_rows_are_the_positive_entries(data: Interactions) -> None:
    model = RepeatRetriever().fit(data)
    size = len(model.item_ids_)
    history = model.history_
    assert model._history_ranked() is not None

    def want(u: int) -> SparseScores:
        start, end = history.indptr[u], history.indptr[u + 1]
        return SparseScores.from_positive(
            history.indices[start:end], history.data[start:end], size, ascending=True
        )

    for u in range(min(30, len(model.user_ids_))):
        _same_scores(model.query_scores(Query(user_id=str(model.user_ids_[u]))), want(u), size)
    # Tied weights: the ranking still breaks ties to the lower item, as the compiled top does.
    model.history_ = history = history.copy()
    history.data = (np.round(history.data * 2) / 2 + 0.5).astype(np.float32)
    assert model._history_ranked() is not None
    for u in range(min(30, len(model.user_ids_))):
        _same_scores(model.query_scores(Query(user_id=str(model.user_ids_[u]))), want(u), size)
    # A stored weight that is not positive (not what fit leaves): the masked path, as before.
    model.history_ = history = history.copy()
    history.data[::3] = 0.0
    assert model._history_ranked() is None
    for u in range(min(30, len(model.user_ids_))):
        _same_scores(model.query_scores(Query(user_id=str(model.user_ids_[u]))), want(u), size)


def test_ranked_top_is_answered_once_per_size() -> None:
    rng = np.random.default_rng(0)
    values = (rng.integers(0, 50, 5000) / 7.0).astype(np.float32)  # many ties
    values[::13] = -np.inf
    ranked = RankedScores(values, prefix=16)
    for n in (0, 1, 16, 17, 200, 16, 4000, 5000, 6000, 200):
        idx, got = ranked.top(n)
        pos = top_of(values, n)
        np.testing.assert_array_equal(idx, pos)
        np.testing.assert_array_equal(got, values[pos])
        assert not idx.flags.writeable and not got.flags.writeable  # shared between requests
        assert ranked.top(n)[0] is idx


@pytest.mark.parametrize(
    "segments",
    [
        ("region", "age_band", "time_of_day"),
        ("region",),
        ("time_of_day",),
        ("age_band", "time_of_day"),
        (),
    ],
)
def test_segment_key_is_the_sorted_codes(data: Interactions, segments: tuple[str, ...]) -> None:
    model = PopularityRetriever(PopularityConfig(segments=segments)).fit(data)
    regions = [None, "north", "south", "nowhere", ""]
    times = [
        None,
        datetime(2024, 5, 3, 2, tzinfo=UTC),
        datetime(2024, 5, 3, 23, 59),
        datetime(2024, 5, 3, 14, tzinfo=UTC),
    ]
    users = [None, "not-a-user", *(str(u) for u in data.users.ids[:25])]
    for user in users:
        for region in regions:
            for age_band in (None, "18-24", "nope"):
                for when in times:
                    query = Query(
                        user_id=user,
                        context=Context(timestamp=when, region=region, age_band=age_band),
                    )
                    assert model._segment_key(query) == tuple(
                        sorted(model._segment_codes(query).items())
                    )
    assert model.warm(datetime(2024, 5, 3, 14, tzinfo=UTC)) >= 1


def test_group_columns_sums_onto_zero_as_bincount() -> None:
    """Each column's products are summed onto 0.0, as ``np.bincount`` sums them: a column whose
    only product is -0.0 sums to +0.0, bit for bit (its single-table grouping keeps that)."""
    data = np.array([-0.0, 1.0, -2.0, -0.0, 3.0], dtype=np.float32)  # explicit signed zeros, stored
    matrix = sp.csr_matrix((data, np.array([0, 1, 3, 1, 2]), np.array([0, 3, 5])), shape=(2, 4))
    for rows, weights in (([0], [1.0]), ([1, 0], [2.0, -0.0]), ([0, 0, 1], [1.0, 0.5, -1.0])):
        rows = np.asarray(rows, dtype=np.int64)
        w = np.asarray(weights, dtype=np.float32)
        columns, sums = kernels.group_columns(matrix.indptr, matrix.indices, matrix.data, rows, w)
        products = np.concatenate(
            [
                matrix.data[matrix.indptr[r] : matrix.indptr[r + 1]] * w[k]
                for k, r in enumerate(rows)
            ]
        )
        cols = np.concatenate(
            [matrix.indices[matrix.indptr[r] : matrix.indptr[r + 1]] for r in rows]
        )
        want = np.bincount(cols, weights=products, minlength=4)
        np.testing.assert_array_equal(sums.view(np.uint64), want[columns].view(np.uint64))


def test_item_indices_of_a_tuple_are_shared_read_only(data: Interactions) -> None:
    """Sources asking for the same session tuple share one read-only answer; other inputs get
    their own; every answer is the known items' indices in order."""
    a, b = CoOccurrenceRetriever().fit(data), RepeatRetriever().fit(data)
    b.__dict__["_items_index"] = a.items  # as a blend shares its sources' item index
    items = (*[str(i) for i in data.items.ids[:5]], "not-an-item", str(data.items.ids[2]))
    want = a.items.lookup(list(items))
    want = want[want >= 0]
    first, second = a.item_indices(items), b.item_indices(items)
    assert first is second and not first.flags.writeable
    np.testing.assert_array_equal(first, want)
    fresh = a.item_indices(list(items))
    assert fresh is not first and fresh.flags.writeable
    np.testing.assert_array_equal(fresh, want)
    other = tuple(reversed(items))
    np.testing.assert_array_equal(a.item_indices(other), want[::-1])
    np.testing.assert_array_equal(
        a.item_indices(items), want
    )  # the earlier tuple again: looked up afresh
    assert len(a.item_indices(())) == 0 and len(a.item_indices([])) == 0
