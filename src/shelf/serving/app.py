"""The HTTP service: ``create_app(settings)`` builds it; ``shelf serve`` runs it under uvicorn.

Routes and who may call them (``Authorization: Bearer <key>``; admin may call everything):

====================================  =======================  =====================================
route                                 role                     what
====================================  =======================  =====================================
POST /events                          events:write             batch of events, durable before 200
PUT /items                            events:write             stock / price / attributes updates
GET /recommendations                  recommendations:read     for a user and/or session
GET /items/{item_id}/similar          recommendations:read     items like this one
POST /basket                          recommendations:read     items that go with these
GET /admin/status                     admin                    bundle, state, WAL, exposure figures
GET /health, /ready, /metrics         none                     liveness, readiness, Prometheus
GET /docs, /openapi.json              none                     the API description
====================================  =======================  =====================================

Health, readiness and metrics are open on purpose: orchestrators and Prometheus scrape them
without secrets, and they carry no shopper data (only counts and the bundle version). Bind the
service to a private interface, or put the metrics port behind the network policy, if even
counts are sensitive.

Background work: the promoted-bundle watcher (hot swap), the exposure flush, and compaction,
which moves sealed WAL segments into the lake's event log (one writer session per pass; segments
are deleted only after the commit) and refreshes the rerank catalogue from the lake's item table
when it changed. On start-up the WAL's events are replayed into the online state.

The request path of a recommendation is kept lean: the routes are ``async def`` (their work is
CPU-light and short, so a thread-pool hop would cost more than it saves), their ordinary requests
are answered by a :class:`FastPath` ahead of the middleware stack and the FastAPI route (key
check with a remembered digest, parameter checks, the runtime call, orjson bytes out, the latency
metric; anything unusual goes the ordinary way, to the route itself), reranking looks up only the candidates, the exposure record is buffered and written in
the background, and what start-up loaded is kept out of garbage collections (``Runtime.settle``).

Order of work on ``POST /events``: strict per-record checks → pseudonymize → WAL append
(fsynced, group commit) → online state → response. A 200 or 422 response means every record
it counts as accepted is durable. 422 means *some* records were refused; the others were
accepted (see the body). 400: the body is not JSON. 413: over ``max_body_bytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl

import anyio
import orjson
from fastapi import Depends, FastAPI, Request, Response
from fastapi import Path as PathParam
from fastapi import Query as QueryParam
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.types import Receive, Scope, Send

from shelf import __version__
from shelf.errors import InputError, LakeError
from shelf.lake import Lake, Snapshot
from shelf.lake.wal import WriteAheadLog
from shelf.models.base import Context, Query, Scored
from shelf.privacy import Pseudonymizer
from shelf.registry.bundles import Registry
from shelf.rerank import ItemMeta, Pipeline, RerankConfig, StockedCatalogue, build_pipeline
from shelf.schema import MAX_ID_LENGTH
from shelf.serving.api import (
    MAX_K,
    BasketIn,
    EventBatchIn,
    EventsResult,
    Health,
    ItemsIn,
    ItemsResult,
    Problem,
    Readiness,
    Recommendations,
    Status,
    parse_aware_time,
)
from shelf.serving.auth import ApiKey, KeyStore, Role, grants
from shelf.serving.bundles import RecommenderLoader, RecommenderSlot
from shelf.serving.config import EXPOSURE_FOLDER, WAL_FOLDER, ServeConfig
from shelf.serving.events import ValidationCoalescer, batch_problem, check_events
from shelf.serving.exposures import ExposureLog
from shelf.serving.metrics import ServingMetrics
from shelf.serving.online import OnlineState
from shelf.serving.recommender import load_bundle_recommender
from shelf.settings import Settings

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics"})
ROLE_KEY = "x-shelf-role"  # OpenAPI extension naming the role a route requires
PSEUDONYMS_REMEMBERED = 50_000  # shoppers whose pseudonym a serving process keeps at hand (~10 MB at most)


class RandomIds:
    """128-bit random ids as 32 hex digits, from the kernel's random source read 4 KiB at a
    time: one system call per id (``os.urandom(16)``) cost more than the rest of a cached answer.
    Thread-safe; a forked child notices its new pid and starts on fresh bytes, never on its
    parent's (no fork hook registered at import time)."""

    def __init__(self, chunk: int = 4096) -> None:
        self._chunk = chunk
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()  # (in a forked child, a lock its parent held stays held)
        self._buffer = b""
        self._position = 0

    def next(self) -> str:
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            start = self._position
            if start + 16 > len(self._buffer):
                self._buffer, start = os.urandom(self._chunk), 0
            self._position = start + 16
            return self._buffer[start : start + 16].hex()


