"""The conformance suite every retriever runs (like implicit's RecommenderBaseTestMixin or
scikit-learn's ``parametrize_with_checks``).

Adding a retriever to it is one entry in the test's case list::

    RetrieverCase("mine", lambda: MyRetriever(MyConfig(seed=0)))

and every check in ``CHECKS`` runs against it: fit, retrieve k, unknown user, empty history and
session, exclude honoured, no duplicates, batch scores agree with retrieve, save/load round-trip
gives identical output, a corrupted or newer file is refused, same seed same output, and bad
input (empty data, one item, not fitted) raises a ``ModelError``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from shelf.models.base import Context, Interactions, Query, Scored
from shelf.models.io import MANIFEST, ModelError, ModelFitError, ModelFormatError, NotFittedError
from shelf.models.retrieval.scores import top_of
from shelf.privacy import Pseudonymizer
from shelf.schema import EVENT_SCHEMA, validate_events, validate_items, validate_users

TEST_KEY = b"test-key-0123456789abcdef"
EVENT_TYPES = ("view", "view", "view", "view", "add_to_cart", "purchase", "remove_from_cart", "add_to_wishlist")
NEW_ITEM = "new-item"  # in the catalogue, never interacted with


@dataclass(frozen=True)
class RetrieverCase:
    """A named way to build an unfitted retriever for the suite."""

    name: str
    factory: Callable[[], Any]
    # Retrievers that may legitimately propose nothing for some queries (repeat for a shopper with
    # no history) still pass; those that promise to fill (a blend) are checked for exactly k.
    always_fills: bool = False

    def __str__(self) -> str:
        return self.name


def make_events(seed: int = 0, n_users: int = 40, n_items: int = 60, n_sessions: int = 120) -> pa.Table:
    """A small raw event table (not yet validated) with users, sessions and several event types."""
    rng = np.random.default_rng(seed)
    start = datetime(2024, 5, 1, tzinfo=UTC)
    rows: dict[str, list[Any]] = {k: [] for k in ("user_id", "session_id", "item_id", "type", "timestamp", "value")}
    # Items come in four "categories" that shoppers stick to, so there is structure to learn.
    for s in range(n_sessions):
        user = int(rng.integers(n_users))
        anonymous = rng.random() < 0.15
        taste = user % 4
        t = start + timedelta(hours=float(rng.uniform(0, 24 * 14)))
        for _ in range(int(rng.integers(2, 9))):
            item = int(rng.integers(n_items // 4)) * 4 + taste if rng.random() < 0.8 else int(rng.integers(n_items))
            kind = str(rng.choice(EVENT_TYPES))
            rows["user_id"].append(None if anonymous else f"user{user}")
            rows["session_id"].append(f"s{s}")
            rows["item_id"].append(f"item{item}")
            rows["type"].append(kind)
            rows["timestamp"].append(t.isoformat())
            rows["value"].append(1.0 if kind in ("add_to_cart", "purchase", "remove_from_cart") else None)
            t += timedelta(minutes=float(rng.uniform(0.5, 10)))
    return pa.table(rows)


def make_catalogue(n_items: int = 60) -> pa.Table:
    rows = {
        "item_id": [f"item{i}" for i in range(n_items)] + [NEW_ITEM],
        "title": [f"{['red', 'blue', 'green', 'black'][i % 4]} thing number {i}" for i in range(n_items)] + ["red thing new"],
        "category": [f"cat{i % 4}/sub{i % 8}" for i in range(n_items)] + ["cat0/sub0"],
        "brand": [f"brand{i % 5}" for i in range(n_items)] + ["brand0"],
        "price": [float(5 + (i * 7) % 90) for i in range(n_items)] + [12.0],
        "attributes": [json.dumps({"colour": ["red", "blue", "green", "black"][i % 4]}) for i in range(n_items)]
        + [json.dumps({"colour": "red"})],
    }
    return validate_items(pa.table(rows)).valid


def make_users(n_users: int = 40) -> pa.Table:
    rows = {
        "user_id": [f"user{u}" for u in range(n_users)],
        "region": [["north", "south", None][u % 3] for u in range(n_users)],
        "age_band": [["18-24", "25-34", "35-54"][u % 3] for u in range(n_users)],
    }
    return validate_users(pa.table(rows), pseudonymizer=Pseudonymizer(TEST_KEY)).valid


def make_interactions(seed: int = 0, *, catalogue: bool = True, users: bool = True) -> Interactions:
    """Validated synthetic Interactions with a catalogue (including one never-seen item) and profiles."""
    valid = validate_events(make_events(seed), pseudonymizer=Pseudonymizer(TEST_KEY)).valid
    return Interactions.from_events(
        valid,
        item_table=make_catalogue() if catalogue else None,
        user_table=make_users() if users else None,
    )


def empty_interactions() -> Interactions:
    return Interactions.from_events(EVENT_SCHEMA.empty_table())


def single_item_interactions() -> Interactions:
    raw = pa.table(
        {
            "user_id": ["a", "b", "a"],
            "session_id": ["s1", "s2", "s1"],
            "item_id": ["only", "only", "only"],
            "type": ["view", "purchase", "view"],
            "timestamp": ["2024-05-01T10:00:00Z", "2024-05-01T11:00:00Z", "2024-05-01T12:00:00Z"],
        }
    )
    return Interactions.from_events(validate_events(raw, pseudonymizer=Pseudonymizer(TEST_KEY)).valid)


# ---------------------------------------------------------------------------------------------
# Queries the checks ask


def sample_queries(data: Interactions) -> list[Query]:
    """Known users, a session-only shopper, a shopper with nothing, context-only, odd input."""
    users = [str(u) for u in data.users.ids[:3]]
    items = [str(i) for i in data.items.ids[:4]]
    when = datetime(2024, 5, 2, 20, 0, tzinfo=UTC)
    return [
        Query(user_id=users[0]),
        Query(user_id=users[1], session_items=(items[0], items[1])),
        Query(user_id=users[2], context=Context(timestamp=when, region="north")),
        Query(session_items=(items[2], items[3], items[2])),
        Query(),
        Query(context=Context(timestamp=when, region="south", age_band="25-34")),
        Query(user_id="u_unknown", session_items=("no-such-item",)),
        Query(session_items=(NEW_ITEM,)),
    ]


def _fitted(case: RetrieverCase, data: Interactions) -> Any:
    model = case.factory()
    out = model.fit(data)
    assert out is model, f"{case}: fit must return self"
    return model


def _assert_well_formed(case: RetrieverCase, result: Scored, n: int, data: Interactions) -> None:
    assert isinstance(result, Scored), f"{case}: retrieve must return Scored"
    assert len(result) <= n, f"{case}: returned {len(result)} items for n={n}"
    assert len(result.scores) == len(result.items)
    assert result.scores.dtype == np.float32, f"{case}: scores must be float32"
    assert np.all(np.isfinite(result.scores)), f"{case}: returned a non-finite score"
    assert np.all(np.diff(result.scores) <= 0), f"{case}: scores must be non-increasing"
    assert result.sources is not None and len(result.sources) == len(result.items), f"{case}: sources missing"
    known = set(data.items.ids.tolist())
    assert all(isinstance(i, str) and i in known for i in result.items.tolist()), f"{case}: unknown or non-raw id"
    assert len(set(result.items.tolist())) == len(result), f"{case}: duplicate items"


# ---------------------------------------------------------------------------------------------
# The checks


def check_fit(case: RetrieverCase, data: Interactions, tmp: Path) -> None:
    model = _fitted(case, data)
    assert getattr(model, "is_fitted", True), f"{case}: not fitted after fit"
    assert model.name, f"{case}: a retriever needs a name"


def check_retrieve_k(case: RetrieverCase, data: Interactions, tmp: Path) -> None:
    model = _fitted(case, data)
    for k in (1, 5, 10):
        for query in sample_queries(data)[:3]:
            result = model.retrieve(query, k)
            _assert_well_formed(case, result, k, data)
            if case.always_fills:
                assert len(result) == k, f"{case}: must always return k={k} items, gave {len(result)}"
    assert len(model.retrieve(sample_queries(data)[0], 0)) == 0


def check_unknown_user(case: RetrieverCase, data: Interactions, tmp: Path) -> None:
    model = _fitted(case, data)
    for query in (Query(user_id="u_never_seen"), Query(user_id="u_unknown", session_items=("no-such-item",))):
        result = model.retrieve(query, 10)
        _assert_well_formed(case, result, 10, data)
        if case.always_fills:
            assert len(result) == 10


def check_empty_history_and_session(case: RetrieverCase, data: Interactions, tmp: Path) -> None:
    model = _fitted(case, data)
    for query in (Query(), Query(session_items=()), Query(session_items=(NEW_ITEM,))):
        result = model.retrieve(query, 7)
        _assert_well_formed(case, result, 7, data)
        if case.always_fills:
            assert len(result) == 7


def check_session(case: RetrieverCase, data: Interactions, tmp: Path) -> None:
    model = _fitted(case, data)
    query = sample_queries(data)[3]
    result = model.retrieve(query, 10)
    _assert_well_formed(case, result, 10, data)


def check_exclude(case: RetrieverCase, data: Interactions, tmp: Path) -> None:
    model = _fitted(case, data)
    for query in sample_queries(data):
        first = model.retrieve(query, 10)
        banned = frozenset(first.items[:3].tolist()) | {"no-such-item"}
        again = model.retrieve(Query(query.user_id, query.session_items, query.context, banned), 10)
        _assert_well_formed(case, again, 10, data)
        assert not banned & set(again.items.tolist()), f"{case}: returned an excluded item"
    everything = frozenset(data.items.ids.tolist())
    assert len(model.retrieve(Query(user_id=str(data.users.ids[0]), exclude=everything), 5)) == 0


def check_no_duplicates(case: RetrieverCase, data: Interactions, tmp: Path) -> None:
    model = _fitted(case, data)
    for query in sample_queries(data):
        result = model.retrieve(query, data.n_items + 10)
        _assert_well_formed(case, result, data.n_items + 10, data)
        if case.always_fills:
            assert len(result) == data.n_items, f"{case}: k beyond every source must still fill the catalogue"


def check_score_users(case: RetrieverCase, data: Interactions, tmp: Path) -> None:
    model = _fitted(case, data)
    if not hasattr(model, "score_users"):
        return
    users = np.arange(min(5, data.n_users))
    scores = model.score_users(users)
    assert scores.shape == (len(users), data.n_items), f"{case}: score_users shape {scores.shape}"
    assert scores.dtype == np.float32
    assert not np.isnan(scores).any(), f"{case}: NaN in score_users"
    for row, u in enumerate(users):
        result = model.retrieve(Query(user_id=str(data.users.ids[u])), 5)
        finite = np.isfinite(scores[row])
        if len(result):
            expected = np.sort(scores[row][finite])[::-1][: len(result)]
            got = scores[row][data.items.lookup(result.items.tolist())]
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=f"{case}: retrieve and score_users disagree")


def check_save_load(case: RetrieverCase, data: Interactions, tmp: Path) -> None:
    model = _fitted(case, data)
    model.save(tmp / "model")
    loaded = type(model).load(tmp / "model")
    for query in sample_queries(data):
        a, b = model.retrieve(query, 10), loaded.retrieve(query, 10)
        assert a.items.tolist() == b.items.tolist(), f"{case}: output changed after save/load"
        np.testing.assert_array_equal(a.scores, b.scores)
        assert list(a.sources) == list(b.sources)
    if hasattr(model, "score_users"):
        users = np.arange(min(4, data.n_users))
        np.testing.assert_array_equal(model.score_users(users), loaded.score_users(users))


def check_refuses_bad_files(case: RetrieverCase, data: Interactions, tmp: Path) -> None:
    model = _fitted(case, data)
    path = model.save(tmp / "model")
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["format_version"] += 1
    (path / MANIFEST).write_text(json.dumps(manifest))
    _expect(ModelFormatError, lambda: type(model).load(path), f"{case}: a newer format version must be refused")
    path = model.save(tmp / "model2")
    arrays = path / manifest["arrays"]["file"]
    blob = bytearray(arrays.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    arrays.write_bytes(bytes(blob))
    _expect(ModelFormatError, lambda: type(model).load(path), f"{case}: a corrupted file must be refused")
    _expect(ModelFormatError, lambda: type(model).load(tmp / "nothing-here"), f"{case}: a missing model must be refused")


def check_deterministic(case: RetrieverCase, data: Interactions, tmp: Path) -> None:
    a, b = _fitted(case, data), _fitted(case, data)
    for query in sample_queries(data):
        ra, rb = a.retrieve(query, 10), b.retrieve(query, 10)
        assert ra.items.tolist() == rb.items.tolist(), f"{case}: same seed, same data, different output"
        np.testing.assert_allclose(ra.scores, rb.scores, rtol=1e-5)


def check_query_scores(case: RetrieverCase, data: Interactions, tmp: Path) -> None:
    """A retriever's cheap per-query form (sparse, ranked) answers exactly as its dense vector."""
    model = _fitted(case, data)
    if not hasattr(model, "query_scores"):
        return
    rng = np.random.default_rng(0)
    for query in sample_queries(data):
        scores = model.query_scores(query)
        dense = model.score_query(query)
        np.testing.assert_array_equal(scores.dense(), dense, err_msg=f"{case}: dense() differs from score_query")
        for n in (1, 5, data.n_items + 3):
            top, values = scores.top(n)
            expected = top_of(dense, n)
            assert top.tolist() == expected.tolist(), f"{case}: top({n}) differs from the dense order for {query}"
            np.testing.assert_array_equal(values, dense[expected])
        idx = rng.integers(0, data.n_items, size=20)
        np.testing.assert_array_equal(scores.at(idx), dense[idx], err_msg=f"{case}: at() differs from the dense vector")
        finite = dense[np.isfinite(dense)]
        expected_bounds = (float(finite.min()), float(finite.max())) if len(finite) else None
        assert scores.bounds() == expected_bounds, f"{case}: bounds() {scores.bounds()} != {expected_bounds}"


