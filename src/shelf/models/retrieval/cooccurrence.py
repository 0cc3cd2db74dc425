"""Item-to-item co-occurrence within sessions and within users.

Two events of one session (or one user's history) at most ``window`` positions apart form a pair
``a → b`` weighted by ``sqrt(w_a * w_b) * 0.5 ** (gap / gap_half_life) / distance``, where ``w``
are event-type weights; the later item gets ``forward_weight`` and the reverse direction
``backward_weight`` (sessions move forward). Counts are normalised cosine-style,
``C[a, b] / (n_a ** 0.5 * n_b ** popularity_damping)`` with ``n`` an item's total event weight,
and only the ``neighbours`` strongest entries of each row are kept (a sparse items × items matrix).

Serves "similar items" (one row) and sessions / users (the recency-weighted sum of the rows of
their latest items).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from shelf.models.base import DEFAULT_EVENT_WEIGHTS, Interactions, Query, Scored
from shelf.models.io import ModelError, check_finite, pack_csr, unpack_csr
from shelf.models.retrieval._base import (
    NEG_INF,
    RetrieverBase,
    check_event_weights,
    check_positive,
    positional_weights,
)
from shelf.models.retrieval.scores import NeighbourScores, SparseScores

MICROS_PER_MINUTE = 60_000_000


@dataclass(frozen=True)
class CoOccurrenceConfig:
    """Parameters of ``CoOccurrenceRetriever``.

    Attributes:
        session_window: pair events at most this many positions apart within a session.
        user_window: same within one user's whole history (0 turns user pairs off).
        user_weight: weight of a user pair relative to a session pair.
        gap_half_life_minutes: a pair's weight halves for every this many minutes between the events.
        forward_weight / backward_weight: weight of ``earlier → later`` and ``later → earlier``.
        popularity_damping: exponent of the candidate item's popularity in the denominator
            (0.5 is cosine; higher favours less popular neighbours).
        neighbours: entries kept per row.
        query_items: how many of the latest items of a user / session are used for a query.
        query_half_life: their weights halve every this many items back.
        event_weights: weight of each event type (events with weight <= 0 are not paired).
    """

    session_window: int = 10
    user_window: int = 10
    user_weight: float = 0.5
    gap_half_life_minutes: float = 24 * 60.0
    forward_weight: float = 1.0
    backward_weight: float = 0.5
    popularity_damping: float = 0.5
    neighbours: int = 100
    query_items: int = 30
    query_half_life: float = 5.0
    event_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))


def _pair_counts(
    group: np.ndarray,
    item: np.ndarray,
    ts: np.ndarray,
    w: np.ndarray,
    window: int,
    config: CoOccurrenceConfig,
    n_items: int,
    scale: float = 1.0,
) -> sp.csr_matrix:
    """items × items summed weights of the directed pairs within groups (events already
    filtered), times ``scale``.

    Summed one distance at a time: holding every pair of a 10M-event log at once (16 bytes each,
    twice over while concatenating) would take gigabytes; the running sum holds each distinct pair
    once.
    """
    order = np.lexsort((ts, group))
    g, it, t, ww = group[order], item[order], ts[order].astype(np.float64), w[order]
    half_life = config.gap_half_life_minutes * MICROS_PER_MINUTE
    total = sp.csr_matrix((n_items, n_items), dtype=np.float64)
    for d in range(1, window + 1):
        if len(g) <= d:
            break
        same = (g[:-d] == g[d:]) & (it[:-d] != it[d:])
        if not same.any():
            continue
        a, b = it[:-d][same], it[d:][same]
        gap = (t[d:] - t[:-d])[same]
        value = np.sqrt(ww[:-d][same] * ww[d:][same]) * np.power(0.5, gap / half_life) / d
        values = np.concatenate([value * config.forward_weight, value * config.backward_weight])
        if scale != 1.0:
            values *= scale
        step = sp.csr_matrix((values, (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(n_items, n_items), dtype=np.float64)
        step.sum_duplicates()
        total = total + step
    return sp.csr_matrix(total)


def keep_top_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of each row of a CSR matrix (ties by lower column)."""
    m = sp.csr_matrix(m)
    m.sum_duplicates()  # also sorts each row's columns, which the stable sort below keeps for ties
    counts = np.diff(m.indptr)
    if counts.size == 0 or counts.max() <= k:
        return m
    # Only rows longer than k need ranking; the others are kept whole.
    long_rows = np.flatnonzero(counts > k)
    entry_row = np.repeat(np.arange(m.shape[0]), counts)
    in_long = (counts > k)[entry_row]
    long_entries = np.flatnonzero(in_long)
    order = long_entries[np.lexsort((-m.data[long_entries], entry_row[long_entries]))]
    long_counts = counts[long_rows]
    rank = np.arange(len(order)) - np.repeat(np.cumsum(long_counts) - long_counts, long_counts)
    keep = np.concatenate([np.flatnonzero(~in_long), order[rank < k]])
    keep.sort()
    out = sp.csr_matrix((m.data[keep], (entry_row[keep], m.indices[keep])), shape=m.shape, dtype=m.dtype)
    out.sort_indices()
    return out


