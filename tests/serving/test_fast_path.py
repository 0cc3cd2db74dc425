"""The recommendation routes' fast path answers exactly as the FastAPI route does, and only when it may.

``FastPath`` (in front of GET /recommendations and GET /items/{item_id}/similar) skips FastAPI's
dependency and parameter machinery for ordinary requests; every other request goes to the route.
These tests send the same requests both ways (``dependency_overrides`` sends everything to the
route) and compare status and body; and check that refusals never take the fast path.
"""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from shelf.serving import revoke_key
from shelf.serving.app import FastPath
from shelf.serving.auth import KeyStore, list_keys
from shelf.serving.exposures import ExposureLog
from shelf.settings import Settings

pytestmark = pytest.mark.anyio


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def fast_path(app: FastAPI, path: str) -> FastPath:
    route = next(r for r in app.routes if isinstance(r, APIRoute) and r.path == path)
    assert isinstance(route.app, FastPath)
    return route.app


class Counting:
    """Wraps the route behind a FastPath and counts the requests that reach it."""

    def __init__(self, fast: FastPath) -> None:
        self.inner, self.calls = fast.slow, 0
        fast.slow = self

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await self.inner(scope, receive, send)


def comparable(response: httpx.Response) -> tuple[int, Any]:
    body = response.json()
    if isinstance(body, dict):
        body.pop("exposure_id", None)  # a fresh one per answer
    return response.status_code, body


async def both_ways(client: httpx.AsyncClient, app: FastAPI, url: str, **kwargs: Any) -> tuple[tuple[int, Any], tuple[int, Any]]:
    fast = comparable(await client.get(url, **kwargs))
    app.dependency_overrides[both_ways] = both_ways  # any override: everything goes to the route
    try:
        slow = comparable(await client.get(url, **kwargs))
    finally:
        app.dependency_overrides.clear()
    return fast, slow


async def seed(client: httpx.AsyncClient, keys: dict[str, str]) -> None:
    events = [
        {"item_id": item, "type": kind, "timestamp": "2024-05-01T12:00:00Z", "session_id": f"s{n % 3}", "user_id": f"u{n % 2}"}
        for n, (item, kind) in enumerate([("a", "view"), ("b", "view"), ("c", "purchase"), ("a", "view"), ("d", "view"), ("b", "purchase"), ("e", "view")])
    ]
    assert (await client.post("/events", json={"events": events}, headers=bearer(keys["events:write"]))).status_code == 200
    put = await client.put("/items", json={"items": [{"item_id": "d", "stock": 0}]}, headers=bearer(keys["events:write"]))
    assert put.status_code == 200


ORDINARY = [
    "/recommendations",
    "/recommendations?k=3",
    "/recommendations?user_id=u0&k=5",
    "/recommendations?user_id=u1&session_id=s2",
    "/recommendations?session_id=s1&region=de&device=mobile&k=100",
    "/recommendations?user_id=%C3%A9t%C3%A9&unknown=1",
    "/items/a/similar",
    "/items/b/similar?k=2",
    "/items/a%2Fb/similar",
]
REFUSED_OR_ODD = [
    "/recommendations?k=0",
    "/recommendations?k=101",
    "/recommendations?k=abc",
    "/recommendations?k=010",
    "/recommendations?k=+5",
    "/recommendations?k=5&k=6",
    "/recommendations?user_id=",
    "/recommendations?user_id=" + "x" * 300,
    "/recommendations?region=" + "r" * 65,
    "/items//similar",
    "/items/a/similar?k=1000",
]


async def test_fast_path_answers_exactly_as_the_route(client: httpx.AsyncClient, app: FastAPI, keys: dict[str, str]) -> None:
    await seed(client, keys)
    recs, similar = Counting(fast_path(app, "/recommendations")), Counting(fast_path(app, "/items/{item_id:item_id}/similar"))
    for url in ORDINARY:
        before = recs.calls + similar.calls
        fast, slow = await both_ways(client, app, url, headers=bearer(keys["recommendations:read"]))
        assert fast == slow, url
        assert fast[0] == 200 and fast[1]["items"], url
        assert "d" not in [i["item_id"] for i in fast[1]["items"]], "out of stock, both ways"
        assert recs.calls + similar.calls == before + 1, f"{url}: only the forced request reached the route"
    for url in REFUSED_OR_ODD:
        before = recs.calls + similar.calls
        fast, slow = await both_ways(client, app, url, headers=bearer(keys["admin"]))
        assert fast == slow, url
        assert recs.calls + similar.calls == before + 2, f"{url}: the route decides"


