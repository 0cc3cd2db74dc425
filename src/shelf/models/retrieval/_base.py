"""What every retriever shares: config handling, the fitted-state check, top-n with ``exclude``,
save/load through ``shelf.models.io``, and small helpers over ``Interactions``.

A retriever implements ``_fit(data)``, ``_score_query(query)`` (a dense float32 vector over its
item index, ``-inf`` where it proposes nothing) and ``_state()``/``_set_state()`` for saving.
Ranking, ``exclude``, de-duplication and raw-id conversion happen here, once, for all of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from shelf.models.base import IdIndex, Interactions, Query, Scored
from shelf.models.io import (
    ModelError,
    ModelFitError,
    NotFittedError,
    config_from_dict,
    config_to_dict,
    load_bundle,
    save_bundle,
)
from shelf.models.retrieval.scores import DenseScores, QueryScores, top_of

MICROS_PER_DAY = 86_400 * 1_000_000
NEG_INF = np.float32(-np.inf)
NO_ITEMS = np.empty(0, dtype=np.int64)
NO_ITEMS.flags.writeable = False  # item_indices' empty answer, shared
_KNOWN: tuple[np.ndarray | None, np.ndarray] = (None, NO_ITEMS)  # item_indices' last remembered answer


def top_indices(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` best finite scores, best first; ties broken by lower index.

    Deterministic: the result depends only on the values, never on the partition algorithm.
    """
    return top_of(scores, n)


POSITIONAL_CACHE_LENGTH = 256  # positional_weights keeps its answers for sequences up to this long
POSITIONAL_CACHE_ENTRIES = 4096  # and at most this many of them
_POSITIONAL: dict[tuple[int, float], np.ndarray] = {}


def positional_weights(length: int, half_life: float) -> np.ndarray:
    """Weights for a sequence, oldest first: the newest gets 1, each step back decays.

    Read-only and shared: a request asks several sources for the same few (length, half-life)
    pairs, and the four numpy calls behind one cost ~7 µs each time (measured in-process), so each
    answer up to ``POSITIONAL_CACHE_LENGTH`` long is computed once per process.
    """
    found = _POSITIONAL.get((length, half_life))
    if found is not None:
        return found
    if length == 0:
        weights = np.empty(0, dtype=np.float32)
    else:
        age = np.arange(length - 1, -1, -1, dtype=np.float64)
        weights = np.power(0.5, age / max(half_life, 1e-9)).astype(np.float32)
    if length <= POSITIONAL_CACHE_LENGTH:
        if len(_POSITIONAL) >= POSITIONAL_CACHE_ENTRIES:  # many half-lives (a tuning sweep): start over
            _POSITIONAL.clear()
        weights.flags.writeable = False
        _POSITIONAL[(length, half_life)] = weights  # racing threads store equal arrays
    return weights


def time_decay(timestamps: np.ndarray, reference: int | np.ndarray, half_life_days: float | None) -> np.ndarray:
    """``0.5 ** (age / half_life)`` per event (1 everywhere when ``half_life_days`` is None)."""
    if half_life_days is None:
        return np.ones(len(timestamps), dtype=np.float32)
    age_days = (np.asarray(reference, dtype=np.float64) - timestamps.astype(np.float64)) / MICROS_PER_DAY
    return np.power(0.5, np.maximum(age_days, 0.0) / half_life_days).astype(np.float32)


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not (isinstance(value, (int, float)) and math.isfinite(value) and ok):
        bound = ">= 0" if allow_zero else "> 0"
        raise ModelError(f"{name} must be a finite number {bound}, got {value!r}")


def check_event_weights(weights: Mapping[str, float]) -> None:
    for kind, w in weights.items():
        if not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ModelError(f"event weight for {kind!r} must be a finite number, got {w!r}")


