"""Incremental feature computation from the event stream, for serving.

``OnlineFeatures`` keeps the events it has been fed as columnar numpy arrays plus a row index per
user and per item, and the catalogue/profile versions it has been given. ``frame(query,
candidates)`` computes the features of every candidate for one request at ``t`` (the query's
context timestamp) from exactly the same declarations as ``shelf.features.offline``, reading
only events with ``timestamp < t`` and versions with ``valid_from < t``; the parity test holds
the two to the same values.

The cost of a request is proportional to the events of the user and of the candidate items (one
vectorised pass per feature), not to the size of the log. Memory grows with the events kept;
``forget_before`` drops those older than the longest finite window once no all-history feature
needs them (all-history features are then computed over what is kept: say so in the card).

Catalogue versions must be fed (``update_items``) before the events that refer to them: each
event is tagged with its item's category and brand as the catalogue stood when it arrived.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shelf.features.definitions import (
    Attribute,
    CandidateField,
    ContextField,
    EventAggregate,
    FeatureFrame,
    FeatureSet,
    SessionField,
    SourceScore,
)
from shelf.features.offline import assemble, derive_relative
from shelf.schema import BUILTIN_EVENT_TYPES, ITEM_SCHEMA, USER_SCHEMA

_TYPE_CODE = {t: i for i, t in enumerate(BUILTIN_EVENT_TYPES)}


# Structural types of ``shelf.models.base.Context``, ``Query`` and ``Scored``: features sit below
# models in the layering, so they read requests by shape rather than by import.
class _ContextLike(Protocol):
    @property
    def timestamp(self) -> datetime | None: ...
    @property
    def device(self) -> str | None: ...
    @property
    def region(self) -> str | None: ...


class Query(Protocol):
    @property
    def user_id(self) -> str | None: ...
    @property
    def session_items(self) -> tuple[str, ...]: ...
    @property
    def context(self) -> _ContextLike: ...


class Scored(Protocol):
    @property
    def items(self) -> np.ndarray: ...
    @property
    def scores(self) -> np.ndarray: ...
    @property
    def sources(self) -> np.ndarray | None: ...

    def __len__(self) -> int: ...


class _Interner:
    """Strings to dense codes (None → -1)."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.values: list[str] = []

    def encode(self, values: Sequence[object]) -> np.ndarray:
        out = np.empty(len(values), dtype=np.int64)
        codes = self.codes
        for i, v in enumerate(values):
            if v is None:
                out[i] = -1
                continue
            c = codes.get(v)  # type: ignore[arg-type]
            if c is None:
                c = codes[v] = len(self.values)  # type: ignore[index]
                self.values.append(v)  # type: ignore[arg-type]
            out[i] = c
        return out

    def lookup(self, values: Sequence[object]) -> np.ndarray:
        get = self.codes.get
        return np.fromiter((-1 if v is None else get(v, -1) for v in values), dtype=np.int64, count=len(values))  # type: ignore[arg-type]


class _RowIndex:
    """Rows of the event buffer per entity code, kept as a list of arrays merged lazily."""

    def __init__(self) -> None:
        self.rows: dict[int, list[np.ndarray]] = {}

    def add(self, codes: np.ndarray, first_row: int) -> None:
        valid = np.flatnonzero(codes >= 0)
        if not len(valid):
            return
        order = valid[np.argsort(codes[valid], kind="stable")]
        sorted_codes = codes[order]
        cuts = np.flatnonzero(np.diff(sorted_codes)) + 1
        for chunk in np.split(order, cuts):
            self.rows.setdefault(int(codes[chunk[0]]), []).append(chunk + first_row)

    def get(self, code: int) -> np.ndarray:
        parts = self.rows.get(code)
        if not parts:
            return np.empty(0, dtype=np.int64)
        if len(parts) > 1:
            parts[:] = [np.concatenate(parts)]
        return parts[0]


