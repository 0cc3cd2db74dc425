"""The two-stage recommender: retrieve candidates, then rank them by calibrated engagement probability.

``TwoStage(retriever, ranker, feature_set, config)``:

* **serving** (``retrieve``): the retriever (default: ``default_blend()``) proposes
  ``n_candidates`` items with every source's score (asked without the request's clock, as its
  batch path and weight tuning see it: ``retrieval_query``); ``OnlineFeatures`` computes the features of
  each candidate (user, item, user × item, context, session, and what each retrieval source said:
  fused score, rank, per-source score and rank); the ranker turns them into a calibrated
  probability that the shopper engages with the item within ``label_window_s``. The final score
  interpolates it with the retriever's own order, ``(1 - w) * prior(position) + w * p_ranker``
  (``ranker_weight`` w; ``prior`` is the engagement rate at each retrieval position), calibrated
  on the held training cuts; items are returned by that score (ties broken by the raw logit, then
  the retrieval position). w = 0 is exactly the retriever's order, with calibrated probabilities.
  Re-ranking options (``TwoStageConfig``): ``rerank_depth`` K lets the ranker re-order only the
  retriever's top K (the rest follow in the retriever's order); ``mix="rank"`` combines the two
  orders instead of the probabilities, ``-[(1 - w) log(1 + position) + w log(1 + ranker
  position)]`` (what a lambdarank ranker is for); ``refit_on_held`` retrains the ranker on every
  request moment once the held cuts chose its length and w; ``features="relative"`` ranks on
  ``relative_feature_set`` (no item id, no raw counts), ``relative_to_all`` takes its
  within-request percentiles over every candidate. ``rerank_two_stage`` builds the recipe
  ``shelf train`` ships (lambdarank on the top 30 of 100, all of these options, w = 0.75).
* **training** (``fit``): the retriever is fitted on the full window first (the one served; a
  blend tunes its weights and fusion there, once). Then the same protocol as a temporal
  evaluation, replayed inside the training window. At each of ``n_cuts`` request moments
  ``c_k = end - window - k * spacing`` (every label window ends inside the data) the
  retriever is fitted on the events before ``c_k`` only (a blend with the tuning's outcome,
  ``BlendRetriever.as_tuned``: its fused score means the same at every moment); every shopper with history before
  ``c_k`` who comes back in ``[c_k, c_k + label_window)`` is a request; the retriever's actual
  candidates for them are the examples (positives: engaged in the window; negatives: sampled
  from the rest of the candidates, weighted by the inverse sampling rate); features are
  point-in-time at ``c_k``. The ranker trains on the earlier cuts and early-stops and calibrates
  on the *held cuts*: the latest request moments holding at least ``validation_share`` of the
  requests (at least the last moment; a temporal validation cut). The online feature state is
  then loaded with the full window.

Requests are shoppers who come back in the window (the moment a recommendation is asked for):
probabilities are conditional on a visit, as are the evaluation runner's calibration metrics
(computed over test users with at least one relevant event).

``score_users`` gives the dense matrix the evaluation runner needs: candidates carry their
probability (plus 2.5e-7 per place from the end, at most 5e-5 at N = 200, so that in float32
candidates keep the ranker's order, calibrated ties included, and stay above everything else); items outside the candidates carry the *outside rate* ``p_outside_`` (the
engagement rate of non-candidates measured on the last cut), not ``-inf``: the runner's
calibration metrics need probabilities in [0, 1] over the whole catalogue, and a non-candidate is
not impossible, only unlikely.

Fallbacks (documented once): a NaN or infinite feature value is replaced by its training median
(``FeatureEncoder``); an unseen category (or ``None``) goes to the out-of-vocabulary bucket; a
NaN or infinite logit is clipped to ±40 before calibration, so probabilities are always finite
and in [0, 1]. An unknown shopper goes through the retriever's cold-start chain (session items,
then segment popularity) and is ranked with "no history" user features.

Saved as a folder, without pickle::

    manifest.json     kind "twostage", config, feature set + version, outside rate, clocks,
                      interpolation (position prior and final calibrator)
    arrays.npz        training user and item ids (what ``score_users`` indexes)
    retriever/        the retriever's own format
    ranker/           the ranker (manifest.json + weights)
    state/*.parquet   events, catalogue and profiles the online features were loaded with
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shelf.features import (
    DAY,
    FeatureSet,
    OnlineFeatures,
    default_feature_set,
    relative_feature_set,
    source_score_features,
)
from shelf.models.base import IdIndex, Interactions, Query, Scored
from shelf.models.io import (
    ModelError,
    ModelFitError,
    ModelFormatError,
    NotFittedError,
    config_from_dict,
    config_to_dict,
    load_bundle,
    save_bundle,
)
from shelf.models.ranking import (
    Calibrator,
    LabelConfig,
    LightGBMRanker,
    NeuralRanker,
    RankerBase,
    RankingSet,
    build_ranking_set,
)
from shelf.models.ranking.data import ENGAGEMENT_TYPES
from shelf.models.ranking.selection import WeightChoice, choose_weight, estimated_ndcg
from shelf.schema import EVENT_SCHEMA, ITEM_SCHEMA, TIMESTAMP_TYPE, USER_SCHEMA

KIND = "twostage"
RANKERS: dict[str, type[RankerBase]] = {cls.name: cls for cls in (NeuralRanker, LightGBMRanker)}
# Bonus per place added to candidate probabilities in ``score_users`` so that candidates keep the
# ranker's order and rank above every non-candidate. Each step must survive the float32 the runner
# ranks (an ulp is up to 1.2e-7 below 1): the former 1e-6 spread over N places was ~5e-9 a step,
# so calibrated ties (isotonic steps) collapsed and were ordered by item index, and w = 0 did not
# reproduce the blend (MovieLens 0.992x). N = 200 adds at most 5e-5: far below any calibration bin.
_ORDER_STEP = 2.5e-7
MIXES = ("probability", "rank")


@dataclass(frozen=True)
class TwoStageConfig:
    """Parameters of ``TwoStage``.

    Attributes:
        n_candidates: candidates retrieved per request, then ranked (100–500 is typical).
        label_window_s: a candidate is positive when the shopper engages with it this many
            seconds after the request; match it to the horizon the probability is used for.
        n_cuts: request moments replayed in the training window (at least 2: the last one is
            the ranker's validation cut for early stopping and calibration).
        cut_spacing_s: seconds between request moments (None: ``label_window_s``).
        negatives_per_positive / min_negatives: negatives sampled per request from the
            candidates retrieval actually returned (weighted by the inverse sampling rate).
        max_requests_per_cut: cap on requests per cut (a random sample of the returning shoppers).
        min_requests: when the ``n_cuts`` latest request moments hold fewer requests than this,
            earlier moments (same spacing) are added until they do, up to ``4 * n_cuts`` moments
            or the start of the data (0: exactly ``n_cuts``).
        source_features: add each retrieval source's score and rank to the default features.
        save_events: keep the online feature state (events, catalogue, profiles) in the saved
            folder, so a loaded model answers exactly as the saved one; without it, feed events
            with ``update`` after loading.
        validation_share: the held cuts (the ranker's early stopping and calibration, the
            position prior's complement, the "auto" weight choice) are the latest request moments
            holding at least this share of the requests, at least the last one and never the
            first. Dense cuts on a small shop put a handful of requests at each moment: the last
            one alone is too few to stop, calibrate or choose a weight on.
        ranker_weight: the final score interpolates the retriever's order and the ranker,
            ``(1 - w) * prior(retrieval position) + w * p_ranker`` (both engagement probabilities),
            then calibrates it on the held cuts. ``0`` reproduces the retriever's order exactly
            (with calibrated probabilities), ``1`` is the ranker alone. ``None`` (the default)
            chooses it on the held cuts (``shelf.models.ranking.selection``: 0 unless a larger
            weight wins clearly); a benchmark can instead choose it on its own validation cut
            (``with_ranker_weight`` re-weights a fitted model without refitting).
        rerank_depth: the ranker re-orders only the retriever's top ``rerank_depth`` candidates;
            the rest keep the retriever's order below them (and are neither featurised nor
            scored at serving). ``None``: every candidate (``n_candidates``). Where the ranker
            adds a little to a strong retriever, it adds it at the top; deeper down it mostly
            promotes what retrieval rightly buried.
        mix: how the ranker and retrieval's order combine. ``"probability"``: the formula of
            ``ranker_weight`` above. ``"rank"``: ``-[(1 - w) * log(1 + retrieval position) +
            w * log(1 + ranker position)]`` (positions 0-based, the ranker's among the reranked
            candidates; ties go to retrieval's order), calibrated on the held cuts like the
            probability mix. It asks the ranker for an order, not a probability (what a
            lambdarank ranker gives), and w = 0 is again exactly the retriever's order.
        refit_on_held: after the held cuts chose the ranker's training length (early stopping),
            its calibration and ``ranker_weight``, retrain the ranker on every request moment,
            the held ones included (the latest: most like the requests it will serve), with
            those choices (a ranker that supports it: ``LightGBMRanker``). The calibrations
            stay those fitted with the held-out scores.
        ranker_rounds: training lengths (trees) to choose from on the held cuts together with w
            (``mix="rank"``, a LightGBM ranker trained with ``max_rounds`` >= the largest):
            the length whose order, mixed at its own chosen weight, has the best estimated
            NDCG@10 on the held cuts (ties: the shorter). ``()``: the ranker's own early
            stopping decides. LightGBM's early stopping scores the ranker alone (w = 1) tree by
            tree, and on MovieLens stopped after 1–2 trees, while the mix wanted ~200.
        relative_to_all: within-request features (``Relative`` percentiles) compare each reranked
            candidate with every retrieved candidate (``n_candidates``), not only with the reranked
            head: "how popular is this item among the 100 the blend found" says more than among
            the 30 it put first. Only the head is scored either way. On three MovieLens validation
            cuts the re-ranker (w = 0.75) reached 1.085x the blend this way (BENCHMARKS
            "twostage"); with the percentiles over the head alone, 1.031x in a one-off experiment
            that no bench reproduces (issue 5, stop 15 note).
        features: the feature set when none is given. ``"default"``: ``default_feature_set``
            (+ source scores and ranks); ``"relative"``: ``relative_feature_set`` (retrieval
            ranks, item trends and within-request percentiles; no item id, no raw counts), its
            windows the label window.

    With ``mix="rank"`` or a ``rerank_depth``, every candidate within the depth of each request
    is a training example (no negative sampling): the ranker learns an order within a request
    (lambdarank groups, within-request percentiles) and needs the whole request for it.
    """

    n_candidates: int = 200
    label_window_s: int = DAY
    n_cuts: int = 3
    cut_spacing_s: int | None = None
    negatives_per_positive: int = 10
    min_negatives: int = 10
    max_requests_per_cut: int = 5000
    min_requests: int = 0
    source_features: bool = True
    save_events: bool = True
    ranker_weight: float | None = None
    validation_share: float = 0.25
    seed: int = 0
    rerank_depth: int | None = None
    mix: str = "probability"
    refit_on_held: bool = False
    ranker_rounds: tuple[int, ...] = ()
    features: str = "default"
    relative_to_all: bool = False

    def validate(self) -> None:
        if not isinstance(self.n_candidates, int) or self.n_candidates < 1:
            raise ModelError(f"n_candidates must be a positive integer, got {self.n_candidates!r}")
        if self.label_window_s <= 0 or (self.cut_spacing_s is not None and self.cut_spacing_s <= 0):
            raise ModelError("label_window_s and cut_spacing_s must be positive numbers of seconds")
        if self.n_cuts < 2:
            raise ModelError(f"n_cuts must be at least 2 (the last cut validates the ranker), got {self.n_cuts}")
        if self.min_requests < 0:
            raise ModelError(f"min_requests must be >= 0, got {self.min_requests}")
        if self.negatives_per_positive < 1 or self.min_negatives < 1 or self.max_requests_per_cut < 1:
            raise ModelError("negatives_per_positive, min_negatives and max_requests_per_cut must be >= 1")
        if not 0.0 < self.validation_share < 1.0:
            raise ModelError(f"validation_share must lie in (0, 1), got {self.validation_share!r}")
        if self.ranker_weight is not None and not 0.0 <= self.ranker_weight <= 1.0:
            raise ModelError(f"ranker_weight must lie in [0, 1], got {self.ranker_weight!r}")
        if self.rerank_depth is not None and (not isinstance(self.rerank_depth, int) or self.rerank_depth < 1):
            raise ModelError(f"rerank_depth must be a positive integer or None, got {self.rerank_depth!r}")
        if self.mix not in MIXES:
            raise ModelError(f"mix must be one of {MIXES}, got {self.mix!r}")
        if self.ranker_rounds and (self.mix != "rank" or min(self.ranker_rounds) < 1):
            raise ModelError("ranker_rounds must be positive numbers of trees, and needs mix='rank'")
        if self.features not in ("default", "relative"):
            raise ModelError(f"features must be 'default' or 'relative', got {self.features!r}")

    @property
    def every_candidate(self) -> bool:
        """Whether every candidate within the depth is a training example (no negative sampling)."""
        return self.mix == "rank" or self.rerank_depth is not None

    @property
    def depth(self) -> int:
        """Candidates the ranker re-orders per request."""
        return self.n_candidates if self.rerank_depth is None else min(self.rerank_depth, self.n_candidates)


@dataclass(frozen=True)
class RankCandidates:
    """Candidates as the ranking stage reads them: a ``Scored`` plus per-source values.

    ``source_features`` maps ``source_score_<name>`` / ``source_rank_<name>`` to arrays aligned
    with ``items`` (what ``SourceScore`` features read).
    """

    items: np.ndarray
    scores: np.ndarray
    sources: np.ndarray | None
    source_features: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.items)

    def head(self, n: int) -> RankCandidates:
        """The first ``n`` candidates (source ranks stay those among all the candidates)."""
        if n >= len(self.items):
            return self
        return RankCandidates(self.items[:n], self.scores[:n], None if self.sources is None else self.sources[:n],
                              {k: v[:n] for k, v in self.source_features.items()})


def _source_ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of each candidate by one source's score (0 = best; unscored share the last rank)."""
    n = len(scores)
    scored = np.isfinite(scores)
    ranks = np.full(n, float(n))
    idx = np.flatnonzero(scored)
    order = idx[np.lexsort((idx, -scores[idx]))]
    ranks[order] = np.arange(len(order), dtype=np.float64)
    return ranks


def retrieval_query(query: Query) -> Query:
    """``query`` as the retrieval stage sees it: without the request's clock.

    A retriever's batch path (``score_users``, what the evaluation runner scores it with and what
    the blend's weights are tuned on) has no clock, while its per-request path segments
    popularity by the request's time-of-day band. The two-stage asks its retriever without the
    clock at every moment (training cuts, evaluation, serving), so that w = 0 is exactly the
    retriever the benchmark compares with (with the clock, 86 of 106 MovieLens validation users
    got another top 10: 0.992x at w = 0) and training candidates match served ones. Time still
    reaches the ranker through its context features.
    """
    if query.context.timestamp is None:
        return query
    return dataclasses.replace(query, context=dataclasses.replace(query.context, timestamp=None))


def candidates_of(retriever: Any, query: Query, n: int) -> RankCandidates:
    """The retriever's top ``n`` with per-source scores and ranks when it exposes them (a blend)."""
    if hasattr(retriever, "candidates"):
        found = retriever.candidates(query, n)
        scored, per_source = found.scored, found.source_scores
    else:
        scored, per_source = retriever.retrieve(query, n), {}
    extra: dict[str, np.ndarray] = {}
    for name, values in per_source.items():
        v = np.asarray(values, dtype=np.float64)
        extra[f"source_score_{name}"] = np.where(np.isfinite(v), v, np.nan)
        extra[f"source_rank_{name}"] = _source_ranks(v)
    sources = None if scored.sources is None else np.asarray(scored.sources, dtype=object)
    return RankCandidates(np.asarray(scored.items, dtype=object), np.asarray(scored.scores, dtype=np.float32), sources, extra)


# ---------------------------------------------------------------------------------------------
# Interactions → tables


def events_table(data: Interactions) -> pa.Table:
    """The events of ``data`` as an EVENT_SCHEMA table (what the feature engines read).

    ``Interactions`` keeps no event price, device or region: the price is the catalogue's (as of
    the snapshot), device and region are null.
    """
    n = len(data)

    def ids(index: IdIndex, codes: np.ndarray) -> pa.Array:
        raw = np.asarray(index.ids, dtype=object)
        values = np.where(codes >= 0, raw[np.maximum(codes, 0)] if len(raw) else None, None)
        return pa.array(values.tolist(), type=pa.string())

    price = pa.nulls(n, pa.float64())
    if data.item_table is not None and data.item_table.num_rows and n:
        table = data.item_table.sort_by([("item_id", "ascending"), ("valid_from", "ascending")])
        latest: dict[str, float | None] = dict(zip(table["item_id"].to_pylist(), table["price"].to_pylist(), strict=True))
        per_item = np.array([latest.get(i) for i in np.asarray(data.items.ids, dtype=object).tolist()], dtype=object)
        price = pa.array(per_item[data.item].tolist(), type=pa.float64())
    value = np.asarray(data.value, dtype=np.float64)
    types = np.asarray(data.event_types, dtype=object)
    columns = {
        "event_id": pa.array([f"e{i}" for i in range(n)], type=pa.string()),
        "user_id": ids(data.users, data.user),
        "session_id": ids(data.sessions, data.session),
        "item_id": ids(data.items, data.item),
        "type": pa.array(types[data.kind.astype(np.int64)].tolist() if n else [], type=pa.string()),
        "timestamp": pa.array(data.timestamp, type=pa.int64()).cast(TIMESTAMP_TYPE),
        "value": pa.array(value, mask=np.isnan(value), type=pa.float64()),
        "price": price,
    }
    for name in ("device", "region", "page", "referrer"):
        columns[name] = pa.nulls(n, pa.string())
    return pa.table(columns).select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)


def _before(table: pa.Table | None, column: str, cut: datetime) -> pa.Table | None:
    if table is None or table.num_rows == 0:
        return table
    return table.filter(pc.less(table[column], pa.scalar(cut, TIMESTAMP_TYPE)))


def _dt(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(us))


def _us(t: datetime) -> int:
    d = t - datetime(1970, 1, 1, tzinfo=UTC)
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def _held_start(timestamps: np.ndarray, request: np.ndarray, share: float, gap_us: int = 0) -> int:
    """The first request moment of the held (validation) cuts.

    Training moments are those at least ``gap_us`` (the label window) before it: a training
    request whose label window reaches into the held cuts shares their future (the same shopper
    engaging with the same item counts for both), and held-cut gains would then be memorisation,
    not ranking. Moments in the gap are dropped (``_kept_rows``).

    Among the starts that leave a training moment, the one maximising
    ``min(training requests, held requests * (1 - share) / share)``: the held cuts hold about
    ``share`` of the requests where the data allows, never at the price of the training side
    (on a shop whose busy hours are shorter than the label window, the held cuts move to the
    quiet hours after them instead of purging the busy ones). Ties go to the later start. When
    no start leaves a training moment (cuts closer together than the label window), the held
    cut is the last moment and nothing is purged.

    Why more than the last moment: on a small shop the last cut holds a handful of requests, too
    few to early-stop, calibrate or choose the ranker weight on.
    """
    moments = np.unique(timestamps)
    if len(moments) < 2:
        raise ModelFitError("two-stage: the ranking set holds one request moment; need at least two cuts")
    pairs = np.unique(np.stack([timestamps, request]), axis=1)  # (moment, request), one per request
    counts = np.bincount(np.searchsorted(moments, pairs[0]), minlength=len(moments)).astype(np.float64)
    before = np.cumsum(counts)  # requests at or before each moment
    held = before[-1] - np.r_[0.0, before[:-1]]  # requests at or after each moment
    best, best_value = -1, -np.inf
    for i in range(1, len(moments)):
        last_train = np.searchsorted(moments, moments[i] - gap_us, side="right") - 1  # latest moment <= start - gap
        if last_train < 0:
            continue
        value = min(before[last_train], held[i] * (1.0 - share) / share)
        if value >= best_value:
            best, best_value = i, value
    return int(moments[best if best >= 0 else -1])


def _kept_rows(timestamps: np.ndarray, start: int, gap_us: int) -> np.ndarray:
    """Rows of the held cuts and of the training moments at least ``gap_us`` before them (see ``_held_start``)."""
    kept = (timestamps >= start) | (timestamps + gap_us <= start)
    if not (timestamps < start)[kept].any():  # no start cleared the gap: the last moment is held, nothing purged
        kept = np.ones(len(timestamps), dtype=bool)
    return np.flatnonzero(kept)


def _validation_share(timestamps: np.ndarray, start: int) -> float:
    """A ``validation_fraction`` whose time split puts exactly the moments from ``start`` on in ``later``."""
    moments, counts = np.unique(timestamps, return_counts=True)
    share = counts / counts.sum()
    first = int(np.searchsorted(moments, start))
    return float(share[first:].sum() + 0.5 * share[first - 1])


def _fit_ranker(template: RankerBase, data: RankingSet, start: int) -> RankerBase:
    """A fresh ranker of the template's kind, validated on the request moments from ``start`` on."""
    config = dataclasses.replace(template.config, validation_fraction=_validation_share(data.timestamp_us, start))
    return type(template)(config).fit(data)


def _fit_stage(template: RankerBase, data: RankingSet, start: int, config: TwoStageConfig) -> tuple[RankerBase, Interpolation]:
    """The ranker (validated on the moments from ``start`` on) and the final score's interpolation
    (weight chosen and calibrated on them); with ``refit_on_held``, the ranker then retrained on
    every moment with those choices."""
    ranker = _fit_ranker(template, data, start)
    interpolation = Interpolation.fit(ranker, data, config.ranker_weight, ranker.config.calibration, start, config.mix)
    if config.ranker_rounds:
        if not hasattr(ranker, "truncated"):
            raise ModelError(f"ranker_rounds needs a ranker that can be truncated (LightGBMRanker), not {ranker.name}")
        best, chosen = -np.inf, (ranker, interpolation)
        for rounds in sorted(set(config.ranker_rounds)):
            shorter = ranker.truncated(rounds)
            mixed = Interpolation.fit(shorter, data, config.ranker_weight, ranker.config.calibration, start, config.mix)
            score = mixed.held_ndcg()
            if score > best + 1e-12:
                best, chosen = score, (shorter, mixed)
        ranker, interpolation = chosen
    if config.refit_on_held:
        ranker = ranker.refit(data)
    return ranker, interpolation


def _tail_calibrator(rows: list[tuple[int, np.ndarray]], start: int, depth: int) -> Calibrator | None:
    """Engagement rate by retrieval position past the rerank depth (isotonic in the position
    key), from the held cuts' requests (every moment's when the held cuts hold none); ``rows``
    holds each request's moment and whether each candidate from position ``depth`` on engaged."""
    held = [engaged for moment, engaged in rows if moment >= start] or [engaged for _, engaged in rows]
    if not held:
        return None
    positions = np.concatenate([np.arange(depth, depth + len(e)) for e in held])
    y = np.concatenate(held).astype(np.float64)
    return Calibrator("isotonic").fit(_position_key(positions), y, np.ones(len(y)))


def _ranker_positions(logits: np.ndarray, positions: np.ndarray, request: np.ndarray) -> np.ndarray:
    """0-based place of each row in its request when ordered by logit (ties: retrieval position)."""
    order = np.lexsort((positions, -logits, request))
    req = request[order]
    starts = np.flatnonzero(np.r_[True, req[1:] != req[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, len(req)]))
    out = np.empty(len(order), dtype=np.float64)
    out[order] = np.arange(len(order)) - first
    return out


def _rank_key(positions: np.ndarray, ranker_positions: np.ndarray, weight: float) -> np.ndarray:
    """The rank mix: ``-[(1 - w) log(1 + retrieval position) + w log(1 + ranker position)]``."""
    a = np.log1p(np.asarray(positions, dtype=np.float64))
    if weight <= 0.0:
        return -a
    b = np.log1p(np.asarray(ranker_positions, dtype=np.float64))
    return -b if weight >= 1.0 else -((1.0 - weight) * a + weight * b)


def _position_key(positions: np.ndarray) -> np.ndarray:
    """What the retrieval prior reads: larger for earlier positions (0 = the retriever's top)."""
    return -np.log1p(np.asarray(positions, dtype=np.float64))


@dataclasses.dataclass
class Interpolation:
    """Final score of a candidate: ``(1 - w) * prior(position) + w * p_ranker`` (``mix`` "probability")
    or ``-[(1 - w) log(1 + position) + w log(1 + ranker position)]`` ("rank"), then calibrated.

    ``prior`` maps the retriever's position to an engagement probability (isotonic, fitted on the
    earlier cuts); ``final`` calibrates the interpolated score on the held cuts (the ranker's own
    validation cuts). ``held`` keeps their (prior, ranker probability, label, weight) and
    ``held_ranks`` their (retrieval position, ranker position), so that another weight can be
    calibrated without refitting anything.

    Called with the ranker's outputs for the first ``len(p_ranker)`` of ``n`` candidates (the
    reranked head), the rest keep retrieval's order below the head.
    """

    prior: Calibrator
    final: Calibrator
    weight: float
    held: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
    choice: WeightChoice | None = None  # how an "auto" weight was chosen (None: it was given)
    mix: str = "probability"
    held_ranks: tuple[np.ndarray, np.ndarray] | None = None
    held_request: np.ndarray | None = None
    # Engagement rate by retrieval position past the rerank depth, fitted on the held cuts: the
    # ranking set holds only the reranked head, so the calibrators above never saw those positions.
    tail: Calibrator | None = None
    tail_floor: float = 0.0  # a candidate is no less likely than an item outside the candidates

    @classmethod
    def fit(cls, ranker: RankerBase, data: RankingSet, weight: float | None, method: str, start: int,
            mix: str = "probability") -> Interpolation:
        positions = np.asarray(data.examples["candidate_rank"].to_numpy(zero_copy_only=False), dtype=np.float64)
        last = data.timestamp_us >= start  # the held cuts (the ranker's own validation moments)
        early = ~last if (~last).any() else last
        prior = Calibrator("isotonic").fit(_position_key(positions[early]), data.labels[early], data.weights[early])
        held_rows = np.flatnonzero(last)
        p_ranker, logits = ranker.predict_with_logits(data.features.take(held_rows))
        held = (prior(_position_key(positions[held_rows])), p_ranker, data.labels[held_rows].astype(np.float64),
                data.weights[held_rows].astype(np.float64))
        held_ranks = None
        mixer = None
        if mix == "rank":
            pos = positions[held_rows]
            held_ranks = (pos, _ranker_positions(logits, pos, data.request[held_rows]))
            tie = 1e-9 * np.log1p(pos)  # ties go to retrieval's order, as at serving

            def mixer(w: float) -> np.ndarray:
                return _rank_key(*held_ranks, w) - tie
        choice = None
        if weight is None:  # "auto": the held cut decides, retrieval's order unless the ranker wins clearly
            choice = choose_weight(*held, data.request[held_rows], mixer=mixer)
            weight = choice.weight
        out = cls(prior, Calibrator(method), weight, held, mix=mix, held_ranks=held_ranks,
                  held_request=data.request[held_rows]).reweighted(weight)
        out.choice = choice
        return out

    def held_ndcg(self, k: int = 10) -> float:
        """Mean estimated NDCG@k of the final order on the held cuts (requests with a positive)."""
        if self.held is None:
            raise ModelError("this model was loaded from disk without its calibration cut")
        prior, p_ranker, y, w = self.held
        if self.mix == "rank" and self.held_ranks is not None:
            key = _rank_key(*self.held_ranks, self.weight) - 1e-9 * np.log1p(self.held_ranks[0])
        else:
            key = self.blend(prior, p_ranker, self.weight) + 1e-12 * prior
        if self.held_request is None:
            raise ModelError("held_ndcg needs the held requests")
        values = estimated_ndcg(key, y, w, self.held_request, k)
        return float(np.nanmean(values)) if np.isfinite(values).any() else 0.0

    def reweighted(self, weight: float) -> Interpolation:
        if self.held is None or (self.mix == "rank" and self.held_ranks is None):
            raise ModelError("this model was loaded from disk without its calibration cut; refit it to change ranker_weight")
        prior, p_ranker, y, w = self.held
        key = _rank_key(*self.held_ranks, weight) if self.mix == "rank" and self.held_ranks is not None else self.blend(prior, p_ranker, weight)
        final = Calibrator(self.final.method).fit(key, y, w)
        return Interpolation(self.prior, final, weight, self.held, self.choice, self.mix, self.held_ranks, self.held_request, self.tail, self.tail_floor)

    @staticmethod
    def blend(prior: np.ndarray, p_ranker: np.ndarray, weight: float) -> np.ndarray:
        if weight <= 0.0:
            return np.asarray(prior, dtype=np.float64)
        if weight >= 1.0:
            return np.asarray(p_ranker, dtype=np.float64)
        return (1.0 - weight) * prior + weight * p_ranker

    def __call__(self, p_ranker: np.ndarray, logits: np.ndarray, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities, order)`` of ``n`` candidates given in retrieval order, the ranker's
        outputs covering the first ``len(p_ranker)`` (default: all of them)."""
        m = len(p_ranker)
        n = m if n is None else max(int(n), m)
        positions = np.arange(n)
        logits = np.nan_to_num(np.asarray(logits, dtype=np.float64), nan=-40.0, posinf=40.0, neginf=-40.0)
        if self.mix == "rank":
            ranks = positions.astype(np.float64)  # past the head: its own position (below the head)
            ranks[np.lexsort((positions[:m], -logits))] = np.arange(m)
            key = _rank_key(positions, ranks, self.weight)
            p = self.final(key)
            p = self._below_head(np.where(np.isfinite(p), p, 0.0), m)
            return p, np.lexsort((positions, -key))
        key = self.prior(_position_key(positions))
        key[:m] = self.blend(key[:m], np.nan_to_num(np.asarray(p_ranker, dtype=np.float64)), self.weight)
        p = self.final(key)
        p = np.where(np.isfinite(p), p, 0.0)
        if self.weight <= 0.0:
            head = np.lexsort((positions[:m], -key[:m]))  # exactly the retriever's order
        else:
            head = np.lexsort((positions[:m], -logits, -key[:m]))
        if m == n:
            return p, head
        return self._below_head(p, m), np.r_[head, positions[m:]]

    def _below_head(self, p: np.ndarray, m: int) -> np.ndarray:
        """Probabilities past the reranked head (``p[m:]``): the held cuts' engagement rate at
        those positions where known (``tail``), never above the head's lowest."""
        if m >= len(p):
            return p
        p = np.array(p, dtype=np.float64)
        if self.tail is not None:
            p[m:] = np.maximum(self.tail(_position_key(np.arange(m, len(p)))), self.tail_floor)
        if m:
            p[m:] = np.minimum(p[m:], p[:m].min())  # the tail stays below the head
        return p

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prior": self.prior.to_dict(), "final": self.final.to_dict(), "weight": self.weight}
        if self.mix != "probability":
            out["mix"] = self.mix
        if self.tail is not None:
            out["tail"] = self.tail.to_dict()
            out["tail_floor"] = self.tail_floor
        if self.choice is not None:
            out["choice"] = self.choice.to_dict()
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Interpolation:
        return cls(Calibrator.from_dict(raw["prior"]), Calibrator.from_dict(raw["final"]), float(raw["weight"]),
                   mix=str(raw.get("mix", "probability")),
                   tail=Calibrator.from_dict(raw["tail"]) if "tail" in raw else None, tail_floor=float(raw.get("tail_floor", 0.0)))


# ---------------------------------------------------------------------------------------------
# The model


class TwoStage:
    """Retrieve → features → calibrated engagement probability → ranked list; see the module docstring."""

    name = KIND
    outputs_probabilities = True

    def __init__(
        self,
        retriever: Any = None,
        ranker: RankerBase | None = None,
        feature_set: FeatureSet | None = None,
        config: TwoStageConfig | None = None,
    ) -> None:
        config = TwoStageConfig() if config is None else config
        if not isinstance(config, TwoStageConfig):
            raise ModelError(f"TwoStage takes a TwoStageConfig, got {type(config).__name__}")
        config.validate()
        if retriever is None:
            from shelf.models.retrieval import default_blend

            retriever = default_blend(seed=config.seed)
        if not (hasattr(retriever, "fit") and hasattr(retriever, "retrieve")):
            raise ModelError(f"{retriever!r} is not a retriever (needs fit and retrieve)")
        ranker = NeuralRanker() if ranker is None else ranker
        if not isinstance(ranker, RankerBase):
            raise ModelError(f"{ranker!r} is not a shelf ranker (NeuralRanker or LightGBMRanker)")
        if config.refit_on_held and not ranker.supports_refit:
            raise ModelError(f"refit_on_held needs a ranker that can be refitted (LightGBMRanker), not {ranker.name}")
        if feature_set is None:
            sources = list(getattr(retriever, "sources", {}) or {})
            if config.features == "relative":
                feature_set = relative_feature_set(sources if config.source_features else (), config.label_window_s)
            else:
                feature_set = default_feature_set()
                if config.source_features and sources:
                    feature_set = FeatureSet([*feature_set.features, *source_score_features(sources)])
        self.retriever = retriever
        # Every fit (one per request moment, then the final one) starts from a pristine copy: a
        # retriever refitted in place may keep caches of its previous fit (id indexes, matrices),
        # which would make the training candidates differ from what the retriever serves alone.
        self._retriever_template = copy.deepcopy(retriever)
        self.ranker = ranker
        self.feature_set = feature_set
        self.config = config

    @property
    def retriever_template(self) -> Any:
        """A fresh, unfitted copy of the retrieval stage (what a job falls back to when ranking cannot be learned)."""
        return copy.deepcopy(self._retriever_template)

    def __repr__(self) -> str:
        return f"TwoStage({type(self.retriever).__name__}, {self.ranker.name}, {len(self.feature_set)} features, {self.config!r})"

    # -- state ----------------------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "ranker_")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError("TwoStage is not fitted; call fit(data) or load(path) first")

    @property
    def feature_set_version(self) -> str:
        """The version of the feature set the ranker was trained on (for the bundle card)."""
        return (self.ranker_.feature_set_ if self.is_fitted else self.feature_set).version

    # -- training -------------------------------------------------------------------------------

    def _cuts(self, data: Interactions) -> list[int]:
        c = self.config
        end = _us(data.as_of) if data.as_of is not None else int(data.timestamp.max()) + 1
        spacing = (c.cut_spacing_s or c.label_window_s) * 1_000_000
        first = int(data.timestamp.min()) if len(data) else end
        # Every label window ends inside the data: a cut closer to the end would see only part of
        # its window, under-count positives and bias the calibration the last cut provides.
        last = end - c.label_window_s * 1_000_000
        most = c.n_cuts * (4 if c.min_requests > 0 else 1)
        cuts = [last - k * spacing for k in range(most - 1, -1, -1) if last - k * spacing > first]
        keep = min(c.n_cuts, len(cuts))
        if c.min_requests > 0:
            found = sum(len(self._returning(data, cut)) for cut in cuts[len(cuts) - keep:])
            while found < c.min_requests and keep < len(cuts):
                keep += 1
                found += len(self._returning(data, cuts[len(cuts) - keep]))
        return cuts[len(cuts) - keep:]

    def _returning(self, data: Interactions, cut: int) -> np.ndarray:
        """Indices of shoppers with history before ``cut`` who engage in ``[cut, cut + window)``."""
        window = self.config.label_window_s * 1_000_000
        engaged_kinds = [i for i, t in enumerate(data.event_types) if t in ENGAGEMENT_TYPES]
        ts, user = data.timestamp, data.user
        before = np.unique(user[(ts < cut) & (user >= 0)])
        after = (ts >= cut) & (ts < cut + window) & (user >= 0) & np.isin(data.kind, engaged_kinds)
        return np.intersect1d(before, np.unique(user[after]))

    def _requests_at(self, data: Interactions, cut: int, rng: np.random.Generator) -> np.ndarray:
        """``_returning`` shoppers, at most ``max_requests_per_cut`` of them (a random sample)."""
        users = self._returning(data, cut)
        if len(users) > self.config.max_requests_per_cut:
            users = np.sort(rng.choice(users, self.config.max_requests_per_cut, replace=False))
        return users

    def fit(self, data: Interactions) -> Self:
        """Learn on ``data`` (see the module docstring): the retriever on all of it, then the ranker."""
        c = self.config
        if len(data) == 0:
            raise ModelFitError("TwoStage: no events to learn from")
        rng = np.random.default_rng(c.seed)
        events = events_table(data)
        started = time.perf_counter()
        # The served retriever first: a blend tunes its weights and fusion once, here, and every
        # request moment below refits it with that outcome (``as_tuned``) instead of re-tuning on
        # each slice, so its fused score means the same at every moment and at serving (re-tuned
        # per moment it ranged over orders of magnitude: a ranker feature that meant nothing).
        final = copy.deepcopy(self._retriever_template)
        final.fit(data)
        template = final.as_tuned() if hasattr(final, "as_tuned") else self._retriever_template
        candidates: dict[tuple[str, int], RankCandidates] = {}
        request_rows: list[tuple[str, int]] = []
        depth = c.depth
        tail_rows: list[tuple[int, np.ndarray]] = []  # (moment, engaged at each position past the rerank depth)
        outside_hits = outside_slots = 0.0
        cuts_used: list[int] = []
        for cut in self._cuts(data):
            users = self._requests_at(data, cut, rng)
            if not len(users):
                continue
            when = _dt(cut)
            past = events.filter(pc.less(events["timestamp"], pa.scalar(when, TIMESTAMP_TYPE)))
            sub = Interactions.from_events(
                past, as_of=when,
                item_table=_before(data.item_table, "valid_from", when),
                user_table=_before(data.user_table, "valid_from", when),
            )
            retriever = copy.deepcopy(template)
            try:
                retriever.fit(sub)
            except ModelFitError:
                continue  # too little history before this cut; later cuts may still work
            window_end = cut + c.label_window_s * 1_000_000
            hits = self._engaged(data, cut, window_end)
            hits_out = slots = 0.0
            for u in users.tolist():
                uid = str(data.users.ids[u])
                found = candidates_of(retriever, retrieval_query(Query(uid, context=_context(when))), c.n_candidates)
                candidates[(uid, cut - 1)] = found
                request_rows.append((uid, cut - 1))
                if len(found) > depth:
                    engaged = hits.get(uid, ())
                    tail = found.items[depth:].tolist()
                    tail_rows.append((cut - 1, np.fromiter((item in engaged for item in tail), dtype=bool, count=len(tail))))
                got = set(found.items.tolist())
                hits_out += sum(1 for i in hits.get(uid, ()) if i not in got)
                slots += max(sub.n_items - len(found), 0)
            outside_hits, outside_slots = hits_out, slots  # the last cut's rate is kept
            cuts_used.append(cut)
        if len(cuts_used) < 2:
            raise ModelFitError(
                f"TwoStage: only {len(cuts_used)} request moment(s) with returning shoppers in the training window; "
                f"need 2 (lower label_window_s / cut_spacing_s or train on a longer window)"
            )

        # Features are computed over the head, or over every candidate when the head's
        # within-request features compare it with all of them (``relative_to_all``); only the
        # head's rows are examples.
        framed = c.n_candidates if c.relative_to_all else depth

        def generator(user_id: str | None, t: datetime, n: int) -> Scored:
            return candidates[(str(user_id), _us(t))].head(framed)  # type: ignore[return-value]

        requests = pa.table({
            "user_id": pa.array([u for u, _ in request_rows], type=pa.string()),
            "timestamp": pa.array([t for _, t in request_rows], type=pa.int64()).cast(TIMESTAMP_TYPE),
            "session_id": pa.nulls(len(request_rows), pa.string()),
            "device": pa.nulls(len(request_rows), pa.string()),
            "region": pa.nulls(len(request_rows), pa.string()),
        })
        labels = LabelConfig(
            n_candidates=c.n_candidates, label_window_s=c.label_window_s,
            negatives_per_positive=c.negatives_per_positive, min_negatives=c.min_negatives, seed=c.seed,
        )
        if c.every_candidate:  # every candidate within the depth, none sampled (weights 1)
            labels = dataclasses.replace(labels, n_candidates=framed, negatives_per_positive=1, min_negatives=framed)
        ranking = build_ranking_set(
            events, generator, items=data.item_table, users=data.user_table, requests=requests,
            feature_set=self.feature_set, labels=labels,
        )
        if framed > depth:
            rank_of = np.asarray(ranking.examples["candidate_rank"].to_numpy(zero_copy_only=False))
            ranking = ranking.take(np.flatnonzero(rank_of < depth))
        built = time.perf_counter()
        gap = c.label_window_s * 1_000_000
        start = _held_start(ranking.timestamp_us, ranking.request, c.validation_share, gap)
        ranking = ranking.take(_kept_rows(ranking.timestamp_us, start, gap))
        ranker, self.interpolation_ = _fit_stage(self.ranker, ranking, start, c)
        self.interpolation_.tail = _tail_calibrator(tail_rows, start, depth)
        self.interpolation_.tail_floor = float(outside_hits / outside_slots) if outside_slots > 0 else 0.0
        ranked = time.perf_counter()
        self.retriever = final
        self.ranker_ = ranker
        self.ranking_set_ = ranking  # without the purged moments
        self.held_from_us_ = start
        self.p_outside_ = float(outside_hits / outside_slots) if outside_slots > 0 else 0.0
        self.user_ids_ = np.asarray(data.users.ids, dtype=object).copy()
        self.item_ids_ = np.asarray(data.items.ids, dtype=object).copy()
        self.as_of_us_ = _us(data.as_of) if data.as_of is not None else int(data.timestamp.max()) + 1
        self._load_state(events, data.item_table, data.user_table)
        self.fitted_on_ = data
        self.fit_stats_ = {
            "cuts": [_dt(t).isoformat() for t in cuts_used],
            "requests": len(request_rows),
            "examples": len(ranking),
            "held_from": _dt(start).isoformat(),
            "held_requests": int(len(np.unique(ranking.request[ranking.timestamp_us >= start]))),
            "training_requests": int(len(np.unique(ranking.request[ranking.timestamp_us < start]))),
            "positive_share": float(ranking.labels.mean()),
            "candidates_and_features_s": round(built - started, 3),
            "ranker_fit_s": round(ranked - built, 3),
            "ranker_examples_per_s": round(len(ranking) / max(ranked - built, 1e-9), 1),
            "ranker_weight": self.interpolation_.weight,
            "mix": c.mix,
            "rerank_depth": depth,
            "refit_on_held": c.refit_on_held,
        }
        if hasattr(ranker, "rounds_"):
            self.fit_stats_["ranker_rounds"] = ranker.rounds_
            self.fit_stats_["held_ndcg"] = round(self.interpolation_.held_ndcg(), 6)
        if self.interpolation_.choice is not None:
            self.fit_stats_["ranker_weight_choice"] = self.interpolation_.choice.to_dict()
        return self

    @staticmethod
    def _engaged(data: Interactions, start: int, stop: int) -> dict[str, set[str]]:
        kinds = [i for i, t in enumerate(data.event_types) if t in ENGAGEMENT_TYPES]
        rows = np.flatnonzero((data.timestamp >= start) & (data.timestamp < stop) & (data.user >= 0) & np.isin(data.kind, kinds))
        out: dict[str, set[str]] = {}
        for u, i in zip(data.user[rows].tolist(), data.item[rows].tolist(), strict=True):
            out.setdefault(str(data.users.ids[u]), set()).add(str(data.items.ids[i]))
        return out

    def _load_state(self, events: pa.Table, items: pa.Table | None, users: pa.Table | None) -> None:
        online = OnlineFeatures(self.ranker_.feature_set_)
        self.items_table_ = ITEM_SCHEMA.empty_table() if items is None else items.select(ITEM_SCHEMA.names).cast(ITEM_SCHEMA)
        self.users_table_ = USER_SCHEMA.empty_table() if users is None else users.select(USER_SCHEMA.names).cast(USER_SCHEMA)
        if self.items_table_.num_rows:
            online.update_items(self.items_table_)
        if self.users_table_.num_rows:
            online.update_users(self.users_table_)
        online.update(events)
        self.online_ = online
        self.events_ = events
        self.clock_us_ = max(self.as_of_us_, _latest_us(events) + 1)
        self._items_index = IdIndex(self.item_ids_)

    def update(self, events: pa.Table) -> None:
        """Feed fresh events (EVENT_SCHEMA) to the online features; the clock moves past them."""
        self._check_fitted()
        if events.num_rows == 0:
            return
        events = events.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)
        self.online_.update(events)
        self.events_ = pa.concat_tables([self.events_, events])
        self.clock_us_ = max(self.clock_us_, _latest_us(events) + 1)

    # -- scoring --------------------------------------------------------------------------------

    def warm(self) -> None:
        """Before the first request: rank the retrieval stage's popularity segments as it is asked
        (without the request's clock, ``retrieval_query``); serving warms each source itself too,
        but for the clock's time-of-day band, which this stage never asks for."""
        from shelf.models.retrieval.popularity import PopularityRetriever

        sources = getattr(self.retriever, "active_sources", None) or {"retriever": self.retriever}
        for source in sources.values():
            if isinstance(source, PopularityRetriever):
                source.warm(clock=False)

    def rank(self, query: Query, n: int | None = None) -> tuple[RankCandidates, np.ndarray, np.ndarray]:
        """``(candidates, probabilities, order)``: ``order`` lists candidate positions, best first."""
        self._check_fitted()
        size = max(self.config.n_candidates, n or 0)
        if query.context.timestamp is None:
            query = dataclasses.replace(query, context=dataclasses.replace(query.context, timestamp=_dt(self.clock_us_)))
        found = candidates_of(self.retriever, retrieval_query(query), size)
        if not len(found):
            return found, np.empty(0), np.empty(0, dtype=np.int64)
        head = found if self.config.rerank_depth is None else found.head(self.config.rerank_depth)
        if self.config.relative_to_all and len(found) > len(head):
            # the head's features as training computed them: against every retrieved candidate
            frame = self.online_.frame(query, found.head(self.config.n_candidates)).take(np.arange(len(head)))
        else:
            frame = self.online_.frame(query, head)
        p_ranker, logits = self.ranker_.predict_with_logits(frame)
        interpolation = self.__dict__.get("interpolation_")
        if interpolation is None:  # saved before the interpolation existed: the ranker alone
            return found, p_ranker, np.lexsort((np.arange(len(p_ranker)), -logits, -p_ranker))
        p, order = interpolation(p_ranker, logits, len(found))
        return found, p, order

    def with_ranker_weight(self, weight: float) -> TwoStage:
        """This fitted model with another ``ranker_weight`` (only the final calibration is refitted).

        Retriever, ranker and online state are shared with ``self``.
        """
        self._check_fitted()
        config = dataclasses.replace(self.config, ranker_weight=float(weight))
        config.validate()
        interpolation = self.__dict__.get("interpolation_")
        if interpolation is None:
            raise ModelError("this model was saved before ranker_weight existed; refit it to change the weight")
        twin = copy.copy(self)
        twin.config = config
        twin.interpolation_ = interpolation.reweighted(config.ranker_weight)
        return twin

    def retrieve(self, query: Query, n: int) -> Scored:
        """The ``n`` most likely engagements among the retrieved candidates (fewer only if the catalogue is smaller)."""
        if n < 0:
            raise ModelError(f"n must be >= 0, got {n}")
        found, p, order = self.rank(query, n)
        top = order[:n]
        sources = None if found.sources is None else found.sources[top]
        return Scored(found.items[top], p[top].astype(np.float32), sources)

    def score_users(self, users: np.ndarray) -> np.ndarray:
        """Dense ``len(users) × n_items`` probabilities over the training item index.

        Candidates: their calibrated probability (plus ``_ORDER_STEP`` per place from the end, so
        float32 keeps the ranker's order, ties included, above the rest); every other item:
        ``p_outside_``, the measured engagement rate of non-candidates.
        """
        self._check_fitted()
        users = np.asarray(users, dtype=np.int64)
        out = np.full((len(users), len(self.item_ids_)), self.p_outside_, dtype=np.float64)
        when = _context(_dt(self.clock_us_))
        for row, u in enumerate(users.tolist()):
            found, p, order = self.rank(Query(str(self.user_ids_[u]), context=when))
            if not len(order):
                continue
            cols = self._items_index.lookup(found.items[order])
            ok = cols >= 0
            bonus = _ORDER_STEP * (len(order) - np.arange(len(order), dtype=np.float64))
            values = np.maximum(p[order], self.p_outside_) + bonus
            out[row, cols[ok]] = np.minimum(values[ok], 1.0)
        return out.astype(np.float32)

    def with_ranker(self, ranker: RankerBase) -> TwoStage:
        """This fitted model with another ranker (of ``ranker``'s kind and config) trained on the same ranking set.

        Retriever, candidates, held cuts and online state are shared with ``self`` (not refitted),
        so comparing rankers costs one candidate generation, not one per ranker.
        """
        self._check_fitted()
        if not isinstance(ranker, RankerBase):
            raise ModelError(f"{ranker!r} is not a shelf ranker (NeuralRanker or LightGBMRanker)")
        if self.config.refit_on_held and not ranker.supports_refit:
            raise ModelError(f"refit_on_held needs a ranker that can be refitted (LightGBMRanker), not {ranker.name}")
        twin = copy.copy(self)
        twin.ranker = ranker
        twin.ranker_, twin.interpolation_ = _fit_stage(ranker, self.ranking_set_, self.held_from_us_, self.config)
        twin.interpolation_.tail, twin.interpolation_.tail_floor = self.interpolation_.tail, self.interpolation_.tail_floor
        twin.fit_stats_ = {**self.fit_stats_, "ranker_weight": twin.interpolation_.weight}
        if twin.interpolation_.choice is not None:
            twin.fit_stats_["ranker_weight_choice"] = twin.interpolation_.choice.to_dict()
        return twin

    # -- ablation -------------------------------------------------------------------------------

    def without(self, groups: Sequence[str]) -> TwoStage:
        """This fitted model with its ranker retrained without the feature ``groups``.

        The retriever, candidates, ranking set and online state are shared (not refitted), so the
        difference to the full model is the feature groups alone.
        """
        self._check_fitted()
        sub = self.ranker_.feature_set_.without(groups)
        if len(sub) == len(self.ranker_.feature_set_):
            raise ModelError(f"feature group(s) {list(groups)} are not in the feature set (groups: {self.ranker_.feature_set_.groups})")
        twin = copy.copy(self)
        ranking = self.ranking_set_.with_features(sub)
        start = self.held_from_us_  # the full model's held cuts (its ranking set is already purged)
        twin.ranker_, twin.interpolation_ = _fit_stage(self.ranker, ranking, start, self.config)
        twin.interpolation_.tail, twin.interpolation_.tail_floor = self.interpolation_.tail, self.interpolation_.tail_floor
        return twin

    # -- persistence ----------------------------------------------------------------------------

    def save(self, path: Path | str) -> Path:
        self._check_fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.retriever.save(folder / "retriever")
        self.ranker_.save(folder / "ranker")
        state = folder / "state"
        state.mkdir(exist_ok=True)
        if self.config.save_events:
            pq.write_table(self.events_, state / "events.parquet")
        pq.write_table(self.items_table_, state / "items.parquet")
        pq.write_table(self.users_table_, state / "users.parquet")
        return save_bundle(
            folder,
            kind=KIND,
            config=config_to_dict(self.config),
            arrays={"user_ids": self.user_ids_, "item_ids": self.item_ids_},
            meta={
                "retriever_kind": getattr(self.retriever, "name", type(self.retriever).__name__),
                "ranker_kind": self.ranker_.name,
                "feature_set": json.loads(self.ranker_.feature_set_.to_json()),
                "feature_set_version": self.feature_set_version,
                "template_feature_set": json.loads(self.feature_set.to_json()),
                "p_outside": self.p_outside_,
                "interpolation": self.interpolation_.to_dict(),
                "as_of_us": self.as_of_us_,
                "clock_us": self.clock_us_,
                "fit_stats": getattr(self, "fit_stats_", {}),
            },
        )

    @classmethod
    def load(cls, path: Path | str) -> TwoStage:
        from shelf.models.retrieval import load_retriever

        folder = Path(path)
        bundle = load_bundle(folder, kind=KIND)
        ranker_cls = RANKERS.get(str(bundle.meta.get("ranker_kind")))
        if ranker_cls is None:
            raise ModelFormatError(f"{folder}: unknown ranker kind {bundle.meta.get('ranker_kind')!r}; known: {sorted(RANKERS)}")
        ranker = ranker_cls.load(folder / "ranker")
        retriever = load_retriever(folder / "retriever")
        template = FeatureSet.from_json(json.dumps(bundle.meta["template_feature_set"]))
        model = cls(retriever, ranker_cls(ranker.config), template, config_from_dict(TwoStageConfig, bundle.config))
        if ranker.feature_set_.version != bundle.meta.get("feature_set_version"):
            raise ModelFormatError(f"{folder}: the ranker's feature set does not match the manifest's version")
        model.ranker_ = ranker
        model.p_outside_ = float(bundle.meta["p_outside"])
        if "interpolation" in bundle.meta:
            model.interpolation_ = Interpolation.from_dict(bundle.meta["interpolation"])
        model.user_ids_ = bundle.arrays["user_ids"].astype(object)
        model.item_ids_ = bundle.arrays["item_ids"].astype(object)
        model.as_of_us_ = int(bundle.meta["as_of_us"])
        model.fit_stats_ = dict(bundle.meta.get("fit_stats", {}))
        state = folder / "state"
        events_path = state / "events.parquet"
        events = pq.read_table(events_path) if events_path.is_file() else EVENT_SCHEMA.empty_table()
        model._load_state(events, pq.read_table(state / "items.parquet"), pq.read_table(state / "users.parquet"))
        model.clock_us_ = int(bundle.meta["clock_us"])
        return model