class RetrieverBase:
    """Shared behaviour; subclasses set ``name``, ``config_class`` and the ``_`` hooks."""

    name: ClassVar[str] = "retriever"
    config_class: ClassVar[type]
    min_items: ClassVar[int] = 1  # the fewest distinct interacted items ``fit`` accepts

    def __init__(self, config: Any = None) -> None:
        config = self.config_class() if config is None else config
        if not isinstance(config, self.config_class):
            raise ModelError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self._validate_config()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    # -- hooks ----------------------------------------------------------------------------------

    def _validate_config(self) -> None:
        """Raise ModelError for a bad parameter (called by the constructor)."""

    def _fit(self, data: Interactions) -> None:
        raise NotImplementedError

    def _score_query(self, query: Query) -> np.ndarray:
        raise NotImplementedError

    def _query_scores(self, query: Query) -> QueryScores:
        """Default: the dense ``_score_query``. Sources that propose few items override this with
        a ``SparseScores`` (or a shared ``RankedScores``) so a request costs O(proposed items)."""
        return DenseScores(np.asarray(self._score_query(query), dtype=np.float32))

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        """Default: one query per user (subclasses vectorise)."""
        out = np.empty((len(users), len(self.item_ids_)), dtype=np.float32)
        for row, u in enumerate(users):
            out[row] = self.query_scores(Query(user_id=str(self.user_ids_[u]))).dense()
        return out

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        raise NotImplementedError

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        raise NotImplementedError

    # -- fitted state ---------------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "item_ids_")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit(data) or load(path) first")

    @property
    def items(self) -> IdIndex:
        """The model's item index (raw id ↔ column of ``score_users``)."""
        self._check_fitted()
        index = self.__dict__.get("_items_index")
        if index is None:
            index = self.__dict__["_items_index"] = IdIndex(self.item_ids_)
        return index

    @property
    def users(self) -> IdIndex:
        """Users known to the model (training users, then folded-in ones)."""
        index = self.__dict__.get("_users_index")
        if index is not None and len(index) == len(self.user_ids_):
            return index  # every source looks the shopper up per request: the built index first
        self._check_fitted()
        if index is None or len(index) != len(self.user_ids_):
            index = self.__dict__["_users_index"] = IdIndex(self.user_ids_)
        return index

    @property
    def n_items(self) -> int:
        self._check_fitted()
        return len(self.item_ids_)

    def warm(self) -> None:
        """Build ahead of traffic what the first request would otherwise build: the id lookups
        over the catalogue and the users (a dict each: ~10 ms per 100k ids). Serving calls it
        on every source when it loads a bundle; subclasses add their own lazily built parts."""
        self._check_fitted()
        _ = self.items, self.users
        from shelf.models.retrieval import kernels

        kernels.warm()  # compiled request steps: loaded (or compiled) before traffic, not during it

    def user_index(self, user_id: str | None) -> int:
        """Dense index of a raw user id, -1 when unknown or None."""
        if user_id is None:
            return -1
        return self.users.get(user_id)

    def item_indices(self, item_ids: Iterable[str]) -> np.ndarray:
        """Dense indices of raw item ids, unknown ones dropped (order kept).

        For a tuple (a request's session items) the answer is read-only and shared: every source
        of a blend asks for the same tuple, which the index answers from its last lookup, and the
        sources then share this filtered answer too (two numpy calls, ~3 µs, per source after the
        first, measured in-process). An empty answer is one shared read-only array.
        """
        global _KNOWN
        # A tuple is passed as it is: the index answers the same tuple again from its last lookup.
        ids = item_ids if type(item_ids) is tuple else list(item_ids)
        if not ids:
            return NO_ITEMS
        idx = self.items.lookup(ids)
        last = _KNOWN  # one read: another thread may replace it meanwhile
        if last[0] is idx:
            return last[1]
        known = idx[idx >= 0]
        if not idx.flags.writeable:  # the index's remembered answer: remember the filtered one
            known.flags.writeable = False
            _KNOWN = (idx, known)  # holds idx, so its identity cannot be reused
        return known

    def _session_indices(self, query: Query) -> np.ndarray:
        return self.item_indices(query.session_items)

    # -- public API -----------------------------------------------------------------------------

    def fit(self, data: Interactions) -> Self:
        """Learn from ``data``; returns self. Raises ModelFitError when the data cannot train it."""
        check_interactions(data, type(self).__name__, self.min_items)
        for key in ("_items_index", "_users_index"):
            self.__dict__.pop(key, None)
        self.item_ids_ = np.asarray(data.items.ids, dtype=object).copy()
        self.user_ids_ = np.asarray(data.users.ids, dtype=object).copy()
        self._fit(data)
        return self

    def query_scores(self, query: Query) -> QueryScores:
        """This query's scores in the cheapest form the retriever has (see ``scores``): ``top(n)``,
        ``at(idx)``, ``dense()``; ``-inf`` (never NaN) where nothing is proposed.

        ``query.exclude`` is *not* applied here (``retrieve`` applies it), so that a blend can see
        every source's opinion of every item.
        """
        self._check_fitted()
        found = self._query_scores(query)
        if isinstance(found, DenseScores) and np.isnan(found.values).any():
            return DenseScores(np.where(np.isnan(found.values), NEG_INF, found.values))
        return found

    def score_query(self, query: Query) -> np.ndarray:
        """Dense float32 scores over ``self.items`` for one query (a fresh array the caller owns)."""
        return np.array(self.query_scores(query).dense(), dtype=np.float32, copy=True)

    def retrieve(self, query: Query, n: int) -> Scored:
        """Up to ``n`` items, best first, raw ids, never an excluded item, never a duplicate."""
        if n < 0:
            raise ModelError(f"n must be >= 0, got {n}")
        scores = self.query_scores(query)
        banned = self.item_indices(query.exclude) if query.exclude else np.empty(0, dtype=np.int64)
        top, values = scores.top(n + len(banned))
        if len(banned):
            keep = ~np.isin(top, banned)
            top, values = top[keep][:n], values[keep][:n]
        return Scored(
            items=self.item_ids_[top],
            scores=values.astype(np.float32),
            sources=np.full(len(top), self.name, dtype=object),
        )

    def score_users(self, users: np.ndarray) -> np.ndarray:
        """``len(users) × n_items`` float32 scores for training users given by dense index."""
        self._check_fitted()
        users = np.asarray(users, dtype=np.int64)
        if users.size and (users.min() < 0 or users.max() >= len(self.user_ids_)):
            raise ModelError(f"user indices must lie in 0..{len(self.user_ids_) - 1}")
        out = np.asarray(self._score_users(users), dtype=np.float32)
        return np.where(np.isnan(out), NEG_INF, out)

    def save(self, path: Path | str) -> Path:
        """Write the fitted model to folder ``path`` (no pickle)."""
        self._check_fitted()
        arrays, meta = self._state()
        arrays = {"item_ids": self.item_ids_, "user_ids": self.user_ids_, **arrays}
        return save_bundle(path, kind=self.name, config=config_to_dict(self.config), arrays=arrays, meta=meta)

    @classmethod
    def load(cls, path: Path | str) -> Self:
        """Read a model written by ``save``; raises ModelFormatError for a bad or newer file."""
        bundle = load_bundle(path, kind=cls.name)
        model = cls(config_from_dict(cls.config_class, bundle.config))
        arrays = dict(bundle.arrays)
        model.item_ids_ = arrays.pop("item_ids")
        model.user_ids_ = arrays.pop("user_ids")
        model._set_state(arrays, bundle.meta)
        return model


