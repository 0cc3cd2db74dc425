"""The three record kinds (event, item, user), their canonical Arrow schemas, and strict validation.

Validation is columnar: a batch of raw records (an Arrow table whose column names are the
canonical field names) is checked in one DuckDB query, so that bulk ingest stays fast, and every
record that fails gets a precise reason per field (what, where, what was expected). Nothing is
coerced silently: ``false`` is not a number, a naive timestamp is not guessed into a zone (unless
the caller declares the zone), an unknown event type is not mapped to something else.

The same functions validate the live API's batches, so files and HTTP follow one set of rules.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shelf.errors import InputError
from shelf.privacy import Pseudonymizer

# ---------------------------------------------------------------------------------------------
# Event types

BUILTIN_EVENT_TYPES: tuple[str, ...] = (
    "view",
    "add_to_cart",
    "remove_from_cart",
    "add_to_wishlist",
    "purchase",
    "rating",
    "search",
)
# Events whose `value` is a quantity: when present it must be positive.
QUANTITY_EVENT_TYPES: frozenset[str] = frozenset({"add_to_cart", "remove_from_cart", "purchase"})
RATING_MIN, RATING_MAX = 1.0, 5.0

TimeUnit = Literal["s", "ms", "us"]
_UNIT_TO_MICROS: dict[str, int] = {"s": 1_000_000, "ms": 1_000, "us": 1}

# Bounds that catch a wrong --time-unit (seconds read as ms land in 1970, ms read as s in 50000 AD).
MIN_TIMESTAMP_YEAR, MAX_TIMESTAMP_YEAR = 1971, 2200

# Epoch values are scaled to microseconds in a BIGINT; beyond this they would overflow (year
# ~290,000), so they are refused by the range check instead of crashing the query.
_MAX_EPOCH_MICROS = 9.0e18

MAX_ID_LENGTH = 256
MAX_TEXT_LENGTH = 2048

UTC = "UTC"
TIMESTAMP_TYPE = pa.timestamp("us", tz=UTC)

EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string()),
        pa.field("session_id", pa.string()),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("timestamp", TIMESTAMP_TYPE, nullable=False),
        pa.field("value", pa.float64()),
        pa.field("price", pa.float64()),
        pa.field("device", pa.string()),
        pa.field("region", pa.string()),
        pa.field("page", pa.string()),
        pa.field("referrer", pa.string()),
    ]
)

# `valid_from` is when this version of the record became true; snapshots before it do not see it.
ITEM_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("category", pa.string()),  # path, levels joined by "/"
        pa.field("brand", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("stock", pa.int64()),
        pa.field("launched_at", TIMESTAMP_TYPE),
        pa.field("attributes", pa.string()),  # JSON object of free attributes
        pa.field("valid_from", TIMESTAMP_TYPE, nullable=False),
    ]
)

USER_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("signed_up_at", TIMESTAMP_TYPE),
        pa.field("age_band", pa.string()),
        pa.field("gender", pa.string()),
        pa.field("region", pa.string()),
        pa.field("consent_personalization", pa.bool_()),
        pa.field("consent_marketing", pa.bool_()),
        pa.field("valid_from", TIMESTAMP_TYPE, nullable=False),
    ]
)

CATEGORY_SEPARATOR = "/"


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class RecordError:
    """Why one record was refused: where it is, which field, what it held, what was expected."""

    position: int
    field: str
    value: str
    expected: str
    source: str = ""

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        shown = "missing" if self.value == "" else repr(self.value)
        return f"{where}line {self.position}: {self.field} {shown}: expected {self.expected}"


@dataclass(frozen=True)
class ValidatedBatch:
    """The records that passed (canonical schema) and one error per refused field."""

    valid: pa.Table
    errors: list[RecordError]
    rejected_positions: list[int] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.rejected_positions)


@dataclass(frozen=True)
class EventRules:
    """What counts as a valid event for this shop."""

    event_types: frozenset[str] = frozenset(BUILTIN_EVENT_TYPES)
    time_unit: TimeUnit = "s"  # for numeric (epoch) timestamps
    # A zone the caller *declares* for naive timestamps (e.g. "Europe/Berlin"); None refuses them.
    assume_timezone: str | None = None

    @classmethod
    def with_extra_types(cls, extra: Collection[str], **kwargs: object) -> EventRules:
        return cls(event_types=frozenset(BUILTIN_EVENT_TYPES) | frozenset(extra), **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Column preparation (pyarrow) and checks (DuckDB SQL)

_local = threading.local()


def _connection() -> duckdb.DuckDBPyConnection:
    """One DuckDB connection per thread, created on first use (never at import)."""
    con = getattr(_local, "con", None)
    if con is None:
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        _local.con = con
    return con


PREPARED_MAX_ROWS = 50_000  # smaller batches run prepared statements (see _Query.run)
PREPARED_PER_CONNECTION = 64  # distinct query texts kept prepared (one per input schema and rules)


def _prepared(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """The name of a statement prepared from ``sql`` on this thread's connection (prepared on
    first use; the least recently used is deallocated beyond PREPARED_PER_CONNECTION). It reads
    ``__raw``, which the caller registers anew for each batch: DuckDB binds it again then."""
    statements = getattr(_local, "statements", None)
    if statements is None:
        statements = _local.statements = OrderedDict()
        _local.prepared_count = 0
    name = statements.get(sql)
    if name is not None:
        statements.move_to_end(sql)
        return name  # type: ignore[no-any-return]
    _local.prepared_count += 1
    name = f"shelf_check_{_local.prepared_count}"
    con.execute(f"PREPARE {name} AS {sql}")
    statements[sql] = name
    if len(statements) > PREPARED_PER_CONNECTION:
        _, stale = statements.popitem(last=False)
        con.execute(f"DEALLOCATE {stale}")
    return name


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _year_start(year: int) -> str:
    return f"TIMESTAMPTZ '{year:04d}-01-01 00:00:00+00'"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _is_textual(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)


def _prepare_id_column(name: str, column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Ids may arrive as text or integers; anything else is a mapping mistake, refused whole."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    t = column.type
    if pa.types.is_dictionary(t):
        column = column.cast(t.value_type)
        t = column.type
    if pa.types.is_null(t):
        return pa.nulls(len(column), pa.string())
    if _is_textual(t):
        return column.cast(pa.string())
    if pa.types.is_integer(t):
        return column.cast(pa.string())
    raise InputError(f"column {name!r} holds {t} values; expected text or integer ids")


def _prepare_text_column(name: str, column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    t = column.type
    if pa.types.is_dictionary(t):
        return column.cast(t.value_type).cast(pa.string())
    if pa.types.is_null(t):
        return pa.nulls(len(column), pa.string())
    if _is_textual(t):
        return column.cast(pa.string())
    raise InputError(f"column {name!r} holds {t} values; expected text")


def _check_column_kind(name: str, t: pa.DataType, kind: str) -> None:
    ok = {
        "number": lambda: _is_textual(t) or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t),
        "integer": lambda: _is_textual(t) or pa.types.is_integer(t) or pa.types.is_null(t),
        "timestamp": lambda: _is_textual(t)
        or pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_timestamp(t)
        or pa.types.is_null(t),
        "bool": lambda: _is_textual(t) or pa.types.is_boolean(t) or pa.types.is_null(t),
    }[kind]()
    if not ok:
        raise InputError(f"column {name!r} holds {t} values; expected {kind} values")


class _Query:
    """Builds the SELECT that types every column and lists the reasons a row fails."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.outputs: list[str] = []
        self.checks: list[str] = []
        self.failures: list[str] = []  # each check's condition, as "the row fails it"

    def has(self, name: str) -> bool:
        return name in self.table.column_names

    def type_of(self, name: str) -> pa.DataType:
        return self.table.schema.field(name).type

    def check(self, condition: str, fieldname: str, raw: str, expected: str) -> None:
        shown = f"coalesce(left(CAST({raw} AS VARCHAR), 80), '')"
        self.failures.append(f"({condition}) IS TRUE")  # exactly when the CASE below gives a reason
        self.checks.append(
            f"CASE WHEN {condition} THEN {_sql_str(fieldname)} || chr(31) || {_sql_str(expected)} "
            f"|| chr(31) || {shown} END"
        )

    # -- field kinds ------------------------------------------------------------------------

    def text(self, name: str, *, required: bool, max_len: int, expected: str | None = None) -> str:
        if not self.has(name):
            if required:
                raise InputError(f"required column {name!r} is missing")
            return "CAST(NULL AS VARCHAR)"
        col = _quote(name)
        value = f"NULLIF({col}, '')"
        if required:
            self.check(f"{value} IS NULL", name, col, expected or f"a non-empty {name}")
        # strlen (bytes, stored with the string) bounds length (characters, a scan of the text):
        # only strings over max_len bytes are counted.
        self.check(f"strlen({value}) > {max_len} AND length({value}) > {max_len}", name, col, f"at most {max_len} characters")
        return value

    def number(self, name: str, *, min_value: float | None = None, integer: bool = False) -> str:
        if not self.has(name):
            return "CAST(NULL AS BIGINT)" if integer else "CAST(NULL AS DOUBLE)"
        col = _quote(name)
        t = self.type_of(name)
        target = "BIGINT" if integer else "DOUBLE"
        if _is_textual(t):
            raw = f"NULLIF(trim({col}), '')"
            if integer:
                # TRY_CAST('3.5' AS BIGINT) rounds; an integer field takes only integer text.
                value = f"CASE WHEN regexp_full_match({raw}, '[+-]?[0-9]+') THEN TRY_CAST({raw} AS BIGINT) END"
            else:
                value = f"TRY_CAST({raw} AS {target})"
            what = "an integer" if integer else "a number"
            self.check(f"{raw} IS NOT NULL AND {value} IS NULL", name, col, what)
        else:
            value = f"CAST({col} AS {target})"
        if not integer:
            self.check(f"{value} IS NOT NULL AND NOT isfinite({value})", name, col, "a finite number")
        if min_value is not None:
            self.check(
                f"{value} IS NOT NULL AND isfinite({value}) AND {value} < {min_value}",
                name,
                col,
                f"a number >= {min_value:g}",
            )
        return value

    def timestamp(
        self, name: str, *, required: bool, unit: TimeUnit, assume_tz: str | None, min_year: int = MIN_TIMESTAMP_YEAR
    ) -> str:
        """A timezone-aware time. Epoch numbers must fall in 1971..2200 (a wrong unit lands far
        outside); written dates must fall in ``min_year``..2200 (events: 1971; a catalogue may
        hold films from 1930)."""
        if not self.has(name):
            if required:
                raise InputError(f"required column {name!r} is missing")
            return "CAST(NULL AS TIMESTAMPTZ)"
        col = _quote(name)
        t = self.type_of(name)
        tz_hint = (
            "a timezone-aware timestamp such as 2024-05-01T12:00:00Z or 2024-05-01 14:00:00+02:00 "
            "(declare the zone of naive times with --timezone)"
        )
        if _is_textual(t):
            raw = f"NULLIF(trim({col}), '')"
            # Plain numbers are epoch times in the declared unit (epochs are UTC by definition).
            # The regular expressions decide; the cheap tests in front only skip them where the
            # answer is already known (a '-' is never in an epoch number; a trailing 'Z' is a zone).
            epoch = f"CASE WHEN contains({raw}, '-') THEN false ELSE regexp_full_match({raw}, '[0-9]+([.][0-9]*)?') END"
            micros = _UNIT_TO_MICROS[unit]
            from_epoch = f"make_timestamptz(CAST(round(CAST({raw} AS DOUBLE) * {micros}) AS BIGINT))"
            aware = (
                f"CASE WHEN suffix({raw}, 'Z') THEN true "
                f"ELSE ({epoch} OR regexp_matches({raw}, '(Z|z|[+-][0-9]{{2}}(:?[0-9]{{2}})?|[ ]?(UTC|GMT))$')) END"
            )
            parsed_aware = (
                f"CASE WHEN {epoch} THEN CASE WHEN length({raw}) < 18 AND "
                f"CAST({raw} AS DOUBLE) * {micros} < {_MAX_EPOCH_MICROS} THEN {from_epoch} END "
                f"ELSE TRY_CAST({raw} AS TIMESTAMPTZ) END"
            )
            if assume_tz is None:
                self.check(f"{raw} IS NOT NULL AND NOT {aware}", name, col, tz_hint)
                value = f"CASE WHEN {aware} THEN {parsed_aware} END"
                self.check(
                    f"{raw} IS NOT NULL AND {aware} AND {parsed_aware} IS NULL",
                    name,
                    col,
                    "an ISO 8601 timestamp with a zone",
                )
            else:
                naive = f"timezone({_sql_str(assume_tz)}, TRY_CAST({raw} AS TIMESTAMP))"
                value = f"CASE WHEN {aware} THEN {parsed_aware} ELSE {naive} END"
                self.check(f"{raw} IS NOT NULL AND {value} IS NULL", name, col, "an ISO 8601 timestamp")
        elif pa.types.is_timestamp(t):
            if t.tz is not None:
                value = f"CAST({col} AS TIMESTAMPTZ)"
            elif assume_tz is not None:
                value = f"timezone({_sql_str(assume_tz)}, CAST({col} AS TIMESTAMP))"
            else:
                value = "CAST(NULL AS TIMESTAMPTZ)"
                self.check(f"{col} IS NOT NULL", name, col, tz_hint)
        elif pa.types.is_integer(t) or pa.types.is_floating(t):
            micros = _UNIT_TO_MICROS[unit]
            raw = f"CAST({col} AS DOUBLE)"
            self.check(f"{raw} IS NOT NULL AND NOT isfinite({raw})", name, col, "a finite epoch time")
            value = (
                f"CASE WHEN isfinite({raw}) AND abs({raw}) * {micros} < {_MAX_EPOCH_MICROS} "
                f"THEN make_timestamptz(CAST(round({raw} * {micros}) AS BIGINT)) END"
            )
            self.check(
                f"isfinite({raw}) AND {value} IS NULL",
                name,
                col,
                f"an epoch time between {MIN_TIMESTAMP_YEAR} and {MAX_TIMESTAMP_YEAR} (is the time unit right? it was read as {unit})",
            )
        else:
            value = "CAST(NULL AS TIMESTAMPTZ)"
        if required:
            self.check(f"{col} IS NULL", name, col, "a timestamp")
        is_epoch = (
            epoch
            if _is_textual(t)
            else ("true" if pa.types.is_integer(t) or pa.types.is_floating(t) else "false")
        )
        # year() in the session zone (UTC), written as comparisons with the years' first instants:
        # year() is a calendar computation per row. year(±infinity) is NULL, hence isfinite.
        out_of_range = (
            f"(isfinite({value}) AND ({value} >= {_year_start(MAX_TIMESTAMP_YEAR + 1)} OR {value} < "
            f"CASE WHEN {is_epoch} THEN {_year_start(MIN_TIMESTAMP_YEAR)} ELSE {_year_start(min_year)} END))"
        )
        self.check(
            f"{value} IS NOT NULL AND {out_of_range}",
            name,
            col,
            f"a time between {min_year} and {MAX_TIMESTAMP_YEAR} (epoch numbers: {MIN_TIMESTAMP_YEAR} onwards; "
            f"is the time unit right? it was read as {unit})",
        )
        return value

    def boolean(self, name: str) -> str:
        if not self.has(name):
            return "CAST(NULL AS BOOLEAN)"
        col = _quote(name)
        t = self.type_of(name)
        if pa.types.is_boolean(t) or pa.types.is_null(t):
            return f"CAST({col} AS BOOLEAN)"
        raw = f"lower(NULLIF(trim({col}), ''))"
        self.check(f"{raw} IS NOT NULL AND {raw} NOT IN ('true', 'false')", name, col, "true or false")
        return f"CASE {raw} WHEN 'true' THEN true WHEN 'false' THEN false END"

    def run(self, select: Sequence[tuple[str, str]]) -> pa.Table:
        columns = ", ".join(f"{expr} AS {_quote(alias)}" for alias, expr in select)
        errors = "[" + ", ".join(self.checks) + "]" if self.checks else "CAST([] AS VARCHAR[])"
        sql = (
            f"SELECT {columns}, __pos, "
            f"list_filter({errors}, lambda x: x IS NOT NULL) AS __errors FROM __raw"
        )
        con = _connection()
        con.register("__raw", self.table)
        try:
            if self.table.num_rows > PREPARED_MAX_ROWS:
                return con.sql(sql).to_arrow_table()  # bulk: the relation streams its result
            # A batch from the service: planning the query is most of its cost (~30 ms for a few
            # hundred rows against ~15 ms for a plan prepared once per query text), and listing
            # the reasons is most of what remains, so a first query only asks whether any row
            # fails; the reasons are listed when one does (a valid batch: ~15 ms in all, on a
            # machine where planning the whole query took ~35).
            failed = " OR ".join(self.failures) if self.failures else "false"
            quick = f"SELECT {columns}, __pos, {failed} AS __failed FROM __raw"
            result = con.sql(f"EXECUTE {_prepared(con, quick)}").to_arrow_table()
            if not pc.any(result["__failed"]).as_py():
                return result.drop_columns(["__failed"])  # no __errors column: every row passed
            return con.sql(f"EXECUTE {_prepared(con, sql)}").to_arrow_table()
        finally:
            con.unregister("__raw")


