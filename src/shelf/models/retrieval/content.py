"""Content: item vectors from catalogue metadata, so that a newly launched item with no events
can be recommended and has neighbours.

Features per item (from ``Interactions.item_table``, newest version of each item): every level
of its category path (``cat:electronics``, ``cat:electronics/phone``), its brand, a price band
(quantiles of log price), title tokens, and simple free attributes (``attr:colour=red``). Each
feature is weighted by its group weight times an IDF; rows are L2-normalised, so item-item
similarity is a cosine. A user's profile is the weighted mean of the vectors of their items.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from shelf.models.base import DEFAULT_EVENT_WEIGHTS, Interactions, Query, Scored
from shelf.models.io import ModelError, ModelFitError, pack_csr, unpack_csr
from shelf.models.retrieval._base import (
    NEG_INF,
    RetrieverBase,
    check_event_weights,
    check_positive,
    latest_rows,
    positional_weights,
)
from shelf.models.retrieval.scores import ItemClusters, LinearScores, compiled
from shelf.schema import category_levels

_TOKEN = re.compile(r"\w+", re.UNICODE)
MAX_CLUSTERS = 2048  # a query scores every centroid: this bounds that part of its cost


@dataclass(frozen=True)
class ContentConfig:
    """Parameters of ``ContentRetriever``.

    Attributes:
        category_weight / brand_weight / price_weight / title_weight / attribute_weight:
            weight of each feature group (0 turns it off).
        price_bands: number of quantile bands of log price.
        min_token_length: shorter title tokens are dropped.
        max_token_share: title tokens in more than this share of items are dropped (stop words).
        session_half_life: session items weigh ``0.5 ** (steps back / session_half_life)``.
        event_weights: weight of each event type in a user's profile.
        approximate_from: catalogues with at least this many items also get item clusters
            (spherical k-means, about ``cluster_size`` items each), and a profile so broad that
            exact pruning would read most of the catalogue takes its top-n from the items of the
            clusters closest to it (``candidate_factor`` times n of them, at least
            ``min_candidates``) instead of scoring every item: per-request cost stops growing
            with the catalogue. Smaller catalogues, ``None``, ``dense()``, ``at()`` and
            ``score_users`` (evaluation) stay exact. See ``shelf.models.retrieval.scores.ItemClusters``.
    """

    category_weight: float = 1.0
    brand_weight: float = 1.0
    price_weight: float = 0.5
    title_weight: float = 1.0
    attribute_weight: float = 0.5
    price_bands: int = 10
    min_token_length: int = 2
    max_token_share: float = 0.3
    session_half_life: float = 3.0
    event_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    approximate_from: int | None = 50_000
    cluster_size: int = 256
    # 5 (was 10 until 2026-12-07): on the serving bench's 100k-item shop the blend's top 40 is the
    # same on 99.9% (known shoppers) and 99.7% (sessions) of its items, content's own top 200
    # matches exact scoring on 75% instead of 87%, and a request costs 40-60 µs less.
    candidate_factor: int = 5
    min_candidates: int = 1000


def _attribute_features(text: str | None) -> list[str]:
    if not text:
        return []
    try:
        values = json.loads(text)
    except ValueError:
        return []
    out = []
    if isinstance(values, dict):
        for key, value in values.items():
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, (str, int, bool)) and len(str(v)) <= 64:
                    out.append(f"attr:{key}={str(v).lower()}")
    return out


class ContentRetriever(RetrieverBase):
    """TF-IDF-like metadata vectors; user profile = mean of their items' vectors."""

    name = "content"
    config_class = ContentConfig

    def _validate_config(self) -> None:
        c = self.config
        for name in ("category_weight", "brand_weight", "price_weight", "title_weight", "attribute_weight"):
            check_positive(name, getattr(c, name), allow_zero=True)
        if not isinstance(c.price_bands, int) or c.price_bands < 1:
            raise ModelError(f"price_bands must be an integer >= 1, got {c.price_bands!r}")
        if not 0 < c.max_token_share <= 1:
            raise ModelError(f"max_token_share must lie in (0, 1], got {c.max_token_share!r}")
        check_positive("session_half_life", c.session_half_life)
        if c.approximate_from is not None and (not isinstance(c.approximate_from, int) or c.approximate_from < 1):
            raise ModelError(f"approximate_from must be None or an integer >= 1, got {c.approximate_from!r}")
        for name in ("cluster_size", "candidate_factor", "min_candidates"):
            if not isinstance(getattr(c, name), int) or getattr(c, name) < 1:
                raise ModelError(f"{name} must be an integer >= 1, got {getattr(c, name)!r}")
        check_event_weights(c.event_weights)

    def _features(self, data: Interactions) -> tuple[list[list[tuple[str, str]]], np.ndarray]:
        """Per catalogue row: (group, feature) pairs; and the row's item index."""
        table = latest_rows(data.item_table, "item_id")
        if table is None or table.num_rows == 0:
            raise ModelFitError(
                "ContentRetriever: no catalogue; build Interactions with item_table=... (ITEM_SCHEMA)"
            )
        rows = data.items.lookup(table["item_id"].to_numpy(zero_copy_only=False))
        column = {name: table[name].to_pylist() if name in table.column_names else [None] * table.num_rows
                  for name in ("category", "brand", "price", "title", "attributes")}
        prices = np.array([p if p is not None and p > 0 else np.nan for p in column["price"]], dtype=np.float64)
        bands = np.full(len(prices), -1)
        finite = np.isfinite(prices)
        if finite.any():
            edges = np.unique(np.quantile(np.log(prices[finite]), np.linspace(0, 1, self.config.price_bands + 1)[1:-1]))
            bands[finite] = np.searchsorted(edges, np.log(prices[finite]))
        features = []
        for r in range(table.num_rows):
            f: list[tuple[str, str]] = []
            levels = category_levels(column["category"][r])
            f += [("category", "cat:" + "/".join(levels[: k + 1]).lower()) for k in range(len(levels))]
            if column["brand"][r]:
                f.append(("brand", "brand:" + column["brand"][r].strip().lower()))
            if bands[r] >= 0:
                f.append(("price", f"price:{bands[r]}"))
            title = (column["title"][r] or "").lower()
            f += [("title", "tok:" + t) for t in _TOKEN.findall(title) if len(t) >= self.config.min_token_length]
            f += [("attribute", a) for a in _attribute_features(column["attributes"][r])]
            features.append(f)
        return features, rows

    def _fit(self, data: Interactions) -> None:
        c = self.config
        features, rows = self._features(data)
        group_weight = {
            "category": c.category_weight,
            "brand": c.brand_weight,
            "price": c.price_weight,
            "title": c.title_weight,
            "attribute": c.attribute_weight,
        }
        vocabulary: dict[str, int] = {}
        groups: list[str] = []
        r_idx, f_idx = [], []
        for row, feats in zip(rows, features, strict=True):
            if row < 0:
                continue
            for group, name in feats:
                if group_weight[group] <= 0:
                    continue
                j = vocabulary.setdefault(name, len(vocabulary))
                if j == len(groups):
                    groups.append(group)
                r_idx.append(row)
                f_idx.append(j)
        n_items = data.n_items
        tf = sp.csr_matrix(
            (np.ones(len(r_idx), dtype=np.float32), (np.asarray(r_idx, dtype=np.int64), np.asarray(f_idx, dtype=np.int64))),
            shape=(n_items, len(vocabulary)),
        )
        tf.sum_duplicates()
        described = max(int((tf.getnnz(axis=1) > 0).sum()), 1)
        df = np.asarray((tf > 0).sum(axis=0)).ravel()
        idf = np.log((1.0 + described) / (1.0 + df)) + 1.0
        weight = np.array([group_weight[g] for g in groups], dtype=np.float64) * idf
        is_title = np.array([g == "title" for g in groups], dtype=bool)
        weight[is_title & (df > c.max_token_share * described)] = 0.0
        # Title tokens: sublinear tf; other groups are binary already.
        tf.data = 1.0 + np.log(tf.data)
        x = sp.csr_matrix(tf.multiply(weight[None, :]), dtype=np.float32)
        x.eliminate_zeros()
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        x = sp.csr_matrix(x.multiply(1.0 / np.maximum(norms, 1e-12)[:, None]), dtype=np.float32)
        if x.nnz == 0:
            raise ModelFitError("ContentRetriever: the catalogue has no usable metadata (category, brand, price, title)")
        self.item_vectors_ = x
        self.feature_names_ = np.array(list(vocabulary), dtype=object)
        self.history_ = data.matrix(c.event_weights)
        self.profiles_ = self._history_profiles()
        self.cluster_of_, self.centroids_ = None, None
        if c.approximate_from is not None and n_items >= c.approximate_from:
            self.cluster_of_, self.centroids_ = _spherical_kmeans(x, max(n_items // c.cluster_size, 1))

    def _clusters(self) -> ItemClusters | None:
        """The cluster layout of the item rows (None: exact only), built once per fit or load."""
        if getattr(self, "centroids_", None) is None:
            return None
        source, cached = getattr(self, "_clusters_cache", (None, None))
        if source is not self.item_vectors_ or cached is None:
            c = self.config
            cached = ItemClusters(self.item_vectors_, self.cluster_of_, self.centroids_, c.candidate_factor, c.min_candidates)
            self._clusters_cache = (self.item_vectors_, cached)
        return cached

    def warm(self) -> None:
        """Id lookups, the posting lists (a transpose of the item matrix) and the item clusters,
        built before the first request rather than during it."""
        super().warm()
        self._features_by_item()
        self._clusters()

    def _linear(self, features: np.ndarray, values: np.ndarray) -> LinearScores:
        by_feature, column_max = self._features_by_item()
        return LinearScores(self.item_vectors_, by_feature, column_max, features, values, clusters=self._clusters())

    # -- scoring --------------------------------------------------------------------------------

    def _profile_rows(self, rows: sp.csr_matrix) -> sp.csr_matrix:
        """Weighted mean of item vectors per row of an (n × items) weight matrix."""
        totals = np.asarray(rows.sum(axis=1)).ravel()
        rows = sp.csr_matrix(rows.multiply(1.0 / np.maximum(totals, 1e-12)[:, None]))
        return rows @ self.item_vectors_

    def _features_by_item(self) -> tuple[sp.csr_matrix, np.ndarray]:
        """features × items (the posting lists) and each feature's largest value, built once:
        transposing the item matrix per query cost ~10 ms at 100k items."""
        # Keyed on the very matrix it was built from: a refit or a load replaces item_vectors_.
        source, cached = getattr(self, "_features_by_item_cache", (None, None))
        if source is not self.item_vectors_ or cached is None:
            by_feature = sp.csr_matrix(self.item_vectors_.T, dtype=np.float32)
            column_max = np.asarray(self.item_vectors_.max(axis=0).toarray()).ravel().astype(np.float64)
            cached = (by_feature, column_max)
            self._features_by_item_cache = (self.item_vectors_, cached)
        return cached

    def _scores_from_weights(self, rows: sp.csr_matrix) -> np.ndarray:
        profile = sp.csr_matrix(self._profile_rows(rows), dtype=np.float32)
        scores = (profile @ self._features_by_item()[0]).toarray()
        return np.where(scores > 0, scores, NEG_INF).astype(np.float32)

    def _history_profile(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        """A training user's profile from their history alone: features (ascending), float32
        weights; what ``profiles_`` stores (bundles saved without it compute it per request)."""
        h, x = self.history_, self.item_vectors_
        start, end = h.indptr[u], h.indptr[u + 1]
        _, features, sums = compiled().history_profiles(
            np.array([0, end - start], dtype=h.indptr.dtype), h.indices[start:end], h.data[start:end], x.indptr, x.indices, x.data, x.shape[1]
        )
        return features, sums.astype(np.float32)

    def _history_profiles(self) -> sp.csr_matrix:
        """users × features: every training user's history profile (the weighted mean of the
        vectors of their items; ``kernels.history_profiles``), stored like a factor model's user
        vectors: a known shopper without session items is then a row lookup (~50 µs less per
        request than gathering it), and a fit computes all of them in one compiled pass."""
        h, x = self.history_, self.item_vectors_
        indptr, features, sums = compiled().history_profiles(h.indptr, h.indices, h.data, x.indptr, x.indices, x.data, x.shape[1])
        return sp.csr_matrix((sums.astype(np.float32), features.astype(np.int32), indptr), shape=(h.shape[0], x.shape[1]))

    def _query_scores(self, query: Query) -> LinearScores:
        # The profile: the weighted mean of the vectors of the shopper's items (history, then the
        # session's items weighted like the whole history), gathered row by row in one compiled
        # call (``kernels.session_profile``; its numpy form is the reference in the tests).
        u = self.user_index(query.user_id)
        if 0 <= u < self.history_.shape[0] and not query.session_items:
            profiles = self.profiles_
            if profiles is not None and u < profiles.shape[0]:
                start, end = profiles.indptr[u], profiles.indptr[u + 1]
                return self._linear(profiles.indices[start:end], profiles.data[start:end])
            return self._linear(*self._history_profile(u))  # a bundle saved without profiles
        session = self._session_indices(query)
        if u < 0 and not len(session):
            return self._linear(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))
        h, x = self.history_, self.item_vectors_
        start, end = (h.indptr[u], h.indptr[u + 1]) if u >= 0 else (0, 0)
        features, values = compiled().session_profile(
            x.indptr, x.indices, x.data, h.indices[start:end], h.data[start:end], session, positional_weights(len(session), self.config.session_half_life)
        )
        return self._linear(features, values)

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        return self._scores_from_weights(self.history_[users])

    def similar(self, item_id: str, n: int, exclude: frozenset[str] = frozenset()) -> Scored:
        """The ``n`` items whose metadata is closest to ``item_id``'s (works for new items)."""
        self._check_fitted()
        i = self.items.get(item_id)
        if i < 0:
            return Scored.empty()
        start, end = self.item_vectors_.indptr[i], self.item_vectors_.indptr[i + 1]
        scores = self._linear(self.item_vectors_.indices[start:end], self.item_vectors_.data[start:end])
        banned = np.append(self.item_indices(exclude), i)
        top, values = scores.top(n + len(banned))
        keep = ~np.isin(top, banned)
        top, values = top[keep][:n], values[keep][:n]
        return Scored(self.item_ids_[top], values, np.full(len(top), self.name, dtype=object))

    def item_vector(self, item_ids: Sequence[str]) -> sp.csr_matrix:
        """The metadata vectors of items (rows of zeros for unknown ones), for the ranking stage."""
        self._check_fitted()
        idx = self.items.lookup(list(item_ids))
        out = self.item_vectors_[np.maximum(idx, 0)]
        return sp.csr_matrix(out.multiply((idx >= 0)[:, None].astype(np.float32)))

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        clusters = {} if self.centroids_ is None else {"cluster_of": self.cluster_of_, "centroids": self.centroids_}
        profiles = {} if self.profiles_ is None else pack_csr("profiles", self.profiles_)
        return {
            **pack_csr("item_vectors", self.item_vectors_),
            **pack_csr("history", self.history_),
            **profiles,
            "feature_names": self.feature_names_,
            **clusters,
        }, {}

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.item_vectors_ = unpack_csr(arrays, "item_vectors")
        self.history_ = unpack_csr(arrays, "history")
        # Bundles saved before profiles were stored build each one per request.
        self.profiles_ = unpack_csr(arrays, "profiles") if "profiles.indptr" in arrays else None
        self.feature_names_ = arrays["feature_names"]
        # Bundles saved before item clusters existed (or below approximate_from) answer exactly.
        self.cluster_of_, self.centroids_ = arrays.get("cluster_of"), arrays.get("centroids")


def _spherical_kmeans(x: sp.csr_matrix, n_clusters: int, iterations: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cluster of each row (-1: a row without features) and the clusters' unit-length centroids.

    Centroids are learnt on a sample of rows (20 per cluster), then every row is assigned to its
    closest centroid (cosine); dense blocks keep the products on BLAS. Deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    described = np.flatnonzero(np.diff(x.indptr) > 0)
    n_clusters = max(1, min(n_clusters, MAX_CLUSTERS, len(described)))
    sample = x[np.sort(rng.choice(described, min(len(described), 20 * n_clusters), replace=False))]
    centroids = sample[rng.choice(sample.shape[0], n_clusters, replace=False)].toarray()
    for _ in range(iterations):
        nearest = _nearest(sample, centroids)
        members = sp.csr_matrix((np.ones(len(nearest), dtype=np.float32), (nearest, np.arange(len(nearest)))), shape=(n_clusters, len(nearest)))
        sums = np.asarray((members @ sample).todense(), dtype=np.float32)
        norms = np.linalg.norm(sums, axis=1)
        filled = norms > 0  # an empty cluster keeps its old centroid
        centroids[filled] = sums[filled] / norms[filled, None]
    cluster_of = np.full(x.shape[0], -1, dtype=np.int32)
    cluster_of[described] = _nearest(x[described], centroids)
    return cluster_of, centroids.astype(np.float32)


def _nearest(rows: sp.csr_matrix, centroids: np.ndarray, block: int = 4096) -> np.ndarray:
    """Index of each row's closest centroid (largest dot product), block by block."""
    out = np.empty(rows.shape[0], dtype=np.int32)
    for start in range(0, rows.shape[0], block):
        out[start : start + block] = (rows[start : start + block].toarray() @ centroids.T).argmax(axis=1)
    return out
