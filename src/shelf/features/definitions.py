"""Feature declarations: each feature is declared once, typed, and checked when it is declared.

A declaration says *what* a feature is (its entity, aggregation, window, event types); the two
engines in ``shelf.features.offline`` (point-in-time, DuckDB) and ``shelf.features.online``
(incremental, numpy) say *how* to compute it, from the same declaration, so their values agree
(``tests/features/test_parity.py`` holds them to it).

Every feature is computed for an example ``(user, item, t)`` from what was known strictly before
``t``: events with ``timestamp < t``, catalogue and profile versions with ``valid_from < t``.

Kinds: a *numeric* feature is a float (``NaN`` when it cannot be computed and its ``fill`` is NaN;
the ranker's encoder then substitutes the training median); a *categorical* feature is a string
or ``None`` (``None`` and values unseen in training go to the out-of-vocabulary bucket).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Literal

import numpy as np

from shelf.errors import ShelfError
from shelf.schema import BUILTIN_EVENT_TYPES, EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA

HOUR = 3_600
DAY = 86_400
WEEK = 7 * DAY
MONTH = 30 * DAY  # "30d" windows are exactly 30 days, not a calendar month

# Recency of something that never happened: one year, so that log1p(recency) stays finite and
# "never" sorts after "long ago".
NO_HISTORY_SECONDS = 365.0 * DAY

# Numeric event fields an aggregate may read. ``amount`` is derived: price × quantity (quantity
# = value, 1 when absent), i.e. the money a purchase event moved.
EVENT_NUMERIC_FIELDS: frozenset[str] = frozenset({"value", "price", "amount"})
AFFINITY_ATTRIBUTES: frozenset[str] = frozenset({"category", "brand"})

Group = Literal["user", "item", "user_item", "context", "session", "candidate"]
GROUPS: tuple[str, ...] = ("user", "item", "user_item", "context", "session", "candidate")
Kind = Literal["numeric", "categorical"]
Encoding = Literal["auto", "onehot", "embedding"]
Transform = Literal["none", "log1p"]


class FeatureDefinitionError(ShelfError):
    """A feature declaration names an unknown field, event type or option."""


def _window_label(window_s: int | None) -> str:
    if window_s is None:
        return "all"
    for unit, size in (("d", DAY), ("h", HOUR)):
        if window_s % size == 0:
            return f"{window_s // size}{unit}"
    return f"{window_s}s"


@dataclass(frozen=True)
class Feature:
    """What every declaration has: a unique ``name`` and the ``group`` that ablations drop."""

    name: str
    group: str
    kind: ClassVar[Kind] = "numeric"

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise FeatureDefinitionError(f"feature name {self.name!r} must be non-empty letters, digits and _")
        if self.group not in GROUPS:
            raise FeatureDefinitionError(f"{self.name}: group {self.group!r} is not one of {GROUPS}")

    @property
    def encoding(self) -> Encoding:
        return "auto"

    @property
    def transform(self) -> Transform:
        return "none"

    def declaration(self) -> dict[str, Any]:
        """A JSON-ready description (what the feature-set version hashes)."""
        out: dict[str, Any] = {"type": type(self).__name__}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and math.isnan(value):
                value = "nan"
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class EventAggregate(Feature):
    """An aggregate over the events of an entity in ``[t - window, t)``.

    Parameters
    ----------
    entity:
        ``user``, ``item`` or ``user_item`` (events of this user on this item).
    aggregation:
        ``count`` events; ``sum`` / ``mean`` of ``field``; ``recency``: seconds since the latest
        event; ``ratio``: count(event_types) / count(denominator_types) (``complement`` gives
        ``max(0, 1 - ratio)``, e.g. cart abandonment); ``age``: seconds since the earliest
        event (how long the entity has been around); ``per_session``: events per distinct
        session; ``affinity``: share of the entity's events whose item has the candidate's
        ``by`` attribute (category or brand, as the catalogue stood at each event).
    window_s:
        Window length in seconds; ``None`` for all history before ``t``.
    fill:
        The value when there is nothing to aggregate (no events, zero denominator); NaN leaves
        it to the model's encoder (training median).
    """

    entity: Literal["user", "item", "user_item"] = "user"
    aggregation: Literal["count", "sum", "mean", "recency", "age", "ratio", "per_session", "affinity"] = "count"
    event_types: tuple[str, ...] = ()
    window_s: int | None = None
    field: str | None = None
    denominator_types: tuple[str, ...] = ()
    complement: bool = False
    by: str | None = None
    fill: float = 0.0
    log1p: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"feature {self.name!r}"
        if self.entity not in ("user", "item", "user_item"):
            raise FeatureDefinitionError(f"{where}: entity {self.entity!r} must be user, item or user_item")
        aggregations = ("count", "sum", "mean", "recency", "age", "ratio", "per_session", "affinity")
        if self.aggregation not in aggregations:
            raise FeatureDefinitionError(f"{where}: aggregation {self.aggregation!r} is not one of {aggregations}")
        if not self.event_types:
            raise FeatureDefinitionError(f"{where}: needs at least one event type")
        for t in (*self.event_types, *self.denominator_types):
            if t not in BUILTIN_EVENT_TYPES:
                raise FeatureDefinitionError(
                    f"{where}: unknown event type {t!r}; expected one of {', '.join(BUILTIN_EVENT_TYPES)}"
                )
        if self.window_s is not None and (not isinstance(self.window_s, int) or self.window_s <= 0):
            raise FeatureDefinitionError(f"{where}: window_s must be a positive number of seconds or None")
        if self.aggregation in ("sum", "mean"):
            if self.field not in EVENT_NUMERIC_FIELDS:
                raise FeatureDefinitionError(
                    f"{where}: field {self.field!r} is not a numeric event field; expected one of "
                    f"{sorted(EVENT_NUMERIC_FIELDS)} (event fields: {EVENT_SCHEMA.names})"
                )
        elif self.field is not None:
            raise FeatureDefinitionError(f"{where}: field is only read by sum and mean, not {self.aggregation}")
        if (self.aggregation == "ratio") != bool(self.denominator_types):
            raise FeatureDefinitionError(f"{where}: denominator_types is required by ratio and only by ratio")
        if self.complement and self.aggregation != "ratio":
            raise FeatureDefinitionError(f"{where}: complement applies to ratio only")
        if self.aggregation == "affinity":
            if self.by not in AFFINITY_ATTRIBUTES:
                raise FeatureDefinitionError(
                    f"{where}: affinity needs by= one of {sorted(AFFINITY_ATTRIBUTES)}, got {self.by!r}"
                )
            if self.entity != "user":
                raise FeatureDefinitionError(f"{where}: affinity is a user feature")
        elif self.by is not None:
            raise FeatureDefinitionError(f"{where}: by= applies to affinity only")
        if not isinstance(self.fill, (int, float)) or math.isinf(self.fill):
            raise FeatureDefinitionError(f"{where}: fill must be a finite number or NaN")

    @property
    def transform(self) -> Transform:
        return "log1p" if self.log1p else "none"


@dataclass(frozen=True)
class Attribute(Feature):
    """A catalogue or profile column as it stood just before ``t`` (``valid_from < t``).

    ``derive``: ``value`` (the column itself), ``age_days`` (days from a timestamp column to
    ``t``), ``price_band`` (``floor(log2(1 + price))``, a small categorical), ``top_level`` (the
    first level of a category path).
    """

    entity: Literal["item", "user"] = "item"
    field: str = ""
    derive: Literal["value", "age_days", "price_band", "top_level"] = "value"
    categorical: bool = False
    encode: Encoding = "auto"
    log1p: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"feature {self.name!r}"
        schema = {"item": ITEM_SCHEMA, "user": USER_SCHEMA}.get(self.entity)
        if schema is None:
            raise FeatureDefinitionError(f"{where}: entity {self.entity!r} must be item or user")
        if self.field not in schema.names or self.field == "valid_from":
            raise FeatureDefinitionError(
                f"{where}: unknown {self.entity} field {self.field!r}; expected one of "
                f"{[n for n in schema.names if n != 'valid_from']}"
            )
        t = schema.field(self.field).type
        import pyarrow as pa

        derived_ok = {
            "value": True,
            "age_days": pa.types.is_timestamp(t),
            "price_band": pa.types.is_floating(t),
            "top_level": pa.types.is_string(t),
        }
        if self.derive not in derived_ok:
            raise FeatureDefinitionError(f"{where}: derive {self.derive!r} is not one of {sorted(derived_ok)}")
        if not derived_ok[self.derive]:
            raise FeatureDefinitionError(f"{where}: derive {self.derive!r} does not apply to {self.field} ({t})")
        textual = pa.types.is_string(t) or pa.types.is_boolean(t)
        wants_categorical = self.derive in ("price_band", "top_level") or (self.derive == "value" and textual)
        if self.categorical != wants_categorical:
            kind = "categorical" if wants_categorical else "numeric"
            raise FeatureDefinitionError(f"{where}: {self.field} with derive={self.derive} is {kind}; set categorical={wants_categorical}")

    @property
    def kind(self) -> Kind:  # type: ignore[override]
        return "categorical" if self.categorical else "numeric"

    @property
    def encoding(self) -> Encoding:
        return self.encode

    @property
    def transform(self) -> Transform:
        return "log1p" if self.log1p else "none"


@dataclass(frozen=True)
class ContextField(Feature):
    """The request's context: ``hour`` and ``weekday`` of ``t`` (UTC), ``device``, ``region``."""

    source: Literal["hour", "weekday", "device", "region"] = "hour"
    encode: Encoding = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source not in ("hour", "weekday", "device", "region"):
            raise FeatureDefinitionError(f"feature {self.name!r}: unknown context field {self.source!r}")

    @property
    def kind(self) -> Kind:  # type: ignore[override]
        return "categorical"

    @property
    def encoding(self) -> Encoding:
        return self.encode