def check_interactions(data: Interactions, who: str, min_items: int = 1) -> None:
    """Refuse data a model cannot learn from, saying what is wrong."""
    if not isinstance(data, Interactions):
        raise ModelFitError(f"{who}.fit takes Interactions, got {type(data).__name__}")
    if len(data) == 0:
        raise ModelFitError(f"{who}: cannot fit on empty interactions (no events in the snapshot)")
    distinct = len(np.unique(data.item))
    if distinct < min_items:
        raise ModelFitError(
            f"{who}: needs events on at least {min_items} distinct items to learn anything, got {distinct}"
        )


def reference_time(data: Interactions) -> int:
    """The snapshot's 'now' in microseconds: ``as_of`` if given, else the last event."""
    if data.as_of is not None:
        return int(data.as_of.timestamp() * 1_000_000)
    return int(data.timestamp.max()) if len(data) else 0


def latest_rows(table: Any, key: str) -> Any:
    """Keep the newest version (by ``valid_from``) of each ``key`` in an ITEM/USER table."""
    import pyarrow as pa  # noqa: F401 - the table is Arrow

    if table is None or table.num_rows == 0:
        return table
    if "valid_from" in table.column_names:
        table = table.sort_by([(key, "ascending"), ("valid_from", "ascending")])
    keys = np.asarray(table[key].to_numpy(zero_copy_only=False), dtype=object)
    last = np.ones(len(keys), dtype=bool)
    last[:-1] = keys[:-1] != keys[1:]
    return table.filter(last)
