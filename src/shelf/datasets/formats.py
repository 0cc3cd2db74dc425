"""Low-level sources: the bytes of one file → batches of its own columns, with line numbers.

This module knows formats (CSV/TSV, JSON lines, Parquet), not field names: mapping source columns
onto canonical fields happens in :mod:`shelf.datasets.readers`.

CSV is cut into chunks at line ends by us (not by pyarrow) so that every row keeps its source line
number: a chunk whose row count equals its line count (the common case) is parsed by pyarrow at
full speed; a chunk holding a malformed row, a blank line or a value with a line break is parsed
again by Python's ``csv`` module, which reports where each record starts.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from shelf.errors import InputError
from shelf.schema import RecordError

Format = Literal["csv", "tsv", "jsonl", "parquet"]

SNIFF_BYTES = 64 * 1024
CHUNK_BYTES = 16 * 1024 * 1024
# A quoted value may span lines; past this much text without closing the quote, cut anyway.
MAX_QUOTED_SPAN_BYTES = 4 * CHUNK_BYTES
SHOWN_CHARS = 80
_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_BOM = b"\xef\xbb\xbf"

# How a JSON value may appear in a field: "bool" fields take true/false, "json" fields take objects.
FieldKind = Literal["scalar", "bool", "json"]


@dataclass(frozen=True)
class SourceChunk:
    """Rows of one file in its own column names, and the rows that could not be parsed."""

    table: pa.Table
    positions: pa.Array  # int64 line (text formats) or record (Parquet) numbers, 1-based
    problems: list[RecordError]


# ---------------------------------------------------------------------------------------------
# Opening and sniffing


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


def describe(sample: bytes) -> str:
    """What a file that starts with ``sample`` looks like, for error messages."""
    if sample.startswith(_PARQUET_MAGIC):
        return "a Parquet file"
    if sample.startswith(_GZIP_MAGIC):
        return "gzip-compressed data"
    if sample.startswith(b"PK\x03\x04"):
        return "a zip archive (unzip it first)"
    if b"\x00" in sample:
        return "binary data"
    head = sample.lstrip()[:1]
    if head in (b"{", b"["):
        return "JSON text"
    return "text (CSV/TSV?)" if sample else "an empty file"


def sniff(path: Path, fmt: Format, encoding: str) -> None:
    """Refuse a file that is plainly not ``fmt``: what it is, what was expected."""
    with open(path, "rb") as raw:
        sample = raw.read(SNIFF_BYTES)
    if not sample:
        raise InputError(f"{path}: the file is empty (0 bytes); expected {fmt} data")
    if fmt == "parquet":
        if not sample.startswith(_PARQUET_MAGIC):
            raise InputError(
                f"{path}: not a Parquet file (no Parquet magic bytes); it looks like {describe(sample)}. "
                "Pass the right --format (csv, tsv, jsonl)"
            )
        return
    if sample.startswith(_GZIP_MAGIC):
        with gzip.open(path, "rb") as unzipped:
            try:
                sample = unzipped.read(SNIFF_BYTES)
            except (OSError, EOFError) as exc:
                raise InputError(f"{path}: damaged gzip data ({exc})") from exc
        if not sample:
            raise InputError(f"{path}: the file is empty once decompressed; expected {fmt} data")
    what = describe(sample)
    if sample.startswith(_PARQUET_MAGIC) or sample.startswith(b"PK\x03\x04"):
        raise InputError(f"{path}: this is {what}, not {fmt} text; pass --format parquet for Parquet")
    wide = codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))
    if b"\x00" in sample and not wide:
        raise InputError(f"{path}: this is binary data (NUL bytes), not {fmt} text in {encoding}")
    try:
        codecs.getincrementaldecoder(encoding)().decode(sample, final=False)
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: not {encoding} text (byte {exc.start}: {sample[exc.start:exc.start + 8]!r}); "
            "if it is text in another encoding, declare it with --encoding (e.g. latin-1)"
        ) from exc


def _open_bytes(path: Path) -> BinaryIO:
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")  # noqa: SIM115 (returned to the caller, who closes it)


class _Utf8Stream:
    """Bytes of a text file re-encoded as UTF-8 (pyarrow and our line counting read UTF-8)."""

    def __init__(self, path: Path, encoding: str) -> None:
        self.path = path
        self._raw = _open_bytes(path)
        self._decoder = None if _is_utf8(encoding) else codecs.getincrementaldecoder(encoding)()
        self.encoding = encoding

    def read(self, n: int) -> bytes:
        try:
            block = self._raw.read(n)
        except (OSError, EOFError) as exc:
            raise InputError(f"{self.path}: cannot read the file ({exc})") from exc
        if self._decoder is None:
            return block
        try:
            return self._decoder.decode(block, final=not block).encode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{self.path}: not {self.encoding} text ({exc.reason})") from exc

    def close(self) -> None:
        self._raw.close()

    def __del__(self) -> None:
        # A reader dropped before its end still closes its file (no ResourceWarning).
        self._raw.close()


# ---------------------------------------------------------------------------------------------
# CSV / TSV


def _split_line(line: str, delimiter: str, quoting: bool) -> list[str]:
    reader = csv.reader([line], delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
    return next(reader, [])


def _count_lines(chunk: bytes) -> int:
    """Lines as pyarrow and universal newlines see them: ended by \\n, \\r\\n or a bare \\r."""
    ends = chunk.count(b"\n")
    if b"\r" in chunk:
        ends += chunk.count(b"\r") - chunk.count(b"\r\n")
    return ends + (0 if chunk.endswith((b"\n", b"\r")) else 1)


class CsvSource:
    """A delimited text file read in chunks of whole lines; see the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        delimiter: str,
        encoding: str,
        quoting: bool,
        header: bool,
        names: Sequence[str] | None,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.path = path
        self.delimiter = delimiter
        self.quoting = quoting
        self.chunk_bytes = chunk_bytes
        self._stream = _Utf8Stream(path, encoding)
        self._buffer = self._stream.read(chunk_bytes)
        self._eof = False
        if self._buffer.startswith(_BOM):
            self._buffer = self._buffer[len(_BOM) :]
        first = self._first_line()
        found = _split_line(first, delimiter, quoting) if first.strip() else []
        if header:
            if not found:
                raise InputError(f"{path}: line 1 is empty; expected a header with column names (or pass --no-header --columns)")
            self.columns = found
            self._buffer = self._buffer[self._buffer.find(b"\n") + 1 :] if b"\n" in self._buffer else b""
            self.first_line = 2
            if not self._buffer.strip() and not self._more():
                raise InputError(f"{path}: the file has a header ({len(found)} columns: {found}) but no data rows")
        else:
            if not names:
                raise InputError(f"{path}: a file without a header needs its column names (--columns)")
            if found and len(found) != len(names):
                raise InputError(
                    f"{path}: --columns names {len(names)} columns {list(names)} but line 1 has "
                    f"{len(found)} fields: {first[:SHOWN_CHARS]!r} (is the delimiter {delimiter!r} right?)"
                )
            self.columns = list(names)
            self.first_line = 1

    def _first_line(self) -> str:
        while b"\n" not in self._buffer and self._more():
            pass
        line = self._buffer.split(b"\n", 1)[0].rstrip(b"\r")
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{self.path}: line 1 is not {self._stream.encoding} text; declare the encoding with --encoding") from exc

    def _more(self) -> bool:
        """Append the next block to the buffer; False at the end of the file."""
        if self._eof:
            return False
        block = self._stream.read(self.chunk_bytes)
        if not block:
            self._eof = True
            self._stream.close()
            return False
        self._buffer += block
        return True

    def _chunks(self) -> Iterator[bytes]:
        """Whole lines, cut where no quoted value is open (as far as quote parity tells).

        Each chunk is built with one copy (the previous tail joined to the new block up to its
        last line end), which matters at hundreds of MB/s.
        """
        tail, self._buffer = self._buffer, b""
        while True:
            block = self._stream.read(self.chunk_bytes) if not self._eof else b""
            if not block:
                self._eof = True
                self._stream.close()
                if tail:
                    yield tail
                return
            cut = block.rfind(b"\n") + 1 or block.rfind(b"\r") + 1
            open_quote = self.quoting and (tail.count(b'"') + block.count(b'"', 0, cut)) % 2 == 1
            if cut == 0 or (open_quote and len(tail) + cut < MAX_QUOTED_SPAN_BYTES):
                tail += block
                continue
            chunk = b"".join((tail, memoryview(block)[:cut]))
            tail = block[cut:]
            yield chunk

    def batches(self, include: Sequence[str]) -> Iterator[SourceChunk]:
        indices = [self.columns.index(name) for name in include]
        line = self.first_line
        for chunk in self._chunks():
            lines = _count_lines(chunk)
            parsed = self._parse_fast(chunk, indices, lines)
            if parsed is None:
                table, positions, problems = self._parse_slow(chunk, indices, line)
                table = table.rename_columns(list(include))
            else:
                table = parsed.rename_columns(list(include))
                positions = pa.array(np.arange(line, line + table.num_rows, dtype=np.int64))
                problems = []
            line += lines
            yield SourceChunk(table, positions, problems)

    def _parse_fast(self, chunk: bytes, indices: list[int], lines: int) -> pa.Table | None:
        """pyarrow's parse, or None when rows do not map one-to-one onto lines.

        A malformed row makes pyarrow raise (no invalid-row handler: it slows the common case by
        a fifth); the slow path then finds and reports every bad row.
        """
        internal = [f"c{i}" for i in range(len(self.columns))]
        wanted = [internal[i] for i in indices]
        has_quotes = self.quoting and b'"' in chunk
        try:
            table = pacsv.read_csv(
                pa.BufferReader(chunk),
                read_options=pacsv.ReadOptions(column_names=internal, block_size=4 * 1024 * 1024),
                parse_options=pacsv.ParseOptions(
                    delimiter=self.delimiter,
                    quote_char='"' if self.quoting else False,
                    newlines_in_values=has_quotes,
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in wanted},
                    include_columns=wanted,
                    strings_can_be_null=False,
                ),
            )
        except pa.ArrowInvalid as exc:
            if "UTF8" in str(exc) or "UTF-8" in str(exc):
                raise InputError(
                    f"{self.path}: not valid {self._stream.encoding} text; declare the file's encoding "
                    f"with --encoding (e.g. latin-1)"
                ) from exc
            return None
        if table.num_rows != lines:
            return None
        return table

    def _parse_slow(self, chunk: bytes, indices: list[int], first_line: int) -> tuple[pa.Table, pa.Array, list[RecordError]]:
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = first_line + chunk.count(b"\n", 0, exc.start)
            raise InputError(
                f"{self.path}: line {line} is not valid {self._stream.encoding} text; declare the "
                "file's encoding with --encoding (e.g. latin-1)"
            ) from exc
        csv.field_size_limit(max(csv.field_size_limit(), MAX_QUOTED_SPAN_BYTES))
        reader = csv.reader(
            io.StringIO(text, newline=""),
            delimiter=self.delimiter,
            quoting=csv.QUOTE_MINIMAL if self.quoting else csv.QUOTE_NONE,
        )
        width = len(self.columns)
        columns: list[list[str]] = [[] for _ in indices]
        positions: list[int] = []
        problems: list[RecordError] = []
        read = 0
        for record in reader:
            start, read = first_line + read, reader.line_num
            if not record:
                continue  # a blank line
            if len(record) != width:
                shown = self.delimiter.join(record)[:SHOWN_CHARS]
                expected = f"{width} fields, found {len(record)} (a truncated or malformed line)"
                problems.append(RecordError(start, "row", shown, expected, str(self.path)))
                continue
            positions.append(start)
            for out, i in zip(columns, indices, strict=True):
                out.append(record[i])
        table = pa.table({f"c{i}": pa.array(col, type=pa.string()) for i, col in zip(indices, columns, strict=True)})
        return table, pa.array(positions, type=pa.int64()), problems


