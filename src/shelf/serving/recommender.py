"""The recommender serving answers with once a bundle is promoted: shelf's trained model, kept
fresh by the online state.

:class:`BundleRecommender` wraps the bundle's retriever (usually a ``BlendRetriever``) as an
:class:`~shelf.serving.online.OnlineRecommender`:

* ``recommend``: the model's cold-start chain does the routing. A shopper the model knows gets
  the blend over their history; the items they touched since the bundle was trained (from the
  online state) and the current session's items ride along as ``Query.session_items``, so an
  event accepted a moment ago changes the next answer. An anonymous session gets the blend over
  its session items; nothing at all gets popularity by context (region, time of day). Lists the
  model leaves short are filled from the online counters.
* ``similar`` / ``basket``: the bundle's item-to-item sources (co-occurrence, then content) where
  it has them, then the online co-visitation counters (items newer than the bundle), then
  popularity.

Every item carries its score and the source that proposed it (``Scored.sources``). Scores from
different sources are on different scales: items are ordered by source stage first (model, then
online covisit, then popular), and within a stage by score.

``load_bundle_recommender`` is the default :data:`~shelf.serving.bundles.RecommenderLoader`:
it verifies every hash (``shelf.registry.loader.load_bundle``) before loading.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shelf.models.base import Query, Scored
from shelf.registry.bundles import Registry
from shelf.serving.online import OnlinePopularity, OnlineState, merge_stages

log = logging.getLogger(__name__)

# Sources that answer "items like this one", best first (a blend's source names or a model's name).
ITEM_TO_ITEM = ("cooccurrence", "content")
ONLINE_HISTORY = 20  # a known shopper's most recent online items passed to the model
CONTEXT_CACHE_SECONDS = 30.0  # popularity by context changes slowly; cache it this long
CONTEXT_CACHE_ENTRIES = 1024


def _as_pairs(scored: Scored) -> list[tuple[str, float, str]]:
    sources = scored.sources if scored.sources is not None else np.full(len(scored), "", dtype=object)
    return [(str(i), float(s), str(src)) for i, s, src in zip(scored.items, scored.scores, sources, strict=True)]


def _below(part: list[tuple[str, float, str]], floor: float) -> list[tuple[str, float, str]]:
    """Rescale a stage's scores into (floor - 1, floor), keeping its order (lists stay non-increasing)."""
    if not part:
        return part
    hi = max(s for _, s, _ in part)
    lo = min(s for _, s, _ in part)
    span = hi - lo if hi > lo else 1.0
    return [(i, floor - 1.0 + 0.99 * (s - lo) / span, src) for i, s, src in part]


def named_sources(model: Any) -> dict[str, Any]:
    """The named retrievers inside a bundle's model, for item-to-item answers and warming.

    A blend's active sources; a two-stage model's retrieval stage's (its ranker orders the
    candidates, it proposes none: without this, ``similar`` and ``basket`` on the shipped default
    fell back to the online counters and its sources were never warmed); otherwise the model itself.
    """
    sources = getattr(model, "active_sources", None)
    if sources:
        return dict(sources)
    inner = getattr(model, "retriever", None)
    if inner is not None and inner is not model:
        found = named_sources(inner)
        if found:
            return found
    return {getattr(model, "name", "model"): model}


