"""Point-in-time feature computation from a snapshot's tables, in DuckDB, vectorised.

For every example ``(user, item, t)`` only what was known strictly before ``t`` is read: events
with ``timestamp < t`` (range joins on the entity key), catalogue and profile versions with
``valid_from < t`` (``ASOF`` joins). Aggregates are computed once per distinct key and time
(``(user, t)``, ``(item, t)``, ...), not once per example, and joined back.

The examples table has ``user_id``, ``item_id`` and ``timestamp`` (EVENT_SCHEMA types) and may
have ``session_id``, ``device``, ``region`` (the request's context) and ``candidate_score``,
``candidate_rank``, ``candidate_source`` (what retrieval said). Missing optional columns read as
null.
"""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shelf.errors import InputError
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
from shelf.schema import EVENT_SCHEMA, ITEM_SCHEMA, TIMESTAMP_TYPE, USER_SCHEMA

EXAMPLE_OPTIONAL: dict[str, pa.DataType] = {
    "session_id": pa.string(),
    "device": pa.string(),
    "region": pa.string(),
    "candidate_score": pa.float64(),
    "candidate_rank": pa.float64(),
    "candidate_source": pa.string(),
}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _types_sql(types: tuple[str, ...]) -> str:
    return "(" + ", ".join("'" + t.replace("'", "''") + "'" for t in types) + ")"


def _field_sql(field: str | None) -> str:
    if field == "amount":
        return "(e.price * coalesce(e.value, 1.0))"
    return f"e.{field}"


def _match(types: tuple[str, ...], window_s: int | None, extra: str = "") -> str:
    cond = f"e.type IN {_types_sql(types)}"
    if window_s is not None:
        cond += f" AND e.ts_us >= k.ts_us - {int(window_s) * 1_000_000}"
    return cond + extra


def aggregate_sql(f: EventAggregate) -> str:
    """The SQL aggregate of one event feature over ``e`` joined to key row ``k`` (NULL = fill)."""
    m = _match(f.event_types, f.window_s)
    a = f.aggregation
    if a == "count":
        return f"CAST(count(*) FILTER (WHERE {m}) AS DOUBLE)"
    if a == "sum":
        return f"coalesce(sum({_field_sql(f.field)}) FILTER (WHERE {m}), 0.0)"
    if a == "mean":
        return f"avg({_field_sql(f.field)}) FILTER (WHERE {m})"
    if a == "recency":
        return f"(k.ts_us - max(e.ts_us) FILTER (WHERE {m})) / 1e6"
    if a == "age":
        return f"(k.ts_us - min(e.ts_us) FILTER (WHERE {m})) / 1e6"
    if a == "ratio":
        den = _match(f.denominator_types, f.window_s)
        ratio = f"(count(*) FILTER (WHERE {m}))::DOUBLE / nullif(count(*) FILTER (WHERE {den}), 0)"
        # not greatest(): DuckDB's greatest skips NULLs, and "no carts" must stay NULL (→ fill)
        return f"CASE WHEN 1.0 - {ratio} < 0 THEN 0.0 ELSE 1.0 - {ratio} END" if f.complement else ratio
    if a == "per_session":
        return (
            f"(count(e.session_id) FILTER (WHERE {m}))::DOUBLE / "
            f"nullif(count(DISTINCT e.session_id) FILTER (WHERE {m}), 0)"
        )
    if a == "affinity":
        same = _match(f.event_types, f.window_s, f" AND e.{f.by} = k.cand_{f.by}")
        return f"(count(*) FILTER (WHERE {same}))::DOUBLE / nullif(count(*) FILTER (WHERE {m}), 0)"
    raise AssertionError(a)  # pragma: no cover - declarations are validated


def _prepare_examples(examples: pa.Table) -> pa.Table:
    for name in ("user_id", "item_id", "timestamp"):
        if name not in examples.column_names:
            raise InputError(f"examples need a {name!r} column; got {examples.column_names}")
    n = examples.num_rows
    cols = {
        "ex_id": pa.array(np.arange(n, dtype=np.int64)),
        "user_id": examples["user_id"].cast(pa.string()),
        "item_id": examples["item_id"].cast(pa.string()),
        "timestamp": examples["timestamp"].cast(TIMESTAMP_TYPE),
    }
    for name, t in EXAMPLE_OPTIONAL.items():
        cols[name] = examples[name].cast(t) if name in examples.column_names else pa.nulls(n, t)
    return pa.table(cols)