def _latest_us(events: pa.Table) -> int:
    if events.num_rows == 0:
        return -1
    return int(np.asarray(pc.cast(events["timestamp"], pa.int64()).to_numpy(zero_copy_only=False)).max())


def _context(when: datetime) -> Any:
    from shelf.models.base import Context

    return Context(timestamp=when)


def ablation_models(make: Callable[[], TwoStage], groups: Sequence[str], name: str = "shelf-twostage") -> dict[str, Callable[[], Any]]:
    """Factories for an evaluation: ``name`` (the full model) and ``name without GROUP`` per group.

    The full model is fitted once (when the runner fits it, or by the first variant); each
    variant reuses its retriever and ranking set and retrains only the ranker, so paired
    differences on the test users measure the feature groups alone.
    """
    base = make()
    out: dict[str, Callable[[], Any]] = {name: lambda: base}
    for group in groups:
        out[f"{name} without {group}"] = lambda group=group: _Ablated(base, group)
    return out


class _Ablated:
    """A runner-facing twin of a ``TwoStage`` without one feature group (see ``ablation_models``)."""

    outputs_probabilities = True

    def __init__(self, base: TwoStage, group: str) -> None:
        self.base, self.group = base, group
        self.name = f"{base.name} without {group}"

    def fit(self, data: Interactions) -> Self:
        if not self.base.is_fitted or self.base.fitted_on_ is not data:
            self.base.fit(data)
        self.model_ = self.base.without([self.group])
        return self

    def retrieve(self, query: Query, n: int) -> Scored:
        return self.model_.retrieve(query, n)

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return self.model_.score_users(users)