async def test_fast_path_leaves_every_refused_key_to_the_route(client: httpx.AsyncClient, app: FastAPI, keys: dict[str, str], settings: Settings) -> None:
    recs = Counting(fast_path(app, "/recommendations"))
    cases: list[dict[str, str]] = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic " + keys["admin"]},
        bearer("shelf_k_000000000000_nope"),
        bearer(keys["admin"] + "x"),
        bearer(keys["events:write"]),
    ]
    for headers in cases:
        fast, slow = await both_ways(client, app, "/recommendations", headers=headers)
        assert fast == slow and fast[0] in (401, 403), headers
    assert recs.calls == 2 * len(cases)
    # Scheme names are case-insensitive, as HTTPBearer reads them; surrounding spaces are dropped.
    assert (await client.get("/recommendations", headers={"Authorization": f"bearer  {keys['admin']} "})).status_code == 200
    assert recs.calls == 2 * len(cases)
    # A revoked key stops working at once, on the fast path too (it was verified and remembered above).
    admin_id = next(k.id for k in list_keys(settings.home) if k.role == "admin")
    revoke_key(settings.home, admin_id)
    response = await client.get("/recommendations", headers=bearer(keys["admin"]))
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


async def test_fast_answers_are_logged_timed_and_documented(client: httpx.AsyncClient, app: FastAPI, keys: dict[str, str], settings: Settings) -> None:
    await seed(client, keys)
    response = await client.get("/recommendations?user_id=u0&region=fr", headers=bearer(keys["recommendations:read"]))
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    body = response.json()
    app.state.shelf.exposures.flush()
    lines = [orjson.loads(line) for f in (Path(settings.home) / "exposures").glob("*.jsonl") for line in f.read_bytes().splitlines()]
    logged = next(x for x in lines if x["exposure_id"] == body["exposure_id"])
    assert logged["items"] == [i["item_id"] for i in body["items"]] and logged["region"] == "fr"
    assert logged["user_id"] == app.state.shelf.pseudonymizer.one("u0")
    metrics = (await client.get("/metrics")).text
    assert 'shelf_request_seconds_count{method="GET",route="/recommendations"} 1.0' in metrics
    schema = (await client.get("/openapi.json")).json()
    operation = schema["paths"]["/recommendations"]["get"]
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/Recommendations"}
    assert {p["name"] for p in operation["parameters"]} == {"user_id", "session_id", "k", "region", "device"}
    assert {"401", "403", "422"} <= set(operation["responses"])


async def test_start_up_settles_long_lived_objects_out_of_collections(app: FastAPI) -> None:
    gc.unfreeze()
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 0, "what start-up loaded is out of the collector's way"


def test_key_store_remembers_verified_keys_until_the_file_changes(tmp_path: Path) -> None:
    from shelf.serving import create_key

    key_id, secret = create_key(tmp_path, "admin")
    store = KeyStore(tmp_path)
    first = store.authenticate(secret)
    assert first is not None and store.authenticate(secret) is first, "answered from memory"
    _, other = create_key(tmp_path, "events:write")  # any change of keys.json empties the memory
    assert store.authenticate(secret) is not first and store.authenticate(other) is not None
    revoke_key(tmp_path, key_id)
    assert store.authenticate(secret) is None


def test_exposures_are_written_off_the_request_path(tmp_path: Path) -> None:
    log = ExposureLog(tmp_path, max_buffer=3)
    writes: list[str] = []
    original = log.flush

    def flush() -> int:
        writes.append(threading.current_thread().name)
        return original()

    log.flush = flush  # type: ignore[method-assign]
    for i in range(3):
        log.log({"exposure_id": str(i)})
    deadline = time.monotonic() + 10
    while log.written < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.written == 3 and writes == ["shelf-exposure-flush"], "a full buffer wakes a background writer"
    lines = b"".join(f.read_bytes() for f in tmp_path.glob("*.jsonl")).splitlines()
    assert [orjson.loads(line)["exposure_id"] for line in lines] == ["0", "1", "2"]
    log._waking = True  # a writer that never comes: the buffer stays bounded by writing inline
    for i in range(6):
        log.log({"exposure_id": f"late-{i}"})
    assert log.pending() == 0 and log.written == 9 and writes[-1] == threading.current_thread().name


async def test_fast_path_runs_ahead_of_the_middleware_and_leaves_failures_to_it(app: FastAPI, keys: dict[str, str]) -> None:
    """Ordinary GETs are answered before Starlette's stack is entered; a failure while answering
    goes the ordinary way (the route answers again: its 500, its metrics)."""
    stack_calls = 0
    async with app.router.lifespan_context(app):
        app.middleware_stack = app.build_middleware_stack()
        inner = app.middleware_stack

        async def counting(scope: Any, receive: Any, send: Any) -> None:
            nonlocal stack_calls
            stack_calls += 1
            await inner(scope, receive, send)

        app.middleware_stack = counting
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/recommendations?k=3", headers=bearer(keys["recommendations:read"]))).status_code == 200
            assert stack_calls == 0, "answered ahead of the middleware stack"
            assert (await client.get("/recommendations?k=0", headers=bearer(keys["recommendations:read"]))).status_code == 422
            assert stack_calls == 1, "a refused request goes through the stack"
            runtime = app.state.shelf

            def broken(*args: Any) -> bytes:
                raise RuntimeError("boom")

            runtime.recommend = broken
            response = await client.get("/recommendations", headers=bearer(keys["recommendations:read"]))
            assert response.status_code == 500 and stack_calls == 2
            metrics = (await client.get("/metrics")).text
            assert 'shelf_request_seconds_count{method="GET",route="/recommendations"} 3.0' in metrics
            assert 'route="/recommendations",status="500"} 1.0' in metrics