def _empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def compute_offline(
    feature_set: FeatureSet,
    examples: pa.Table,
    events: pa.Table,
    items: pa.Table | None = None,
    users: pa.Table | None = None,
) -> FeatureFrame:
    """Point-in-time features of every example (rows in the order of ``examples``).

    ``Relative`` features are derived from their inputs after those are computed; a request (the
    group a within-request percentile ranks in) is a value of the ``request`` column when the
    examples have one, else a (user, time) pair.
    """
    x = _prepare_examples(examples)
    top, feature_set = feature_set, feature_set.computed
    events = events.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)
    items = _empty(ITEM_SCHEMA) if items is None else items.select(ITEM_SCHEMA.names).cast(ITEM_SCHEMA)
    users = _empty(USER_SCHEMA) if users is None else users.select(USER_SCHEMA.names).cast(USER_SCHEMA)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("x_raw", x)
        con.register("ev_raw", events)
        con.register("it_raw", items)
        con.register("us_raw", users)
        con.execute("CREATE TEMP VIEW x AS SELECT *, epoch_us(timestamp) AS ts_us FROM x_raw")
        con.execute("CREATE TEMP VIEW it AS SELECT *, epoch_us(valid_from) AS valid_us FROM it_raw")
        con.execute("CREATE TEMP VIEW us AS SELECT *, epoch_us(valid_from) AS valid_us FROM us_raw")
        # Each event carries its item's category and brand as the catalogue stood at the event.
        con.execute(
            "CREATE TEMP TABLE ev AS SELECT e.*, i.category, i.brand FROM "
            "(SELECT *, epoch_us(timestamp) AS ts_us FROM ev_raw) e "
            "ASOF LEFT JOIN it i ON e.item_id = i.item_id AND e.ts_us >= i.valid_us"
        )
        # The candidate's catalogue row as it stood strictly before t.
        con.execute(
            "CREATE TEMP TABLE xi AS SELECT x.ex_id, i.* EXCLUDE (item_id) FROM x "
            "ASOF LEFT JOIN it i ON x.item_id = i.item_id AND x.ts_us > i.valid_us"
        )
        con.execute(
            "CREATE TEMP TABLE xu AS SELECT x.ex_id, u.* EXCLUDE (user_id) FROM x "
            "ASOF LEFT JOIN us u ON x.user_id = u.user_id AND x.ts_us > u.valid_us"
        )
        parts: dict[str, np.ndarray] = {}
        _event_features(con, feature_set, parts)
        _attribute_features(con, feature_set, parts)
        _session_features(con, feature_set, parts)
        context = con.sql(
            "SELECT CAST(hour(timestamp) AS VARCHAR) AS hour, CAST(isodow(timestamp) - 1 AS VARCHAR) AS weekday, "
            "device, region, candidate_score, candidate_rank, candidate_source FROM x ORDER BY ex_id"
        ).to_arrow_table()
    finally:
        con.close()
    for f in feature_set.of_type(ContextField):
        parts[f.name] = context[f.source].to_numpy(zero_copy_only=False).astype(object)
    for f in feature_set.of_type(CandidateField):
        col = context[f"candidate_{f.source}"]
        if f.source == "source":
            parts[f.name] = col.to_numpy(zero_copy_only=False).astype(object)
        else:
            parts[f.name] = col.to_numpy(zero_copy_only=False).astype(np.float64)
    for f in feature_set.of_type(SourceScore):
        parts[f.name] = _source_column(examples, f)
    if top.relative:
        derive_relative(top, parts, _request_groups(examples, x))
    return assemble(top, parts, x.num_rows)


def _request_groups(examples: pa.Table, x: pa.Table) -> np.ndarray:
    """A group code per example: its request (the ``request`` column, else user and time)."""
    if "request" in examples.column_names:
        raw = examples["request"].to_numpy(zero_copy_only=False)
        return np.unique(raw.astype(str) if raw.dtype == object else raw, return_inverse=True)[1].reshape(-1)
    users = pc.dictionary_encode(pc.fill_null(x["user_id"], "\x00")).combine_chunks().indices
    ts = pc.cast(x["timestamp"], pa.int64()).to_numpy(zero_copy_only=False)
    pairs = np.stack([np.asarray(users.to_numpy(zero_copy_only=False), dtype=np.int64), np.asarray(ts, dtype=np.int64)])
    return np.unique(pairs, axis=1, return_inverse=True)[1].reshape(-1)