def _with_positions(raw: pa.Table, positions: pa.Array | Sequence[int] | None, first_position: int) -> pa.Table:
    if positions is None:
        positions = pa.array(np.arange(first_position, first_position + raw.num_rows, dtype=np.int64))
    elif not isinstance(positions, pa.Array):
        positions = pa.array(positions, type=pa.int64())
    if len(positions) != raw.num_rows:
        raise ValueError(f"{len(positions)} positions given for {raw.num_rows} records")
    return raw.append_column("__pos", positions)


def _split(result: pa.Table, schema: pa.Schema, source: str) -> ValidatedBatch:
    """Valid rows and the reasons of the others; a ``result`` without ``__errors`` passed whole."""
    error_counts = pc.list_value_length(result["__errors"]) if "__errors" in result.column_names else None
    if error_counts is None or pc.max(error_counts).as_py() in (None, 0):
        # The usual bulk case: every record passed, so nothing is copied by a filter.
        return ValidatedBatch(valid=result.select(schema.names).cast(schema), errors=[], rejected_positions=[])
    ok = pc.equal(error_counts, 0)
    valid = result.filter(ok).select(schema.names)
    bad = result.filter(pc.invert(ok)).select(["__pos", "__errors"])
    errors: list[RecordError] = []
    rejected: list[int] = []
    for pos, reasons in zip(bad["__pos"].to_pylist(), bad["__errors"].to_pylist(), strict=True):
        rejected.append(pos)
        for reason in reasons:
            fieldname, expected, value = reason.split("\x1f", 2)
            errors.append(RecordError(pos, fieldname, value, expected, source))
    return ValidatedBatch(valid=valid.cast(schema), errors=errors, rejected_positions=rejected)


