"""Online state fed by live events, and the recommender that needs nothing else (cold start).

The state keeps, in bounded memory (least recently used entries are forgotten first):

- per session, the items of the session so far (oldest first);
- which user a session belongs to: an anonymous session that later logs in (same session id,
  now with a user id) is joined to the user, and its earlier items join the user's history;
- per user, recent items and purchased items;
- per item, an event-weighted popularity counter and co-visitation counts with the items seen
  just before it in the same session.

:class:`OnlinePopularity` recommends from these counters alone, so serving works (and is fully
testable) before any bundle exists; bundle recommenders get the same state to read sessions from.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np
import pyarrow as pa

from shelf.models.base import DEFAULT_EVENT_WEIGHTS, Query, Scored

COLD_START_VERSION = "online-popularity"
# Events that say "these items belong together" for co-visitation (not removals or searches).
_COVISIT_TYPES = frozenset({"view", "add_to_cart", "add_to_wishlist", "purchase", "rating"})


@dataclass(frozen=True)
class StateLimits:
    """Memory bounds of the online state (entries beyond them are forgotten, oldest first)."""

    sessions: int = 200_000
    users: int = 200_000
    items: int = 500_000
    session_items: int = 50
    user_items: int = 100
    purchases_per_user: int = 500
    covisit_window: int = 5  # earlier session items each new item is linked to
    neighbours_per_item: int = 100
    popular_refresh_seconds: float = 1.0  # how stale the cached popular list may get


V = TypeVar("V")


def _touch(lru: OrderedDict[str, V], key: str, make: Callable[[], V], limit: int) -> V:
    """The entry for ``key`` (created if new), marked most recently used; the oldest beyond ``limit`` go."""
    value = lru.get(key)
    if value is None:
        value = make()
        lru[key] = value
        if len(lru) > limit:
            lru.popitem(last=False)
    else:
        lru.move_to_end(key)
    return value


class OnlineState:
    """Sessions, users and counters, updated by :meth:`apply`; thread-safe."""

    def __init__(self, limits: StateLimits | None = None) -> None:
        self.limits = limits or StateLimits()
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, deque[str]] = OrderedDict()  # session → items
        self._session_user: OrderedDict[str, str] = OrderedDict()  # session → user
        self._users: OrderedDict[str, deque[str]] = OrderedDict()  # user → recent items
        self._purchased: OrderedDict[str, dict[str, None]] = OrderedDict()  # user → items (ordered set)
        self._popularity: dict[str, float] = {}
        self._covisit: OrderedDict[str, dict[str, float]] = OrderedDict()  # item → item → weight
        self._popular_cache: list[tuple[str, float]] = []
        self._popular_at = -float("inf")
        self._popular_dirty = False
        self.events_applied = 0

    # -- updates ---------------------------------------------------------------------------

    def apply(self, events: pa.Table) -> None:
        """Fold validated (pseudonymized, EVENT_SCHEMA) events into the state, in order."""
        columns = events.select(["user_id", "session_id", "item_id", "type", "value"]).to_pydict()
        rows = zip(columns["user_id"], columns["session_id"], columns["item_id"], columns["type"], columns["value"], strict=True)
        with self._lock:
            for user, session, item, kind, value in rows:
                self._apply_one(user, session, item, kind, value)
            self.events_applied += events.num_rows
            self._popular_dirty = True

    def _apply_one(self, user: str | None, session: str | None, item: str, kind: str, value: float | None) -> None:
        lim = self.limits
        weight = DEFAULT_EVENT_WEIGHTS.get(kind, 0.0)
        if kind == "rating" and value is not None:
            weight *= value / 5.0
        if weight > 0 or item in self._popularity:
            self._popularity[item] = max(0.0, self._popularity.get(item, 0.0) + weight)
            if len(self._popularity) > lim.items:  # forget the least popular tenth
                for stale, _ in heapq.nsmallest(lim.items // 10, self._popularity.items(), key=lambda kv: kv[1]):
                    del self._popularity[stale]
        if session is not None:
            if user is not None:
                joined = self._session_user.get(session)
                if joined is None:
                    self._session_user[session] = user
                    if len(self._session_user) > lim.sessions:
                        self._session_user.popitem(last=False)
                    # The anonymous part of the session becomes the user's history.
                    history = _touch(self._users, user, lambda: deque(maxlen=lim.user_items), lim.users)
                    history.extend(self._sessions.get(session, ()))
            else:
                user = self._session_user.get(session)
            items = _touch(self._sessions, session, lambda: deque(maxlen=lim.session_items), lim.sessions)
            if kind in _COVISIT_TYPES:
                self._link(item, items)
            items.append(item)
        if user is not None:
            _touch(self._users, user, lambda: deque(maxlen=lim.user_items), lim.users).append(item)
            if kind == "purchase":
                bought = _touch(self._purchased, user, dict, lim.users)
                bought[item] = None
                if len(bought) > lim.purchases_per_user:
                    del bought[next(iter(bought))]

    def _link(self, item: str, earlier: deque[str]) -> None:
        lim = self.limits
        seen: set[str] = set()
        for distance, other in enumerate(reversed(earlier)):
            if len(seen) >= lim.covisit_window:
                break
            if other == item or other in seen:
                continue
            seen.add(other)
            w = 1.0 / (1 + distance)
            for a, b in ((item, other), (other, item)):
                row = _touch(self._covisit, a, dict, lim.items)
                row[b] = row.get(b, 0.0) + w
                if len(row) > 2 * lim.neighbours_per_item:
                    top = heapq.nlargest(lim.neighbours_per_item, row.items(), key=lambda kv: kv[1])
                    self._covisit[a] = dict(top)

    # -- reads -----------------------------------------------------------------------------

    def user_of_session(self, session_id: str) -> str | None:
        with self._lock:
            return self._session_user.get(session_id)

    def session_items(self, session_id: str) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._sessions.get(session_id, ()))

    def user_items(self, user_id: str) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._users.get(user_id, ()))

    def purchased(self, user_id: str) -> frozenset[str]:
        with self._lock:
            return frozenset(self._purchased.get(user_id, ()))

    def popular(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` most popular items (at most ``popular_refresh_seconds`` stale)."""
        with self._lock:
            now = time.monotonic()
            fresh_enough = now - self._popular_at < self.limits.popular_refresh_seconds
            if self._popular_dirty and (not fresh_enough or len(self._popular_cache) < n):
                keep = max(n, 500)
                self._popular_cache = heapq.nlargest(keep, self._popularity.items(), key=lambda kv: kv[1])
                self._popular_at, self._popular_dirty = now, False
            return self._popular_cache[:n]

    def neighbours(self, seeds: Mapping[str, float], n: int) -> list[tuple[str, float]]:
        """Items co-visited with ``seeds`` (item → weight), best first, seeds excluded."""
        with self._lock:
            totals: dict[str, float] = {}
            for seed, weight in seeds.items():
                row = self._covisit.get(seed)
                if not row:
                    continue
                for other, w in row.items():
                    totals[other] = totals.get(other, 0.0) + weight * w
        for seed in seeds:
            totals.pop(seed, None)
        return heapq.nlargest(n, totals.items(), key=lambda kv: kv[1])

    def sizes(self) -> dict[str, int]:
        with self._lock:
            return {
                "sessions": len(self._sessions),
                "users": len(self._users),
                "items": len(self._popularity),
                "covisit_items": len(self._covisit),
            }