@dataclass
class _Versions:
    """Table versions sorted by (entity code, valid_from), with each entity's segment."""

    code: np.ndarray
    valid_us: np.ndarray
    columns: dict[str, np.ndarray]
    start: np.ndarray  # per entity code: first row (or -1)
    length: np.ndarray

    @classmethod
    def build(cls, code: np.ndarray, valid_us: np.ndarray, columns: dict[str, np.ndarray], n_codes: int) -> _Versions:
        order = np.lexsort((valid_us, code))
        code, valid_us = code[order], valid_us[order]
        columns = {k: v[order] for k, v in columns.items()}
        start = np.full(n_codes, -1, dtype=np.int64)
        length = np.zeros(n_codes, dtype=np.int64)
        if len(code):
            firsts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
            start[code[firsts]] = firsts
            length[code[firsts]] = np.diff(np.r_[firsts, len(code)])
        return cls(code, valid_us, columns, start, length)

    def asof(self, codes: np.ndarray, t_us: np.ndarray, *, strict: bool) -> np.ndarray:
        """Row of the latest version of each code with valid_from < t (``strict``) or <= t; -1 if none."""
        out = np.full(len(codes), -1, dtype=np.int64)
        known = (codes >= 0) & (codes < len(self.start))
        idx = np.flatnonzero(known)
        if not len(idx):
            return out
        c = codes[idx]
        start, length = self.start[c], self.length[c]
        has = length > 0
        # Most entities have one version: decide those in one vectorised step.
        single = has & (length == 1)
        first_valid = self.valid_us[np.where(has, start, 0)] if len(self.valid_us) else np.zeros(len(c), np.int64)
        ok = first_valid < t_us[idx] if strict else first_valid <= t_us[idx]
        out[idx[single & ok]] = start[single & ok]
        side = "left" if strict else "right"
        for j in np.flatnonzero(length > 1):
            s, n = int(start[j]), int(length[j])
            pos = int(np.searchsorted(self.valid_us[s : s + n], t_us[idx[j]], side=side)) - 1
            out[idx[j]] = s + pos if pos >= 0 else -1
        return out