@dataclass(frozen=True)
class SessionField(Feature):
    """The current session before ``t``: ``length`` (events), ``distinct_items``, ``contains_item``."""

    source: Literal["length", "distinct_items", "contains_item"] = "length"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source not in ("length", "distinct_items", "contains_item"):
            raise FeatureDefinitionError(f"feature {self.name!r}: unknown session field {self.source!r}")

    @property
    def transform(self) -> Transform:
        return "none" if self.source == "contains_item" else "log1p"


@dataclass(frozen=True)
class CandidateField(Feature):
    """What retrieval said about the candidate: its ``score``, ``rank`` (0 = first) or ``source``."""

    source: Literal["score", "rank", "source"] = "score"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source not in ("score", "rank", "source"):
            raise FeatureDefinitionError(f"feature {self.name!r}: unknown candidate field {self.source!r}")

    @property
    def kind(self) -> Kind:  # type: ignore[override]
        return "categorical" if self.source == "source" else "numeric"

    @property
    def transform(self) -> Transform:
        return "log1p" if self.source == "rank" else "none"


@dataclass(frozen=True)
class SourceScore(Feature):
    """What one source of a blended retrieval said about the candidate.

    ``field="score"``: the source's raw score (NaN when the source did not score the item; the
    encoder then substitutes the training median). ``field="rank"``: the candidate's rank among
    the request's candidates by that source's score (0 = best; candidates the source did not
    score share the last rank, the number of candidates). Both engines read the value from what
    the retrieval stage handed over (``column``), never from events, so they cannot leak.
    """

    retriever: str = ""
    field: Literal["score", "rank"] = "score"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.retriever or not self.retriever.replace("_", "").replace("-", "").isalnum():
            raise FeatureDefinitionError(f"feature {self.name!r}: retriever {self.retriever!r} must be a source name")
        if self.field not in ("score", "rank"):
            raise FeatureDefinitionError(f"feature {self.name!r}: field {self.field!r} must be score or rank")

    @property
    def column(self) -> str:
        """The examples column (offline) and ``source_features`` key (online) holding the value."""
        return f"source_{self.field}_{self.retriever}"

    @property
    def transform(self) -> Transform:
        return "log1p" if self.field == "rank" else "none"


