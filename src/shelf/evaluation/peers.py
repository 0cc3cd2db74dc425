"""Well-known peers, run from their own libraries (``implicit``), never re-implemented.

Every peer implements ``BatchRetriever`` (``fit``, ``retrieve``, ``score_users``) plus
``score_sessions`` (a dense block for a batch of anonymous session prefixes) so that the runner
scores them side by side with shelf's own models.

- :class:`Popularity`: distinct users (or sessions) per item.
- :class:`Trending`: event weights decayed exponentially with age (``half_life``).
- :class:`RecentThenPopular`: the shopper's (or session's) own recent items, most recent first,
  then popularity.
- :class:`ALSPeer`, :class:`BPRPeer`: ``implicit`` ALS and BPR on the users × items weight matrix
  (sessions × items when the data has no known users). Sessions are folded in by ALS's own
  ``recalculate_user``; BPR, which cannot, ranks by cosine similarity of item factors to the
  session's items.
- :class:`Tuned`: a grid over a peer's hyper-parameters, chosen on the split's *validation* cut.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Self

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from shelf.evaluation.errors import EvaluationError
from shelf.models.base import DEFAULT_EVENT_WEIGHTS, Interactions, Query, Scored

_NEVER = -np.inf


def _rows_matrix(data: Interactions, weights: Mapping[str, float]) -> tuple[sp.csr_matrix, str]:
    """Users × items weights, or sessions × items when no event has a known user."""
    if (data.user >= 0).any():
        return data.matrix(weights), "user"
    known = data.session >= 0
    m = sp.csr_matrix(
        (data.event_weights(weights)[known], (data.session[known], data.item[known])),
        shape=(len(data.sessions), data.n_items), dtype=np.float32,
    )
    m.sum_duplicates()
    m.data = np.maximum(m.data, 0.0)
    m.eliminate_zeros()
    return m, "session"


def _to_scored(items: np.ndarray, scores: np.ndarray, n: int, exclude: np.ndarray | None = None) -> Scored:
    scores = scores.astype(np.float32, copy=True)
    if exclude is not None and len(exclude):
        scores[exclude] = _NEVER
    n = min(n, len(scores))
    top = np.argsort(-scores, kind="stable")[:n]
    top = top[np.isfinite(scores[top])]
    return Scored(items[top], scores[top], np.full(len(top), "peer", dtype=object))


def _exclude_idx(data: Interactions, query: Query) -> np.ndarray:
    idx = data.items.lookup(list(query.exclude))
    return idx[idx >= 0]


def _session_idx(data: Interactions, query: Query) -> np.ndarray:
    idx = data.items.lookup(list(query.session_items))
    return idx[idx >= 0]


class _Base:
    name = "peer"
    data_: Interactions

    def retrieve(self, query: Query, n: int) -> Scored:
        data = self.data_
        if query.session_items:
            scores = self.score_sessions([_session_idx(data, query)])[0]
        elif query.user_id is not None and query.user_id in data.users:
            scores = self.score_users(np.array([data.users.get(query.user_id)]))[0]
        else:
            scores = self._fallback()
        return _to_scored(data.items.ids, scores, n, _exclude_idx(data, query))

    def _fallback(self) -> np.ndarray:
        raise NotImplementedError

    def score_users(self, users: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score_sessions(self, sessions: Sequence[np.ndarray]) -> np.ndarray:
        raise NotImplementedError


@dataclass
class Popularity(_Base):
    """Global popularity: how many distinct users (sessions, when anonymous) touched each item."""

    name: str = "popularity"

    def fit(self, data: Interactions) -> Self:
        matrix, _ = _rows_matrix(data, {t: 1.0 for t in data.event_types})
        counts = np.asarray((matrix > 0).sum(axis=0)).ravel().astype(np.float32)
        self.data_ = data
        self.popularity_ = counts
        return self

    def _fallback(self) -> np.ndarray:
        return self.popularity_

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.popularity_, (len(users), len(self.popularity_))).copy()

    def score_sessions(self, sessions: Sequence[np.ndarray]) -> np.ndarray:
        return self.score_users(np.zeros(len(sessions), dtype=np.int64))


@dataclass
class Trending(Popularity):
    """Popularity with exponential time decay: weight × 2^(-age / half_life), age to the cut."""

    half_life: timedelta = timedelta(days=7)
    name: str = "trending"

    def fit(self, data: Interactions) -> Self:
        end = int(data.timestamp.max()) if len(data) else 0
        if data.as_of is not None:
            from shelf.evaluation.splits import _micros

            end = _micros(data.as_of)
        age = (end - data.timestamp).astype(np.float64) / (self.half_life.total_seconds() * 1e6)
        w = np.maximum(data.event_weights(DEFAULT_EVENT_WEIGHTS), 0.0) * np.exp2(-age)
        self.data_ = data
        self.popularity_ = np.bincount(data.item, weights=w, minlength=data.n_items).astype(np.float32)
        return self


@dataclass
class RecentThenPopular(Popularity):
    """The shopper's own items, most recently touched first, then global popularity."""

    name: str = "recent+popular"

    def fit(self, data: Interactions) -> Self:
        super().fit(data)
        known = data.user >= 0
        # scipy would sum duplicated cells; keep each item's latest time instead.
        last = _max_per_cell(data.user[known], data.item[known], data.timestamp[known], (data.n_users, data.n_items))
        self.last_seen_ = last
        top = float(self.popularity_.max()) if len(self.popularity_) else 0.0
        self._pop_scaled = self.popularity_ / (top + 1.0)  # in [0, 1)
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        scores = np.broadcast_to(self._pop_scaled, (len(users), self.data_.n_items)).copy()
        rows = self.last_seen_[users]
        r = np.repeat(np.arange(len(users)), np.diff(rows.indptr))
        scores[r, rows.indices] = 2.0 + _rank01(rows)
        return scores

    def score_sessions(self, sessions: Sequence[np.ndarray]) -> np.ndarray:
        scores = np.broadcast_to(self._pop_scaled, (len(sessions), self.data_.n_items)).copy()
        for row, items in enumerate(sessions):  # one short prefix per query
            if len(items):
                # Later occurrences win: the most recent item gets the highest score.
                scores[row, items] = 2.0 + np.arange(1, len(items) + 1) / (len(items) + 1.0)
        return scores