# ---------------------------------------------------------------------------------------------
# JSON lines


def json_lines(path: Path, encoding: str) -> Iterator[tuple[int, object | RecordError]]:
    """(line number, parsed value or the reason it is not JSON) for each non-blank line."""
    utf8 = _is_utf8(encoding)
    with _open_bytes(path) as raw:
        for number, line in enumerate(raw, start=1):
            if number == 1 and line.startswith(_BOM):
                line = line[len(_BOM) :]
            if not line.strip():
                continue
            try:
                data = line if utf8 else line.decode(encoding).encode("utf-8")
                yield number, orjson.loads(data)
            except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
                shown = line.decode("utf-8", "replace").strip()[:SHOWN_CHARS]
                yield number, RecordError(number, "line", shown, f"a JSON object ({exc})", str(path))


def _json_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return orjson.dumps(value).decode()


def _json_kind_error(value: object, kind: FieldKind) -> str | None:
    """Why a JSON value cannot stand in a field of this kind, or None."""
    if isinstance(value, bool) and kind != "bool":
        return "text or a number, not a JSON boolean"
    if isinstance(value, dict | list) and kind != "json":
        return "text or a number, not a JSON " + ("object" if isinstance(value, dict) else "array")
    return None


class JsonlSource:
    """One JSON object per line; the columns are the keys seen in the first ``sample_rows`` lines."""

    # If none of the first lines is a JSON object, the file is not JSON lines at all.
    PROBE_LINES = 100

    def __init__(self, path: Path, *, encoding: str, batch_rows: int) -> None:
        self.path = path
        self.batch_rows = batch_rows
        self._lines = json_lines(path, encoding)
        self._head: list[tuple[int, object | RecordError]] = []
        keys: dict[str, None] = {}
        objects = 0
        for number, value in self._lines:
            self._head.append((number, value))
            if isinstance(value, dict):
                objects += 1
                keys.update(dict.fromkeys(value))
            elif objects == 0 and len(self._head) >= self.PROBE_LINES:
                break
            if len(self._head) >= batch_rows:
                break
        if not self._head:
            raise InputError(f"{path}: no records (the file holds only blank lines); expected one JSON object per line")
        if objects == 0:
            first = self._head[0][1]
            shown = first.value if isinstance(first, RecordError) else repr(first)[:SHOWN_CHARS]
            raise InputError(
                f"{path}: not JSON lines: none of the first {len(self._head)} lines is a JSON object "
                f"(line {self._head[0][0]}: {shown!r}); expected one JSON object per line"
            )
        self.columns = list(keys)

    def batches(self, include: Sequence[str], kinds: dict[str, FieldKind]) -> Iterator[SourceChunk]:
        def all_lines() -> Iterator[tuple[int, object | RecordError]]:
            yield from self._head
            yield from self._lines

        columns: list[list[str | None]] = [[] for _ in include]
        positions: list[int] = []
        problems: list[RecordError] = []
        checks = [(i, name, kinds.get(name, "scalar")) for i, name in enumerate(include)]
        for number, value in all_lines():
            if isinstance(value, RecordError):
                problems.append(value)
            elif not isinstance(value, dict):
                problems.append(RecordError(number, "line", repr(value)[:SHOWN_CHARS], "a JSON object", str(self.path)))
            else:
                reason = next(
                    ((name, why) for _, name, kind in checks if (why := _json_kind_error(value.get(name), kind))),
                    None,
                )
                if reason is not None:
                    shown = orjson.dumps(value.get(reason[0])).decode()[:SHOWN_CHARS]
                    problems.append(RecordError(number, reason[0], shown, reason[1], str(self.path)))
                else:
                    positions.append(number)
                    for i, name, _ in checks:
                        columns[i].append(_json_text(value.get(name)))
            if len(positions) >= self.batch_rows:
                yield self._chunk(include, columns, positions, problems)
                columns, positions, problems = [[] for _ in include], [], []
        if positions or problems:
            yield self._chunk(include, columns, positions, problems)

    @staticmethod
    def _chunk(include: Sequence[str], columns: list[list[str | None]], positions: list[int], problems: list[RecordError]) -> SourceChunk:
        arrays = [pa.array(col, type=pa.string()) for col in columns]
        table = pa.Table.from_arrays(arrays, names=list(include)) if include else pa.table({})
        return SourceChunk(table, pa.array(positions, type=pa.int64()), problems)