RELATIVE_ARITY: dict[str, int] = {"percentile": 1, "trend": 3, "growth": 2}


@dataclass(frozen=True)
class Relative(Feature):
    """A numeric feature derived from other features, declared inline as ``inputs``.

    The inputs are computed by the engines like any feature (and filled the same way) but are not
    themselves model inputs unless also declared at the top level; both engines derive the value
    with the same code (``shelf.features.offline.derive_relative``), so parity carries over.

    ``op``:

    * ``percentile`` (one input): the candidate's percentile among the candidates of its request,
      in ``(0, 1]`` (1 = the largest; ties share their average rank; a NaN input stays NaN and is
      not counted). A request is one online frame; offline, the examples sharing a ``request``
      column value (else the same user and time). It therefore needs every candidate of the
      request among the examples (not a sample): ``TwoStage``'s rerank mode keeps them all.
    * ``trend`` (inputs: a count over a window of ``scale`` seconds, the all-history count, the
      entity's age in seconds): ``log((a + 1) / (b * scale / max(c, scale) + 1))``, the window's
      count against the lifetime rate over one window (> 0: rising).
    * ``growth`` (inputs: the count over the last window, over the last two windows):
      ``log((a + 1) / (max(b - a, 0) + 1))``, the last window against the one before it.
    """

    op: Literal["percentile", "trend", "growth"] = "percentile"
    inputs: tuple[Feature, ...] = ()
    scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"feature {self.name!r}"
        if self.op not in RELATIVE_ARITY:
            raise FeatureDefinitionError(f"{where}: op {self.op!r} is not one of {sorted(RELATIVE_ARITY)}")
        if len(self.inputs) != RELATIVE_ARITY[self.op]:
            raise FeatureDefinitionError(f"{where}: {self.op} takes {RELATIVE_ARITY[self.op]} input(s), got {len(self.inputs)}")
        for f in self.inputs:
            if not isinstance(f, Feature) or f.kind != "numeric":
                raise FeatureDefinitionError(f"{where}: inputs must be numeric feature declarations, got {f!r}")
        if not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale) or self.scale <= 0:
            raise FeatureDefinitionError(f"{where}: scale must be a positive finite number")

    def declaration(self) -> dict[str, Any]:
        out = super().declaration()
        out["inputs"] = [f.declaration() for f in self.inputs]
        return out