def _max_per_cell(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    key = rows.astype(np.int64) * shape[1] + cols
    order = np.lexsort((-values, key))
    key, values = key[order], values[order]
    first = np.r_[True, key[1:] != key[:-1]] if len(key) else np.array([], dtype=bool)
    return sp.csr_matrix((values[first].astype(np.float64), (key[first] // shape[1], key[first] % shape[1])), shape=shape)


def _rank01(rows: sp.csr_matrix) -> np.ndarray:
    """Per row, each stored value's rank by time scaled into (0, 1): later is higher."""
    counts = np.diff(rows.indptr)
    r = np.repeat(np.arange(rows.shape[0]), counts)
    order = np.lexsort((rows.data, r))
    rank = np.empty(len(r))
    rank[order] = np.arange(len(r)) - np.repeat(rows.indptr[:-1], counts)
    return (rank + 1.0) / (np.repeat(counts, counts) + 1.0)


class _Factorisation(Popularity):
    """Shared scoring for implicit's factor models."""

    model_: Any
    rows_: str

    def _fit_model(self, model: Any, data: Interactions) -> None:
        matrix, self.rows_ = _rows_matrix(data, DEFAULT_EVENT_WEIGHTS)
        Popularity.fit(self, data)
        if matrix.nnz == 0:
            raise EvaluationError(f"{self.name}: the training data holds no positive interactions")
        # implicit runs its own threads; a BLAS pool inside each of them oversubscribes the cores
        # (implicit warns about exactly this), so BLAS is held to one thread while it fits.
        with threadpool_limits(1, "blas"):
            model.fit(matrix, show_progress=False)
        for factors in (model.user_factors, model.item_factors):
            if not np.isfinite(factors).all():
                raise EvaluationError(f"{self.name}: training produced non-finite factors; lower the learning rate or raise regularization")
        self.model_ = model
        self.matrix_ = matrix

    def score_users(self, users: np.ndarray) -> np.ndarray:
        if self.rows_ != "user":
            return self.score_users_fallback(users)
        return np.asarray(self.model_.user_factors[users] @ self.model_.item_factors.T, dtype=np.float32)

    def score_users_fallback(self, users: np.ndarray) -> np.ndarray:
        return Popularity.score_users(self, users)

    def _session_matrix(self, sessions: Sequence[np.ndarray]) -> sp.csr_matrix:
        indptr = np.r_[0, np.cumsum([len(s) for s in sessions])]
        indices = np.concatenate([np.asarray(s, dtype=np.int32) for s in sessions]) if len(sessions) else np.array([], dtype=np.int32)
        m = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(sessions), self.data_.n_items))
        m.sum_duplicates()
        return m


@dataclass
class ALSPeer(_Factorisation):
    """``implicit.als.AlternatingLeastSquares`` on event weights (confidence = alpha × weight)."""

    factors: int = 64
    regularization: float = 0.05
    alpha: float = 1.0
    iterations: int = 15
    seed: int = 0
    name: str = "als"

    def fit(self, data: Interactions) -> Self:
        from implicit.cpu.als import AlternatingLeastSquares

        with threadpool_limits(1, "blas"):  # implicit checks the BLAS pool when it is built
            model = AlternatingLeastSquares(
                factors=self.factors, regularization=self.regularization, alpha=self.alpha,
                iterations=self.iterations, random_state=self.seed, num_threads=1,
            )
        self._fit_model(model, data)
        return self

    def score_sessions(self, sessions: Sequence[np.ndarray]) -> np.ndarray:
        m = self._session_matrix(sessions)
        factors = self.model_.recalculate_user(np.arange(len(sessions)), m)
        scores = np.asarray(factors @ self.model_.item_factors.T, dtype=np.float32)
        empty = np.diff(m.indptr) == 0
        scores[empty] = self.popularity_
        return scores


@dataclass
class BPRPeer(_Factorisation):
    """``implicit.bpr.BayesianPersonalizedRanking`` on the binarised interaction matrix."""

    factors: int = 64
    learning_rate: float = 0.05
    regularization: float = 0.01
    iterations: int = 100
    seed: int = 0
    name: str = "bpr"

    def fit(self, data: Interactions) -> Self:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        model = BayesianPersonalizedRanking(
            factors=self.factors, learning_rate=self.learning_rate, regularization=self.regularization,
            iterations=self.iterations, random_state=self.seed, num_threads=1,
        )
        self._fit_model(model, data)
        return self

    def score_sessions(self, sessions: Sequence[np.ndarray]) -> np.ndarray:
        items = np.asarray(self.model_.item_factors, dtype=np.float32)
        unit = items / np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-12)
        m = self._session_matrix(sessions)
        profile = m @ unit
        scores = np.asarray(profile @ unit.T, dtype=np.float32)
        empty = np.diff(m.indptr) == 0
        scores[empty] = self.popularity_
        return scores


# ---------------------------------------------------------------------------------------------
# Tuning on the validation cut


@dataclass(frozen=True)
class Tuned:
    """A peer whose hyper-parameters are picked from ``grid`` on the validation cut.

    The runner calls :meth:`choose` with the split's validation cut (never the test) and then
    fits ``base`` with the winning parameters on the full training side.
    """

    base: Any  # a dataclass peer instance holding the defaults
    grid: Mapping[str, Sequence[Any]]
    metric: str = "ndcg"
    k: int = 10
    chosen_: dict[str, Any] = field(default_factory=dict, compare=False)

    def candidates(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(self.grid[k] for k in keys))]

    def build(self, **params: Any) -> Any:
        return replace(self.base, **params)

    def __call__(self) -> Any:
        return self.build(**self.chosen_)

    def choose(self, score: Callable[[Any], float]) -> dict[str, Any]:
        """Evaluate every grid point with ``score(model) -> validation metric``; keep the best."""
        best: tuple[float, dict[str, Any]] | None = None
        for params in self.candidates():
            value = score(self.build(**params))
            if not np.isnan(value) and (best is None or value > best[0]):
                best = (value, params)
        if best is None:
            raise EvaluationError(f"tuning {self.base.name}: no grid point gave a finite {self.metric}@{self.k}")
        self.chosen_.clear()
        self.chosen_.update(best[1])
        return dict(best[1])


def default_peers(*, tune: bool = True, seed: int = 0) -> dict[str, Callable[[], Any]]:
    """The standard peer set: popularity, trending, recent+popular, ALS and BPR (tuned)."""
    als = ALSPeer(seed=seed)
    bpr = BPRPeer(seed=seed)
    peers: dict[str, Callable[[], Any]] = {
        "popularity": Popularity,
        "trending": Trending,
        "recent+popular": RecentThenPopular,
    }
    if tune:
        peers["als"] = Tuned(als, {"factors": (32, 64), "regularization": (0.01, 0.1)})
        peers["bpr"] = Tuned(bpr, {"factors": (32, 64), "learning_rate": (0.01, 0.05)})
    else:
        peers["als"] = lambda: replace(als)
        peers["bpr"] = lambda: replace(bpr)
    return peers
