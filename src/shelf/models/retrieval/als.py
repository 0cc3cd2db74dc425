"""Implicit-feedback matrix factorisation (ALS, Hu/Koren/Volinsky) trained with ``implicit``.

Confidence of a (user, item) pair is ``1 + alpha * log1p(r)`` where ``r`` is the sum of its event
weights (a purchase says more than a view; repeated views saturate). ``implicit`` is only needed
to *train*: scoring and fold-in are plain numpy, so a saved model serves without it.

Fold-in solves the same least-squares problem ALS solves for a user, with the item factors held
fixed, so a shopper who was not in the training set (or who has new events) gets a personalised
vector in microseconds without retraining. Items that had no training events have no meaningful
factors and are never proposed (-inf); unknown item ids in a fold-in are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


@dataclass(frozen=True)
class ALSConfig:
    """Parameters of ``ALSRetriever``.

    Attributes:
        factors: latent dimensions.
        regularization: L2 penalty on the factors.
        alpha: confidence scale: ``c = 1 + alpha * log1p(summed event weight)``.
        iterations: ALS sweeps.
        seed: random initialisation (same seed, same data, same threads: same model).
        num_threads: threads for training (0 = all cores).
        session_half_life: a session's items, folded in for an anonymous shopper, weigh
            ``0.5 ** (steps back / session_half_life)``.
        event_weights: weight of each event type.
    """

    factors: int = 64
    regularization: float = 0.05
    alpha: float = 2.0
    iterations: int = 15
    seed: int = 0
    num_threads: int = 1
    session_half_life: float = 5.0
    event_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))


class ALSRetriever(RetrieverBase):
    """ALS matrix factorisation with fold-in of new users and new events."""

    name = "als"
    config_class = ALSConfig
    min_items = 2

    def _validate_config(self) -> None:
        c = self.config
        for name in ("factors", "iterations"):
            value = getattr(c, name)
            if not isinstance(value, int) or value < 1:
                raise ModelError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(c.num_threads, int) or c.num_threads < 0:
            raise ModelError(f"num_threads must be an integer >= 0, got {c.num_threads!r}")
        check_positive("regularization", c.regularization)
        check_positive("alpha", c.alpha, allow_zero=True)
        check_positive("session_half_life", c.session_half_life)
        check_event_weights(c.event_weights)

    def _confidence(self, weights: sp.csr_matrix) -> sp.csr_matrix:
        c = sp.csr_matrix(weights, dtype=np.float32, copy=True)
        c.data = (1.0 + self.config.alpha * np.log1p(c.data)).astype(np.float32)
        return c

    def _fit(self, data: Interactions) -> None:
        try:
            from implicit.cpu.als import AlternatingLeastSquares
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ModelError("ALSRetriever needs the 'implicit' package: pip install 'shelf[models]'") from e
        c = self.config
        weights = data.matrix(c.event_weights)
        if weights.nnz == 0:
            raise ModelFitError("ALSRetriever: no positive events from known users to learn from")
        # implicit runs its own threads; a BLAS pool inside each oversubscribes the cores (implicit
        # warns about exactly this), so BLAS is held to one thread while it builds and fits.
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=c.factors,
                regularization=c.regularization,
                alpha=1.0,
                iterations=c.iterations,
                random_state=c.seed,
                num_threads=c.num_threads,
            )
            model.fit(self._confidence(weights), show_progress=False)
        self.user_factors_ = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_factors_ = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        check_finite(type(self).__name__, self.user_factors_, self.item_factors_)
        self.trained_items_ = np.asarray(weights.getnnz(axis=0) > 0)
        # Users' own items, kept so that fold-in can add new events to what a user already did.
        self.history_ = weights

    # -- fold-in --------------------------------------------------------------------------------

    def _solve(self, items: np.ndarray, confidence: np.ndarray) -> np.ndarray:
        """The ALS user vector for items with confidences (the solve ``implicit`` does)."""
        Y = self.item_factors_.astype(np.float64)
        YtY = self.__dict__.get("_yty")
        if YtY is None:
            YtY = self.__dict__["_yty"] = Y.T @ Y
        k = Y.shape[1]
        if len(items) == 0:
            return np.zeros(k, dtype=np.float32)
        Yi = Y[items]
        A = YtY + self.config.regularization * np.eye(k) + (Yi.T * (confidence - 1.0)) @ Yi
        b = Yi.T @ confidence
        return np.linalg.solve(A, b).astype(np.float32)

    def user_vector(self, item_weights: Mapping[int, float] | sp.csr_matrix) -> np.ndarray:
        """Fold in one user from summed event weights per item index (a 1 × n_items row)."""
        row = sp.csr_matrix(item_weights)
        row.sum_duplicates()
        keep = (row.data > 0) & self.trained_items_[row.indices]
        conf = self._confidence(sp.csr_matrix((row.data[keep], row.indices[keep], [0, int(keep.sum())]), shape=row.shape))
        return self._solve(conf.indices, conf.data.astype(np.float64))

    def fold_in(self, user_id: str, item_ids: Sequence[str], event_types: Sequence[str] | None = None) -> np.ndarray:
        """Update (or create) a user's vector from new events, without retraining.

        ``item_ids``/``event_types`` are the new events (types default to views). Unknown items
        are ignored. Returns the new vector; later ``retrieve`` calls for ``user_id`` use it.
        """
        self._check_fitted()
        types = list(event_types) if event_types is not None else ["view"] * len(item_ids)
        if len(types) != len(item_ids):
            raise ModelError("fold_in: item_ids and event_types must have the same length")
        idx = self.items.lookup(list(item_ids))
        w = np.array([self.config.event_weights.get(t, 0.0) for t in types], dtype=np.float32)
        keep = idx >= 0
        new = sp.csr_matrix((w[keep], (np.zeros(int(keep.sum()), dtype=np.int64), idx[keep])), shape=(1, self.n_items))
        u = self.user_index(user_id)
        if u < 0:
            self.user_ids_ = np.append(self.user_ids_, np.array([user_id], dtype=object))
            self.user_factors_ = np.vstack([self.user_factors_, np.zeros((1, self.user_factors_.shape[1]), np.float32)])
            self.history_ = sp.vstack([self.history_, sp.csr_matrix((1, self.n_items), dtype=np.float32)]).tocsr()
            u = len(self.user_ids_) - 1
        row = self.history_.getrow(u) + new
        row.data = np.maximum(row.data, 0.0)
        row.eliminate_zeros()
        vector = self.user_vector(row)
        history = self.history_.tolil()
        history[u] = row
        self.history_ = history.tocsr()
        self.user_factors_[u] = vector
        return vector

    # -- scoring --------------------------------------------------------------------------------

    def _mask(self, scores: np.ndarray) -> np.ndarray:
        return np.where(self.trained_items_, scores, NEG_INF).astype(np.float32)

    def _score_query(self, query: Query) -> np.ndarray:
        u = self.user_index(query.user_id)
        session = self._session_indices(query)
        session = session[self.trained_items_[session]]  # new items carry no signal for ALS
        if u < 0 and len(session) == 0:
            return np.full(self.n_items, NEG_INF, dtype=np.float32)
        if len(session) == 0:
            vector = self.user_factors_[u]
        else:
            weights = positional_weights(len(session), self.config.session_half_life)
            row = sp.csr_matrix((weights, (np.zeros(len(session), dtype=np.int64), session)), shape=(1, self.n_items))
            if u >= 0:
                row = row + self.history_.getrow(u)
            vector = self.user_vector(row)
        return self._mask(self.item_factors_ @ vector)

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        return self._mask(self.user_factors_[users] @ self.item_factors_.T)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {
            "user_factors": self.user_factors_,
            "item_factors": self.item_factors_,
            "trained_items": self.trained_items_,
            **pack_csr("history", self.history_),
        }, {}

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.user_factors_ = arrays["user_factors"]
        self.item_factors_ = arrays["item_factors"]
        self.trained_items_ = arrays["trained_items"].astype(bool)
        self.history_ = unpack_csr(arrays, "history")