def rerank_ranker(seed: int = 0) -> LightGBMRanker:
    """The lambdarank ranker of ``rerank_two_stage``: small, regularised trees (a few hundred
    requests train it), a 5-seed bagging ensemble of 50 trees each at learning rate 0.03, no
    early stopping (LightGBM's scores the ranker alone and stopped MovieLens after 1–2 trees).

    Short on purpose: on three MovieLens validation cuts inside the training side (291 users), 50
    trees at 0.03 gained over the blend at every weight (BENCHMARKS "twostage", rows "rerank"),
    where the former 200 trees at 0.05 lost at w = 1 (0.98x pooled, in a one-off experiment that
    no bench reproduces: issue 5, stop 15 note). 250 trees in all keep ranking 500 candidates
    under 5 ms (median, BENCHMARKS "twostage")."""
    from shelf.models.ranking import LightGBMRankerConfig

    return LightGBMRanker(LightGBMRankerConfig(
        objective="lambdarank", num_leaves=7, learning_rate=0.03, min_data_in_leaf=100, feature_fraction=0.8,
        bagging_fraction=0.8, lambda_l2=10.0, truncation_level=10, max_rounds=50, early_stopping_rounds=0,
        n_models=5, seed=seed,
    ))


def rerank_two_stage(retriever: Any = None, *, seed: int = 0, **config: Any) -> TwoStage:
    """The engagement re-ranker (what ``shelf train`` ships as ``shelf-twostage``): LightGBM
    lambdarank re-orders the blend's top 30 of 100 on ``relative`` features (their
    within-request percentiles taken over all 100), mixed with the blend by rank at w = 0.75,
    then refitted on every request moment.

    Why a fixed w = 0.75: it was the best weight on both real logs' validation protocols, inside
    their training sides (MovieLens, three 30-day cuts, 291 users: 1.085x the blend, each cut
    1.03-1.13x; REES46, rolling windows, 245 user-windows: 1.03x, CI across 0), while the held
    cuts' own choice (``ranker_weight=None``: 0 unless the ranker wins clearly there) chose 0 on
    every REES46 window and on one MovieLens cut in three. Pass ``ranker_weight=None`` for that
    cautious choice, or 0 for the blend's order with calibrated probabilities.

    ``config`` overrides ``TwoStageConfig`` fields (``label_window_s``, cuts, ...).
    """
    fields = {"n_candidates": 100, "rerank_depth": 30, "mix": "rank", "refit_on_held": True, "features": "relative",
              "relative_to_all": True, "ranker_weight": 0.75, "seed": seed, **config}
    return TwoStage(retriever, rerank_ranker(seed), config=TwoStageConfig(**fields))
