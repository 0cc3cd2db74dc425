"""The app in-process (httpx over ASGI): events, freshness, rerank catalogue, exposures, hot swap."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from fastapi import FastAPI

from shelf.lake.wal import WriteAheadLog
from shelf.models.base import Query, Scored
from shelf.registry.bundles import Card, Registry
from shelf.serving import ServeConfig, create_app
from shelf.serving.config import WAL_FOLDER
from shelf.serving.online import OnlinePopularity, OnlineState
from shelf.settings import Settings

pytestmark = pytest.mark.anyio


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def event(item: str, *, session: str | None = "s1", user: str | None = None, type_: str = "view", **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"item_id": item, "type": type_, "timestamp": "2024-05-01T12:00:00Z"}
    if session is not None:
        record["session_id"] = session
    if user is not None:
        record["user_id"] = user
    return record | extra


async def post_events(client: httpx.AsyncClient, keys: dict[str, str], *events: dict[str, Any]) -> httpx.Response:
    return await client.post("/events", json={"events": list(events)}, headers=bearer(keys["events:write"]))


async def recommend(client: httpx.AsyncClient, keys: dict[str, str], **params: Any) -> dict[str, Any]:
    response = await client.get("/recommendations", params=params, headers=bearer(keys["recommendations:read"]))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def item_ids(body: dict[str, Any]) -> list[str]:
    return [i["item_id"] for i in body["items"]]


async def test_events_are_durable_before_the_response(client: httpx.AsyncClient, keys: dict[str, str], settings: Settings, app: FastAPI) -> None:
    response = await post_events(client, keys, event("a", user="alice", event_id="e1"), event("b", event_id="e2"))
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 2, "rejected": 0, "errors": []}
    wal = app.state.shelf.wal
    logged = wal.read_all()
    assert logged["event_id"].to_pylist() == ["e1", "e2"]
    user = logged["user_id"].to_pylist()[0]
    assert user.startswith("u_") and "alice" not in user, "user ids are pseudonymized before the log"


async def test_partial_batch_is_422_with_field_paths(client: httpx.AsyncClient, keys: dict[str, str], app: FastAPI) -> None:
    response = await post_events(
        client,
        keys,
        event("ok1"),
        event("bad-bool", value=True, type_="purchase"),
        event("bad-type", type_="teleport"),
        event("bad-time", timestamp="2024-05-01 12:00:00"),
        event("ok2", type_="rating", value=4),
        {"type": "view", "timestamp": "2024-05-01T12:00:00Z"},
        event("extra", colour="red"),
        "not an object",
        event("bad-price", price="3.5"),
        event("bad-rating", type_="rating", value=9),
    )
    assert response.status_code == 422
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 8)
    where = {(p["index"], p["field"]) for p in body["errors"]}
    assert where == {(1, "value"), (2, "type"), (3, "timestamp"), (5, "item_id"), (6, "colour"), (7, ""), (8, "price"), (9, "value")}
    first = body["errors"][0]
    assert first["loc"] == ["events", 1, "value"] and "not a boolean" in first["expected"]
    assert app.state.shelf.wal.read_all().num_rows == 2, "the valid records were accepted anyway"


async def test_bad_bodies(client: httpx.AsyncClient, keys: dict[str, str]) -> None:
    headers = bearer(keys["events:write"]) | {"content-type": "application/json"}
    assert (await client.post("/events", content=b"{not json", headers=headers)).status_code == 400
    assert (await client.post("/events", content=b"", headers=headers)).status_code == 400
    envelope = await client.post("/events", json=[event("a")], headers=headers)
    assert envelope.status_code == 422 and envelope.json()["errors"][0]["index"] is None
    too_many = await client.post("/events", json={"events": [event(f"i{i}") for i in range(1001)]}, headers=headers)
    assert too_many.status_code == 422 and "at most 1000" in too_many.json()["errors"][0]["expected"]
    huge = await client.post("/events", content=b'{"events": [' + b" " * (3 * 1024 * 1024) + b"]}", headers=headers)
    assert huge.status_code == 413
    basket = await client.post("/basket", content=b"[", headers=bearer(keys["admin"]) | {"content-type": "application/json"})
    assert basket.status_code == 400
    reader = bearer(keys["recommendations:read"])
    assert (await client.get("/recommendations", params={"k": 101}, headers=reader)).status_code == 422
    assert (await client.get("/recommendations", params={"k": 0}, headers=reader)).status_code == 422
    assert (await client.get("/recommendations", params={"user_id": "x" * 300}, headers=reader)).status_code == 422


async def test_freshness_session_and_popularity(client: httpx.AsyncClient, keys: dict[str, str]) -> None:
    # Other shoppers view shoes then socks: the pair becomes co-visited.
    for s in range(3):
        assert (await post_events(client, keys, event("shoes", session=f"o{s}"), event("socks", session=f"o{s}"))).status_code == 200
    await post_events(client, keys, *[event("hat", session=f"h{i}", type_="purchase") for i in range(5)])
    before = await recommend(client, keys, session_id="me")
    assert item_ids(before)[0] == "hat" and before["items"][0]["source"] == "popular"
    assert (await post_events(client, keys, event("shoes", session="me"))).status_code == 200
    after = await recommend(client, keys, session_id="me", k=5)
    assert after["items"][0] == {"item_id": "socks", "score": pytest.approx(2.0), "source": "covisit"}
    assert "shoes" not in item_ids(after), "the session's own items are left out"
    assert after["bundle_version"] == "online-popularity" and len(after["exposure_id"]) == 32


async def test_anonymous_session_joins_user_after_login(client: httpx.AsyncClient, keys: dict[str, str], app: FastAPI) -> None:
    await post_events(client, keys, event("shoes", session="o"), event("socks", session="o"))
    await post_events(client, keys, event("shoes", session="anon"))
    await post_events(client, keys, event("login-page-item", session="anon", user="bob"))
    state = app.state.shelf.state
    pseudonym = app.state.shelf.pseudonymizer.one("bob")
    assert state.user_of_session("anon") == pseudonym
    assert state.user_items(pseudonym)[:1] == ("shoes",), "the anonymous part joined the user's history"
    # By user id alone (a new session on another device), the history still drives co-visitation.
    body = await recommend(client, keys, user_id="bob")
    assert "socks" in item_ids(body)


async def test_catalogue_updates_filter_out_of_stock_and_purchases(client: httpx.AsyncClient, keys: dict[str, str]) -> None:
    await post_events(client, keys, *[event(i, session=f"p{n}", type_="purchase") for n, i in enumerate(["a", "a", "b", "c"])])
    assert item_ids(await recommend(client, keys))[:3] == ["a", "b", "c"]
    response = await client.put("/items", json={"items": [{"item_id": "a", "stock": 0, "brand": "acme"}]}, headers=bearer(keys["events:write"]))
    assert response.json() == {"updated": 1}
    assert "a" not in item_ids(await recommend(client, keys))
    await post_events(client, keys, event("b", session="z", user="carol", type_="purchase"))
    assert "b" not in item_ids(await recommend(client, keys, user_id="carol")), "already purchased"
    bad = await client.put("/items", json={"items": [{"item_id": "a", "launched_at": "2024-05-01"}]}, headers=bearer(keys["admin"]))
    assert bad.status_code == 422


async def test_similar_and_basket(client: httpx.AsyncClient, keys: dict[str, str]) -> None:
    for s in range(2):
        await post_events(client, keys, event("tent", session=f"t{s}"), event("stove", session=f"t{s}"), event("mat", session=f"t{s}"))
    reader = bearer(keys["recommendations:read"])
    similar = (await client.get("/items/tent/similar", params={"k": 2}, headers=reader)).json()
    assert set(item_ids(similar)) == {"stove", "mat"} and all(i["source"] == "covisit" for i in similar["items"])
    slashed = await client.get("/items/a%2Fb/similar", headers=reader)
    assert slashed.status_code == 200
    basket = await client.post("/basket", json={"item_ids": ["tent", "stove"], "k": 3}, headers=reader)
    assert item_ids(basket.json())[0] == "mat"


async def test_exposures_metrics_status_ready(client: httpx.AsyncClient, keys: dict[str, str], app: FastAPI, settings: Settings) -> None:
    await post_events(client, keys, event("a"), event("zz", type_="nope"))
    body = await recommend(client, keys, session_id="s1", region="de", device="mobile")
    app.state.shelf.exposures.flush()
    lines = [orjson.loads(line) for f in (Path(settings.home) / "exposures").glob("*.jsonl") for line in f.read_bytes().splitlines()]
    assert [x["exposure_id"] for x in lines] == [body["exposure_id"]]
    assert lines[0]["region"] == "de" and lines[0]["surface"] == "recommendations"
    metrics = (await client.get("/metrics")).text
    assert 'shelf_request_seconds_count{method="GET",route="/recommendations"} 1.0' in metrics
    assert "shelf_events_accepted_total 1.0" in metrics and "shelf_events_rejected_total 1.0" in metrics
    assert 'shelf_bundle_info{version="online-popularity"} 1.0' in metrics
    assert 'shelf_online_state_size{kind="sessions"} 1.0' in metrics
    status = (await client.get("/admin/status", headers=bearer(keys["admin"]))).json()
    assert status["events_accepted"] == 1 and status["wal_appends"] == 1
    assert (await client.get("/ready")).json() == {"status": "ready", "bundle_version": "online-popularity"}


async def test_shutdown_flushes_and_closes(settings: Settings, keys: dict[str, str]) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        await post_events(client, keys, event("a", event_id="keep-me"))
        await recommend(client, keys)
    assert (await client_ready(app)) == 503
    exposures = list((Path(settings.home) / "exposures").glob("*.jsonl"))
    assert exposures and exposures[0].read_bytes().count(b"\n") == 1
    with WriteAheadLog(Path(settings.home) / WAL_FOLDER) as wal:  # the lock was released
        assert wal.read_all()["event_id"].to_pylist() == ["keep-me"]


async def client_ready(app: FastAPI) -> int:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return (await client.get("/ready")).status_code


class FixedRecommender:
    """A bundle model stand-in that always proposes the same items."""

    def __init__(self, version: str, items: list[str]) -> None:
        self.version = version
        self.items = items

    def _scored(self, n: int) -> Scored:
        chosen = self.items[:n]
        return Scored(np.array(chosen, dtype=object), np.linspace(1, 0.5, len(chosen)).astype(np.float32), np.array(["model"] * len(chosen), dtype=object))

    def recommend(self, query: Query, n: int) -> Scored:
        return self._scored(n)

    def similar(self, item_id: str, n: int) -> Scored:
        return self._scored(n)

    def basket(self, item_ids: Any, n: int) -> Scored:
        return self._scored(n)


def publish(settings: Settings, note: str) -> str:
    registry = Registry(settings.home)
    with registry.stage() as staging:
        (staging / "model.txt").write_text(note)
        card = registry.publish(staging, Card("", "2024-05-01T00:00:00Z", None, {}, {}, {}, "f1", "test", notes=note))
    registry.promote(card.version)
    return card.version


async def test_bundle_hot_swap_and_broken_bundle_refused(settings: Settings, keys: dict[str, str]) -> None:
    def loader(registry: Registry, version: str, state: OnlineState) -> Any:
        note = registry.card(version).notes
        if note == "broken":
            raise ValueError("artefact model.txt cannot be read")
        if note == "liar":
            return FixedRecommender("v9999", ["x"])
        return FixedRecommender(version, [f"{note}-1", f"{note}-2"])

    first = publish(settings, "good")
    app = create_app(settings, config=ServeConfig(bundle_poll_seconds=0.02), recommender_loader=loader)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        body = await recommend(client, keys)
        assert body["bundle_version"] == first and item_ids(body) == ["good-1", "good-2"]
        for bad in ("broken", "liar"):
            publish(settings, bad)
            await asyncio.sleep(0.2)
            body = await recommend(client, keys)
            assert body["bundle_version"] == first, f"a {bad} bundle is refused; the old one stays live"
        slot = app.state.shelf.slot
        assert slot.failures == 2 and slot.last_failure is not None and "v9999" in slot.last_failure.error
        status = (await client.get("/admin/status", headers=bearer(keys["admin"]))).json()
        assert status["last_bundle_failure"].startswith("v0003")
        second = publish(settings, "better")
        for _ in range(100):  # bounded wait for the watcher
            if (await recommend(client, keys))["bundle_version"] == second:
                break
            await asyncio.sleep(0.02)
        body = await recommend(client, keys)
        assert body["bundle_version"] == second and item_ids(body) == ["better-1", "better-2"]
        assert body["items"][0]["source"] == "model"


def test_cold_start_recommender_is_an_online_recommender() -> None:
    from shelf.serving import OnlineRecommender

    rec = OnlinePopularity(OnlineState())
    assert isinstance(rec, OnlineRecommender)
    assert len(rec.recommend(Query(), 5)) == 0


def test_validation_coalescer_matches_one_by_one() -> None:
    """Concurrent batches validated together get exactly what validating each alone gives."""
    from concurrent.futures import ThreadPoolExecutor

    from shelf.privacy import Pseudonymizer
    from shelf.serving.events import ValidationCoalescer, check_events

    ps = Pseudonymizer(b"k" * 20)
    coalescer = ValidationCoalescer(ps)

    def payload(t: int) -> dict[str, Any]:
        events = [event(f"i{t}-{j}", user=f"u{j}", event_id=f"{t}-{j}") for j in range(20)]
        events[t % 20]["type"] = "teleport"
        events[(t + 3) % 20]["timestamp"] = 1714560000 + t  # a float column for some batches
        return {"events": events}

    payloads = [payload(t) for t in range(16)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: check_events(p, pseudonymizer=ps, max_batch=100, coalescer=coalescer), payloads))
    for p, got in zip(payloads, together, strict=True):
        alone = check_events(p, pseudonymizer=ps, max_batch=100)
        assert got.valid.equals(alone.valid)
        assert got.problems == alone.problems and got.rejected == alone.rejected == 1
    assert coalescer.calls <= 16


async def test_item_ids_are_opaque_in_paths(client: httpx.AsyncClient, keys: dict[str, str]) -> None:
    reader = bearer(keys["recommendations:read"])
    for raw in ("a%2Fb", "line%0Abreak", "%C3%A9t%C3%A9"):
        assert (await client.get(f"/items/{raw}/similar", headers=reader)).status_code == 200, raw
    assert (await client.get("/items//similar", headers=reader)).status_code == 422


async def test_out_of_range_epochs_are_refused_per_record(client: httpx.AsyncClient, keys: dict[str, str]) -> None:
    response = await post_events(client, keys, event("a", timestamp=9223372036855.0), event("b", timestamp="99999999999999"), event("c", timestamp=1714560000))
    assert response.status_code == 422
    body = response.json()
    assert body["accepted"] == 1 and [p["index"] for p in body["errors"]] == [0, 1]
    assert all(p["field"] == "timestamp" for p in body["errors"])


def test_exposure_ids_are_distinct_128_bit_hex() -> None:
    from shelf.serving.app import RandomIds

    source = RandomIds(chunk=64)  # refilled every 4 ids
    drawn = [source.next() for _ in range(1000)]
    assert len(set(drawn)) == len(drawn)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in drawn)


def test_a_forked_child_never_reuses_its_parents_buffered_random_bytes() -> None:
    from shelf.serving.app import RandomIds

    source = RandomIds()
    source.next()  # the buffer now holds bytes the parent will hand out next
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, source.next().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32 and child != source.next()
