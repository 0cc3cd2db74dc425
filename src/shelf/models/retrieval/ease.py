"""EASE (Steck 2019): a linear item-item autoencoder with a closed-form solution.

``B = I - P / diag(P)`` with ``P = (XᵀX + λI)⁻¹`` over the ``max_items`` most active items.

Memory bound: with ``N = max_items``, the solve holds about three dense ``N × N`` float32
matrices (the Gram matrix, its inverse, and ``B``): ``12 · N²`` bytes, 1.2 GB for N = 10 000,
4.8 GB for N = 20 000. The saved model keeps one (``4 · N²`` bytes). Items outside the kept set
score ``-inf`` (the blend fills them from other sources).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
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


@dataclass(frozen=True)
class EASEConfig:
    """Parameters of ``EASERetriever``.

    Attributes:
        regularization: λ added to the Gram matrix's diagonal.
        max_items: keep the N items with the most users (memory ≈ 12·N² bytes during the solve).
        binary: use 1 for every positive (user, item) pair instead of summed event weights.
        session_half_life: for a session, weights ``0.5 ** (steps back / session_half_life)``.
        event_weights: weight of each event type.
    """

    regularization: float = 300.0
    max_items: int = 10_000
    binary: bool = True
    session_half_life: float = 5.0
    event_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))


class EASERetriever(RetrieverBase):
    """EASE over the most active items."""

    name = "ease"
    config_class = EASEConfig
    min_items = 2

    def _validate_config(self) -> None:
        check_positive("regularization", self.config.regularization)
        check_positive("session_half_life", self.config.session_half_life)
        if not isinstance(self.config.max_items, int) or self.config.max_items < 2:
            raise ModelError(f"max_items must be an integer >= 2, got {self.config.max_items!r}")
        check_event_weights(self.config.event_weights)

    def _user_matrix(self, data: Interactions) -> sp.csr_matrix:
        m = data.matrix(self.config.event_weights)
        if self.config.binary:
            m.data = np.ones_like(m.data)
        return m

    def _fit(self, data: Interactions) -> None:
        x = self._user_matrix(data)
        users_per_item = x.getnnz(axis=0)
        active = np.flatnonzero(users_per_item > 0)
        if len(active) < 2:
            raise ModelFitError("EASERetriever: needs positive events on at least 2 items")
        order = np.lexsort((active, -users_per_item[active]))
        kept = np.sort(active[order[: self.config.max_items]])
        xk = sp.csr_matrix(x[:, kept], dtype=np.float32)
        gram = _gram(xk)
        gram[np.diag_indices_from(gram)] += self.config.regularization
        try:
            # SciPy spots the symmetric positive definite matrix and inverts it through Cholesky.
            p = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
        except np.linalg.LinAlgError as e:  # pragma: no cover - λ > 0 keeps it invertible
            raise ModelFitError(f"EASERetriever: Gram matrix not invertible ({e}); raise regularization") from e
        del gram
        b = p / (-np.diag(p))[None, :]
        np.fill_diagonal(b, 0.0)
        del p
        self.weights_ = b.astype(np.float32)
        check_finite(type(self).__name__, self.weights_)
        self.kept_items_ = kept.astype(np.int64)
        self.history_ = xk.tocsr()

    def _expand(self, kept_scores: np.ndarray) -> np.ndarray:
        out = np.full(kept_scores.shape[:-1] + (len(self.item_ids_),), NEG_INF, dtype=np.float32)
        out[..., self.kept_items_] = kept_scores
        return out

    def _score_query(self, query: Query) -> np.ndarray:
        u = self.user_index(query.user_id)
        x = np.zeros(len(self.kept_items_), dtype=np.float32)
        if u >= 0:
            row = self.history_.getrow(u)
            x[row.indices] = row.data
        session = self._session_indices(query)
        if len(session):
            position = np.searchsorted(self.kept_items_, session)
            position = np.minimum(position, len(self.kept_items_) - 1)
            known = self.kept_items_[position] == session
            weights = positional_weights(len(session), self.config.session_half_life)
            np.maximum.at(x, position[known], weights[known])
        if not x.any():
            return np.full(len(self.item_ids_), NEG_INF, dtype=np.float32)
        nonzero = np.flatnonzero(x)  # a few rows of B instead of the whole N × N matrix per query
        return self._expand(x[nonzero] @ self.weights_[nonzero])

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        return self._expand(np.asarray(self.history_[users] @ self.weights_, dtype=np.float32))

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {
            "weights": self.weights_,
            "kept_items": self.kept_items_,
            **pack_csr("history", self.history_),
        }, {}

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.weights_ = arrays["weights"]
        self.kept_items_ = arrays["kept_items"]
        self.history_ = unpack_csr(arrays, "history")


GRAM_BLOCK = 1_024  # Gram columns computed at once: a sparse product this wide stays small


def _gram(x: sp.csr_matrix) -> np.ndarray:
    """Dense ``XᵀX`` (float32), a block of columns at a time: the sparse product of the whole
    matrix would hold every non-zero of an almost dense N × N result (12 bytes each)."""
    n = x.shape[1]
    xt = sp.csr_matrix(x.T)
    xc = sp.csc_matrix(x)
    gram = np.empty((n, n), dtype=np.float32)
    for start in range(0, n, GRAM_BLOCK):
        stop = min(start + GRAM_BLOCK, n)
        gram[:, start:stop] = (xt @ xc[:, start:stop]).toarray()
    return gram

