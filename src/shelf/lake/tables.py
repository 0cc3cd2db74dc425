"""The lake's three tables: their schemas, time columns, version keys, and schema checks."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from shelf.errors import LakeError
from shelf.schema import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA


@dataclass(frozen=True)
class TableSpec:
    """How one table is stored.

    ``time_column`` decides visibility in a snapshot (strictly before ``as_of``) and is recorded
    per part in the manifest so whole parts can be skipped. ``version_key`` (items, users) names a
    version: one row per key, identical re-appends add nothing.
    """

    name: str
    schema: pa.Schema
    time_column: str
    sort_columns: tuple[str, ...]
    version_key: tuple[str, ...] = ()
    validator: str = ""
    # Dictionary-encoded in Parquet; None: all. Dictionaries of high-cardinality columns (ids)
    # overflow and fall back, which more than doubled write time and grew files in measurements.
    dictionary_columns: tuple[str, ...] | None = None


EVENTS = TableSpec(
    name="events",
    schema=EVENT_SCHEMA,
    time_column="timestamp",
    sort_columns=("timestamp",),
    validator="shelf.schema.validate_events",
    dictionary_columns=("type", "device", "region"),
)
ITEMS = TableSpec(
    name="items",
    schema=ITEM_SCHEMA,
    time_column="valid_from",
    sort_columns=("item_id", "valid_from"),
    version_key=("item_id", "valid_from"),
    validator="shelf.schema.validate_items",
)
USERS = TableSpec(
    name="users",
    schema=USER_SCHEMA,
    time_column="valid_from",
    sort_columns=("user_id", "valid_from"),
    version_key=("user_id", "valid_from"),
    validator="shelf.schema.validate_users",
)
TABLES: dict[str, TableSpec] = {spec.name: spec for spec in (EVENTS, ITEMS, USERS)}

_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "+00:00", "Z", "utc"})


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual == expected:
        return True
    textual = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    if any(f(expected) for f in textual):
        return any(f(actual) for f in textual)
    if pa.types.is_timestamp(expected) and pa.types.is_timestamp(actual):
        return actual.unit == expected.unit and actual.tz in _UTC_NAMES
    return False


def conform(table: pa.Table | pa.RecordBatch, spec: TableSpec) -> pa.Table:
    """Check ``table`` against the table's schema and return it in canonical column order and types.

    Raises a LakeError listing every mismatch: missing, unknown and mistyped columns, and nulls in
    required columns. Nothing is coerced beyond equivalent encodings (large/view strings, UTC
    spelled differently).
    """
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if not isinstance(table, pa.Table):
        raise LakeError(f"append_{spec.name} takes a pyarrow Table in the {spec.name} schema; got {type(table).__name__}")
    names = table.column_names
    problems: list[str] = []
    missing = [n for n in spec.schema.names if n not in names]
    if missing:
        problems.append(f"missing column(s) {missing}")
    unknown = [n for n in names if n not in spec.schema.names]
    if unknown:
        problems.append(f"unknown column(s) {unknown}")
    if len(set(names)) != len(names):
        problems.append("duplicate column names")
    for field in spec.schema:
        if field.name in names and len(set(names)) == len(names):
            actual = table.schema.field(field.name).type
            if not _compatible(actual, field.type):
                problems.append(f"column {field.name!r} is {actual}, expected {field.type}")
    if problems:
        raise LakeError(
            f"cannot append to the lake's {spec.name} table: " + "; ".join(problems)
            + f". Build the table with {spec.validator} (its .valid result has the right schema)."
        )
    table = table.select(spec.schema.names)
    for field in spec.schema:
        if not field.nullable and table[field.name].null_count:
            raise LakeError(
                f"cannot append to the lake's {spec.name} table: column {field.name!r} holds "
                f"{table[field.name].null_count} null(s) but is required. Validate with {spec.validator}."
            )
    return table.cast(spec.schema)


_DUCKDB_TYPES = {
    pa.string(): "VARCHAR",
    pa.float64(): "DOUBLE",
    pa.int64(): "BIGINT",
    pa.bool_(): "BOOLEAN",
}


def duckdb_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ"
    return _DUCKDB_TYPES[t]


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def empty_select(schema: pa.Schema) -> str:
    """A typed, empty SELECT with the schema's columns (the snapshot of an empty table)."""
    cols = ", ".join(f"CAST(NULL AS {duckdb_type(f.type)}) AS {quote(f.name)}" for f in schema)
    return f"SELECT {cols} WHERE false"