def _expand(features: Iterable[Feature]) -> list[Feature]:
    """Every declaration to compute, inputs before what reads them, one per name."""
    out: dict[str, Feature] = {}

    def visit(f: Feature) -> None:
        for sub in getattr(f, "inputs", ()):
            visit(sub)
        seen = out.get(f.name)
        if seen is None:
            out[f.name] = f
        elif seen.declaration() != f.declaration():
            raise FeatureDefinitionError(f"two different declarations are named {f.name!r}")

    for f in features:
        visit(f)
    return list(out.values())


def source_score_features(retrievers: Sequence[str]) -> tuple[SourceScore, ...]:
    """Score and rank features of each named retrieval source (group ``candidate``)."""
    out: list[SourceScore] = []
    for r in retrievers:
        key = r.replace("-", "_")
        out += [SourceScore(f"src_{key}_score", "candidate", r, "score"), SourceScore(f"src_{key}_rank", "candidate", r, "rank")]
    return tuple(out)


_FEATURE_TYPES: dict[str, type[Feature]] = {
    cls.__name__: cls for cls in (EventAggregate, Attribute, ContextField, SessionField, CandidateField, SourceScore, Relative)
}


@dataclass(frozen=True)
class FeatureFrame:
    """Feature values for ``n`` examples: a float64 matrix and an object (str/None) matrix."""

    numeric_names: tuple[str, ...]
    numeric: np.ndarray  # (n, len(numeric_names)) float64
    categorical_names: tuple[str, ...]
    categorical: np.ndarray  # (n, len(categorical_names)) object

    def __len__(self) -> int:
        return self.numeric.shape[0]

    def column(self, name: str) -> np.ndarray:
        if name in self.numeric_names:
            return self.numeric[:, self.numeric_names.index(name)]
        if name in self.categorical_names:
            return self.categorical[:, self.categorical_names.index(name)]
        raise KeyError(f"no feature {name!r} in this frame")

    def take(self, rows: np.ndarray) -> FeatureFrame:
        return FeatureFrame(self.numeric_names, self.numeric[rows], self.categorical_names, self.categorical[rows])

    @staticmethod
    def concat(frames: Sequence[FeatureFrame]) -> FeatureFrame:
        first = frames[0]
        return FeatureFrame(
            first.numeric_names,
            np.concatenate([f.numeric for f in frames]),
            first.categorical_names,
            np.concatenate([f.categorical for f in frames]),
        )


