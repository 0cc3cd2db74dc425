"""Serving a trained bundle: blend for known shoppers, fresh sessions, context popularity, similar
items from the bundle's item-to-item sources, rerank on the lake catalogue, WAL compaction and
start-up replay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from shelf.lake import Lake
from shelf.registry.bundles import Registry
from shelf.serving import ServeConfig, create_app, create_key
from shelf.serving.recommender import BundleRecommender
from shelf.settings import Settings

pytestmark = pytest.mark.anyio

FAST = ServeConfig(bundle_poll_seconds=0.05, exposure_flush_seconds=0.05, compact_seconds=3600)
MODEL_SOURCES = {"repeat", "cooccurrence", "als", "ease", "content", "trending", "popularity", "catalogue"}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def admin(shop: Settings) -> str:
    return create_key(shop.home, "admin")[1]


@pytest.fixture
def shopper(shop: Settings) -> str:
    """The raw id of a shopper with the most history in the lake (what the bundle learned from)."""
    from shelf.privacy import Pseudonymizer

    with Lake.open(shop.home).snapshot() as snap:
        busiest = snap.sql("SELECT user_id FROM events WHERE user_id IS NOT NULL GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
    wanted = busiest["user_id"][0].as_py()
    pseudonym = Pseudonymizer(shop.require_pseudonym_key()).one
    return next(raw for raw in (f"user-{i}" for i in range(200)) if pseudonym(raw) == wanted)


@pytest.fixture
async def served(shop: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(shop, config=FAST)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield app, client


async def get(client: httpx.AsyncClient, key: str, path: str, **params: Any) -> dict[str, Any]:
    response = await client.get(path, params=params, headers=bearer(key))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def ids(body: dict[str, Any]) -> list[str]:
    return [i["item_id"] for i in body["items"]]


def sources(body: dict[str, Any]) -> set[str]:
    return {i["source"] for i in body["items"]}


async def test_the_promoted_bundle_answers_with_the_blend(served: tuple[FastAPI, httpx.AsyncClient], admin: str, shopper: str) -> None:
    app, client = served
    runtime = app.state.shelf
    assert isinstance(runtime.slot.current, BundleRecommender) and runtime.slot.current.version == "v0001"
    assert runtime.status().catalogue_items == 100, "the rerank catalogue comes from the lake"

    known = await get(client, admin, "/recommendations", user_id=shopper, k=10)
    assert known["bundle_version"] == "v0001" and len(known["items"]) == 10
    assert sources(known) <= MODEL_SOURCES and sources(known) - {"popularity", "trending", "catalogue"}, known
    scores = [i["score"] for i in known["items"]]
    assert scores == sorted(scores, reverse=True)

    nobody = await get(client, admin, "/recommendations", k=10, region="DE")
    assert sources(nobody) <= {"popularity", "catalogue"}, "nothing known: popularity by context"

    similar = await get(client, admin, "/items/item-69/similar", k=5)
    assert len(similar["items"]) == 5 and "item-69" not in ids(similar)
    assert sources(similar) & {"cooccurrence", "content"}, similar
    basket = (await client.post("/basket", json={"item_ids": ["item-69", "item-29"], "k": 5}, headers=bearer(admin))).json()
    assert len(basket["items"]) == 5 and not {"item-69", "item-29"} & set(ids(basket))


async def test_a_fresh_session_event_changes_the_next_answer(served: tuple[FastAPI, httpx.AsyncClient], admin: str) -> None:
    _, client = served
    before = await get(client, admin, "/recommendations", session_id="fresh-1", k=10)
    seen = "item-69"
    event = {"session_id": "fresh-1", "item_id": seen, "type": "view", "timestamp": "2024-01-06T12:00:00Z"}
    posted = await client.post("/events", json={"events": [event]}, headers=bearer(admin))
    assert posted.status_code == 200, posted.text
    after = await get(client, admin, "/recommendations", session_id="fresh-1", k=10)
    assert ids(after) != ids(before), "an event accepted a moment ago changes the next answer"
    assert seen not in ids(after)
    assert sources(after) - {"popularity", "catalogue"}, "the session now reaches the blend's session sources"


async def test_out_of_stock_items_from_put_items_are_reranked_away(served: tuple[FastAPI, httpx.AsyncClient], admin: str, shopper: str) -> None:
    _, client = served
    first = await get(client, admin, "/recommendations", user_id=shopper, k=5)
    top = ids(first)[0]
    put = await client.put("/items", json={"items": [{"item_id": top, "stock": 0}]}, headers=bearer(admin))
    assert put.status_code == 200
    assert top not in ids(await get(client, admin, "/recommendations", user_id=shopper, k=5))


async def test_compaction_moves_the_wal_into_the_lake_and_restart_replays(shop: Settings, admin: str) -> None:
    lake = Lake.open(shop.home)
    before = lake.stats().events
    events = [
        {"event_id": f"live-{i}", "session_id": "replayed", "item_id": f"item-{i}", "type": "view", "timestamp": f"2024-01-06T12:00:{i:02d}Z"}
        for i in range(5)
    ]
    app = create_app(shop, config=FAST)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.post("/events", json={"events": events[:3]}, headers=bearer(admin))).status_code == 200
        with lake.snapshot() as snap:  # fresh events are visible before compaction
            assert snap.count_events() == before + 3
        runtime = app.state.shelf
        assert await asyncio.to_thread(runtime.compact) == 3
        # a resend after compaction is deduped when compacted again
        assert (await client.post("/events", json={"events": events}, headers=bearer(admin))).status_code == 200
    assert lake.stats().events == before + 3
    with lake.snapshot() as snap:
        assert snap.count_events() == before + 5, "WAL events not yet compacted, deduped against the lake"

    app = create_app(shop, config=FAST)
    async with app.router.lifespan_context(app):
        runtime = app.state.shelf
        assert runtime.wal_replayed == 5
        assert runtime.state.session_items("replayed")[-2:] == ("item-3", "item-4")
        assert await asyncio.to_thread(runtime.compact) == 5
    assert lake.stats().events == before + 5, "replayed duplicates are dropped by the lake's dedupe"


async def test_no_bundle_serves_online_popularity_then_promotion_swaps_in(shop: Settings) -> None:
    registry = Registry(shop.home)
    (shop.home / "registry" / "promoted.json").unlink()
    assert registry.promoted() is None
    app = create_app(shop, config=FAST)
    admin = create_key(shop.home, "admin")[1]
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await get(client, admin, "/recommendations"))["bundle_version"] == "online-popularity"
        registry.promote("v0002")
        for _ in range(100):
            if (await get(client, admin, "/recommendations"))["bundle_version"] == "v0002":
                break
            await asyncio.sleep(0.02)
        body = await get(client, admin, "/recommendations", k=5)
        assert body["bundle_version"] == "v0002" and sources(body) == {"popularity"}
        similar = await get(client, admin, "/items/item-69/similar", k=5)
        assert len(similar["items"]) <= 5  # a popularity bundle has no item-to-item source: online counters