# ---------------------------------------------------------------------------------------------
# Parquet


class ParquetSource:
    """A Parquet file read by row groups; positions are record numbers and values keep their types."""

    def __init__(self, path: Path, *, batch_rows: int) -> None:
        self.path = path
        self.batch_rows = batch_rows
        try:
            # No pre-buffering: its read cache keeps every row group read so far until the file is
            # closed, so memory would grow with the file (~30 MB per million events).
            self._file = pq.ParquetFile(path, pre_buffer=False)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
        if self._file.metadata.num_rows == 0:
            raise InputError(f"{path}: the Parquet file has no rows (columns: {self._file.schema_arrow.names})")
        self.columns = list(self._file.schema_arrow.names)

    def batches(self, include: Sequence[str]) -> Iterator[SourceChunk]:
        start = 1
        try:
            # Opened again here: a reader allocates from the memory pool that was the default when
            # it was opened, and the ingest chooses its pool (see shelf.ingest) after the file was
            # checked in __init__; through the opening pool, Arrow's mimalloc, ~100 MB of batches
            # sat in a pool that keeps freed blocks.
            file = pq.ParquetFile(self.path, pre_buffer=False)
            for batch in file.iter_batches(batch_size=self.batch_rows, columns=list(include)):
                table = pa.Table.from_batches([batch])
                yield SourceChunk(table, pa.array(np.arange(start, start + table.num_rows, dtype=np.int64)), [])
                start += table.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{self.path}: damaged Parquet data after record {start - 1} ({exc})") from exc