class OnlineFeatures:
    """Feature state updated per event batch and read per request."""

    def __init__(self, feature_set: FeatureSet) -> None:
        self.feature_set = feature_set
        self._computed = feature_set.computed  # with the inputs of ``Relative`` features
        self._users = _Interner()
        self._items = _Interner()
        self._sessions = _Interner()
        self._categories = _Interner()
        self._brands = _Interner()
        self._chunks: list[dict[str, np.ndarray]] = []
        self._cols: dict[str, np.ndarray] | None = None
        self._n = 0
        self._by_user = _RowIndex()
        self._by_item = _RowIndex()
        self._item_versions: _Versions | None = None
        self._user_versions: _Versions | None = None
        self._item_table = ITEM_SCHEMA.empty_table()
        self._user_table = USER_SCHEMA.empty_table()

    # -- updates --------------------------------------------------------------------------------

    @property
    def n_events(self) -> int:
        return self._n

    def update_items(self, items: pa.Table) -> None:
        """Add catalogue versions (ITEM_SCHEMA)."""
        self._item_table = pa.concat_tables([self._item_table, items.select(ITEM_SCHEMA.names).cast(ITEM_SCHEMA)])
        t = self._item_table
        code = self._items.encode(t["item_id"].to_pylist())
        cols = {
            "category": t["category"].to_numpy(zero_copy_only=False).astype(object),
            "brand": t["brand"].to_numpy(zero_copy_only=False).astype(object),
            "price": t["price"].to_numpy(zero_copy_only=False).astype(np.float64),
            "stock": t["stock"].cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64),
            "launched_at": _micros_or_nan(t["launched_at"]),
            "title": t["title"].to_numpy(zero_copy_only=False).astype(object),
            "attributes": t["attributes"].to_numpy(zero_copy_only=False).astype(object),
        }
        self._item_versions = _Versions.build(code, _micros(t["valid_from"]), cols, len(self._items.values))

    def update_users(self, users: pa.Table) -> None:
        """Add profile versions (USER_SCHEMA)."""
        self._user_table = pa.concat_tables([self._user_table, users.select(USER_SCHEMA.names).cast(USER_SCHEMA)])
        t = self._user_table
        code = self._users.encode(t["user_id"].to_pylist())
        cols = {name: t[name].to_numpy(zero_copy_only=False).astype(object) for name in ("age_band", "gender", "region")}
        cols["signed_up_at"] = _micros_or_nan(t["signed_up_at"])
        for name in ("consent_personalization", "consent_marketing"):
            cols[name] = t[name].to_numpy(zero_copy_only=False).astype(object)
        self._user_versions = _Versions.build(code, _micros(t["valid_from"]), cols, len(self._users.values))

    def update(self, events: pa.Table) -> None:
        """Add a batch of validated events (EVENT_SCHEMA), in any order."""
        if events.num_rows == 0:
            return
        ts = _micros(events["timestamp"])
        user = self._users.encode(events["user_id"].to_pylist())
        item = self._items.encode(events["item_id"].to_pylist())
        types = events["type"].to_pylist()
        category = np.full(len(item), -1, dtype=np.int64)
        brand = np.full(len(item), -1, dtype=np.int64)
        if self._item_versions is not None:
            row = self._item_versions.asof(item, ts, strict=False)
            found = row >= 0
            cats = self._item_versions.columns["category"][row[found]]
            brands = self._item_versions.columns["brand"][row[found]]
            category[found] = self._categories.encode(list(cats))
            brand[found] = self._brands.encode(list(brands))
        chunk = {
            "ts": ts,
            "user": user,
            "item": item,
            "session": self._sessions.encode(events["session_id"].to_pylist()),
            "type": np.fromiter((_TYPE_CODE.get(t, -1) for t in types), dtype=np.int64, count=len(types)),
            "value": _floats(events["value"]),
            "price": _floats(events["price"]),
            "category": category,
            "brand": brand,
        }
        self._by_user.add(user, self._n)
        self._by_item.add(item, self._n)
        self._chunks.append(chunk)
        self._n += len(ts)
        self._cols = None

    def _columns(self) -> dict[str, np.ndarray]:
        if self._cols is None:
            if self._chunks:
                merged = {k: np.concatenate([c[k] for c in self._chunks]) for k in self._chunks[0]}
            else:
                merged = {k: np.empty(0, dtype=np.float64 if k in ("value", "price") else np.int64) for k in
                          ("ts", "user", "item", "session", "type", "value", "price", "category", "brand")}
            self._chunks = [merged] if self._chunks else []
            self._cols = merged
        return self._cols

    # -- reads ----------------------------------------------------------------------------------

    def frame(self, query: Query, candidates: Scored, now: datetime | None = None) -> FeatureFrame:
        """Features of each candidate for ``query`` at its context time (else ``now``, else the clock)."""
        when = query.context.timestamp or now or datetime.now(UTC)
        t_us = int(round(when.timestamp() * 1_000_000))
        cols = self._columns()
        n = len(candidates)
        cand_ids = [str(i) for i in candidates.items.tolist()]
        cand_codes = self._items.lookup(cand_ids)
        item_rows = self._item_versions.asof(cand_codes, np.full(n, t_us), strict=True) if self._item_versions else np.full(n, -1)
        parts: dict[str, np.ndarray] = {}

        user_code = self._users.lookup([query.user_id])[0] if query.user_id is not None else -1
        user_rows = self._by_user.get(int(user_code)) if user_code >= 0 else np.empty(0, dtype=np.int64)
        aggregates: tuple[EventAggregate, ...] = self._computed.of_type(EventAggregate)
        user_feats = [f for f in aggregates if f.entity == "user"]
        if user_feats:
            sub = _subset(cols, user_rows)
            zeros = np.zeros(len(user_rows), dtype=np.int64)
            for f in user_feats:
                if f.aggregation == "affinity":
                    parts[f.name] = self._affinity(f, sub, t_us, item_rows)
                else:
                    parts[f.name] = np.full(n, _grouped(f, zeros, 1, sub, t_us)[0])
        item_feats = [f for f in aggregates if f.entity == "item"]
        if item_feats:
            rows_per = [self._by_item.get(int(c)) if c >= 0 else np.empty(0, dtype=np.int64) for c in cand_codes]
            rows = np.concatenate(rows_per) if rows_per else np.empty(0, dtype=np.int64)
            groups = np.repeat(np.arange(n), [len(r) for r in rows_per])
            keep = cols["ts"][rows] < t_us  # nothing at or after t can matter
            sub = _subset(cols, rows[keep])
            groups = groups[keep]
            for f in item_feats:
                parts[f.name] = _grouped(f, groups, n, sub, t_us)
        pair_feats = [f for f in aggregates if f.entity == "user_item"]
        if pair_feats:
            sub = _subset(cols, user_rows)
            uniq, inverse = np.unique(sub["item"], return_inverse=True)
            pos = np.searchsorted(uniq, cand_codes)
            pos = np.minimum(pos, max(len(uniq) - 1, 0))
            hit = (cand_codes >= 0) & (len(uniq) > 0) & (uniq[pos] == cand_codes if len(uniq) else False)
            nothing = _subset(cols, np.zeros(0, dtype=np.int64))
            for f in pair_feats:
                per_item = _grouped(f, inverse.reshape(-1), len(uniq), sub, t_us)
                empty = _grouped(f, np.zeros(0, dtype=np.int64), 1, nothing, t_us)[0]
                parts[f.name] = np.where(hit, per_item[pos] if len(uniq) else empty, empty)
        self._attributes(query, cand_ids, item_rows, user_code, t_us, parts)
        self._session(query, cand_ids, parts)
        for f in self._computed.of_type(ContextField):
            value: object
            if f.source == "hour":
                value = str(datetime.fromtimestamp(t_us / 1e6, UTC).hour)
            elif f.source == "weekday":
                value = str(datetime.fromtimestamp(t_us / 1e6, UTC).weekday())
            else:
                value = getattr(query.context, f.source)
            col = np.empty(n, dtype=object)
            col[:] = [value] * n
            parts[f.name] = col
        for f in self._computed.of_type(CandidateField):
            if f.source == "score":
                parts[f.name] = np.asarray(candidates.scores, dtype=np.float64)
            elif f.source == "rank":
                parts[f.name] = np.arange(n, dtype=np.float64)
            else:
                col = np.empty(n, dtype=object)
                if candidates.sources is not None:
                    col[:] = candidates.sources
                parts[f.name] = col
        # Per-source retrieval values ride along with the candidates (``source_features``,
        # column name -> array aligned with ``items``); a plain ``Scored`` has none (NaN).
        extra = getattr(candidates, "source_features", None) or {}
        for f in self._computed.of_type(SourceScore):
            value = extra.get(f.column)
            parts[f.name] = np.full(n, np.nan) if value is None else np.asarray(value, dtype=np.float64)
        if self.feature_set.relative:  # one request: percentiles rank among these candidates
            derive_relative(self.feature_set, parts, np.zeros(n, dtype=np.int64))
        return assemble(self.feature_set, parts, n)

    def _affinity(self, f: EventAggregate, sub: dict[str, np.ndarray], t_us: int, item_rows: np.ndarray) -> np.ndarray:
        assert f.by is not None
        interner = self._categories if f.by == "category" else self._brands
        m = _mask(f.event_types, f.window_s, sub, t_us)
        total = int(m.sum())
        n = len(item_rows)
        if total == 0:
            return np.full(n, np.nan)
        counts = np.bincount(sub[f.by][m] + 1, minlength=len(interner.values) + 1)
        cand_values = np.full(n, None, dtype=object)
        if self._item_versions is not None:
            found = item_rows >= 0
            cand_values[found] = self._item_versions.columns[f.by][item_rows[found]]
        codes = interner.lookup(list(cand_values))
        return np.where(codes >= 0, counts[codes + 1] / total, 0.0)

    def _attributes(
        self, query: Query, cand_ids: list[str], item_rows: np.ndarray, user_code: int, t_us: int, parts: dict[str, np.ndarray]
    ) -> None:
        n = len(cand_ids)
        user_row = -1
        if self._user_versions is not None and user_code >= 0:
            user_row = int(self._user_versions.asof(np.array([user_code]), np.array([t_us]), strict=True)[0])
        for f in self._computed.of_type(Attribute):
            if f.field == "item_id":
                raw = np.asarray(cand_ids, dtype=object)
            elif f.field == "user_id":
                raw = np.full(n, query.user_id, dtype=object)
            elif f.entity == "item":
                numeric = f.field in ("price", "stock", "launched_at")
                raw = np.full(n, np.nan) if numeric else np.full(n, None, dtype=object)
                if self._item_versions is not None:
                    found = item_rows >= 0
                    raw[found] = self._item_versions.columns[f.field][item_rows[found]]
            else:
                v = self._user_versions.columns[f.field][user_row] if user_row >= 0 and self._user_versions else None
                raw = np.full(n, v, dtype=object)
            parts[f.name] = _derive(f, raw, t_us)

    def _session(self, query: Query, cand_ids: list[str], parts: dict[str, np.ndarray]) -> None:
        n = len(cand_ids)
        session = list(query.session_items)
        seen = set(session)
        for f in self._computed.of_type(SessionField):
            if f.source == "length":
                parts[f.name] = np.full(n, float(len(session)))
            elif f.source == "distinct_items":
                parts[f.name] = np.full(n, float(len(seen)))
            else:
                parts[f.name] = np.fromiter((c in seen for c in cand_ids), dtype=np.float64, count=n)