class FeatureSet:
    """An ordered, named collection of declarations, with a version that hashes them."""

    def __init__(self, features: Iterable[Feature]) -> None:
        self.features: tuple[Feature, ...] = tuple(features)
        names = [f.name for f in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise FeatureDefinitionError(f"duplicate feature names {duplicates}")
        for f in self.features:
            if not isinstance(f, Feature):
                raise FeatureDefinitionError(f"{f!r} is not a feature declaration")
        self._computed = _expand(self.features)  # checks that inputs do not clash with features

    @property
    def computed(self) -> FeatureSet:
        """What the engines compute: every declaration but ``Relative`` ones, with their inputs.

        Equal to this set when it holds no ``Relative`` feature.
        """
        return FeatureSet(f for f in self._computed if not isinstance(f, Relative))

    @property
    def relative(self) -> tuple[Relative, ...]:
        """Every ``Relative`` declaration (nested inputs first), in the order they are derived."""
        return tuple(f for f in self._computed if isinstance(f, Relative))

    def __len__(self) -> int:
        return len(self.features)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.features)

    def __getitem__(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def numeric(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.kind == "numeric")

    @property
    def categorical(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.kind == "categorical")

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(g for g in GROUPS if any(f.group == g for f in self.features))

    def of_type(self, cls: type[Feature]) -> tuple[Any, ...]:
        return tuple(f for f in self.features if isinstance(f, cls))

    def without(self, groups: Iterable[str]) -> FeatureSet:
        drop = set(groups)
        unknown = drop - set(GROUPS)
        if unknown:
            raise FeatureDefinitionError(f"unknown feature group(s) {sorted(unknown)}; expected {GROUPS}")
        return FeatureSet(f for f in self.features if f.group not in drop)

    def declarations(self) -> list[dict[str, Any]]:
        return [f.declaration() for f in self.features]

    @property
    def version(self) -> str:
        """``fs-`` and 16 hex digits of SHA-256 over the declarations (goes into the bundle card)."""
        text = json.dumps(self.declarations(), sort_keys=True, separators=(",", ":"))
        return "fs-" + hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "features": self.declarations()}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureSet:
        raw = json.loads(text)
        out = cls(_from_declaration(decl) for decl in raw["features"])
        if raw.get("version") not in (None, out.version):
            raise FeatureDefinitionError(f"feature set version mismatch: saved {raw['version']}, rebuilt {out.version}")
        return out


def _from_declaration(raw: dict[str, Any]) -> Feature:
    decl = dict(raw)
    kind = _FEATURE_TYPES.get(decl.pop("type", ""))
    if kind is None:
        raise FeatureDefinitionError(f"unknown feature declaration type in {decl!r}")
    for key, value in list(decl.items()):
        if kind is Relative and key == "inputs":
            decl[key] = tuple(_from_declaration(v) for v in value)
        elif isinstance(value, list):
            decl[key] = tuple(value)
        elif value == "nan":
            decl[key] = float("nan")
    return kind(**decl)