@runtime_checkable
class OnlineRecommender(Protocol):
    """What serving needs from a model: raw ids in and out, fast, thread-safe."""

    version: str

    def recommend(self, query: Query, n: int) -> Scored: ...

    def similar(self, item_id: str, n: int) -> Scored: ...

    def basket(self, item_ids: Sequence[str], n: int) -> Scored: ...


def merge_stages(parts: Iterable[Iterable[tuple[str, float, str]]], n: int, exclude: frozenset[str] = frozenset()) -> Scored:
    """Concatenate stages of (item, score, source), first occurrence wins, excluded items
    dropped, at most ``n``."""
    seen: set[str] = set(exclude)
    items: list[str] = []
    scores: list[float] = []
    sources: list[str] = []
    for part in parts:
        for item, score, source in part:
            if item in seen:
                continue
            seen.add(item)
            items.append(item)
            scores.append(score)
            sources.append(source)
            if len(items) >= n:
                return Scored(np.array(items, dtype=object), np.array(scores, dtype=np.float32), np.array(sources, dtype=object))
    return Scored(np.array(items, dtype=object), np.array(scores, dtype=np.float32), np.array(sources, dtype=object))


class OnlinePopularity:
    """Co-visitation with the shopper's recent items first, then popularity: needs no bundle.

    Scores: co-visited items get ``1 + normalised co-visit weight`` (in (1, 2]); popular items
    get their popularity share of the top item (in (0, 1]), so personal signal ranks first.
    """

    def __init__(self, state: OnlineState, version: str = COLD_START_VERSION) -> None:
        self.state = state
        self.version = version

    def _seeds(self, items: Sequence[str]) -> dict[str, float]:
        seeds: dict[str, float] = {}
        for age, item in enumerate(reversed(items[-20:])):
            seeds[item] = max(seeds.get(item, 0.0), 1.0 / (1 + age))
        return seeds

    def _blend(self, seeds: Mapping[str, float], n: int, exclude: frozenset[str]) -> Scored:
        over = n + len(exclude)
        near = [(i, s) for i, s in self.state.neighbours(seeds, over) if i not in exclude]
        top = near[0][1] if near else 1.0
        near = [(i, 1.0 + s / top) for i, s in near]
        popular = self.state.popular(over + len(near))
        best = popular[0][1] if popular and popular[0][1] > 0 else 1.0
        pop = [(i, s / best) for i, s in popular if i not in exclude and s > 0]
        return merge_stages([[(i, w, "covisit") for i, w in near], [(i, w, "popular") for i, w in pop]], n)

    def recommend(self, query: Query, n: int) -> Scored:
        history: tuple[str, ...] = ()
        if query.user_id is not None:
            history = self.state.user_items(query.user_id)
        return self._blend(self._seeds([*history, *query.session_items]), n, query.exclude)

    def similar(self, item_id: str, n: int) -> Scored:
        return self._blend({item_id: 1.0}, n, frozenset({item_id}))

    def basket(self, item_ids: Sequence[str], n: int) -> Scored:
        return self._blend({i: 1.0 for i in item_ids}, n, frozenset(item_ids))