def derive_relative(feature_set: FeatureSet, parts: dict[str, np.ndarray], groups: np.ndarray) -> None:
    """Add every ``Relative`` feature of ``feature_set`` to ``parts`` (both engines call this).

    Inputs are read after their ``fill`` (as the model would see them); ``groups`` holds the
    request of each row (within-request percentiles).
    """
    declared = {f.name: f for f in feature_set.computed}
    for f in feature_set.relative:
        values = []
        for source in f.inputs:
            col = np.asarray(parts[source.name], dtype=np.float64)
            fill = getattr(declared.get(source.name, source), "fill", math.nan)
            values.append(np.where(np.isnan(col), fill, col))
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if f.op == "percentile":
                parts[f.name] = within_group_percentile(values[0], groups)
            elif f.op == "trend":
                window, total, age = values
                lifetime = total * f.scale / np.maximum(age, f.scale)
                parts[f.name] = np.log((window + 1.0) / (lifetime + 1.0))
            else:  # growth
                last, both = values
                parts[f.name] = np.log((last + 1.0) / (np.maximum(both - last, 0.0) + 1.0))
        parts[f.name] = np.where(np.isinf(parts[f.name]), np.nan, parts[f.name])


def within_group_percentile(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Percentile of each value within its group, in (0, 1] (1 = the largest; ties share their
    average rank; NaN stays NaN and is not counted), like pandas' ``rank(pct=True)``."""
    x = np.asarray(x, dtype=np.float64)
    out = np.full(len(x), np.nan)
    idx = np.flatnonzero(~np.isnan(x))
    if not len(idx):
        return out
    g, v = np.asarray(groups)[idx], x[idx]
    order = np.lexsort((v, g))
    gs, vs = g[order], v[order]
    n = len(order)
    steps = np.arange(n)
    new_group = np.r_[True, gs[1:] != gs[:-1]]
    group_id = np.cumsum(new_group) - 1
    start = np.maximum.accumulate(np.where(new_group, steps, 0))
    size = np.bincount(group_id)[group_id]
    new_run = new_group | np.r_[True, vs[1:] != vs[:-1]]
    run_id = np.cumsum(new_run) - 1
    rank = (steps - start + 1).astype(np.float64)
    average = (np.bincount(run_id, weights=rank) / np.bincount(run_id))[run_id]
    out[idx[order]] = average / size
    return out


def _source_column(examples: pa.Table, f: SourceScore) -> np.ndarray:
    """A per-source retrieval value handed over in the examples (NaN when not given)."""
    if f.column not in examples.column_names:
        return np.full(examples.num_rows, np.nan)
    col = examples[f.column].cast(pa.float64()).to_numpy(zero_copy_only=False)
    return np.asarray(col, dtype=np.float64)


def assemble(feature_set: FeatureSet, parts: dict[str, np.ndarray], n: int) -> FeatureFrame:
    """Stack per-feature columns into a frame; numeric NULLs become each feature's ``fill``."""
    numeric = np.empty((n, len(feature_set.numeric)), dtype=np.float64)
    for j, f in enumerate(feature_set.numeric):
        col = np.asarray(parts[f.name], dtype=np.float64)
        fill = getattr(f, "fill", math.nan)
        numeric[:, j] = np.where(np.isnan(col), fill, col)
    categorical = np.empty((n, len(feature_set.categorical)), dtype=object)
    for j, f in enumerate(feature_set.categorical):
        categorical[:, j] = parts[f.name]
    return FeatureFrame(
        tuple(f.name for f in feature_set.numeric), numeric, tuple(f.name for f in feature_set.categorical), categorical
    )


def _fetch(con: duckdb.DuckDBPyConnection, sql: str, names: list[str], parts: dict[str, np.ndarray]) -> None:
    table = con.sql(sql).to_arrow_table()
    for name in names:
        parts[name] = table[name].to_numpy(zero_copy_only=False).astype(np.float64)


def _event_features(con: duckdb.DuckDBPyConnection, fs: FeatureSet, parts: dict[str, np.ndarray]) -> None:
    aggregates: list[EventAggregate] = list(fs.of_type(EventAggregate))
    keys = {
        "user": ["user_id"],
        "item": ["item_id"],
        "user_item": ["user_id", "item_id"],
    }
    for entity, key in keys.items():
        feats = [f for f in aggregates if f.entity == entity and f.aggregation != "affinity"]
        if feats:
            _aggregate(con, feats, key, [], parts)
    affinity = [f for f in aggregates if f.aggregation == "affinity"]
    if affinity:
        _aggregate(con, affinity, ["user_id"], ["category", "brand"], parts)


def _aggregate(
    con: duckdb.DuckDBPyConnection,
    feats: list[EventAggregate],
    key: list[str],
    candidate_attrs: list[str],
    parts: dict[str, np.ndarray],
) -> None:
    windows = [f.window_s for f in feats]
    lower = ""
    if all(w is not None for w in windows):
        lower = f" AND e.ts_us >= k.ts_us - {max(w for w in windows if w is not None) * 1_000_000}"
    cand = [f"xi.{a} AS cand_{a}" for a in candidate_attrs]
    key_cols = ", ".join([f"x.{c}" for c in key] + ["x.ts_us"] + cand)
    group = ", ".join([f"k.{c}" for c in key] + ["k.ts_us"] + [f"k.cand_{a}" for a in candidate_attrs])
    join = " AND ".join(f"e.{c} = k.{c}" for c in key)
    aggs = ", ".join(f"{aggregate_sql(f)} AS {_q(f.name)}" for f in feats)
    on_back = " AND ".join(
        [f"a.{c} IS NOT DISTINCT FROM xk.{c}" for c in key]
        + ["a.ts_us = xk.ts_us"]
        + [f"a.cand_{a} IS NOT DISTINCT FROM xk.cand_{a}" for a in candidate_attrs]
    )
    names = [f.name for f in feats]
    sql = f"""
        WITH xk AS (SELECT x.ex_id, {key_cols} FROM x LEFT JOIN xi ON xi.ex_id = x.ex_id),
        keys AS (SELECT DISTINCT * EXCLUDE (ex_id) FROM xk),
        agg AS (
            SELECT {group}, {aggs}
            FROM keys k LEFT JOIN ev e ON {join} AND e.ts_us < k.ts_us{lower}
            GROUP BY {group}
        )
        SELECT xk.ex_id, {", ".join("a." + _q(n) for n in names)}
        FROM xk JOIN agg a ON {on_back} ORDER BY xk.ex_id
    """
    _fetch(con, sql, names, parts)


def _attribute_features(con: duckdb.DuckDBPyConnection, fs: FeatureSet, parts: dict[str, np.ndarray]) -> None:
    attrs: list[Attribute] = list(fs.of_type(Attribute))
    if not attrs:
        return
    selects = []
    for f in attrs:
        table = "xi" if f.entity == "item" else "xu"
        col = f"{table}.{f.field}"
        if f.field in ("item_id", "user_id"):
            col = f"x.{f.field}"  # the example's own id, known whether or not the catalogue has it
        if f.derive == "value":
            expr = f"CAST({col} AS VARCHAR)" if f.categorical else f"CAST({col} AS DOUBLE)"
        elif f.derive == "age_days":
            expr = f"(x.ts_us - epoch_us({col})) / 86400e6"
        elif f.derive == "price_band":
            expr = f"CAST(CAST(floor(log2(1 + {col})) AS BIGINT) AS VARCHAR)"
        else:  # top_level
            expr = f"NULLIF(split_part({col}, '/', 1), '')"
        selects.append(f"{expr} AS {_q(f.name)}")
    table = con.sql(
        f"SELECT {', '.join(selects)} FROM x JOIN xi ON xi.ex_id = x.ex_id JOIN xu ON xu.ex_id = x.ex_id "
        "ORDER BY x.ex_id"
    ).to_arrow_table()
    for f in attrs:
        col = table[f.name].to_numpy(zero_copy_only=False)
        parts[f.name] = col.astype(object) if f.categorical else col.astype(np.float64)


def _session_features(con: duckdb.DuckDBPyConnection, fs: FeatureSet, parts: dict[str, np.ndarray]) -> None:
    feats: list[SessionField] = list(fs.of_type(SessionField))
    if not feats:
        return
    table = con.sql(
        """
        WITH keys AS (SELECT DISTINCT session_id, item_id, ts_us FROM x WHERE session_id IS NOT NULL),
        agg AS (
            SELECT k.session_id, k.item_id, k.ts_us,
                   CAST(count(e.item_id) AS DOUBLE) AS length,
                   CAST(count(DISTINCT e.item_id) AS DOUBLE) AS distinct_items,
                   CAST(coalesce(bool_or(e.item_id = k.item_id), false) AS DOUBLE) AS contains_item
            FROM keys k LEFT JOIN ev e ON e.session_id = k.session_id AND e.ts_us < k.ts_us
            GROUP BY ALL
        )
        SELECT coalesce(a.length, 0) AS length, coalesce(a.distinct_items, 0) AS distinct_items,
               coalesce(a.contains_item, 0) AS contains_item
        FROM x LEFT JOIN agg a ON a.session_id = x.session_id AND a.item_id = x.item_id AND a.ts_us = x.ts_us
        ORDER BY x.ex_id
        """
    ).to_arrow_table()
    for f in feats:
        parts[f.name] = table[f.source].to_numpy(zero_copy_only=False).astype(np.float64)
