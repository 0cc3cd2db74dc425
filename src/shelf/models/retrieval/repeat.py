"""Repeat: the shopper's own recent and frequent items (re-engagement is a large share of shop
behaviour, so this is a strong baseline and a blend source).

A user's score for an item is the sum over their events on it of
``event_weight * 0.5 ** (age / half_life)``, with age measured from the user's *last* event (so
scores of different users are on one scale). Removals weigh negatively; totals are clipped at 0.
For a session, its items are scored by position, the newest highest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from shelf.models.base import DEFAULT_EVENT_WEIGHTS, Interactions, Query
from shelf.models.io import pack_csr, unpack_csr
from shelf.models.retrieval._base import (
    NEG_INF,
    RetrieverBase,
    check_event_weights,
    check_positive,
    positional_weights,
    time_decay,
)
from shelf.models.retrieval.scores import SparseScores


@dataclass(frozen=True)
class RepeatConfig:
    """Parameters of ``RepeatRetriever``.

    Attributes:
        half_life_days: an event's weight halves for every this many days before the user's
            last event.
        session_half_life: in a session, weight halves every this many items back from the newest.
        session_weight: weight of one session item relative to a freshest view (1.0).
        event_weights: weight of each event type.
    """

    half_life_days: float = 3.0
    session_half_life: float = 3.0
    session_weight: float = 2.0
    event_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))


class RepeatRetriever(RetrieverBase):
    """The user's own items (history and current session), recent and frequent first."""

    name = "repeat"
    config_class = RepeatConfig

    def _validate_config(self) -> None:
        check_positive("half_life_days", self.config.half_life_days)
        check_positive("session_half_life", self.config.session_half_life)
        check_positive("session_weight", self.config.session_weight, allow_zero=True)
        check_event_weights(self.config.event_weights)

    def _fit(self, data: Interactions) -> None:
        known = data.user >= 0
        user, item, ts = data.user[known], data.item[known], data.timestamp[known]
        last = np.full(data.n_users, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last, user, ts)
        w = data.event_weights(self.config.event_weights)[known] * time_decay(
            ts, last[user], self.config.half_life_days
        )
        m = sp.csr_matrix((w, (user, item)), shape=(data.n_users, data.n_items), dtype=np.float32)
        m.sum_duplicates()
        m.data = np.maximum(m.data, 0.0)
        m.eliminate_zeros()
        self.history_ = m

    def _query_scores(self, query: Query) -> SparseScores:
        # O(history + session), not O(catalogue): only the shopper's own items get a score.
        session = self._session_indices(query)
        u = self.user_index(query.user_id)
        history = self.history_
        if not len(session) and u >= 0 and history.has_canonical_format:
            # History alone: its row is already ascending and summed (one entry per item).
            start, end = history.indptr[u], history.indptr[u + 1]
            return SparseScores.from_positive(history.indices[start:end], history.data[start:end], len(self.item_ids_), ascending=True)
        idx = [session]
        weights = [self.config.session_weight * positional_weights(len(session), self.config.session_half_life)]
        if u >= 0:
            start, end = history.indptr[u], history.indptr[u + 1]
            idx.append(history.indices[start:end])
            weights.append(history.data[start:end])
        items, inverse = np.unique(np.concatenate(idx).astype(np.int64), return_inverse=True)
        totals = np.bincount(inverse, weights=np.concatenate(weights).astype(np.float64), minlength=len(items))
        return SparseScores.from_positive(items, totals, len(self.item_ids_), ascending=True)

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        dense = self.history_[users].toarray()
        return np.where(dense > 0, dense, NEG_INF).astype(np.float32)

    def fold_in(self, user_id: str, item_ids: Sequence[str], event_types: Sequence[str] | None = None) -> None:
        """Add fresh events of a user (oldest first) without refitting; new users are added."""
        self._check_fitted()
        types = list(event_types) if event_types is not None else ["view"] * len(item_ids)
        idx = self.items.lookup(list(item_ids))
        weights = np.array([self.config.event_weights.get(t, 0.0) for t in types], dtype=np.float32)
        keep = idx >= 0
        u = self.user_index(user_id)
        if u < 0:
            self.user_ids_ = np.append(self.user_ids_, np.array([user_id], dtype=object))
            self.history_ = sp.vstack([self.history_, sp.csr_matrix((1, len(self.item_ids_)), dtype=np.float32)]).tocsr()
            u = len(self.user_ids_) - 1
        # The new events are the freshest: age the old history by nothing (no clock here), add.
        row = self.history_.getrow(u).toarray().ravel()
        np.add.at(row, idx[keep], weights[keep])
        row = np.maximum(row, 0.0)
        m = self.history_.tolil()
        m[u] = row
        self.history_ = m.tocsr()
        self.history_.eliminate_zeros()

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return pack_csr("history", self.history_), {}

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.history_ = unpack_csr(arrays, "history")