def _unknown_columns(raw: pa.Table, schema: pa.Schema, extra_allowed: Collection[str] = ()) -> None:
    unknown = [c for c in raw.column_names if c not in schema.names and c not in extra_allowed]
    if unknown:
        raise InputError(f"unknown column(s) {unknown}; expected only {schema.names}")


# ---------------------------------------------------------------------------------------------
# Public validators


def validate_events(
    raw: pa.Table,
    *,
    pseudonymizer: Pseudonymizer,
    rules: EventRules | None = None,
    positions: pa.Array | Sequence[int] | None = None,
    first_position: int = 1,
    source: str = "",
) -> ValidatedBatch:
    """Validate raw events; pseudonymize user ids; derive missing event ids from content.

    ``raw`` has canonical column names (see ``EVENT_SCHEMA``); any may be text. ``positions`` gives
    each row's line number in its source (default: ``first_position`` onwards).
    """
    rules = rules or EventRules()
    _unknown_columns(raw, EVENT_SCHEMA)
    for name in ("item_id", "type", "timestamp"):
        if name not in raw.column_names:
            raise InputError(f"required column {name!r} is missing; columns present: {raw.column_names}")
    table = raw
    for name in ("user_id", "session_id", "item_id", "event_id"):
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, _prepare_id_column(name, table[name]))
    for name in ("type", "device", "region", "page", "referrer"):
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, _prepare_text_column(name, table[name]))
    for name, kind in (("value", "number"), ("price", "number"), ("timestamp", "timestamp")):
        if name in table.column_names:
            _check_column_kind(name, table.schema.field(name).type, kind)
    if "user_id" in table.column_names:
        users = pseudonymizer.array(table["user_id"], blank_is_null=True)
        table = table.set_column(table.column_names.index("user_id"), "user_id", users)
    table = _with_positions(table, positions, first_position)

    q = _Query(table)
    user = q.text("user_id", required=False, max_len=MAX_ID_LENGTH)
    session = q.text("session_id", required=False, max_len=MAX_ID_LENGTH)
    item = q.text("item_id", required=True, max_len=MAX_ID_LENGTH, expected="an item id")
    etype = q.text("type", required=True, max_len=64, expected="an event type")
    allowed = "[" + ", ".join(_sql_str(t) for t in sorted(rules.event_types)) + "]"
    q.check(
        f"{etype} IS NOT NULL AND NOT list_contains({allowed}, {etype})",
        "type",
        _quote("type"),
        "one of " + ", ".join(sorted(rules.event_types)) + " (map other names with --types)",
    )
    ts = q.timestamp("timestamp", required=True, unit=rules.time_unit, assume_tz=rules.assume_timezone)
    value = q.number("value")
    price = q.number("price", min_value=0.0)
    q.check(
        f"{etype} = 'rating' AND ({value} IS NULL OR {value} < {RATING_MIN} OR {value} > {RATING_MAX})",
        "value",
        _quote("value") if q.has("value") else "NULL",
        f"a rating between {RATING_MIN:g} and {RATING_MAX:g} for a rating event",
    )
    quantity_types = "[" + ", ".join(_sql_str(t) for t in sorted(QUANTITY_EVENT_TYPES)) + "]"
    q.check(
        f"list_contains({quantity_types}, {etype}) AND {value} IS NOT NULL AND {value} <= 0",
        "value",
        _quote("value") if q.has("value") else "NULL",
        "a positive quantity",
    )
    event_id = q.text("event_id", required=False, max_len=MAX_ID_LENGTH)
    derived = (
        f"'d_' || md5(concat_ws(chr(31), coalesce({user}, ''), coalesce({session}, ''), {item}, {etype}, "
        f"CAST(epoch_us({ts}) AS VARCHAR), coalesce(CAST({value} AS VARCHAR), ''), "
        f"coalesce(CAST({price} AS VARCHAR), '')))"
    )
    select = [
        ("event_id", f"coalesce({event_id}, {derived})"),
        ("user_id", user),
        ("session_id", session),
        ("item_id", item),
        ("type", etype),
        ("timestamp", ts),
        ("value", value),
        ("price", price),
    ]
    for name in ("device", "region", "page", "referrer"):
        select.append((name, q.text(name, required=False, max_len=MAX_TEXT_LENGTH)))
    return _split(q.run(select), EVENT_SCHEMA, source)


