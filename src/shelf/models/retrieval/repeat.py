"""Repeat: the shopper's own recent and frequent items (re-engagement is a large share of shop
behaviour, so this is a strong baseline and a blend source).

A user's score for an item is the sum over their events on it of
``event_weight * 0.5 ** (age / half_life_days) * 0.5 ** (later / half_life_events)``: ``age`` is
measured from the user's *last* event (so scores of different users are on one scale) and
``later`` counts the user's events after this one. Removals weigh negatively; totals are clipped
at 0. For a session, its items are scored by position, the newest highest.

Why two decays: the clock alone cannot order what a shopper touched minutes apart (a 3-day
half-life leaves every event of today's visit at full weight, so the list follows view counts),
while the order of the shopper's own steps can, at any time scale. What they touched last is what
they come back to first (the recently-viewed list, and the recent+popular peer, rank exactly that),
and on the blend's hold-outs this ordering beat frequency (see ``RepeatConfig.half_life_events``).
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
from shelf.models.retrieval.scores import RankedRow, SparseScores


@dataclass(frozen=True)
class RepeatConfig:
    """Parameters of ``RepeatRetriever``.

    Attributes:
        half_life_days: an event's weight halves for every this many days before the user's
            last event.
        half_life_events: an event's weight also halves for every this many later events of
            the same user (None: no such decay). At 0.5 each step back quarters a weight, so the
            list follows the order of last touch (as recently-viewed lists do), except that a
            cart-add (4x a view) keeps level with the view right after it and a purchase (8x)
            stays ahead of it. Chosen on training-side data only, never the test: the blend's tuned
            hold-out NDCG@10 (user stage) when fitted on the bench's REES46 training side and on
            four earlier cuts of it was, for None / 0.5 / 1 / 2 / 3 / 10:
            0.473 / 0.490 / 0.490 / 0.478 / 0.475 / 0.471, 0.486 / 0.497 / 0.497 / 0.487 /
            0.489 / 0.487, 0.595 / 0.602 / 0.602 / 0.594 / 0.595 / 0.595, 0.472 / 0.494 /
            0.493 / 0.484 / 0.480 / 0.474 and 0.478 / 0.496 / 0.492 / 0.484 / 0.485 / 0.484
            (0.5 best or tied in all five).
            MovieLens (seen items are masked) and YooChoose (anonymous sessions, scored by
            ``session_half_life``) do not read it.
        session_half_life: in a session, weight halves every this many items back from the newest.
        session_weight: weight of one session item relative to a freshest view (1.0).
        event_weights: weight of each event type.
    """

    half_life_days: float = 3.0
    half_life_events: float | None = 0.5
    session_half_life: float = 3.0
    session_weight: float = 2.0
    event_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))


class RepeatRetriever(RetrieverBase):
    """The user's own items (history and current session), recent and frequent first."""

    name = "repeat"
    config_class = RepeatConfig
    # It proposes the shopper's own items only (history, session): a blend skips it for a shopper
    # without history whose session items are all excluded, as they are when serving.
    own_items_only = True

    def _validate_config(self) -> None:
        check_positive("half_life_days", self.config.half_life_days)
        if self.config.half_life_events is not None:
            check_positive("half_life_events", self.config.half_life_events)
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
        if self.config.half_life_events is not None:
            w = w * _sequence_decay(user, ts, data.n_users, self.config.half_life_events)
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
            ranked = self._history_ranked()
            if ranked is not None:
                items, values = ranked
                return RankedRow(items[start:end], values[start:end], len(self.item_ids_))
            return SparseScores.from_positive(history.indices[start:end], history.data[start:end], len(self.item_ids_), ascending=True)
        idx = [session]
        weights = [self.config.session_weight * positional_weights(len(session), self.config.session_half_life)]
        if u >= 0:
            start, end = history.indptr[u], history.indptr[u + 1]
            idx.append(history.indices[start:end])
            weights.append(history.data[start:end])
        from shelf.models.retrieval import kernels

        # np.unique + np.bincount (each item's weights summed in input order), compiled.
        items, totals = kernels.sum_by_item(np.concatenate(idx).astype(np.int64), np.concatenate(weights))
        return SparseScores.from_positive(items, totals, len(self.item_ids_), ascending=True)

    def warm(self) -> None:
        super().warm()
        self._history_ranked()  # a sort of the stored weights: before traffic, not in a request

    def _history_ranked(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The history's items and weights with each row's entries ranked, best first, ties to the
        lower item (rows where the matrix holds them; read-only), once per history matrix; None
        unless every stored weight is a finite float32 > 0 (what ``fit`` and ``fold_in`` leave).
        A known shopper's row is then their scores as they are and its top-n two slices: no
        from_positive masks, no compiled top (~15 µs of a request, measured in-process), for a
        copy of the history's items and weights (8 bytes an entry)."""
        history = self.history_
        owner, data, ranked = self.__dict__.get("_history_ranked_cache", (None, None, None))
        if owner is not history or data is not history.data:
            values = history.data
            ranked = None
            if values.dtype == np.float32 and bool(np.all(values > 0)) and bool(np.isfinite(values).all()):
                row = np.repeat(np.arange(len(history.indptr) - 1), np.diff(history.indptr))
                order = np.lexsort((history.indices, -values, row))  # by row, then best first
                ranked = (history.indices[order], values[order])
                for part in ranked:
                    part.flags.writeable = False  # served as views: nobody writes through them
            self.__dict__["_history_ranked_cache"] = (history, values, ranked)
        return ranked

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
        # The new events are the freshest: the old history ages by their count in events (no
        # clock here), and each new event by the new events after it, as in ``fit``.
        row = self.history_.getrow(u).toarray().ravel()
        h = self.config.half_life_events
        if h is not None and len(idx):
            row *= np.float32(0.5 ** (len(idx) / h))
            weights = weights * np.power(0.5, np.arange(len(idx) - 1, -1, -1) / h).astype(np.float32)
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


def _sequence_decay(user: np.ndarray, ts: np.ndarray, n_users: int, half_life: float) -> np.ndarray:
    """``0.5 ** (later / half_life)`` per event, ``later`` = the same user's events after it
    (ties in time keep the data's order, so the result is deterministic)."""
    order = np.lexsort((ts, user))
    ends = np.cumsum(np.bincount(user, minlength=n_users))
    later = np.empty(len(user), dtype=np.float64)
    later[order] = ends[user[order]] - 1 - np.arange(len(user))
    return np.power(0.5, later / half_life).astype(np.float32)