_random_ids = RandomIds()


def _iso(at: datetime) -> datetime | str:
    """``at.isoformat()`` as the exposure record's orjson writes it: a UTC datetime as is (orjson
    writes the very same text, ~3 us cheaper than ``isoformat``), any other zone as text."""
    return at if at.tzinfo is UTC else at.isoformat()


class ApiProblem(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


class JsonBody(Response):
    """A response whose body is already JSON bytes (serialized with orjson by the route).

    The recommendation routes return one: FastAPI passes a ``Response`` through untouched, so
    there is no second validation and serialization of the body by ``response_model``, which
    stays on the route for the OpenAPI description (schemathesis checks the two agree).
    """

    media_type = "application/json"


def _problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "The body is not valid JSON.",
        401: "No key, or a key that is unknown or revoked.",
        403: "The key's role does not allow this route.",
        413: "The body is larger than the service accepts.",
    }
    return {code: {"model": Problem, "description": text[code]} for code in codes}


AUTH_RESPONSES = _problem_responses(401, 403)
NOT_READY = {503: {"model": Problem, "description": "Starting or stopping: the write-ahead log is not open."}}
BODY_RESPONSES = _problem_responses(400, 413)


# ----------------------------------------------------------------------------------------------
# The runtime: everything one serving process holds