def validate_items(
    raw: pa.Table,
    *,
    default_valid_from: str | None = None,
    assume_timezone: str | None = None,
    positions: pa.Array | Sequence[int] | None = None,
    first_position: int = 1,
    source: str = "",
) -> ValidatedBatch:
    """Validate catalogue records.

    ``valid_from`` (when this version became true) comes from the record's ``valid_from`` or
    ``updated_at``; else ``launched_at``; else ``default_valid_from`` (an ISO time with zone); else
    the record is treated as known since always (1971), which is what a first catalogue load wants.
    """
    table = raw
    if "updated_at" in table.column_names:
        if "valid_from" in table.column_names:
            raise InputError("give either updated_at or valid_from, not both")
        table = table.rename_columns(["valid_from" if c == "updated_at" else c for c in table.column_names])
    _unknown_columns(table, ITEM_SCHEMA)
    for name in ("item_id",):
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, _prepare_id_column(name, table[name]))
    for name in ("title", "category", "brand", "attributes"):
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, _prepare_text_column(name, table[name]))
    for name, kind in (("price", "number"), ("stock", "integer"), ("launched_at", "timestamp"), ("valid_from", "timestamp")):
        if name in table.column_names:
            _check_column_kind(name, table.schema.field(name).type, kind)
    table = _with_positions(table, positions, first_position)
    q = _Query(table)
    item = q.text("item_id", required=True, max_len=MAX_ID_LENGTH, expected="an item id")
    launched = q.timestamp("launched_at", required=False, unit="s", assume_tz=assume_timezone, min_year=1800)
    valid_from = q.timestamp("valid_from", required=False, unit="s", assume_tz=assume_timezone, min_year=1800)
    fallback = f"TIMESTAMPTZ {_sql_str(default_valid_from)}" if default_valid_from else "TIMESTAMPTZ '1971-01-01 00:00:00+00'"
    attributes = q.text("attributes", required=False, max_len=64 * 1024)
    if q.has("attributes"):
        q.check(
            f"{attributes} IS NOT NULL AND (NOT json_valid({attributes}) OR json_type({attributes}) <> 'OBJECT')",
            "attributes",
            _quote("attributes"),
            "a JSON object",
        )
    select = [
        ("item_id", item),
        ("title", q.text("title", required=False, max_len=MAX_TEXT_LENGTH)),
        ("category", q.text("category", required=False, max_len=MAX_TEXT_LENGTH)),
        ("brand", q.text("brand", required=False, max_len=MAX_TEXT_LENGTH)),
        ("price", q.number("price", min_value=0.0)),
        ("stock", q.number("stock", min_value=0, integer=True)),
        ("launched_at", launched),
        ("attributes", attributes),
        ("valid_from", f"coalesce({valid_from}, {launched}, {fallback})"),
    ]
    return _split(q.run(select), ITEM_SCHEMA, source)


