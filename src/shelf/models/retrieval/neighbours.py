"""Neighbours: what shoppers like you engage with *now* (user-based k-nearest neighbours over
recent activity).

Item-to-item models (co-occurrence, EASE) and matrix factorisation learn tastes from the whole
history equally; trending knows what is hot but not for whom. This source joins the two: a
shopper's ``neighbours`` most similar shoppers (cosine over the items each ever engaged with)
vote for the items they engaged with, each vote decayed by its age at the snapshot
(``half_life_days``), so it proposes what people with the same taste are picking up lately.

Neighbours are drawn from the ``pool_size`` most recently active shoppers only, which bounds the
cost of a request at O(pool × history) and keeps the votes current. Scores of unknown shoppers
(sessions, fold-in) come from their session items the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from shelf.models.base import DEFAULT_EVENT_WEIGHTS, Interactions, Query
from shelf.models.io import ModelError, ModelFitError, pack_csr, unpack_csr
from shelf.models.retrieval._base import (
    NEG_INF,
    RetrieverBase,
    check_event_weights,
    check_positive,
    reference_time,
    time_decay,
)


@dataclass(frozen=True)
class NeighboursConfig:
    """Parameters of ``NeighboursRetriever``.

    Attributes:
        neighbours: how many most similar shoppers vote.
        half_life_days: a neighbour's event weighs half as much every this many days before the
            snapshot; None: all of their history votes alike.
        pool_size: neighbours come from this many most recently active shoppers.
        event_weights: weight of each event type (events with weight <= 0 neither make two
            shoppers alike nor vote).
    """

    neighbours: int = 400
    half_life_days: float | None = 1.0
    pool_size: int = 20_000
    event_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))


class NeighboursRetriever(RetrieverBase):
    """Items that the shoppers most like this one engaged with recently."""

    name = "neighbours"
    config_class = NeighboursConfig

    def _validate_config(self) -> None:
        c = self.config
        if not isinstance(c.neighbours, int) or c.neighbours < 1:
            raise ModelError(f"neighbours must be an integer >= 1, got {c.neighbours!r}")
        if not isinstance(c.pool_size, int) or c.pool_size < 1:
            raise ModelError(f"pool_size must be an integer >= 1, got {c.pool_size!r}")
        if c.half_life_days is not None:
            check_positive("half_life_days", c.half_life_days)
        check_event_weights(c.event_weights)

    def _fit(self, data: Interactions) -> None:
        c = self.config
        w = data.event_weights(c.event_weights)
        keep = (data.user >= 0) & (w > 0)
        if not keep.any():
            raise ModelFitError("NeighboursRetriever: no positive events from known users to learn from")
        user, item, ts = data.user[keep], data.item[keep], data.timestamp[keep]
        shape = (data.n_users, data.n_items)
        # Who is alike: binary users × items, rows scaled to unit length (cosine).
        binary = sp.csr_matrix((np.ones(len(user), np.float32), (user, item)), shape=shape)
        binary.sum_duplicates()
        binary.data[:] = 1.0
        self.profiles_ = _unit_rows(binary)
        # Who may vote: the most recently active shoppers.
        last = np.full(data.n_users, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last, user, ts)
        active = np.flatnonzero(last > np.iinfo(np.int64).min)
        order = np.lexsort((active, -last[active]))
        self.pool_ = np.sort(active[order[: c.pool_size]]).astype(np.int64)
        # What they vote for: their items, each event decayed by its age at the snapshot; a
        # neighbour's votes sum to one so that heavy users do not drown the rest.
        decayed = w[keep] * time_decay(ts, reference_time(data), c.half_life_days)
        votes = sp.csr_matrix((decayed.astype(np.float32), (user, item)), shape=shape)[self.pool_]
        votes.sum_duplicates()
        totals = np.asarray(votes.sum(axis=1)).ravel()
        votes = sp.diags(np.where(totals > 0, 1.0 / np.maximum(totals, 1e-30), 0.0).astype(np.float32)) @ votes
        self.votes_ = votes.tocsr().astype(np.float32)
        self.pool_profiles_t_ = self.profiles_[self.pool_].T.tocsr()

    def _scores(self, profiles: sp.csr_matrix, own: np.ndarray | None) -> np.ndarray:
        """Dense scores for query profiles (rows); ``own`` names each row's training user (or -1)
        so that a shopper never counts as their own neighbour."""
        sims = np.asarray((profiles @ self.pool_profiles_t_).todense(), dtype=np.float32)
        if own is not None:
            pos = np.searchsorted(self.pool_, own)
            inside = (own >= 0) & (pos < len(self.pool_))
            inside[inside] &= self.pool_[pos[inside]] == own[inside]
            sims[np.flatnonzero(inside), pos[inside]] = 0.0
        k = min(self.config.neighbours, sims.shape[1])
        if k == 0:
            return np.full((profiles.shape[0], len(self.item_ids_)), NEG_INF, dtype=np.float32)
        if k < sims.shape[1]:
            cols = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            cols = np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
        vals = np.take_along_axis(sims, cols, axis=1)
        rows = np.repeat(np.arange(len(sims)), k)
        chosen = sp.csr_matrix((vals.ravel(), (rows, cols.ravel())), shape=sims.shape)
        chosen.eliminate_zeros()
        out = np.asarray((chosen @ self.votes_).todense(), dtype=np.float32)
        return np.where(out > 0, out, NEG_INF).astype(np.float32)

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        return self._scores(self.profiles_[users], users)

    def _score_query(self, query: Query) -> np.ndarray:
        u = self.user_index(query.user_id)
        n = len(self.item_ids_)
        row = self.profiles_[u] if u >= 0 else sp.csr_matrix((1, n), dtype=np.float32)
        session = self._session_indices(query)
        if len(session):
            extra = sp.csr_matrix((np.ones(len(session), np.float32), (np.zeros(len(session), np.int64), session)), shape=(1, n))
            row = row.maximum(extra) if u >= 0 else extra
            row = _unit_rows(row)
        if row.nnz == 0:
            return np.full(n, NEG_INF, dtype=np.float32)
        return self._scores(row.tocsr(), np.array([u], dtype=np.int64))[0]

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {**pack_csr("profiles", self.profiles_), **pack_csr("votes", self.votes_), "pool": self.pool_}, {}

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.profiles_ = unpack_csr(arrays, "profiles")
        self.votes_ = unpack_csr(arrays, "votes")
        self.pool_ = np.asarray(arrays["pool"], dtype=np.int64)
        self.pool_profiles_t_ = self.profiles_[self.pool_].T.tocsr()


def _unit_rows(m: sp.csr_matrix) -> sp.csr_matrix:
    m = m.tocsr().astype(np.float32)
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return (sp.diags(np.where(norms > 0, 1.0 / np.maximum(norms, 1e-30), 0.0).astype(np.float32)) @ m).tocsr()