def default_feature_set() -> FeatureSet:
    """The standard features of the engagement ranker (see the module docstring of each group)."""
    engaged = ("view", "add_to_cart", "add_to_wishlist", "purchase", "rating")
    every = tuple(BUILTIN_EVENT_TYPES)
    f: list[Feature] = []
    # -- user ------------------------------------------------------------------------------
    for window in (HOUR, DAY, WEEK, MONTH):
        for t in ("view", "add_to_cart", "purchase"):
            f.append(EventAggregate(f"user_{t}_{_window_label(window)}", "user", "user", "count", (t,), window, log1p=True))
    f += [
        EventAggregate("user_remove_30d", "user", "user", "count", ("remove_from_cart",), MONTH, log1p=True),
        EventAggregate("user_events_all", "user", "user", "count", every, None, log1p=True),
        EventAggregate("user_recency", "user", "user", "recency", every, None, fill=NO_HISTORY_SECONDS, log1p=True),
        EventAggregate("user_spend_30d", "user", "user", "sum", ("purchase",), MONTH, field="amount", log1p=True),
        EventAggregate("user_spend_all", "user", "user", "sum", ("purchase",), None, field="amount", log1p=True),
        EventAggregate("user_category_affinity", "user", "user", "affinity", engaged, MONTH, by="category"),
        EventAggregate("user_brand_affinity", "user", "user", "affinity", engaged, MONTH, by="brand"),
        EventAggregate(
            "user_cart_abandonment", "user", "user", "ratio", ("purchase",), None,
            denominator_types=("add_to_cart",), complement=True, fill=float("nan"),
        ),
        EventAggregate("user_mean_session_length", "user", "user", "per_session", every, None, log1p=True),
        Attribute("user_age_band", "user", "user", "age_band", categorical=True),
        Attribute("user_gender", "user", "user", "gender", categorical=True),
    ]
    # -- item ------------------------------------------------------------------------------
    f.append(EventAggregate("item_events_1h", "item", "item", "count", every, HOUR, log1p=True))
    for window in (DAY, WEEK, MONTH):
        for t in ("view", "add_to_cart", "purchase"):
            f.append(EventAggregate(f"item_{t}_{_window_label(window)}", "item", "item", "count", (t,), window, log1p=True))
    f += [
        EventAggregate("item_events_all", "item", "item", "count", every, None, log1p=True),
        EventAggregate(
            "item_view_to_cart", "item", "item", "ratio", ("add_to_cart",), MONTH,
            denominator_types=("view",), fill=float("nan"),
        ),
        EventAggregate(
            "item_cart_to_purchase", "item", "item", "ratio", ("purchase",), MONTH,
            denominator_types=("add_to_cart",), fill=float("nan"),
        ),
        EventAggregate(
            "item_abandonment", "item", "item", "ratio", ("purchase",), MONTH,
            denominator_types=("add_to_cart",), complement=True, fill=float("nan"),
        ),
        EventAggregate("item_mean_rating", "item", "item", "mean", ("rating",), None, field="value", fill=float("nan")),
        EventAggregate("item_rating_count", "item", "item", "count", ("rating",), None, log1p=True),
        EventAggregate("item_recency", "item", "item", "recency", every, None, fill=NO_HISTORY_SECONDS, log1p=True),
        Attribute("item_price", "item", "item", "price", log1p=True),
        Attribute("item_price_band", "item", "item", "price", derive="price_band", categorical=True),
        Attribute("item_age_days", "item", "item", "launched_at", derive="age_days", log1p=True),
        Attribute("item_stock", "item", "item", "stock", log1p=True),
        Attribute("item_category", "item", "item", "category", categorical=True, encode="embedding"),
        Attribute("item_top_category", "item", "item", "category", derive="top_level", categorical=True),
        Attribute("item_brand", "item", "item", "brand", categorical=True, encode="embedding"),
        Attribute("item_id", "item", "item", "item_id", categorical=True, encode="embedding"),
    ]
    # -- user × item -----------------------------------------------------------------------
    f += [
        EventAggregate("user_item_views", "user_item", "user_item", "count", ("view",), None, log1p=True),
        EventAggregate("user_item_carts", "user_item", "user_item", "count", ("add_to_cart",), None, log1p=True),
        EventAggregate("user_item_purchases", "user_item", "user_item", "count", ("purchase",), None, log1p=True),
        EventAggregate(
            "user_item_recency", "user_item", "user_item", "recency", every, None, fill=NO_HISTORY_SECONDS, log1p=True
        ),
    ]
    # -- context, session, candidate -------------------------------------------------------
    f += [
        ContextField("ctx_hour", "context", "hour", encode="onehot"),
        ContextField("ctx_weekday", "context", "weekday", encode="onehot"),
        ContextField("ctx_device", "context", "device", encode="onehot"),
        ContextField("ctx_region", "context", "region", encode="embedding"),
        SessionField("session_length", "session", "length"),
        SessionField("session_distinct_items", "session", "distinct_items"),
        SessionField("session_contains_item", "session", "contains_item"),
        CandidateField("candidate_score", "candidate", "score"),
        CandidateField("candidate_rank", "candidate", "rank"),
        CandidateField("candidate_source", "candidate", "source"),
    ]
    return FeatureSet(f)