def validate_users(
    raw: pa.Table,
    *,
    pseudonymizer: Pseudonymizer,
    default_valid_from: str | None = None,
    assume_timezone: str | None = None,
    positions: pa.Array | Sequence[int] | None = None,
    first_position: int = 1,
    source: str = "",
) -> ValidatedBatch:
    """Validate user profiles; ids are pseudonymized with the same key as events.

    ``valid_from`` comes from ``valid_from``/``updated_at``, else ``signed_up_at``, else
    ``default_valid_from``, else "since always" (1971).
    """
    table = raw
    if "updated_at" in table.column_names:
        if "valid_from" in table.column_names:
            raise InputError("give either updated_at or valid_from, not both")
        table = table.rename_columns(["valid_from" if c == "updated_at" else c for c in table.column_names])
    _unknown_columns(table, USER_SCHEMA)
    if "user_id" not in table.column_names:
        raise InputError(f"required column 'user_id' is missing; columns present: {table.column_names}")
    ids = _prepare_id_column("user_id", table["user_id"])
    table = table.set_column(table.column_names.index("user_id"), "user_id", pseudonymizer.array(ids, blank_is_null=True))
    for name in ("age_band", "gender", "region"):
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, _prepare_text_column(name, table[name]))
    for name, kind in (
        ("signed_up_at", "timestamp"),
        ("valid_from", "timestamp"),
        ("consent_personalization", "bool"),
        ("consent_marketing", "bool"),
    ):
        if name in table.column_names:
            _check_column_kind(name, table.schema.field(name).type, kind)
    table = _with_positions(table, positions, first_position)
    q = _Query(table)
    signed = q.timestamp("signed_up_at", required=False, unit="s", assume_tz=assume_timezone, min_year=1900)
    valid_from = q.timestamp("valid_from", required=False, unit="s", assume_tz=assume_timezone, min_year=1900)
    fallback = f"TIMESTAMPTZ {_sql_str(default_valid_from)}" if default_valid_from else "TIMESTAMPTZ '1971-01-01 00:00:00+00'"
    select = [
        ("user_id", q.text("user_id", required=True, max_len=64, expected="a user id")),
        ("signed_up_at", signed),
        ("age_band", q.text("age_band", required=False, max_len=64)),
        ("gender", q.text("gender", required=False, max_len=64)),
        ("region", q.text("region", required=False, max_len=MAX_TEXT_LENGTH)),
        ("consent_personalization", q.boolean("consent_personalization")),
        ("consent_marketing", q.boolean("consent_marketing")),
        ("valid_from", f"coalesce({valid_from}, {signed}, {fallback})"),
    ]
    return _split(q.run(select), USER_SCHEMA, source)


def category_levels(path: str | None) -> list[str]:
    """Split a stored category path ("electronics/smartphone") into its levels."""
    if not path:
        return []
    return [level for level in path.split(CATEGORY_SEPARATOR) if level]
