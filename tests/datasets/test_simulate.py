from __future__ import annotations

from datetime import UTC, datetime

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from shelf.datasets.simulate import SimulationConfig, Simulator
from shelf.models.base import Query
from shelf.privacy import Pseudonymizer
from shelf.schema import (
    EVENT_SCHEMA,
    ITEM_SCHEMA,
    USER_SCHEMA,
    validate_events,
    validate_items,
    validate_users,
)

SMALL = SimulationConfig(users=300, items=200, days=14, categories=8, brands=12, seed=7)


@pytest.fixture(scope="module")
def sim() -> Simulator:
    return Simulator(SMALL)


@pytest.fixture(scope="module")
def events(sim: Simulator) -> pa.Table:
    return sim.event_table()


def _np(table: pa.Table, column: str) -> np.ndarray:
    return table[column].to_numpy(zero_copy_only=False)


def _sql(sql: str, **tables: pa.Table) -> list[tuple[object, ...]]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for name, table in tables.items():
        con.register(name, table)
    return con.execute(sql).fetchall()


def _index(ids: np.ndarray) -> np.ndarray:
    return np.array([int(x.split("-")[1]) for x in ids], dtype=np.int64)


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"users": 0}, "users must be at least 1"),
        ({"items": -5}, "items must be at least 1"),
        ({"days": 2.5}, "days must be an integer"),
        ({"users": True}, "users must be an integer"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"categories": 50, "items": 10}, "categories"),
        ({"anonymous_share": 1.0}, "anonymous_share"),
        ({"launch_share": 1.5}, "launch_share"),
        ({"drift": float("nan")}, "drift must be a finite number"),
        ({"start": datetime(2024, 1, 1)}, "timezone-aware"),
        ({"start": datetime(2200, 12, 20, tzinfo=UTC)}, "years"),
        ({"mean_views_per_session": 0.5}, "mean_views_per_session"),
        ({"sessions_per_user_day": 0}, "sessions_per_user_day"),
    ],
)
def test_config_refuses_nonsense(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimulationConfig(**kwargs)  # type: ignore[arg-type]


def test_chunk_rows_must_be_positive(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="chunk_rows"):
        next(sim.events(chunk_rows=0))


# -- schema ----------------------------------------------------------------------------------


def test_everything_produced_passes_validation(
    sim: Simulator, events: pa.Table, dev_key: bytes
) -> None:
    pseudonymizer = Pseudonymizer(dev_key)
    items, users = sim.items(), sim.users()
    assert items.schema.equals(ITEM_SCHEMA) and users.schema.equals(USER_SCHEMA)
    assert events.schema.equals(EVENT_SCHEMA)
    for result in (
        validate_items(items),
        validate_users(users, pseudonymizer=pseudonymizer),
        validate_events(events, pseudonymizer=pseudonymizer),
    ):
        assert result.errors == []
        assert result.valid.num_rows > 0
    assert pc.count_distinct(events["event_id"]).as_py() == events.num_rows
    assert set(pc.unique(events["type"]).to_pylist()) == {
        "view",
        "add_to_cart",
        "remove_from_cart",
        "add_to_wishlist",
        "purchase",
        "rating",
        "search",
    }
    assert all("/" in c for c in pc.unique(items["category"]).to_pylist())


def test_event_ids_do_not_clash_across_seeds(events: pa.Table) -> None:
    other = Simulator(
        SimulationConfig(users=50, items=40, days=3, categories=4, seed=8)
    ).event_table()
    assert not set(other["event_id"].to_pylist()) & set(events["event_id"].to_pylist())


# -- determinism and streaming ---------------------------------------------------------------


def test_same_seed_same_output_other_seed_differs(sim: Simulator, events: pa.Table) -> None:
    again = Simulator(SMALL)
    assert again.items().equals(sim.items())
    assert again.users().equals(sim.users())
    assert again.event_table().equals(events)
    other = Simulator(
        SimulationConfig(users=300, items=200, days=14, categories=8, brands=12, seed=8)
    )
    assert not other.event_table().equals(events)
    assert not other.items().equals(sim.items())


def test_chunks_are_the_same_events_in_time_order(sim: Simulator, events: pa.Table) -> None:
    chunks = list(sim.events(chunk_rows=997))
    assert all(c.num_rows == 997 for c in chunks[:-1]) and 0 < chunks[-1].num_rows <= 997
    assert pa.concat_tables(chunks).equals(events)
    ts = pc.cast(events["timestamp"], pa.int64()).to_numpy()
    assert np.all(np.diff(ts) >= 0)


# -- behaviour -------------------------------------------------------------------------------


def test_funnel_has_the_shape_of_a_real_shop(events: pa.Table) -> None:
    kinds = _np(events, "type")
    n = {k: int((kinds == k).sum()) for k in np.unique(kinds)}
    assert n["view"] > 8 * n["add_to_cart"] > 8 * n["purchase"] / 1.0 * 1.0 > 0
    assert n["add_to_cart"] > n["purchase"] > n["rating"] > 0
    assert n["remove_from_cart"] > 0 and n["add_to_wishlist"] > 0 and n["search"] > 0
    sessions = _np(events, "session_id")
    carted = set(sessions[kinds == "add_to_cart"])
    bought = set(sessions[kinds == "purchase"])
    assert bought <= carted
    assert len(carted - bought) > 0.3 * len(carted)  # abandoned carts
    # Purchases, carts and removals carry positive quantities and prices.
    q = np.isin(kinds, ["add_to_cart", "remove_from_cart", "purchase"])
    assert np.all(_np(events, "value")[q] >= 1) and np.all(_np(events, "price")[q] > 0)


def test_engagement_follows_true_affinity(sim: Simulator, events: pa.Table) -> None:
    truth = sim.truth
    kinds, users = _np(events, "type"), _np(events, "user_id")
    known = np.array([u is not None for u in users])

    def mean_affinity(kind: str) -> float:
        sel = known & (kinds == kind)
        return float(
            truth.affinity(_index(users[sel]), _index(_np(events, "item_id")[sel]), day=7).mean()
        )

    rng = np.random.default_rng(0)
    baseline = float(
        truth.affinity(
            rng.integers(0, SMALL.users, 5000), rng.integers(0, SMALL.items, 5000), day=7
        ).mean()
    )
    assert mean_affinity("view") > baseline + 0.3
    assert mean_affinity("purchase") > mean_affinity("view") + 0.3


def test_ratings_correlate_with_true_affinity() -> None:
    cfg = SimulationConfig(users=400, items=150, days=14, categories=6, rating_rate=1.0, seed=3)
    sim = Simulator(cfg)
    ev = sim.event_table()
    ratings = ev.filter(pc.equal(ev["type"], "rating"))
    assert ratings.num_rows >= 50
    assert pc.all(pc.is_null(ratings["session_id"])).as_py()
    assert pc.all(pc.is_valid(ratings["user_id"])).as_py()
    stars = _np(ratings, "value")
    aff = sim.truth.affinity(
        _index(_np(ratings, "user_id")), _index(_np(ratings, "item_id")), day=7
    )
    assert set(np.unique(stars)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert np.corrcoef(stars, aff)[0, 1] > 0.3


def test_time_of_day_and_repeats(events: pa.Table) -> None:
    hours = pc.hour(events["timestamp"]).to_numpy()
    evening = np.isin(hours, [18, 19, 20, 21]).sum()
    night = np.isin(hours, [2, 3, 4, 5]).sum()
    assert evening > 4 * night > 0
    views = events.filter(pc.and_(pc.equal(events["type"], "view"), pc.is_valid(events["user_id"])))
    pairs = pc.binary_join_element_wise(views["user_id"], views["item_id"], "|")
    repeat_share = 1 - pc.count_distinct(pairs).as_py() / views.num_rows
    assert repeat_share > 0.15  # re-engagement is a large share of real traffic


def test_anonymous_sessions_and_midway_logins(events: pa.Table) -> None:
    rows = _sql(
        "SELECT count(user_id) AS known, count(*) AS n FROM events WHERE session_id IS NOT NULL GROUP BY session_id",
        events=events,
    )
    result = {"known": np.array([r[0] for r in rows]), "n": np.array([r[1] for r in rows])}
    anonymous = np.mean(result["known"] == 0)
    assert 0.2 < anonymous < 0.5  # anonymous_share 0.3 plus shoppers who have not signed up yet
    midway = (result["known"] > 0) & (result["known"] < result["n"])
    assert midway.sum() > 0
    # A midway login never goes back: once the user id appears, it stays.
    logins = _sql(
        "SELECT session_id FROM (SELECT session_id, user_id IS NOT NULL AS k, "
        "lag(user_id IS NOT NULL) OVER (PARTITION BY session_id ORDER BY timestamp, event_id) AS prev "
        "FROM events WHERE session_id IS NOT NULL AND type IN ('view', 'search')) WHERE prev AND NOT k",
        events=events,
    )
    assert logins == []


def test_stock_versions_over_time_and_no_sales_while_sold_out(
    sim: Simulator, events: pa.Table
) -> None:
    items = sim.items()
    assert items.num_rows > SMALL.items  # later versions exist
    versions = _sql(
        "SELECT item_id, count(*) AS n, min(stock) AS low FROM items GROUP BY item_id HAVING n > 1",
        items=items,
    )
    assert any(low == 0 for _, _, low in versions)
    assert (
        _sql("SELECT count(*) FROM (SELECT DISTINCT item_id, valid_from FROM items)", items=items)[
            0
        ][0]
        == items.num_rows
    )
    sold_while_out = _sql(
        "SELECT count(*) FROM events e ASOF JOIN items i ON e.item_id = i.item_id AND e.timestamp >= i.valid_from "
        "WHERE e.type IN ('add_to_cart', 'purchase') AND i.stock = 0",
        events=events,
        items=items,
    )[0][0]
    assert sold_while_out == 0
    before_launch = _sql(
        "SELECT count(*) FROM events e JOIN (SELECT item_id, min(launched_at) AS launched FROM items GROUP BY item_id) i "
        "USING (item_id) WHERE e.timestamp < i.launched",
        events=events,
        items=items,
    )[0][0]
    assert before_launch == 0
    start = SMALL.start
    launched = pc.sum(
        pc.greater_equal(items["launched_at"], pa.scalar(start, type=items["launched_at"].type))
    ).as_py()
    assert launched > 0


def test_users_table_has_segments_and_later_versions(sim: Simulator) -> None:
    users = sim.users()
    assert users.num_rows > SMALL.users
    assert len(pc.unique(users["age_band"])) >= 5 and len(pc.unique(users["region"])) >= 5
    signed = pc.greater_equal(
        users["signed_up_at"], pa.scalar(SMALL.start, type=users["signed_up_at"].type)
    )
    assert pc.sum(signed).as_py() > 0


def test_truth_is_exposed_consistently(sim: Simulator) -> None:
    truth = sim.truth
    users, items = np.arange(5), np.arange(SMALL.items)
    matrix = truth.affinity(users[:, None], items[None, :], day=3)
    assert matrix.shape == (5, SMALL.items)
    np.testing.assert_allclose(matrix[2], truth.scores(2, day=3), rtol=1e-5, atol=1e-5)
    top = truth.preferred_items(2, 10, day=3)
    assert len(top) == 10 and np.all(truth.launched_by(3)[top])
    assert matrix[2, top[0]] == pytest.approx(matrix[2][truth.launched_by(3)].max(), rel=1e-5)


def test_drift_moves_tastes() -> None:
    still = Simulator(SimulationConfig(users=50, items=40, days=10, categories=4, drift=0.0)).truth
    moving = Simulator(SimulationConfig(users=50, items=40, days=10, categories=4, drift=1.0)).truth
    np.testing.assert_array_equal(still.taste(0), still.taste(9))
    assert np.linalg.norm(moving.taste(9) - moving.taste(0), axis=1).mean() > 1.0


# -- recommender in the loop -----------------------------------------------------------------


def test_a_policy_of_truly_preferred_items_beats_a_random_one(
    sim: Simulator, dev_key: bytes
) -> None:
    truth = sim.truth
    rng = np.random.default_rng(1)

    def oracle(query: Query, n: int) -> list[str]:
        assert query.user_id is not None
        return [
            f"item-{i}"
            for i in truth.preferred_items(Simulator.user_index(query.user_id), n, day=5)
        ]

    def random_policy(query: Query, n: int) -> list[str]:
        return [f"item-{i}" for i in rng.choice(SMALL.items, n, replace=False)]

    def run(policy: object) -> tuple[int, int, float]:
        env = sim.environment(seed=4)
        outcomes = [env.session(policy, user=u, day=5, slate_size=10, steps=2) for u in range(150)]  # type: ignore[arg-type]
        for o in outcomes[:20]:
            assert o.events.schema.equals(EVENT_SCHEMA)
            assert validate_events(o.events, pseudonymizer=Pseudonymizer(dev_key)).errors == []
        return (
            sum(o.clicks for o in outcomes),
            sum(o.purchases for o in outcomes),
            sum(o.revenue for o in outcomes),
        )

    oracle_clicks, oracle_buys, _ = run(oracle)
    random_clicks, random_buys, _ = run(random_policy)
    assert oracle_clicks > 1.5 * random_clicks
    assert oracle_buys > random_buys


def test_environment_feeds_the_session_back_and_ignores_unknown_items(
    sim: Simulator, dev_key: bytes
) -> None:
    seen: list[Query] = []
    pseudonymizer = Pseudonymizer(dev_key)

    def policy(query: Query, n: int) -> list[str]:
        seen.append(query)
        return ["not-an-item", "item-9999999"] + [
            f"item-{i}" for i in sim.truth.preferred_items(3, n, day=0)
        ]

    env = sim.environment(pseudonymizer=pseudonymizer)
    outcome = env.session(policy, user="user-3", steps=4)
    assert seen[0].user_id == pseudonymizer.one("user-3")
    assert seen[0].context.timestamp is not None and seen[0].context.region is not None
    clicked = tuple(_np(outcome.events.filter(pc.equal(outcome.events["type"], "view")), "item_id"))
    assert seen[-1].session_items == clicked[: len(seen[-1].session_items)]
    assert "not-an-item" not in outcome.events["item_id"].to_pylist()
    anonymous = env.session(policy, anonymous=True)
    assert anonymous.user_id is None and pc.all(
        pc.is_null(anonymous.events["user_id"])
    ).as_py() in (True, None)