def feature_asdict(feature: Feature) -> dict[str, Any]:
    return asdict(feature)


def relative_feature_set(sources: Sequence[str] = (), window_s: int = MONTH) -> FeatureSet:
    """Features for re-ranking retrieval's top candidates: where retrieval put them, and how each
    compares with the other candidates of the request, without item identity or raw volumes.

    No ``item_id`` (a tree or embedding memorises the training window's hits, which have moved on
    by the time it serves) and no raw popularity counts (their scale drifts with the traffic of
    the moment); popularity enters only relative to the item's own past (``trend``, ``growth``
    over ``window_s``, best matched to the label window) and to the other candidates
    (within-request percentiles). The counts they read are computed as inputs, not model inputs.

    Features: the blend's rank, each source's rank (``sources``), item age (since its first
    event) and the user's category / brand shares (recent and all-history), the item's trend and
    growth, and within-request percentiles of the all-history count, the window count, trend,
    growth, age and category share.
    """
    every = tuple(BUILTIN_EVENT_TYPES)
    engaged = ("view", "add_to_cart", "add_to_wishlist", "purchase", "rating")
    label = _window_label(window_s)
    count_w = EventAggregate(f"item_events_{label}", "item", "item", "count", every, window_s, log1p=True)
    count_2w = EventAggregate(f"item_events_2x{label}", "item", "item", "count", every, 2 * window_s, log1p=True)
    count_all = EventAggregate("item_events_all", "item", "item", "count", every, None, log1p=True)
    age = EventAggregate("item_age", "item", "item", "age", every, None, fill=0.0, log1p=True)
    affinity_all = EventAggregate("user_category_affinity_all", "user", "user", "affinity", engaged, None, by="category")
    trend = Relative("rel_item_trend", "item", "trend", (count_w, count_all, age), scale=float(window_s))
    growth = Relative("rel_item_growth", "item", "growth", (count_w, count_2w))
    f: list[Feature] = [
        CandidateField("candidate_rank", "candidate", "rank"),
        *(s for s in source_score_features(sources) if s.field == "rank"),
        age,
        trend,
        growth,
        EventAggregate("user_category_affinity", "user", "user", "affinity", engaged, MONTH, by="category"),
        affinity_all,
        EventAggregate("user_brand_affinity", "user", "user", "affinity", engaged, MONTH, by="brand"),
    ]
    for name, source in (("all", count_all), (label, count_w), ("trend", trend), ("growth", growth), ("age", age),
                         ("category_affinity", affinity_all)):
        f.append(Relative(f"pct_item_{name}" if name != "category_affinity" else "pct_category_affinity",
                          "user_item" if name == "category_affinity" else "item", "percentile", (source,)))
    return FeatureSet(f)