def check_not_fitted(case: RetrieverCase, data: Interactions, tmp: Path) -> None:
    model = case.factory()
    _expect(NotFittedError, lambda: model.retrieve(Query(), 5), f"{case}: retrieve before fit must raise NotFittedError")
    _expect(NotFittedError, lambda: model.save(tmp / "m"), f"{case}: save before fit must raise NotFittedError")


def check_bad_input(case: RetrieverCase, data: Interactions, tmp: Path) -> None:
    _expect(ModelFitError, lambda: case.factory().fit(empty_interactions()), f"{case}: empty data must raise ModelFitError")
    single = single_item_interactions()
    try:
        model = case.factory().fit(single)
    except ModelError:
        return  # refusing one item with a clear error is fine
    result = model.retrieve(Query(user_id=str(single.users.ids[0])), 5)
    _assert_well_formed(case, result, 5, single)


def _expect(error: type[Exception], action: Callable[[], Any], message: str) -> None:
    try:
        action()
    except error:
        return
    raise AssertionError(message)


CHECKS: tuple[Callable[[RetrieverCase, Interactions, Path], None], ...] = (
    check_fit,
    check_retrieve_k,
    check_unknown_user,
    check_empty_history_and_session,
    check_session,
    check_exclude,
    check_no_duplicates,
    check_score_users,
    check_save_load,
    check_refuses_bad_files,
    check_deterministic,
    check_query_scores,
    check_not_fitted,
    check_bad_input,
)

__all__ = ["CHECKS", "NEW_ITEM", "RetrieverCase", "make_interactions", "sample_queries"]
