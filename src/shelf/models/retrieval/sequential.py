"""Sequential rules: what shoppers open *next* after an item (Ludewig & Jannach's "SR").

Within a session (or, for events without one, a user's history), every later event at most
``window`` positions after an earlier one forms a rule ``a → b`` weighted
``sqrt(w_a * w_b) / distance`` (event-type weights ``w``). Only the forward direction counts,
which is what separates this from co-occurrence: the next click after a phone case is rarely the
phone. Each row is normalised to sum to one and keeps its ``neighbours`` strongest entries.

A query (session or user) sums the rows of its latest ``query_items`` items, the newest weighing
1 and each step back ``0.5 ** (1 / query_half_life)`` less, so the last item dominates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from shelf.models.base import DEFAULT_EVENT_WEIGHTS, Interactions, Query
from shelf.models.io import ModelError, ModelFitError, check_finite, pack_csr, unpack_csr
from shelf.models.retrieval._base import (
    NEG_INF,
    RetrieverBase,
    check_event_weights,
    check_positive,
    positional_weights,
)
from shelf.models.retrieval.cooccurrence import keep_top_per_row
from shelf.models.retrieval.scores import SparseScores, positive_rows


@dataclass(frozen=True)
class SequentialRulesConfig:
    """Parameters of ``SequentialRulesRetriever``.

    Attributes:
        window: pair each event with the next ``window`` events of its session (or user).
        neighbours: rules kept per antecedent item.
        query_items: how many of the latest items of a session / user a query reads.
        query_half_life: their weights halve every this many items back from the newest.
        event_weights: weight of each event type (events with weight <= 0 are left out).
    """

    window: int = 5
    neighbours: int = 100
    query_items: int = 5
    query_half_life: float = 1.0
    event_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))


class SequentialRulesRetriever(RetrieverBase):
    """Next-item rules ``a → b`` from the order of events within sessions."""

    name = "sequential"
    config_class = SequentialRulesConfig
    min_items = 2

    def _validate_config(self) -> None:
        c = self.config
        for name in ("window", "neighbours", "query_items"):
            value = getattr(c, name)
            if not isinstance(value, int) or value < 1:
                raise ModelError(f"{name} must be an integer >= 1, got {value!r}")
        check_positive("query_half_life", c.query_half_life)
        check_event_weights(c.event_weights)

    def _fit(self, data: Interactions) -> None:
        c = self.config
        w = data.event_weights(c.event_weights).astype(np.float64)
        keep = w > 0
        # A session where there is one, else the user's whole history (offset past sessions).
        n_sessions = int(data.session.max()) + 1 if len(data) else 0
        group = np.where(data.session >= 0, data.session, np.where(data.user >= 0, n_sessions + data.user, -1))
        keep &= group >= 0
        g, item, ts, ww = group[keep], data.item[keep], data.timestamp[keep], w[keep]
        order = np.lexsort((ts, g))
        g, item, ww = g[order], item[order], ww[order]
        rows, cols, vals = [], [], []
        for d in range(1, c.window + 1):
            if len(g) <= d:
                break
            same = (g[:-d] == g[d:]) & (item[:-d] != item[d:])
            rows.append(item[:-d][same])
            cols.append(item[d:][same])
            vals.append(np.sqrt(ww[:-d][same] * ww[d:][same]) / d)
        n = data.n_items
        if not rows or not sum(len(r) for r in rows):
            raise ModelFitError("SequentialRulesRetriever: no two successive events on different items in any session")
        rules = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n), dtype=np.float64)
        rules.sum_duplicates()
        rules = keep_top_per_row(rules, c.neighbours)
        totals = np.asarray(rules.sum(axis=1)).ravel()
        rules = sp.csr_matrix(rules.multiply(1.0 / np.maximum(totals, 1e-12)[:, None]), dtype=np.float32)
        check_finite(type(self).__name__, rules.data)
        self.rules_ = rules
        self.recent_indptr_, self.recent_items_ = self._recent_items(data, keep)

    def _recent_items(self, data: Interactions, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per user, the items of their latest ``query_items`` kept events, oldest first."""
        known = keep & (data.user >= 0)
        order = np.lexsort((data.timestamp[known], data.user[known]))
        user, item = data.user[known][order], data.item[known][order]
        counts = np.bincount(user, minlength=data.n_users)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        from_end = counts[user] - (np.arange(len(user)) - starts[user])  # 1 for the newest
        latest = from_end <= self.config.query_items
        indptr = np.concatenate([[0], np.cumsum(np.bincount(user[latest], minlength=data.n_users))]).astype(np.int64)
        return indptr, item[latest].astype(np.int32)

    def _query_matrix(self, sequences: list[np.ndarray]) -> sp.csr_matrix:
        rows, cols, vals = [], [], []
        for r, seq in enumerate(sequences):
            seq = np.asarray(seq, dtype=np.int64)[-self.config.query_items :]
            rows.append(np.full(len(seq), r, dtype=np.int64))
            cols.append(seq)
            vals.append(positional_weights(len(seq), self.config.query_half_life))
        return sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(len(sequences), len(self.item_ids_)),
            dtype=np.float32,
        )

    def _user_sequence(self, u: int) -> np.ndarray:
        if u < 0:
            return np.empty(0, dtype=np.int32)
        return self.recent_items_[self.recent_indptr_[u] : self.recent_indptr_[u + 1]]

    def _scores(self, sequences: list[np.ndarray]) -> np.ndarray:
        scores = (self._query_matrix(sequences) @ self.rules_).toarray()
        return np.where(scores > 0, scores, NEG_INF).astype(np.float32)

    def _query_scores(self, query: Query) -> SparseScores:
        history = self._user_sequence(self.user_index(query.user_id))
        sequence = np.concatenate([history, self._session_indices(query)])
        seq = np.asarray(sequence, dtype=np.int64)[-self.config.query_items :]
        return positive_rows(self.rules_, seq, positional_weights(len(seq), self.config.query_half_life), len(self.item_ids_))

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        return self._scores([self._user_sequence(int(u)) for u in users])

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {"recent_indptr": self.recent_indptr_, "recent_items": self.recent_items_}
        return {**pack_csr("rules", self.rules_), **arrays}, {}

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.rules_ = unpack_csr(arrays, "rules")
        self.recent_indptr_ = arrays["recent_indptr"]
        self.recent_items_ = arrays["recent_items"]