class Runtime:
    """State of one serving process; created by ``create_app``, opened by its lifespan."""

    def __init__(self, settings: Settings, config: ServeConfig, loader: RecommenderLoader | None) -> None:
        self.settings = settings
        self.config = config
        self.pseudonymizer = Pseudonymizer(settings.require_pseudonym_key())
        self.validation = ValidationCoalescer(self.pseudonymizer)
        self._pseudonyms: dict[str, str] = {}  # raw user id → pseudonym (see _pseudonym)
        self.keys = KeyStore(settings.home)
        self.state = OnlineState(config.limits)
        self.catalogue: StockedCatalogue = StockedCatalogue()  # replaced whole on refresh; readers never lock
        self._item_overrides: dict[str, dict[str, Any]] = {}  # PUT /items fields, over the lake's
        self._catalogue_lock = threading.Lock()
        self._catalogue_parts: object = None
        # The rerank pipelines built over the current catalogue, by surface config (see _pipeline).
        self._pipelines: tuple[object, dict[int, Pipeline]] = (None, {})
        self.slot = RecommenderSlot(self.state, Registry(settings.home), loader)
        self.exposures = ExposureLog(Path(settings.home) / EXPOSURE_FOLDER, max_buffer=config.exposure_buffer)
        self.metrics = ServingMetrics(self)
        self.wal: WriteAheadLog | None = None
        self.ready = False
        self.events_accepted = 0
        self.events_rejected = 0
        self.wal_replayed = 0
        self.events_compacted = 0

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        self.wal = WriteAheadLog(Path(self.settings.home) / WAL_FOLDER, segment_bytes=self.config.wal_segment_bytes)
        # Events acknowledged before a restart and not compacted yet: back into sessions and counters.
        for _, table in self.wal.iter_segments():
            self.state.apply(table)
            self.wal_replayed += table.num_rows
        try:
            self.refresh_catalogue()
        except LakeError as error:  # a damaged lake must not stop events from being accepted
            log.error("cannot read the catalogue from the lake: %s", error)

    def _lake(self) -> Lake:
        return Lake.open(self.settings.home)

    def refresh_catalogue(self) -> int:
        """Reload item facts from the lake when its item table changed; PUT /items updates stay on top."""
        lake = self._lake()
        manifest = lake.manifest()
        parts = manifest.parts("items")
        if parts == self._catalogue_parts:
            return 0
        with Snapshot(lake.path, manifest, None) as snap:
            table = snap.items().select(["item_id", "category", "brand", "stock", "launched_at", "price"])
        columns = table.to_pydict()
        fresh = StockedCatalogue(
            (item, ItemMeta(category=category, brand=brand, stock=stock, launched_at=launched, price=price))
            for item, category, brand, stock, launched, price in zip(
                columns["item_id"], columns["category"], columns["brand"], columns["stock"], columns["launched_at"], columns["price"], strict=True
            )
        )
        with self._catalogue_lock:
            for item, fields in self._item_overrides.items():
                fresh[item] = replace(fresh.get(item, ItemMeta()), **fields)
            self.catalogue = fresh
            self._catalogue_parts = parts
        gc.freeze()  # see settle()
        return len(fresh)

    def check_bundle(self) -> bool:
        """Swap in a newly promoted bundle, if any (``RecommenderSlot.check``); True when swapped."""
        swapped = self.slot.check()
        if swapped:
            gc.freeze()  # see settle()
        return swapped

    @staticmethod
    def settle() -> None:
        """Keep what start-up built (catalogue, model, replayed state) out of garbage collections.

        A full (generation 2) collection walks every container object in the process: with a
        100k-item catalogue and a model that is tens of milliseconds, a pause every few seconds
        under load that lands straight in the latency tail. ``gc.freeze()`` moves the objects
        alive now to a generation that collections skip (reference counting still frees them when
        they are dropped, so a replaced catalogue or an old bundle goes as before, unless it sits
        in a reference cycle). Called once after start-up (after a collection) and again, without
        one, when a catalogue refresh or a bundle swap built a new set of long-lived objects.
        """
        gc.collect()
        gc.freeze()

    def compact(self) -> int:
        """Move sealed WAL segments into the lake (one writer session); returns events handed over."""
        wal = self.wal
        if wal is not None and wal.has_pending():
            try:
                with self._lake().writer(timeout_s=self.config.compact_lock_timeout_seconds) as session:
                    handed = wal.compact(session.append_events, commit=session.commit)
            except LakeError as error:  # e.g. an ingest holds the lake's lock: try again next time
                log.warning("WAL compaction postponed: %s", error)
                return 0
            self.events_compacted += handed
            self.metrics.compacted(handed)
        else:
            handed = 0
        self.refresh_catalogue()
        return handed

    def close(self) -> None:
        self.exposures.flush()
        if self.wal is not None:
            self.wal.close()
            self.wal = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(self.open)
        await anyio.to_thread.run_sync(self.slot.check)  # the promoted bundle, before ready
        await anyio.to_thread.run_sync(self.settle)
        tasks = [
            asyncio.create_task(self._every(self.config.bundle_poll_seconds, self.check_bundle)),
            asyncio.create_task(self._every(self.config.exposure_flush_seconds, self.exposures.flush)),
            asyncio.create_task(self._every(self.config.compact_seconds, self.compact)),
        ]
        self.ready = True
        try:
            yield
        finally:
            # uvicorn has stopped taking requests and drained in-flight ones (SIGTERM) by now.
            self.ready = False
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await anyio.to_thread.run_sync(self.close)

    @staticmethod
    async def _every(seconds: float, work: Callable[[], object]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await anyio.to_thread.run_sync(work)
            except Exception:  # a background failure is logged, never fatal to serving
                log.exception("background task %s failed", getattr(work, "__name__", work))

    # -- events and catalogue --------------------------------------------------------------

    def accept_events(self, payload: Any) -> EventsResult:
        try:
            checked = check_events(payload, pseudonymizer=self.pseudonymizer, max_batch=self.config.max_batch, coalescer=self.validation)
        except InputError as error:
            return EventsResult(accepted=0, rejected=0, errors=[batch_problem("events", "", str(error))])
        if checked.valid.num_rows:
            if self.wal is None:
                raise ApiProblem(503, "not_ready", "the write-ahead log is not open (starting or stopping)")
            self.wal.append(checked.valid)  # durable before anything else happens
            self.state.apply(checked.valid)
        self.events_accepted += checked.valid.num_rows
        self.events_rejected += checked.rejected
        self.metrics.events(checked.valid.num_rows, checked.rejected)
        return EventsResult(accepted=checked.valid.num_rows, rejected=checked.rejected, errors=checked.problems)

    def update_items(self, body: ItemsIn) -> int:
        with self._catalogue_lock:
            for update in body.items:
                item_id = str(update.item_id)
                fields = update.model_dump(exclude_unset=True, exclude={"item_id"})
                if "launched_at" in fields and fields["launched_at"] is not None:
                    fields["launched_at"] = parse_aware_time(fields["launched_at"])
                self._item_overrides.setdefault(item_id, {}).update(fields)
                # One assignment per item: readers see the old or the new ItemMeta.
                self.catalogue[item_id] = replace(self.catalogue.get(item_id, ItemMeta()), **fields)
        return len(body.items)

    # -- recommendations -------------------------------------------------------------------

    def _who(self, user_id: str | int | None, session_id: str | int | None) -> tuple[str | None, str | None]:
        user = self._pseudonym(str(user_id)) if user_id is not None else None
        session = str(session_id) if session_id is not None else None
        if user is None and session is not None:
            user = self.state.user_of_session(session)  # the session logged in earlier
        return user, session

    def _pseudonym(self, raw_id: str) -> str:
        """The shopper's pseudonym, remembered for the shoppers seen lately: an HMAC per request
        costs ~2 us, and the same shoppers come back. Bounded: a full memory starts over."""
        known = self._pseudonyms
        pseudonym = known.get(raw_id)
        if pseudonym is None:
            if len(known) >= PSEUDONYMS_REMEMBERED:
                known.clear()
            pseudonym = known[raw_id] = self.pseudonymizer.one(raw_id)
        return pseudonym

    def _pipeline(self, config: RerankConfig) -> Pipeline:
        """The rerank pipeline for ``config`` over the current catalogue, built once per catalogue.

        Rules read the catalogue they were built with; ``PUT /items`` changes that mapping in
        place (so they see it), and a refresh from the lake replaces it (so they are rebuilt).
        """
        catalogue = self.catalogue
        built_for, pipelines = self._pipelines
        if built_for is not catalogue:
            pipelines = {}
            self._pipelines = (catalogue, pipelines)  # the old catalogue is not held on to
        pipeline = pipelines.get(id(config))
        if pipeline is None:
            pipeline = pipelines[id(config)] = build_pipeline(config, catalogue, purchased=self.state.purchased)
        return pipeline

    def _finish(
        self, surface: str, query: Query, candidates: Scored, k: int, rerank: RerankConfig, version: str, extra: dict[str, Any]
    ) -> bytes:
        """Rerank, log the exposure, and return the response body (the ``Recommendations`` schema)."""
        # Plain lists straight from the candidates (no reranked arrays to convert back).
        ids, scores, sources = self._pipeline(rerank).first(query, candidates, k)
        exposure_id = _random_ids.next()  # 128 random bits, 32 hex digits
        shown_at = query.context.timestamp or datetime.now(UTC)  # the request's own clock reading
        self.exposures.log(
            {
                "exposure_id": exposure_id,
                "at": _iso(shown_at),
                "surface": surface,
                "bundle_version": version,
                "user_id": query.user_id,
                "items": ids,
                "scores": scores,
                "sources": sources,
                "region": query.context.region,
                "device": query.context.device,
                **extra,
            }
        )
        items = [{"item_id": i, "score": s, "source": src} for i, s, src in zip(ids, scores, sources, strict=False)]  # equal lengths by construction
        return orjson.dumps({"bundle_version": version, "exposure_id": exposure_id, "items": items})

    def recommend(self, user_id: str | None, session_id: str | None, k: int, region: str | None, device: str | None) -> bytes:
        user, session = self._who(user_id, session_id)
        session_items = self.state.session_items(session) if session is not None else ()
        query = Query(
            user_id=user,
            session_items=session_items,
            context=Context(timestamp=datetime.now(UTC), region=region, device=device),
            exclude=frozenset(session_items) if self.config.exclude_seen else frozenset(),
        )
        recommender = self.slot.current  # read once: a swap mid-request cannot mix versions
        candidates = recommender.recommend(query, k * self.config.candidates_per_slot)
        return self._finish("recommendations", query, candidates, k, self.config.rerank_recommendations, recommender.version, {"session_id": session})

    def similar(self, item_id: str, k: int) -> bytes:
        query = Query(context=Context(timestamp=datetime.now(UTC)), exclude=frozenset({item_id}))
        recommender = self.slot.current
        candidates = recommender.similar(item_id, k * self.config.candidates_per_slot)
        return self._finish("similar", query, candidates, k, self.config.rerank_similar, recommender.version, {"item_id": item_id})

    def basket(self, body: BasketIn) -> bytes:
        user, session = self._who(body.user_id, body.session_id)
        basket = [str(i) for i in body.item_ids]
        query = Query(user_id=user, context=Context(timestamp=datetime.now(UTC)), exclude=frozenset(basket))
        recommender = self.slot.current
        candidates = recommender.basket(basket, body.k * self.config.candidates_per_slot)
        return self._finish("basket", query, candidates, body.k, self.config.rerank_basket, recommender.version, {"basket": basket, "session_id": session})

    def status(self) -> Status:
        wal = self.wal.stats() if self.wal is not None else None
        failure = self.slot.last_failure
        return Status(
            bundle_version=self.slot.current.version,
            last_bundle_failure=f"{failure.version}: {failure.error}" if failure else None,
            online_state=self.state.sizes(),
            events_accepted=self.events_accepted,
            events_rejected=self.events_rejected,
            wal_segments=wal.segments if wal else 0,
            wal_appends=wal.appends if wal else 0,
            wal_fsyncs=wal.fsyncs if wal else 0,
            wal_replayed=self.wal_replayed,
            events_compacted=self.events_compacted,
            catalogue_items=len(self.catalogue),
            exposures_pending=self.exposures.pending(),
        )


# ----------------------------------------------------------------------------------------------
# Dependencies (each overridable with app.dependency_overrides)


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.shelf
    return runtime


_bearer = HTTPBearer(auto_error=False, description="An API key: `shelf keys create --role ROLE`.")


async def current_key(
    runtime: Annotated[Runtime, Depends(get_runtime)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or not credentials.credentials:
        raise ApiProblem(401, "unauthenticated", "send Authorization: Bearer <key>", challenge)
    key = runtime.keys.authenticate(credentials.credentials)
    if key is None:
        raise ApiProblem(401, "unauthenticated", "unknown or revoked key", challenge)
    return key


def require(role: Role) -> Callable[[ApiKey], Awaitable[ApiKey]]:
    async def check(key: Annotated[ApiKey, Depends(current_key)]) -> ApiKey:
        if not grants(key.role, role):
            raise ApiProblem(403, "forbidden", f"this route needs a key with role {role} (or admin); this key has {key.role}")
        return key

    return check


class _ItemIdConvertor(Convertor[str]):
    """Item ids are opaque: any characters, "/" and newlines included (":path" stops at newlines)."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("item_id", _ItemIdConvertor())

RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
K = Annotated[int, QueryParam(ge=1, le=MAX_K, description="How many items.")]
IdParam = Annotated[str | None, QueryParam(min_length=1, max_length=MAX_ID_LENGTH)]
ContextParam = Annotated[str | None, QueryParam(min_length=1, max_length=64)]
ItemIdParam = Annotated[str, PathParam(min_length=1, max_length=MAX_ID_LENGTH)]


# ----------------------------------------------------------------------------------------------
# Middleware: bounded bodies, per-route latency


class BodyLimit:
    """Reads at most ``max_bytes`` of a request body before the app sees it; more → 413."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Awaitable[dict[str, Any]]], send: Callable[..., Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Callable[..., Awaitable[None]]) -> None:
        payload = orjson.dumps({"error": "too_large", "detail": f"the body is over {self.max_bytes} bytes"})
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


class Timing:
    """Observes every request's latency under its route template (not the raw path)."""

    def __init__(self, app: Callable[..., Awaitable[None]], metrics: ServingMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Awaitable[dict[str, Any]]], send: Callable[..., Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def capture(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.request(template, scope["method"], status, time.perf_counter() - started)


# ----------------------------------------------------------------------------------------------
# The fast path of the recommendation routes

_K_TEXT = re.compile(r"[1-9][0-9]{0,2}")
ParamSpec = dict[str, Callable[[str], Any]]  # query parameter → checker (value, or _INVALID)
_INVALID = object()


def _text(max_length: int) -> Callable[[str], Any]:
    def check(value: str) -> Any:
        return value if 1 <= len(value) <= max_length else _INVALID

    return check


def _k(value: str) -> Any:
    return int(value) if _K_TEXT.fullmatch(value) and int(value) <= MAX_K else _INVALID


class FastPath:
    """Answers a guarded GET route's ordinary requests without FastAPI's per-request machinery.

    FastAPI resolves a route's dependencies (key, role, runtime) and validates its parameters
    through generic code, and every request first crosses Starlette's middleware stack and router;
    together that costs more than the rest of a recommendation. A ``FastPath`` is installed on the
    route (``route.app``) and registered with the app's :class:`ShelfAPI` front door, which offers
    it every GET whose path the route's own pattern matches *before* the middleware stack runs.
    When the request carries a bearer key that grants ``role`` and every parameter is plainly
    valid (the checks mirror the route's declared constraints), it calls ``answer``, sends its
    JSON bytes and records the request's latency as the ``Timing`` middleware would. Anything
    else (no key, a refused key, a parameter FastAPI would refuse or coerce, repeated parameters,
    dependency overrides, a ``root_path``, an exception while answering) takes the ordinary way
    through the middleware and the route, so every refusal, error and its body are FastAPI's
    own, as documented.
    """

    def __init__(
        self, app: FastAPI, route: APIRoute, role: Role, answer: Callable[..., bytes], query: ParamSpec, path: ParamSpec | None = None
    ) -> None:
        self.fastapi, self.role, self.answer, self.query, self.path = app, role, answer, query, path or {}
        self.route = route
        self.slow = route.app
        route.app = self
        if isinstance(app, ShelfAPI):
            app.fast_paths.append(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        args = self._arguments(scope, scope["path_params"]) if scope["type"] == "http" and not self.fastapi.dependency_overrides else None
        if args is None:
            await self.slow(scope, receive, send)
            return
        body = self.answer(**args)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    async def front(self, scope: Scope, send: Send, path_params: dict[str, Any]) -> bool:
        """Answer ahead of the middleware stack; False (nothing sent) when the request is not ordinary."""
        if self.fastapi.dependency_overrides:
            return False
        started = time.perf_counter()
        args = self._arguments(scope, path_params)
        if args is None:
            return False
        try:
            body = self.answer(**args)
        except Exception:  # the ordinary way answers it again: its 500, its log line, its metrics
            return False
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        self.fastapi.state.shelf.metrics.request(self.route.path, "GET", 200, time.perf_counter() - started)
        return True

    def _arguments(self, scope: Scope, path_params: dict[str, Any]) -> dict[str, Any] | None:
        runtime: Runtime = self.fastapi.state.shelf
        if not self._authorized(scope, runtime):
            return None
        args: dict[str, Any] = {}
        for name, check in self.path.items():
            checked = check(path_params[name])
            if checked is _INVALID:
                return None
            args[name] = checked
        if scope["query_string"]:
            for name, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
                checker = self.query.get(name)
                if checker is None:
                    continue  # FastAPI ignores undeclared parameters too
                if name in args:
                    return None  # repeated: the route decides
                checked = checker(value)
                if checked is _INVALID:
                    return None
                args[name] = checked
        return args

    def _authorized(self, scope: Scope, runtime: Runtime) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":  # the first one, as HTTPBearer reads it
                scheme, _, secret = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer":
                    return False
                key = runtime.keys.authenticate(secret.strip())
                return key is not None and grants(key.role, self.role)
        return False


class ShelfAPI(FastAPI):
    """FastAPI with a front door: each GET is first offered to the :class:`FastPath` whose route
    pattern matches its path (the router's own regular expression and convertors, so the same
    requests match); what a fast path declines goes through Starlette's stack unchanged."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fast_paths: list[FastPath] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path"):
            path = scope["path"]
            for fast in self.fast_paths:
                match = fast.route.path_regex.match(path)
                if match is not None:
                    convertors = fast.route.param_convertors
                    params = {key: convertors[key].convert(value) for key, value in match.groupdict().items()}
                    if await fast.front(scope, send, params):
                        return
                    break
        await super().__call__(scope, receive, send)


# ----------------------------------------------------------------------------------------------
# The app


def create_app(
    settings: Settings,
    *,
    config: ServeConfig | None = None,
    recommender_loader: RecommenderLoader | None = load_bundle_recommender,
) -> FastAPI:
    """Build the service. Nothing is opened until the lifespan starts (uvicorn, or a test client).

    ``recommender_loader`` turns a promoted bundle into a recommender (default: the bundle's model
    with the online state, :class:`~shelf.serving.recommender.BundleRecommender`). Until a bundle
    is promoted, or with ``recommender_loader=None`` (which ignores the registry), serving uses
    the online popularity / co-visitation recommender (cold start).
    """
    config = config or ServeConfig()
    runtime = Runtime(settings, config, recommender_loader)
    app = ShelfAPI(
        title="shelf",
        version=__version__,
        description=__doc__,
        lifespan=runtime.lifespan,
    )
    app.state.shelf = runtime

    @app.exception_handler(ApiProblem)
    async def _problem(request: Request, exc: ApiProblem) -> JSONResponse:
        return JSONResponse({"error": exc.error, "detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return JSONResponse({"error": "invalid_json", "detail": "the body is not valid JSON"}, status_code=400)
        return await request_validation_exception_handler(request, exc)

    def role(r: Role) -> dict[str, Any]:
        return {"dependencies": [Depends(require(r))], "openapi_extra": {ROLE_KEY: r}, "responses": dict(AUTH_RESPONSES)}

    events_route = role("events:write")
    events_route["responses"].update(BODY_RESPONSES)
    events_route["responses"].update(NOT_READY)
    events_route["responses"][422] = {"model": EventsResult, "description": "Some records (or the batch as a whole) were refused; the `accepted` ones are durable."}
    events_route["openapi_extra"]["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EventBatchIn"}}},
    }

    @app.post("/events", response_model=EventsResult, summary="Send a batch of shopper events", **events_route)
    async def post_events(request: Request, runtime: RuntimeDep) -> JSONResponse:
        """Each record is accepted or refused on its own (422 lists the refused ones with field paths).

        Accepted records are in the write-ahead log (fsynced) before the response is sent, and
        the next recommendation reflects them. Resending a batch is safe: events are deduplicated
        by ``event_id`` (derived from the content when absent) when the log is compacted.
        """
        try:
            payload = orjson.loads(await request.body())
        except orjson.JSONDecodeError as error:
            raise ApiProblem(400, "invalid_json", f"the body is not valid JSON: {error}") from None
        result = await run_in_threadpool(runtime.accept_events, payload)
        return JSONResponse(result.model_dump(), status_code=422 if result.errors else 200)

    items_route = role("events:write")
    items_route["responses"].update(BODY_RESPONSES)

    @app.put("/items", response_model=ItemsResult, summary="Update stock, price and attributes", **items_route)
    def put_items(body: ItemsIn, runtime: RuntimeDep) -> ItemsResult:
        """Feeds the rerank catalogue at once (out-of-stock items disappear from the next answer)."""
        return ItemsResult(updated=runtime.update_items(body))

    @app.get("/recommendations", response_model=Recommendations, summary="Recommendations for a shopper", **role("recommendations:read"))
    async def get_recommendations(
        runtime: RuntimeDep,
        user_id: IdParam = None,
        session_id: IdParam = None,
        k: K = 10,
        region: ContextParam = None,
        device: ContextParam = None,
    ) -> Response:
        """``user_id`` is the shop's raw id (pseudonymized inside); either, both or none may be given."""
        return JsonBody(runtime.recommend(user_id, session_id, k, region, device))

    @app.get("/items/{item_id:item_id}/similar", response_model=Recommendations, summary="Items similar to one item", **role("recommendations:read"))
    async def get_similar(
        runtime: RuntimeDep,
        item_id: ItemIdParam,
        k: K = 10,
    ) -> Response:
        return JsonBody(runtime.similar(item_id, k))

    basket_route = role("recommendations:read")
    basket_route["responses"].update(BODY_RESPONSES)

    @app.post("/basket", response_model=Recommendations, summary="Items that go with these", **basket_route)
    async def post_basket(body: BasketIn, runtime: RuntimeDep) -> Response:
        return JsonBody(runtime.basket(body))

    @app.get("/admin/status", response_model=Status, summary="What this process serves and holds", **role("admin"))
    def get_status(runtime: RuntimeDep) -> Status:
        return runtime.status()

    @app.get("/health", response_model=Health, summary="Liveness (no key needed)")
    async def health() -> Health:
        return Health(status="ok")

    @app.get(
        "/ready",
        response_model=Readiness,
        summary="Readiness (no key needed)",
        responses={503: {"model": Readiness, "description": "Starting or stopping."}},
    )
    async def ready(runtime: RuntimeDep) -> JSONResponse:
        body = Readiness(status="ready" if runtime.ready else "starting", bundle_version=runtime.slot.current.version if runtime.ready else None)
        return JSONResponse(body.model_dump(), status_code=200 if runtime.ready else 503)

    @app.get(
        "/metrics",
        summary="Prometheus metrics (no key needed)",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format."}},
    )
    async def metrics(runtime: RuntimeDep) -> Response:
        body, content_type = runtime.metrics.render()
        return Response(body, media_type=content_type)

    # Make EventBatchIn part of the schema (POST /events parses its body itself, record by record).
    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original_openapi()
            defs = EventBatchIn.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(defs.pop("$defs", {}))
            components["EventBatchIn"] = defs
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    routes = {(route.path, method): route for route in app.routes if isinstance(route, APIRoute) for method in route.methods or ()}
    ids, context = _text(MAX_ID_LENGTH), _text(64)
    # The routes above stay the reference (and the OpenAPI description); these answer their
    # ordinary requests sooner, with the same runtime calls and the same defaults.
    FastPath(
        app,
        routes["/recommendations", "GET"],
        "recommendations:read",
        lambda user_id=None, session_id=None, k=10, region=None, device=None: runtime.recommend(user_id, session_id, k, region, device),
        query={"user_id": ids, "session_id": ids, "k": _k, "region": context, "device": context},
    )
    FastPath(
        app,
        routes["/items/{item_id:item_id}/similar", "GET"],
        "recommendations:read",
        lambda item_id, k=10: runtime.similar(item_id, k),
        query={"k": _k},
        path={"item_id": ids},
    )
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(Timing, metrics=runtime.metrics)
    return app


def route_roles(app: FastAPI) -> dict[tuple[str, str], Role | None]:
    """(method, path) → the role it requires (None: public). What the auth tests walk."""
    table: dict[tuple[str, str], Role | None] = {}
    for route in app.routes:
        if isinstance(route, APIRoute):
            for method in route.methods or ():
                table[(method, route.path)] = (route.openapi_extra or {}).get(ROLE_KEY)
    return table