class BundleRecommender:
    """A trained retriever plus the online state, answering with raw ids; thread-safe reads.

    Args:
        model: a fitted shelf retriever (``retrieve(Query, n)``), usually a ``BlendRetriever``.
        version: the bundle version it came from.
        state: the process's online state (sessions, histories, counters).
    """

    def __init__(self, model: Any, version: str, state: OnlineState) -> None:
        self.model = model
        self.version = version
        self.state = state
        self.online = OnlinePopularity(state, version)
        sources: Mapping[str, Any] = named_sources(model)
        self.item_sources = [(name, sources[name]) for name in ITEM_TO_ITEM if name in sources and hasattr(sources[name], "similar")]
        if not self.item_sources and hasattr(model, "similar"):
            self.item_sources = [(getattr(model, "name", "model"), model)]
        self._context_cache: OrderedDict[tuple[Any, ...], tuple[float, Scored]] = OrderedDict()
        self._cache_lock = threading.Lock()
        # Work that depends only on the bundle, done before it serves: id lookups over the
        # catalogue and the users, content's posting lists and clusters, popularity's ranked
        # segments. Otherwise the first requests after a load or a swap pay for them (tens of
        # milliseconds each at 100k items, seconds at 1M).
        inner = getattr(model, "retriever", None)
        for source in {id(s): s for s in (model, *((inner,) if inner is not None else ()), *sources.values())}.values():
            warm = getattr(source, "warm", None)
            if callable(warm):
                try:
                    warm()
                except Exception:  # only a head start: serving works without it
                    log.warning("warming %s failed", type(source).__name__, exc_info=True)

    # -- recommend -------------------------------------------------------------------------

    def _query(self, query: Query) -> Query:
        """The query with the shopper's fresh online history in front of the session's items."""
        if query.user_id is None:
            return query
        recent = self.state.user_items(query.user_id)[-ONLINE_HISTORY:]
        if not recent:
            return query
        merged: dict[str, None] = {}
        for item in (*recent, *query.session_items):
            merged.pop(item, None)
            merged[item] = None  # keep the latest position of each item
        return Query(user_id=query.user_id, session_items=tuple(merged), context=query.context, exclude=query.exclude)

    def _context_key(self, query: Query, n: int) -> tuple[Any, ...] | None:
        if query.user_id is not None or query.session_items:
            return None
        c = query.context
        hour = c.timestamp.hour if c.timestamp is not None else None
        return (c.region, c.device, c.age_band, c.gender, hour, query.exclude, n)

    def _model_answer(self, query: Query, n: int) -> Scored:
        key = self._context_key(query, n)
        if key is None:
            return self.model.retrieve(query, n)
        now = time.monotonic()
        with self._cache_lock:
            hit = self._context_cache.get(key)
            if hit is not None and now - hit[0] < CONTEXT_CACHE_SECONDS:
                return hit[1]
        answer = self.model.retrieve(query, n)
        with self._cache_lock:
            self._context_cache[key] = (now, answer)
            if len(self._context_cache) > CONTEXT_CACHE_ENTRIES:
                self._context_cache.popitem(last=False)
        return answer

    def recommend(self, query: Query, n: int) -> Scored:
        query = self._query(query)
        answer = self._model_answer(query, n)
        if len(answer) >= n:
            return answer
        # The catalogue has grown since training (items only live events know): fill from counters.
        model_part = _as_pairs(answer)
        floor = min((s for _, s, _ in model_part), default=0.0)
        extra = _as_pairs(self.online.recommend(query, n))
        return merge_stages([model_part, _below(extra, floor)], n, query.exclude)

    # -- item to item ----------------------------------------------------------------------

    def _neighbours(self, seeds: Sequence[str], n: int, exclude: frozenset[str]) -> Scored:
        parts: list[list[tuple[str, float, str]]] = []
        floor = np.inf
        for name, source in self.item_sources:
            if len(seeds) == 1:
                found = source.similar(seeds[0], n, exclude=exclude)
            else:
                found = source.retrieve(Query(session_items=tuple(seeds), exclude=exclude), n)
            pairs = [(i, s, name) for i, s, _ in _as_pairs(found)]
            if np.isfinite(floor):
                pairs = _below(pairs, floor)
            if pairs:
                floor = min(s for _, s, _ in pairs)
                parts.append(pairs)
            if sum(len(p) for p in parts) >= n:
                break
        if sum(len(p) for p in parts) < n:
            online = _as_pairs(self.online.basket(list(seeds), n + len(exclude)))
            parts.append(_below(online, 0.0 if not np.isfinite(floor) else floor) if parts else online)
        return merge_stages(parts, n, exclude)

    def similar(self, item_id: str, n: int) -> Scored:
        return self._neighbours([item_id], n, frozenset({item_id}))

    def basket(self, item_ids: Sequence[str], n: int) -> Scored:
        return self._neighbours(list(item_ids), n, frozenset(item_ids))


def load_bundle_recommender(registry: Registry, version: str, state: OnlineState) -> BundleRecommender:
    """The default loader: verify every artefact hash, load the model, wrap it for serving."""
    from shelf.registry.loader import load_bundle

    loaded = load_bundle(registry, version)
    return BundleRecommender(loaded.model, loaded.card.version, state)


__all__ = ["BundleRecommender", "load_bundle_recommender", "named_sources"]
