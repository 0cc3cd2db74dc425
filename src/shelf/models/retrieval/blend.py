"""Blend: merge several retrievers' candidates, keep every source's score, and never come back
short.

Fusion is weighted reciprocal rank (``rrf``: an item at rank r of source s earns
``w_s / (rrf_k + r)``) or a weighted sum of min-max normalised scores (``score``), over each
source's ``candidates_per_source`` best items.

The cold-start chain falls out of the sources and one fallback:

* a shopper with history: every source that knows them (repeat, co-occurrence, ALS, EASE,
  neighbours, content) with ``weights``;
* an unknown shopper with session items: the sources that read sessions (co-occurrence, repeat
  in session, ALS/EASE fold-in, content) with ``session_weights``;
* nothing at all: the ``fallback`` source only: segment popularity from the context (region,
  age band, time of day), which is global trending when the segment is unknown;

and the fallback then fills every list up to ``n`` (and the rest of the catalogue after it), so
a shopper always gets ``min(n, catalogue size - excluded)`` items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import accumulate
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import scipy.sparse as sp

from shelf.models.base import Interactions, Query, Retriever, Scored
from shelf.models.io import (
    ModelError,
    ModelFitError,
    NotFittedError,
    config_from_dict,
    config_to_dict,
    load_bundle,
    save_bundle,
)
from shelf.models.retrieval._base import check_positive, top_indices
from shelf.models.retrieval.scores import DenseScores, QueryScores, top_of_rows

Stage = Literal["user", "session", "context"]


@dataclass(frozen=True)
class BlendConfig:
    """Parameters of ``BlendRetriever``.

    Attributes:
        weights: per source name, for shoppers with history (a missing source weighs 1.0, 0
            turns it off).
        session_weights: per source for anonymous sessions; None reuses ``weights``.
        fusion: ``rrf`` (weighted reciprocal rank) or ``score`` (normalised score sum).
        rrf_k: the rank offset of reciprocal-rank fusion (higher flattens).
        candidates_per_source: how many of each source's best items enter the fusion.
        fallback: name of the source that fills lists up (popularity); None fills from the
            catalogue in index order.
        skip_unfittable: a source (other than the fallback) that cannot fit this data (e.g.
            content without a catalogue) is left out and listed in ``skipped_sources_`` instead
            of failing the whole blend.
        tune: learn ``weights`` and ``session_weights`` in ``fit`` on the last
            ``tune_holdout_share`` of the training events, plus up to two earlier windows when
            that hold-out is small (see ``shelf.models.retrieval.tuning``); the configured weights
            are the prior, left only on a gain larger than its standard error. Costs one to three
            extra fits of every source (one on catalogues above
            ``tuning.DENSE_TUNING_ITEMS`` items, whose first window is large enough).
            Tuning also picks the fusion (``rrf`` or ``score``) that does better on the hold-out;
            ``fusion`` is where it starts and what stays when tuning cannot run.
        demote_seen: rank the items a training shopper already touched last (what tuning turns
            on where shoppers never come back to an item, e.g. films); tuning decides it when
            it runs, this is what stays otherwise (see ``as_tuned``).
    """

    weights: Mapping[str, float] = field(default_factory=dict)
    session_weights: Mapping[str, float] | None = None
    fusion: Literal["rrf", "score"] = "rrf"
    rrf_k: float = 10.0
    candidates_per_source: int = 200
    fallback: str | None = "popularity"
    skip_unfittable: bool = True
    tune: bool = False
    tune_holdout_share: float = 0.2
    demote_seen: bool = False


@dataclass(frozen=True)
class Candidates:
    """A blended list plus, per source, its raw score for each listed item (NaN: not scored)."""

    scored: Scored
    source_scores: dict[str, np.ndarray]
    stage: Stage


class BlendRetriever:
    """Hybrid retriever over named sources, with the cold-start chain built in."""

    name = "blend"
    config_class = BlendConfig

    def __init__(self, sources: Mapping[str, Any], config: BlendConfig | None = None) -> None:
        config = BlendConfig() if config is None else config
        if not isinstance(config, BlendConfig):
            raise ModelError(f"BlendRetriever takes a BlendConfig, got {type(config).__name__}")
        if not sources:
            raise ModelError("BlendRetriever needs at least one source")
        for name, source in sources.items():
            if not isinstance(source, Retriever) or not hasattr(source, "score_query"):
                raise ModelError(f"source {name!r} is not a shelf retriever (needs fit, retrieve, score_query)")
        if config.fallback is not None and config.fallback not in sources:
            raise ModelError(f"fallback source {config.fallback!r} is not among the sources {sorted(sources)}")
        if config.fusion not in ("rrf", "score"):
            raise ModelError(f"fusion must be 'rrf' or 'score', got {config.fusion!r}")
        check_positive("rrf_k", config.rrf_k, allow_zero=True)
        if not 0 < config.tune_holdout_share < 1:
            raise ModelError(f"tune_holdout_share must lie in (0, 1), got {config.tune_holdout_share!r}")
        if not isinstance(config.candidates_per_source, int) or config.candidates_per_source < 1:
            raise ModelError("candidates_per_source must be an integer >= 1")
        for table in (config.weights, config.session_weights or {}):
            for name, w in table.items():
                if name not in sources:
                    raise ModelError(f"weight given for unknown source {name!r}; sources are {sorted(sources)}")
                check_positive(f"weight of {name!r}", w, allow_zero=True)
        self.sources = dict(sources)
        self.config = config

    def __repr__(self) -> str:
        return f"BlendRetriever({list(self.sources)}, {self.config!r})"

    # -- fit ------------------------------------------------------------------------------------

    def fit(self, data: Interactions) -> Self:
        """Fit every source on ``data`` (skipping, if configured, those that cannot learn from it)."""
        skipped: dict[str, str] = {}
        for name, source in self.sources.items():
            try:
                source.fit(data)
            except ModelFitError as e:
                if not self.config.skip_unfittable or name == self.config.fallback:
                    raise
                skipped[name] = str(e)
        if len(skipped) == len(self.sources):
            raise ModelFitError(f"BlendRetriever: no source could fit: {skipped}")
        for key in ("_users_index", "_items_index", "_stage_weights"):  # lookups of the previous fit
            self.__dict__.pop(key, None)
        self.item_ids_ = np.asarray(data.items.ids, dtype=object).copy()
        self.skipped_sources_ = skipped
        self.weights_ = dict(self.config.weights)
        self.session_weights_ = None if self.config.session_weights is None else dict(self.config.session_weights)
        self.tuning_report_ = None
        self.fusion_ = self.config.fusion
        self.user_ids_ = np.asarray(data.users.ids, dtype=object).copy()
        self.seen_ = _seen_matrix(data)
        self.demote_seen_ = self.config.demote_seen
        if self.config.tune:
            from shelf.models.retrieval.tuning import tune_weights

            try:
                report = tune_weights(self, data, holdout_share=self.config.tune_holdout_share)
            except ModelFitError as e:
                self.tuning_report_ = str(e)  # too little data to tune: the configured weights stay
            else:
                self.weights_, self.session_weights_ = report.weights, report.session_weights
                self.fusion_ = report.fusion
                self.tuning_report_ = report
                # Tuning saw that shoppers (almost) never come back to an item (films): rank what
                # they already touched last, as the shop would never show it again anyway.
                self.demote_seen_ = report.masked_seen
        return self

    def as_tuned(self) -> BlendRetriever:
        """An unfitted copy that fits with this fit's outcome of tuning (weights, fusion, seen
        items demoted) instead of tuning again.

        For refitting the same blend on many slices of one history (a two-stage model's request
        moments): every slice then fuses its sources the same way, so the fused score means the
        same thing at every moment (re-tuning per slice moved it by orders of magnitude), and each
        fit costs one fit per source instead of the tuning's several.
        """
        self._check_fitted()
        config = replace(
            self.config,
            weights=dict(self.weights_),
            session_weights=None if self.session_weights_ is None else dict(self.session_weights_),
            fusion=self.fusion_,
            demote_seen=self.demote_seen_,
            tune=False,
        )
        sources = {name: type(source)(source.config) for name, source in self.sources.items()}
        return BlendRetriever(sources, config)

    def _seen_items(self, user_id: str | None) -> np.ndarray:
        """Indices of the items a training user touched (empty when unknown or not demoting)."""
        if not self.demote_seen_ or user_id is None:
            return np.empty(0, dtype=np.int64)
        u = self._user_rows().get(user_id)
        if u < 0:
            return np.empty(0, dtype=np.int64)
        return self.seen_.indices[self.seen_.indptr[u] : self.seen_.indptr[u + 1]].astype(np.int64)

    def _user_rows(self) -> Any:
        """Raw user id → training row, built once per fit or load."""
        index = self.__dict__.get("_users_index")
        if index is None:
            from shelf.models.base import IdIndex

            index = self.__dict__["_users_index"] = IdIndex(self.user_ids_)
        return index

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "item_ids_")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError("BlendRetriever is not fitted; call fit(data) or load(path) first")

    def warm(self) -> None:
        """The blend's own lookups (items, users, the active sources and their names), built
        before the first request; serving warms each source itself (``BundleRecommender``)."""
        self._check_fitted()
        self._user_rows()
        self.items_lookup(())
        self._source_names()
        self._share_item_index()
        from shelf.models.retrieval import kernels

        kernels.warm()  # the compiled request steps (fusion, co-occurrence rows, content clusters)

    def _share_item_index(self) -> None:
        """Give the sources fitted on the blend's own items one id lookup (theirs are equal
        copies): one dict instead of one per source, and a request's session items are looked
        up once for all of them (``IdIndex.lookup`` answers the same tuple again)."""
        shared = self.__dict__.get("_items_index")
        if shared is None:
            return
        for source in self.sources.values():
            ids = getattr(source, "item_ids_", None)
            if ids is not None and source.__dict__.get("_items_index") is not shared and len(ids) == len(self.item_ids_) and np.array_equal(ids, self.item_ids_):
                source.__dict__["_items_index"] = shared

    @property
    def active_sources(self) -> dict[str, Any]:
        self._check_fitted()
        return dict(self._active())

    def _active(self) -> dict[str, Any]:
        """The active sources (shared, not to be changed): asked several times per request, so
        built once per fit/load (keyed on the skip list it read)."""
        skipped, active = self.__dict__.get("_active_sources", (None, None))
        if skipped is not self.skipped_sources_ or active is None:
            active = {k: v for k, v in self.sources.items() if k not in self.skipped_sources_}
            self.__dict__["_active_sources"] = (self.skipped_sources_, active)
        return active  # type: ignore[no-any-return]

    def _source_names(self) -> np.ndarray:
        """The active sources' names, then "catalogue" (the label of catalogue-order filler)."""
        active = self._active()
        owner, names = self.__dict__.get("_names", (None, None))
        if owner is not active or names is None:
            names = np.array([*active, "catalogue"], dtype=object)
            self.__dict__["_names"] = (active, names)
        return names  # type: ignore[no-any-return]

    # -- routing --------------------------------------------------------------------------------

    def stage(self, query: Query) -> Stage:
        """Which link of the cold-start chain serves ``query``."""
        self._check_fitted()
        sources = self._active().values()
        if query.user_id is not None and any(s.user_index(query.user_id) >= 0 for s in sources):
            return "user"
        if not query.session_items:
            return "context"
        shared = self.__dict__.get("_items_index")
        if shared is not None and all(s.__dict__.get("_items_index") is shared for s in sources):
            # One lookup answers for every source (they share the index; see _share_item_index).
            # Read in Python: numpy's compare-and-reduce of a few ids cost ~4 us (measured in-process).
            return "session" if max(shared.lookup(query.session_items).tolist(), default=-1) >= 0 else "context"
        if any(len(s.item_indices(query.session_items)) for s in sources):
            return "session"
        return "context"

    def weights_for(self, stage: Stage) -> dict[str, float]:
        """Effective weight of each active source at a stage (context: the fallback only)."""
        active = self._active()
        table = self.weights_ if stage == "user" else (self.session_weights_ or self.weights_)
        # Built once per stage and weight table (fit, tuning and load replace the tables, never
        # change them in place): a request asked for it on every call.
        key = (stage, id(active), id(table), self.config.fallback)
        cached = self.__dict__.setdefault("_stage_weights", {}).get(key)
        if cached is not None and cached[0] is active and cached[1] is table:
            return dict(cached[2])  # a copy: the caller may change it
        if stage == "context":
            weights = {name: 1.0 for name in active if name == self.config.fallback}
        else:
            weights = {name: float(table.get(name, 1.0)) for name in active}
        self.__dict__["_stage_weights"][key] = (active, table, weights)
        return dict(weights)

    # -- fusion ---------------------------------------------------------------------------------

    def _contributions(self, ranked: np.ndarray, values: np.ndarray, weight: float, fusion: str | None = None) -> np.ndarray:
        if (fusion or self.__dict__.get("fusion_", self.config.fusion)) == "rrf":
            if ranked.ndim == 1:  # one request: weight over the cached reciprocal ranks
                return weight * self._reciprocal_ranks(len(ranked))
            ranks = np.arange(1, ranked.shape[-1] + 1, dtype=np.float64)
            return np.broadcast_to(weight / (self.config.rrf_k + ranks), ranked.shape).copy()
        values = np.asarray(values, dtype=np.float64)
        lo = values.min(axis=-1, keepdims=True)
        hi = values.max(axis=-1, keepdims=True)
        span = np.where(hi > lo, hi - lo, 1.0)
        return weight * (0.1 + 0.9 * (values - lo) / span)

    def _reciprocal_ranks(self, length: int) -> np.ndarray:
        cached = self.__dict__.get("_reciprocal")
        if cached is None or len(cached) < length:
            cached = self.__dict__["_reciprocal"] = 1.0 / (self.config.rrf_k + np.arange(1, max(length, self.config.candidates_per_source) + 1, dtype=np.float64))
        return cached[:length]

    def _fill_order(self, raw: Mapping[str, np.ndarray]) -> np.ndarray:
        """Scores that order the filler items: the fallback's, then catalogue order."""
        n = len(self.item_ids_)
        base = -np.arange(n, dtype=np.float64) / max(n, 1)  # catalogue order, in [-1, 0]
        fallback = self.config.fallback
        if fallback is None or fallback not in raw:
            return base
        fb = raw[fallback].astype(np.float64)
        finite = np.isfinite(fb)
        if not finite.any():
            return base
        lo, hi = fb[finite].min(), fb[finite].max()
        norm = (fb - lo) / (hi - lo) if hi > lo else np.zeros_like(fb)
        return np.where(finite, 1.0 + norm, 0.0) + base * 1e-3

    def candidates(self, query: Query, n: int, *, source_scores: bool = True) -> Candidates:
        """The blended top ``n`` with every source's raw score per item (for the ranking stage).

        Each source answers in its cheapest form (``QueryScores``: sparse for the sources that
        propose few items, a shared ranking for popularity), so a request costs O(candidates),
        not O(catalogue), unless a source is dense by nature (ALS, EASE, SASRec).
        ``source_scores=False`` skips the sources that neither vote nor fill (weight 0) and
        leaves ``Candidates.source_scores`` empty: what ``retrieve`` needs.
        """
        if n < 0:
            raise ModelError(f"n must be >= 0, got {n}")
        self._check_fitted()
        stage = self.stage(query)
        weights = self.weights_for(stage)
        banned = np.empty(0, dtype=np.int64)
        own_items_banned = False  # a shopper without history whose session items are all excluded
        if query.exclude:
            banned, own_items_banned = self._banned(query, stage)
        fallback = self.config.fallback
        cps = self.config.candidates_per_source
        active = self._active()
        per: dict[str, QueryScores] = {}
        idx_parts: list[np.ndarray] = []
        value_parts: list[np.ndarray] = []
        voter_weights: list[float] = []
        voters: list[int] = []
        for s, (name, source) in enumerate(active.items()):
            votes = weights.get(name, 0.0) > 0 and stage != "context"
            if not (votes or source_scores or name == fallback):
                continue
            if own_items_banned and not source_scores and name != fallback and getattr(source, "own_items_only", False):
                continue  # every item it could propose is excluded: its list would be empty
            scores = _query_scores(source, query)
            per[name] = scores
            if not votes:
                continue
            # With bans, a list holds up to cps + bans entries: the fusion drops the banned ones
            # and keeps the first cps of the rest (``kernels.fuse_allowed``).
            top, values = scores.top(cps + len(banned))
            if not len(top):
                continue
            idx_parts.append(top)
            value_parts.append(values)
            voter_weights.append(weights[name])
            voters.append(s)
        seen = self._seen_items(query.user_id) if stage == "user" else np.empty(0, dtype=np.int64)
        chosen, scores_out, sources_out = self._fuse(idx_parts, value_parts, voter_weights, voters, seen, n, banned, cps)
        sources_out = self._source_names()[sources_out]
        if len(chosen) < n:
            taken = np.union1d(banned, chosen) if len(banned) and len(chosen) else (banned if len(banned) else chosen)
            extra, fill_values = self._fill(per.get(fallback) if fallback else None, n - len(chosen), taken, seen)
            if fallback is not None and fallback in per:
                extra_src = np.where(np.isfinite(per[fallback].at(extra)), fallback, "catalogue").astype(object)
            else:
                extra_src = np.full(len(extra), "catalogue", dtype=object)
            if len(scores_out):
                # Filler ranks below every fused item, keeping the fallback's order.
                extra_scores = scores_out.min() - 1.0 - np.arange(len(extra), dtype=np.float64) / max(len(extra), 1)
            else:
                extra_scores = fill_values
            chosen = np.concatenate([chosen, extra])
            scores_out = np.concatenate([scores_out, extra_scores])
            sources_out = np.concatenate([sources_out, extra_src])
        scored = Scored(self.item_ids_[chosen], scores_out.astype(np.float32), sources_out)
        per_source: dict[str, np.ndarray] = {}
        if source_scores:
            for name, scores in per.items():
                values = scores.at(chosen)
                per_source[name] = np.where(np.isfinite(values), values, np.nan).astype(np.float32)
        return Candidates(scored, per_source, stage)

    def _banned(self, query: Query, stage: Stage) -> tuple[np.ndarray, bool]:
        """The excluded items' indices (ascending, unique, unknown ids left out) and whether a
        session shopper's own known items are all among them.

        Serving excludes the session's own items: then the exclusions are the session items
        again, whose lookup ``stage`` already made (``IdIndex.lookup`` answers the same tuple
        again), and they ban every one of them by definition. A second lookup of the same ids,
        and the set and numpy steps around it, cost ~10 us of a session request (measured
        in-process).
        """
        exclude = query.exclude
        own = exclude.issuperset(query.session_items)
        if own and len(exclude) == len(set(query.session_items)):  # the very same ids
            found = self.items_lookup(query.session_items)
        else:
            found = self.items_lookup(exclude)
        # Sorted, unique: np.unique's setup costs more than the few bans a request has.
        unique = {i for i in found.tolist() if i >= 0}
        banned = np.array(sorted(unique), dtype=np.int64)
        if stage != "session":
            return banned, False
        if own:  # every session item is excluded, known ones included
            return banned, True
        return banned, all(i in unique for i in self.items_lookup(query.session_items).tolist() if i >= 0)

    def _fuse(
        self,
        idx_parts: list[np.ndarray],
        value_parts: list[np.ndarray],
        weights: list[float],
        voters: list[int],
        seen: np.ndarray,
        n: int,
        banned: np.ndarray | None = None,
        keep: int = 0,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each voting source's top list (``idx_parts[s]``, best first, with its ``value_parts[s]``)
        weighted into contributions (``_contributions``), summed per item; the best ``n`` (ties:
        lower index), each with the source that contributed most (first source on ties). Seen
        items never win here.

        Sums run in source order in float64, as a dense sources × items accumulator summed down
        its source axis would (identical floats, identical ties), in one compiled pass with the
        contributions (``kernels.fuse_sources``; the numpy forms it replaced are the references in
        the tests): a few numpy calls per source per request cost more than the fusion itself.
        Given ``banned`` (ascending, unique), each list first loses its banned items and keeps its
        first ``keep`` others (``kernels.fuse_allowed``: an np.isin filter per list, compiled).
        """
        if not idx_parts:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64), np.empty(0, dtype=np.int64)
        from shelf.models.retrieval import kernels

        # Offsets summed in Python: np.cumsum of a short list cost ~9 µs here.
        starts = np.fromiter(accumulate(map(len, idx_parts), initial=0), dtype=np.int64, count=len(idx_parts) + 1)
        args = (
            np.concatenate(idx_parts).astype(np.int64, copy=False),
            np.concatenate(value_parts).astype(np.float64, copy=False),
            starts,
            np.array(weights, dtype=np.float64),
            np.array(voters, dtype=np.int64),
            self.__dict__.get("fusion_", self.config.fusion) == "rrf",
            float(self.config.rrf_k),
            np.asarray(seen, dtype=np.int64),
            n,
        )
        if banned is not None and len(banned):
            return kernels.fuse_allowed(*args, banned, keep)  # type: ignore[no-any-return]
        return kernels.fuse_sources(*args)  # type: ignore[no-any-return]

    def _fill(self, fallback: QueryScores | None, need: int, banned: np.ndarray, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``need`` filler items in fill order (fallback's score, then catalogue order; seen items
        last), never a banned one, and their fill values (see ``_fill_order``)."""
        if fallback is not None:
            # Sparse path: the fallback's own top list, long enough to survive the bans.
            top, _ = fallback.top(need + len(banned) + len(seen))
            if len(banned):
                top = top[~np.isin(top, banned)]
            if len(seen):
                top = top[~np.isin(top, seen)]
            if len(top) >= need:
                values = self._fill_values(fallback, top)
                pos = np.argsort(-values, kind="stable")[:need]
                return top[pos], values[pos]
        # Dense path (small catalogues, or a fallback that proposes too few): the whole order.
        raw = {self.config.fallback: fallback.dense()} if fallback is not None and self.config.fallback else {}
        fill_score = self._fill_order(raw)
        if len(seen):
            fill_score[seen] -= 10.0
        fill_score[banned] = -np.inf
        extra = top_indices(fill_score, need)
        return extra, fill_score[extra]

    def _fill_values(self, fallback: QueryScores, idx: np.ndarray) -> np.ndarray:
        """``_fill_order``'s values at ``idx`` without building the whole vector."""
        size = len(self.item_ids_)
        base = -idx.astype(np.float64) / max(size, 1)
        bounds = fallback.bounds()
        if bounds is None:
            return base
        lo, hi = bounds
        fb = fallback.at(idx).astype(np.float64)
        finite = np.isfinite(fb)
        norm = (fb - lo) / (hi - lo) if hi > lo else np.zeros_like(fb)
        return np.where(finite, 1.0 + norm, 0.0) + base * 1e-3

    def items_lookup(self, item_ids: Sequence[str] | frozenset[str]) -> np.ndarray:
        index = self.__dict__.get("_items_index")
        if index is None:
            from shelf.models.base import IdIndex

            index = self.__dict__["_items_index"] = IdIndex(self.item_ids_)
        return index.lookup(item_ids if type(item_ids) is tuple else list(item_ids))  # a tuple: see IdIndex.lookup

    def retrieve(self, query: Query, n: int) -> Scored:
        """``n`` items (fewer only when the catalogue minus ``exclude`` is smaller)."""
        return self.candidates(query, n, source_scores=False).scored

    def score_users(self, users: np.ndarray) -> np.ndarray:
        """Blended scores for training users: fused items > 0 > filler (in fallback order)."""
        self._check_fitted()
        users = np.asarray(users, dtype=np.int64)
        size = len(self.item_ids_)
        fused = np.zeros((len(users), size), dtype=np.float64)
        raw: dict[str, np.ndarray] = {}
        weights = self.weights_for("user")
        for name, source in self.active_sources.items():
            w = weights.get(name, 0.0)
            if w <= 0 and name != self.config.fallback:
                continue
            scores = source.score_users(users)
            if name == self.config.fallback:
                raw[name] = scores
            if w <= 0:
                continue
            fused += w * self.contribution_matrix(scores)
        fill = np.zeros_like(fused)
        for row in range(len(users)):
            fill[row] = self._fill_order({k: v[row] for k, v in raw.items()})
        # Filler lies strictly below 0 (fill order in [-3, -0.9]); fused items are > 0.
        out = np.where(fused > 0, fused, fill - 3.0)
        if self.demote_seen_:
            seen = self.seen_[users]
            rows = np.repeat(np.arange(len(users)), np.diff(seen.indptr))
            out[rows, seen.indices] = fill[rows, seen.indices] - 13.0  # below every unseen item
        return out.astype(np.float32)

    def contribution_matrix(self, scores: np.ndarray, fusion: str | None = None) -> np.ndarray:
        """Unit-weight fusion contributions of one source's (queries × items) scores.

        Only each row's ``candidates_per_source`` best finite items contribute; the blend's score
        is the weighted sum of these matrices over sources (linear in the weights, which is what
        makes weight tuning cheap).
        """
        top, by_fusion = self.contribution_entries(scores, (fusion,))
        out = np.zeros(scores.shape, dtype=np.float64)
        np.put_along_axis(out, top, by_fusion[fusion], axis=1)
        return out

    def contribution_entries(self, scores: np.ndarray, fusions: Sequence[str | None]) -> tuple[np.ndarray, dict[str | None, np.ndarray]]:
        """The non-zero part of ``contribution_matrix`` for several fusions at once: each row's
        candidate columns (queries × ``candidates_per_source``) and, per fusion, their
        contributions there (0 where the source proposes nothing)."""
        # Ties to the lower item, as each request's ``top`` breaks them (rrf ranks ties apart).
        top = top_of_rows(scores, self.config.candidates_per_source)
        values = np.take_along_axis(scores, top, axis=1).astype(np.float64)
        finite = np.isfinite(values)
        row_min = np.min(np.where(finite, values, np.inf), axis=1, keepdims=True)
        row_min = np.where(np.isfinite(row_min), row_min, 0.0)  # a row with nothing proposed
        filled = np.where(finite, values, row_min)
        return top, {f: np.where(finite, self._contributions(top, filled, 1.0, f), 0.0) for f in fusions}

    # -- fold-in --------------------------------------------------------------------------------

    def fold_in(self, user_id: str, item_ids: Sequence[str], event_types: Sequence[str] | None = None) -> None:
        """Pass a user's fresh events to every source that can take them without refitting."""
        self._check_fitted()
        for source in self.active_sources.values():
            if hasattr(source, "fold_in"):
                source.fold_in(user_id, item_ids, event_types)

    # -- persistence ----------------------------------------------------------------------------

    def save(self, path: Path | str) -> Path:
        self._check_fitted()
        path = Path(path)
        entries = []
        for i, (name, source) in enumerate(self.sources.items()):
            entry: dict[str, Any] = {"name": name, "kind": source.name}
            if name in self.skipped_sources_:
                entry["skipped"] = self.skipped_sources_[name]
                entry["config"] = config_to_dict(source.config)
            else:
                entry["folder"] = f"source-{i}"
                source.save(path / entry["folder"])
            entries.append(entry)
        return save_bundle(
            path,
            kind=self.name,
            config=config_to_dict(self.config),
            arrays={
                "item_ids": self.item_ids_,
                "user_ids": self.user_ids_,
                "seen.indptr": self.seen_.indptr,
                "seen.indices": self.seen_.indices,
            },
            meta={
                "sources": entries,
                "weights": self.weights_,
                "session_weights": self.session_weights_,
                "demote_seen": self.demote_seen_,
                "fusion": self.fusion_,
            },
        )

    @classmethod
    def load(cls, path: Path | str) -> BlendRetriever:
        from shelf.models.retrieval.registry import retriever_class

        bundle = load_bundle(path, kind=cls.name)
        sources: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        for entry in bundle.meta.get("sources", []):
            klass = retriever_class(entry["kind"])
            if "skipped" in entry:
                sources[entry["name"]] = klass(config_from_dict(klass.config_class, entry["config"]))
                skipped[entry["name"]] = entry["skipped"]
            else:
                sources[entry["name"]] = klass.load(Path(path) / entry["folder"])
        blend = cls(sources, config_from_dict(BlendConfig, bundle.config))
        blend.item_ids_ = bundle.arrays["item_ids"]
        blend.user_ids_ = bundle.arrays.get("user_ids", np.array([], dtype=object))
        if "seen.indptr" in bundle.arrays:
            indices = bundle.arrays["seen.indices"]
            blend.seen_ = sp.csr_matrix(
                (np.ones(len(indices), dtype=np.float32), indices, bundle.arrays["seen.indptr"]),
                shape=(len(blend.user_ids_), len(blend.item_ids_)),
            )
        else:
            blend.seen_ = sp.csr_matrix((len(blend.user_ids_), len(blend.item_ids_)), dtype=np.float32)
        blend.demote_seen_ = bool(bundle.meta.get("demote_seen", False))
        blend.fusion_ = str(bundle.meta.get("fusion", blend.config.fusion))
        blend.skipped_sources_ = skipped
        blend.weights_ = {k: float(v) for k, v in bundle.meta.get("weights", blend.config.weights).items()}
        sw = bundle.meta.get("session_weights")
        blend.session_weights_ = None if sw is None else {k: float(v) for k, v in sw.items()}
        blend.tuning_report_ = None
        return blend


def _query_scores(source: Any, query: Query) -> QueryScores:
    """A source's scores for one query: its own cheapest form, or its dense vector."""
    if hasattr(source, "query_scores"):
        return source.query_scores(query)  # type: ignore[no-any-return]
    return DenseScores(np.asarray(source.score_query(query), dtype=np.float32))


def _seen_matrix(data: Interactions) -> sp.csr_matrix:
    """users × items, 1 where a known user has any event on the item."""
    known = data.user >= 0
    m = sp.csr_matrix(
        (np.ones(int(known.sum()), dtype=np.float32), (data.user[known], data.item[known])),
        shape=(data.n_users, data.n_items),
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    m.sort_indices()
    return m


def default_blend(seed: int = 0) -> BlendRetriever:
    """The blend shelf trains by default (weights tuned on validation cuts, see report)."""
    from shelf.models.retrieval.als import ALSConfig, ALSRetriever
    from shelf.models.retrieval.content import ContentRetriever
    from shelf.models.retrieval.cooccurrence import CoOccurrenceRetriever
    from shelf.models.retrieval.ease import EASERetriever
    from shelf.models.retrieval.neighbours import NeighboursRetriever
    from shelf.models.retrieval.popularity import PopularityConfig, PopularityRetriever
    from shelf.models.retrieval.repeat import RepeatRetriever
    from shelf.models.retrieval.sequential import SequentialRulesRetriever

    sources = {
        "repeat": RepeatRetriever(),
        "cooccurrence": CoOccurrenceRetriever(),
        "sequential": SequentialRulesRetriever(),
        "als": ALSRetriever(ALSConfig(seed=seed)),
        "ease": EASERetriever(),
        # What alike shoppers picked up lately (validation: MovieLens NDCG@10 0.186 -> 0.219).
        "neighbours": NeighboursRetriever(),
        "content": ContentRetriever(),
        # Unsegmented, fast-decaying popularity: where taste follows what is new this week (films),
        # segments only add noise (validation: MovieLens NDCG@10 0.159 segmented vs 0.179).
        "trending": PopularityRetriever(PopularityConfig(half_life_days=3.0, segments=())),
        "popularity": PopularityRetriever(),
    }
    weights = {
        "repeat": 1.0, "cooccurrence": 1.0, "sequential": 0.0, "als": 1.0, "ease": 1.0, "neighbours": 1.0, "content": 0.3, "trending": 0.3, "popularity": 0.3,
    }
    # Next-item rules serve anonymous sessions; for shoppers with history they start off and
    # enter only where tuning finds a clear gain.
    session_weights = {**weights, "sequential": 1.0}
    return BlendRetriever(sources, BlendConfig(weights=weights, session_weights=session_weights, tune=True))
