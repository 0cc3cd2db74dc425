"""Readers: files (CSV/TSV, JSON lines, Parquet) → batches of raw records with canonical names.

A reader only reads: it renames source columns to canonical fields (``--map``), renames event
types (``--types``), and reports rows it cannot parse at all (a truncated line, a wrong number of
fields, a line that is not JSON) with their line numbers. Everything else, including every value
check, is :func:`shelf.schema.validate_events` and friends, the next stage::

    for batch in read_records("export.csv", kind="events", options=options):
        checked = validate_events(batch.table, positions=batch.positions, source=batch.source, ...)

Source columns are matched to fields by the mapping first, then by canonical name, then by a
short alias (``user`` → ``user_id``, see ``FIELD_ALIASES``); other columns are ignored and listed
in :attr:`RecordReader.ignored`.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import pyarrow as pa
import pyarrow.compute as pc

from shelf.datasets.formats import (
    CsvSource,
    FieldKind,
    Format,
    JsonlSource,
    ParquetSource,
    SourceChunk,
    sniff,
)
from shelf.errors import InputError
from shelf.schema import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA, RecordError

Kind = Literal["events", "items", "users"]

# Rows per batch. Ingest holds about three batches at once (the next one being read, this one
# being validated, the last one being written), so this sets its memory: on a 10M-event CSV, peak
# RSS measured ~1.25 GB with 1M-row batches, 750 MB with 400k, 675 MB with 250k; but smaller
# batches cost more per event (pseudonymization rebuilds its lookup of known shoppers per batch),
# and at 250k CSV ingest fell just under 500k events/s.
DEFAULT_BATCH_ROWS = 400_000

# Short names accepted for canonical fields, in --map keys and as source column names.
FIELD_ALIASES: dict[str, str] = {
    "user": "user_id",
    "item": "item_id",
    "product": "item_id",
    "session": "session_id",
    "event_type": "type",
    "ts": "timestamp",
    "time": "timestamp",
    "rating": "value",
    "quantity": "value",
    "qty": "value",
    "updated": "updated_at",
}

_FIELDS: dict[str, tuple[str, ...]] = {
    "events": tuple(EVENT_SCHEMA.names),
    "items": (*ITEM_SCHEMA.names, "updated_at"),
    "users": (*USER_SCHEMA.names, "updated_at"),
}
_BOOL_FIELDS = frozenset({"consent_personalization", "consent_marketing"})
_JSON_FIELDS = frozenset({"attributes"})

_SUFFIXES: dict[str, Format] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass(frozen=True)
class RawBatch:
    """Raw records of one kind, canonical column names, not yet validated.

    ``table`` holds a subset of the kind's canonical fields (plus ``updated_at`` for items and
    users), as text for CSV and JSON lines and with their own types for Parquet. ``positions``
    (int64, one per row) is each row's source line number, 1-based with the header as line 1, or
    its record number for Parquet. ``problems`` are rows that could not be parsed at all; they
    are not in ``table``.
    """

    table: pa.Table
    positions: pa.Array
    problems: list[RecordError]
    source: str = ""


@dataclass(frozen=True)
class ReadOptions:
    """How to read one file.

    Attributes
    ----------
    format : "csv", "tsv", "jsonl", "parquet", or None to infer it from the suffix (also ``.gz``).
    mapping : canonical field (or alias) → source column, e.g. ``{"user": "visitorid"}``.
    type_map : source event type → canonical type, e.g. ``{"pv": "view"}``; other values pass
        through unchanged, so validation names the unknown ones.
    no_header : the file starts with data; ``columns`` names its columns.
    columns : column names of a header-less CSV/TSV (canonical names or aliases, or names that
        ``mapping`` refers to).
    delimiter : field separator; default "," for CSV and tab for TSV.
    encoding : text encoding of CSV/TSV/JSON lines (e.g. "latin-1").
    quoting : whether '"' quotes values; default on for CSV, off for TSV.
    constants : canonical field → value for fields the file has no column for (e.g.
        ``{"type": "view"}`` for a click log).
    batch_rows : rows per batch (bounded memory).
    """

    format: Format | None = None
    mapping: Mapping[str, str] = field(default_factory=dict)
    type_map: Mapping[str, str] = field(default_factory=dict)
    no_header: bool = False
    columns: Sequence[str] | None = None
    delimiter: str | None = None
    encoding: str = "utf-8"
    quoting: bool | None = None
    constants: Mapping[str, str] = field(default_factory=dict)
    batch_rows: int = DEFAULT_BATCH_ROWS

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in get_args(Format):
            raise InputError(f"unknown format {self.format!r}; expected one of {', '.join(get_args(Format))}")
        if self.batch_rows < 1:
            raise InputError(f"batch_rows must be at least 1, got {self.batch_rows}")
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise InputError(f"the delimiter must be one character, got {self.delimiter!r}")
        if self.columns is not None and not self.no_header:
            raise InputError("--columns names the columns of a file without a header; add --no-header")
        if self.no_header and not self.columns:
            raise InputError("a file without a header (--no-header) needs its column names (--columns)")
        try:
            codecs.lookup(self.encoding)
        except LookupError as exc:
            raise InputError(f"unknown encoding {self.encoding!r}") from exc


def parse_pairs(text: str) -> dict[str, str]:
    """Parse ``key=value,key=value`` (the CLI's ``--map`` and ``--types`` syntax).

    Keys are kept as written; ``--map`` keys may be aliases (``user``), resolved by the reader.
    """
    pairs: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise InputError(f"cannot read {part.strip()!r} in {text!r}: expected key=value pairs separated by commas")
        if key in pairs:
            raise InputError(f"{key!r} is given twice in {text!r}")
        pairs[key] = value
    if not pairs:
        raise InputError(f"no key=value pairs in {text!r}")
    return pairs


def canonical_field(name: str, kind: Kind) -> str | None:
    """The canonical field ``name`` stands for in records of ``kind`` (by name or alias), or None."""
    fields = _FIELDS[kind]
    if name in fields:
        return name
    alias = FIELD_ALIASES.get(name.lower())
    return alias if alias in fields else None


def infer_format(path: Path, declared: Format | None) -> Format:
    if declared is not None:
        return declared
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    fmt = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise InputError(f"{path}: cannot tell the format from the name; pass --format ({', '.join(get_args(Format))})")
    return fmt


def _resolve(kind: Kind, columns: Sequence[str], options: ReadOptions, where: str) -> dict[str, str]:
    """canonical field → source column, in the order of the canonical schema."""
    fields = _FIELDS[kind]
    chosen: dict[str, str] = {}
    for key, column in options.mapping.items():
        canonical = canonical_field(key, kind)
        if canonical is None:
            raise InputError(f"--map {key}={column}: {key!r} is not a field of {kind}; fields: {', '.join(fields)}")
        if canonical in chosen:
            raise InputError(f"--map gives {canonical!r} twice")
        if column not in columns:
            hint = ""
            if len(columns) == 1 and any(sep in columns[0] for sep in ",;\t|"):
                hint = " (only one column was found: is the delimiter or --format right?)"
            raise InputError(f"{where}: --map {key}={column}: there is no column {column!r}; the columns are {list(columns)}{hint}")
        chosen[canonical] = column
    used = set(chosen.values())
    # Exact canonical names first, then aliases, so "user_id" wins over "user".
    for exact in (True, False):
        for column in columns:
            if column in used:
                continue
            canonical = column if exact and column in fields else (None if exact else canonical_field(column, kind))
            if canonical is not None and canonical not in chosen:
                chosen[canonical] = column
                used.add(column)
    for key in options.constants:
        canonical = canonical_field(key, kind)
        if canonical is None:
            raise InputError(f"constant {key!r} is not a field of {kind}; fields: {', '.join(fields)}")
        if canonical in chosen:
            raise InputError(f"{where}: constant {canonical!r} conflicts with column {chosen[canonical]!r}")
    if not chosen:
        raise InputError(
            f"{where}: none of the columns {list(columns)} is a field of {kind}; map them with --map "
            f"(fields: {', '.join(fields)})"
        )
    return {name: chosen[name] for name in fields if name in chosen}


Source = CsvSource | JsonlSource | ParquetSource


def _open_source(path: Path, options: ReadOptions) -> tuple[Format, Source]:
    """Check the file and open it in its format; raises InputError for what cannot be read."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    fmt = infer_format(path, options.format)
    if fmt not in ("csv", "tsv") and (options.no_header or options.columns):
        raise InputError(f"{path}: --no-header/--columns apply to CSV/TSV only, not {fmt}")
    sniff(path, fmt, options.encoding)
    if fmt in ("csv", "tsv"):
        return fmt, CsvSource(
            path,
            delimiter=options.delimiter or ("," if fmt == "csv" else "\t"),
            encoding=options.encoding,
            quoting=options.quoting if options.quoting is not None else fmt == "csv",
            header=not options.no_header,
            names=options.columns,
        )
    if fmt == "jsonl":
        return fmt, JsonlSource(path, encoding=options.encoding, batch_rows=options.batch_rows)
    return fmt, ParquetSource(path, batch_rows=options.batch_rows)


class RecordReader:
    """An open file: its columns, how they map onto fields, and an iterator of :class:`RawBatch`.

    Everything that can be checked before reading rows is checked on construction (missing file,
    wrong format, empty file, a mapping naming a missing column), so a command fails before it
    writes anything. Iterate once.
    """

    def __init__(self, path: str | Path, *, kind: Kind, options: ReadOptions) -> None:
        self.path = Path(path)
        self.kind = kind
        self.options = options
        self.source = str(path)
        if kind not in _FIELDS:
            raise InputError(f"unknown record kind {kind!r}; expected one of {', '.join(_FIELDS)}")
        self.format, self._source = _open_source(self.path, options)
        self.columns: list[str] = list(self._source.columns)
        self.fields = _resolve(kind, self.columns, options, self.source)
        used = set(self.fields.values())
        self.ignored: tuple[str, ...] = tuple(c for c in self.columns if c not in used)
        self._started = False

    def _chunks(self) -> Iterator[SourceChunk]:
        include = list(dict.fromkeys(self.fields.values()))
        if isinstance(self._source, JsonlSource):
            kinds: dict[str, FieldKind] = {}
            for name, column in self.fields.items():
                kinds[column] = "bool" if name in _BOOL_FIELDS else "json" if name in _JSON_FIELDS else "scalar"
            return self._source.batches(include, kinds)
        return self._source.batches(include)

    def _canonical(self, chunk: SourceChunk) -> pa.Table:
        n = chunk.table.num_rows
        columns: dict[str, pa.ChunkedArray | pa.Array] = {name: chunk.table[column] for name, column in self.fields.items()}
        for key, value in self.options.constants.items():
            canonical = canonical_field(key, self.kind)
            assert canonical is not None  # checked in _resolve
            columns[canonical] = pa.repeat(pa.scalar(value, pa.string()), n)
        if self.kind == "events" and "type" in columns and self.options.type_map:
            columns["type"] = _map_types(columns["type"], self.options.type_map)
        order = [name for name in _FIELDS[self.kind] if name in columns]
        return pa.table({name: columns[name] for name in order})

    def __iter__(self) -> Iterator[RawBatch]:
        if self._started:
            raise RuntimeError("a RecordReader is read once; open the file again")
        self._started = True
        return self._batches()

    def _batches(self) -> Iterator[RawBatch]:
        limit = self.options.batch_rows
        pending: list[tuple[pa.Table, pa.Array]] = []
        pending_rows = 0
        problems: list[RecordError] = []
        seen = 0
        for chunk in self._chunks():
            problems.extend(chunk.problems)
            if chunk.table.num_rows:
                pending.append((self._canonical(chunk), chunk.positions))
                pending_rows += chunk.table.num_rows
            while pending_rows >= limit:
                table, positions = _concat(pending)
                yield RawBatch(table.slice(0, limit), positions.slice(0, limit), problems, self.source)
                seen += limit
                problems = []
                pending = [(table.slice(limit), positions.slice(limit))] if table.num_rows > limit else []
                pending_rows -= limit
        if pending_rows or problems:
            table, positions = _concat(pending) if pending else (self._empty(), pa.array([], type=pa.int64()))
            seen += table.num_rows
            yield RawBatch(table, positions, problems, self.source)
        elif seen == 0:
            raise InputError(f"{self.source}: no records to read")

    def _empty(self) -> pa.Table:
        empty = SourceChunk(
            pa.table({c: pa.array([], pa.string()) for c in dict.fromkeys(self.fields.values())}),
            pa.array([], type=pa.int64()),
            [],
        )
        return self._canonical(empty)


def _concat(parts: list[tuple[pa.Table, pa.Array]]) -> tuple[pa.Table, pa.Array]:
    if len(parts) == 1:
        return parts[0]
    table = pa.concat_tables([t for t, _ in parts], promote_options="permissive")
    return table, pa.concat_arrays([p for _, p in parts])


def _map_types(column: pa.ChunkedArray | pa.Array, type_map: Mapping[str, str]) -> pa.ChunkedArray | pa.Array:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_integer(column.type):
        column = column.cast(pa.string())
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return column  # validation names the wrong column type
    column = column.cast(pa.string())
    index = pc.index_in(column, value_set=pa.array(list(type_map), pa.string()))
    mapped = pc.take(pa.array(list(type_map.values()), pa.string()), index)
    return pc.coalesce(mapped, column)


def open_records(path: str | Path, *, kind: Kind, options: ReadOptions | None = None) -> RecordReader:
    """Open a file of ``kind`` records; see :class:`RecordReader`."""
    return RecordReader(path, kind=kind, options=options or ReadOptions())


def read_records(path: str | Path, *, kind: Kind, options: ReadOptions | None = None) -> Iterator[RawBatch]:
    """Batches of raw ``kind`` records from ``path``; bad input raises :class:`InputError` here."""
    return iter(open_records(path, kind=kind, options=options))


def read_columns(path: str | Path, options: ReadOptions | None = None) -> Iterator[RawBatch]:
    """Batches of a file's own columns, unmapped and unrenamed (for loaders that derive fields).

    Same checks, line numbers and problems as :func:`read_records`; batches are the source's
    chunks, of about ``batch_rows`` rows or fewer.
    """
    options = options or ReadOptions()
    path = Path(path)
    _, source = _open_source(path, options)
    include = list(source.columns)
    chunks = source.batches(include, {}) if isinstance(source, JsonlSource) else source.batches(include)
    return (RawBatch(c.table, c.positions, c.problems, str(path)) for c in chunks)