def _derive(f: Attribute, raw: np.ndarray, t_us: int) -> np.ndarray:
    if f.derive == "value":
        if f.categorical:
            if not f.field.startswith("consent_"):  # every other categorical column holds str or None
                return raw
            return np.array([None if v is None else str(v).lower() if isinstance(v, bool) else str(v) for v in raw], dtype=object)
        if raw.dtype != object:
            return raw.astype(np.float64)
        return np.array([math.nan if v is None else float(v) for v in raw], dtype=np.float64)
    if f.derive == "age_days":
        vals = raw.astype(np.float64) if raw.dtype != object else np.array([math.nan if v is None else float(v) for v in raw], dtype=np.float64)
        launched = np.where(np.isnan(vals), 0, vals).astype(np.int64)
        return np.where(np.isnan(vals), np.nan, (t_us - launched) / 86400e6)
    if f.derive == "price_band":
        x = raw.astype(np.float64) if raw.dtype != object else np.array([math.nan if v is None else float(v) for v in raw])
        known = np.isfinite(x)
        out = np.full(len(raw), None, dtype=object)
        out[known] = np.floor(np.log2(1 + x[known])).astype(np.int64).astype(str).astype(object)
        return out
    out = np.empty(len(raw), dtype=object)
    for i, v in enumerate(raw):
        out[i] = (v.split("/", 1)[0] or None) if isinstance(v, str) else None
    return out


