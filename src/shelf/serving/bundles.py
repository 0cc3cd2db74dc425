"""Which recommender serves, and how a newly promoted bundle replaces it without a dropped request.

A :data:`RecommenderLoader` turns a promoted bundle version into an :class:`OnlineRecommender`
(it gets the online state, so a bundle model can read sessions). :class:`RecommenderSlot` holds
the live one; :meth:`RecommenderSlot.check` (run off the request path, in a thread) notices a
new promoted version, loads it, validates it with a smoke query, and swaps it in with one
reference assignment. A bundle that fails to load or validate is refused: the old recommender
stays live, the failure is recorded, and that version is not retried until the pointer moves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from shelf.models.base import Query, Scored
from shelf.registry.bundles import Registry
from shelf.serving.online import OnlinePopularity, OnlineRecommender, OnlineState

log = logging.getLogger(__name__)

RecommenderLoader = Callable[[Registry, str, OnlineState], OnlineRecommender]


def verified(loader: RecommenderLoader) -> RecommenderLoader:
    """Wrap ``loader`` so every artefact hash is checked (``Registry.verify``) before loading."""

    def load(registry: Registry, version: str, state: OnlineState) -> OnlineRecommender:
        registry.verify(version)
        return loader(registry, version, state)

    return load


@dataclass(frozen=True)
class LoadFailure:
    version: str
    error: str
    at: float


def validate(recommender: object, version: str) -> OnlineRecommender:
    """Refuse a recommender that does not follow the protocol or cannot answer a smoke query."""
    if not isinstance(recommender, OnlineRecommender):
        raise TypeError(f"the loader for {version} returned {type(recommender).__name__}, not an OnlineRecommender")
    if recommender.version != version:
        raise ValueError(f"the loader for {version} returned a recommender that says it is {recommender.version!r}")
    for result in (recommender.recommend(Query(), 5), recommender.similar("__shelf_smoke__", 5)):
        if not isinstance(result, Scored) or len(result.items) != len(result.scores) or len(result) > 5:
            raise ValueError(f"bundle {version} answered a smoke query with a malformed result")
    return recommender


class RecommenderSlot:
    """The live recommender; starts with the cold-start one and follows the promoted pointer."""

    def __init__(self, state: OnlineState, registry: Registry, loader: RecommenderLoader | None) -> None:
        self.state = state
        self.registry = registry
        self.loader = loader
        self.current: OnlineRecommender = OnlinePopularity(state)
        self.last_failure: LoadFailure | None = None
        self.loads = 0
        self.failures = 0
        self._checking = threading.Lock()

    def check(self) -> bool:
        """Load the promoted bundle if it is new; True when a swap happened. Never raises."""
        if self.loader is None:
            return False
        with self._checking:
            try:
                version = self.registry.promoted()
            except Exception as error:  # a damaged pointer must not take serving down
                log.error("cannot read the promoted bundle pointer: %s", error)
                return False
            if version is None or version == self.current.version:
                return False
            if self.last_failure is not None and self.last_failure.version == version:
                return False
            try:
                loaded = validate(self.loader(self.registry, version, self.state), version)
            except Exception as error:
                self.failures += 1
                self.last_failure = LoadFailure(version, f"{type(error).__name__}: {error}", time.time())
                log.error("bundle %s refused; still serving %s: %s", version, self.current.version, error)
                return False
            self.current = loaded  # one reference assignment: requests see old or new, never half
            self.loads += 1
            self.last_failure = None
            log.info("now serving bundle %s", version)
            return True