class CoOccurrenceRetriever(RetrieverBase):
    """Items seen together with the shopper's latest items; also ``similar(item_id, n)``."""

    name = "cooccurrence"
    config_class = CoOccurrenceConfig
    min_items = 2

    def _validate_config(self) -> None:
        c = self.config
        for name in ("session_window", "user_window", "neighbours", "query_items"):
            value = getattr(c, name)
            if not isinstance(value, int) or value < 0:
                raise ModelError(f"{name} must be an integer >= 0, got {value!r}")
        if c.session_window == 0 and c.user_window == 0:
            raise ModelError("session_window and user_window cannot both be 0")
        if c.neighbours == 0 or c.query_items == 0:
            raise ModelError("neighbours and query_items must be >= 1")
        for name in ("user_weight", "forward_weight", "backward_weight", "popularity_damping"):
            check_positive(name, getattr(c, name), allow_zero=True)
        check_positive("gap_half_life_minutes", c.gap_half_life_minutes)
        check_positive("query_half_life", c.query_half_life)
        check_event_weights(c.event_weights)

    def _fit(self, data: Interactions) -> None:
        c = self.config
        w = data.event_weights(c.event_weights).astype(np.float64)
        positive = w > 0
        n = data.n_items
        counts = sp.csr_matrix((n, n), dtype=np.float64)
        if c.session_window:
            keep = positive & (data.session >= 0)
            counts = counts + _pair_counts(data.session[keep], data.item[keep], data.timestamp[keep], w[keep], c.session_window, c, n)
        if c.user_window and c.user_weight > 0:
            keep = positive & (data.user >= 0)
            counts = counts + _pair_counts(data.user[keep], data.item[keep], data.timestamp[keep], w[keep], c.user_window, c, n, c.user_weight)
        counts = sp.csr_matrix(counts)
        counts.sum_duplicates()
        popularity = np.bincount(data.item[positive], weights=w[positive], minlength=n)
        pop = np.maximum(popularity, 1e-9)
        counts = sp.csr_matrix(counts.multiply(1.0 / np.sqrt(pop)[:, None]))
        counts = sp.csr_matrix(counts.multiply(1.0 / np.power(pop, c.popularity_damping)[None, :]))
        similarity = keep_top_per_row(counts.astype(np.float32), c.neighbours)
        check_finite(type(self).__name__, similarity.data)
        self.similarity_ = similarity
        self.recent_indptr_, self.recent_items_ = self._recent_items(data)

    def _recent_items(self, data: Interactions) -> tuple[np.ndarray, np.ndarray]:
        """Per user, the items of their latest ``query_items`` positive events, oldest first,
        as a ragged array (``indptr``, ``items``)."""
        w = data.event_weights(self.config.event_weights)
        keep = (data.user >= 0) & (w > 0)
        user, item = data.user[keep], data.item[keep]
        order = np.argsort(user, kind="stable")  # time order kept within a user
        user, item = user[order], item[order]
        counts = np.bincount(user, minlength=data.n_users)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        from_end = counts[user] - (np.arange(len(user)) - starts[user])  # 1 for the newest
        latest = from_end <= self.config.query_items
        kept = np.bincount(user[latest], minlength=data.n_users)
        indptr = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
        return indptr, item[latest].astype(np.int32)

    def _query_matrix(self, users: np.ndarray, sessions: list[np.ndarray] | None = None) -> sp.csr_matrix:
        """One row per user: recency weights over the user's latest items (then session items)."""
        rows, cols, vals = [], [], []
        for r, u in enumerate(users):
            history = self.recent_items_[self.recent_indptr_[u] : self.recent_indptr_[u + 1]] if u >= 0 else np.empty(0, dtype=np.int32)
            seq = history if sessions is None else np.concatenate([history, sessions[r]])
            seq = seq.astype(np.int64)[-self.config.query_items :]
            rows.append(np.full(len(seq), r, dtype=np.int64))
            cols.append(seq)
            vals.append(positional_weights(len(seq), self.config.query_half_life))
        return sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(len(users), len(self.item_ids_)),
            dtype=np.float32,
        )

    def _query_scores(self, query: Query) -> SparseScores | NeighbourScores:
        # The query items' neighbour rows, weighted by recency and summed: O(query items x neighbours).
        u = self.user_index(query.user_id)
        session = self._session_indices(query)
        history = self.recent_items_[self.recent_indptr_[u] : self.recent_indptr_[u + 1]] if u >= 0 else session[:0]
        length = min(len(history) + len(session), self.config.query_items)
        if not length:
            return SparseScores.unordered(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32), len(self.item_ids_))
        # positive_rows over the latest items, summed when first asked; its weights cast as it casts them.
        m = self.similarity_
        weights = positional_weights(length, self.config.query_half_life)
        if weights.dtype != m.data.dtype:
            weights = weights.astype(np.float64).astype(m.data.dtype)
        return NeighbourScores(m, history, session, weights, len(self.item_ids_))

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        scores = (self._query_matrix(users) @ self.similarity_).toarray()
        return np.where(scores > 0, scores, NEG_INF).astype(np.float32)

    def similar(self, item_id: str, n: int, exclude: frozenset[str] = frozenset()) -> Scored:
        """The ``n`` items most often seen with ``item_id`` (empty for an unknown item)."""
        self._check_fitted()
        i = self.items.get(item_id)
        if i < 0:
            return Scored.empty()
        start, end = self.similarity_.indptr[i], self.similarity_.indptr[i + 1]
        banned = np.append(self.item_indices(exclude), i)
        top, values = SparseScores.from_positive(self.similarity_.indices[start:end], self.similarity_.data[start:end], len(self.item_ids_)).top(n + len(banned))
        keep = ~np.isin(top, banned)
        top, values = top[keep][:n], values[keep][:n]
        return Scored(self.item_ids_[top], values, np.full(len(top), self.name, dtype=object))

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {"recent_indptr": self.recent_indptr_, "recent_items": self.recent_items_}
        return {**pack_csr("similarity", self.similarity_), **arrays}, {}

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.similarity_ = unpack_csr(arrays, "similarity")
        self.recent_indptr_ = arrays["recent_indptr"]
        self.recent_items_ = arrays["recent_items"]