def _micros(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Microseconds since the epoch as int64; null → the smallest int64 (never < any real t)."""
    raw = pc.cast(column, pa.int64())
    return np.asarray(pc.fill_null(raw, np.iinfo(np.int64).min).to_numpy(zero_copy_only=False), dtype=np.int64)


def _micros_or_nan(column: pa.ChunkedArray) -> np.ndarray:
    """Microseconds since the epoch as float64 objects-friendly values; null → NaN."""
    raw = pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False)
    return np.asarray(raw, dtype=np.float64)


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


_INT64_MIN = np.iinfo(np.int64).min
_INT64_MAX = np.iinfo(np.int64).max


def _mask(types: tuple[str, ...], window_s: int | None, c: dict[str, np.ndarray], t_us: int) -> np.ndarray:
    """Rows of ``c`` of these types in ``[t - window, t)``; memoised per column set (``c["_masks"]``)."""
    cache = c.get("_masks")
    key = (types, window_s)
    if isinstance(cache, dict) and key in cache:
        return cache[key]
    allowed = np.zeros(len(BUILTIN_EVENT_TYPES) + 1, dtype=bool)  # slot 0: unknown types (-1)
    allowed[[_TYPE_CODE[t] + 1 for t in types]] = True
    m = allowed[c["type"] + 1] & (c["ts"] < t_us)
    if window_s is not None:
        m &= c["ts"] >= t_us - window_s * 1_000_000
    if isinstance(cache, dict):
        cache[key] = m
    return m


def _subset(cols: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {k: v[rows] for k, v in cols.items() if k != "_masks"}
    out["_masks"] = {}  # type: ignore[assignment]
    return out


def _grouped(f: EventAggregate, groups: np.ndarray, n: int, c: dict[str, np.ndarray], t_us: int) -> np.ndarray:
    """One value per group (NaN where the SQL aggregate would be NULL)."""
    m = _mask(f.event_types, f.window_s, c, t_us)
    g = groups[m]
    a = f.aggregation
    if a == "count":
        return np.bincount(g, minlength=n).astype(np.float64)
    if a in ("sum", "mean"):
        if f.field == "amount":
            x = c["price"][m] * np.where(np.isnan(c["value"][m]), 1.0, c["value"][m])
        else:
            x = c[str(f.field)][m]
        ok = ~np.isnan(x)
        total = np.bincount(g[ok], weights=x[ok], minlength=n)
        if a == "sum":
            return total
        count = np.bincount(g[ok], minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)
    if a == "recency":
        latest = np.full(n, _INT64_MIN, dtype=np.int64)
        np.maximum.at(latest, g, c["ts"][m])
        return np.where(latest > _INT64_MIN, (t_us - latest) / 1e6, np.nan)
    if a == "age":
        earliest = np.full(n, _INT64_MAX, dtype=np.int64)
        np.minimum.at(earliest, g, c["ts"][m])
        return np.where(earliest < _INT64_MAX, (t_us - earliest) / 1e6, np.nan)
    if a == "ratio":
        num = np.bincount(g, minlength=n).astype(np.float64)
        den_mask = _mask(f.denominator_types, f.window_s, c, t_us)
        den = np.bincount(groups[den_mask], minlength=n).astype(np.float64)
        ratio = np.where(den > 0, num / np.maximum(den, 1.0), np.nan)
        return np.where(np.isnan(ratio), np.nan, np.maximum(0.0, 1.0 - ratio)) if f.complement else ratio
    if a == "per_session":
        s = c["session"][m]
        has = s >= 0
        events = np.bincount(g[has], minlength=n).astype(np.float64)
        pairs = np.unique(np.stack([g[has], s[has]]), axis=1) if has.any() else np.empty((2, 0), dtype=np.int64)
        sessions = np.bincount(pairs[0], minlength=n).astype(np.float64)
        return np.where(sessions > 0, events / np.maximum(sessions, 1.0), np.nan)
    raise AssertionError(a)  # pragma: no cover - affinity is handled by the caller
