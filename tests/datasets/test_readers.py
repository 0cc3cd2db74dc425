"""Readers: mapping, type map, header-less files, line numbers of bad rows, and bad input refused clearly."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shelf.datasets
from shelf.datasets import RawBatch, ReadOptions, open_records, parse_pairs, read_records
from shelf.errors import InputError
from shelf.privacy import Pseudonymizer
from shelf.schema import validate_events

CLICKS = "visitorid,itemid,event,ts,extra\n1,a,pv,1700000000,x\n2,b,buy,1700000001,y\n3,c,teleport,1700000002,z\n"


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def read_all(path: Path, kind: str = "events", **options: object) -> tuple[pa.Table, list[int], list]:
    batches = list(read_records(path, kind=kind, options=ReadOptions(**options)))  # type: ignore[arg-type]
    table = pa.concat_tables(b.table for b in batches)
    positions = [p for b in batches for p in b.positions.to_pylist()]
    problems = [p for b in batches for p in b.problems]
    return table, positions, problems


def test_public_api_is_pinned() -> None:
    assert set(shelf.datasets.__all__) >= {
        "RawBatch", "ReadOptions", "read_records", "open_records", "parse_pairs", "DatasetSource",
        "rees46", "movielens_100k", "yoochoose", "otto_sample", "PUBLIC_DATASETS",
    }
    assert all(hasattr(shelf.datasets, name) for name in shelf.datasets.__all__)


def test_parse_pairs_and_aliases() -> None:
    assert parse_pairs("user=visitorid, item=itemid,type=event,timestamp=ts") == {
        "user": "visitorid", "item": "itemid", "type": "event", "timestamp": "ts",
    }
    assert parse_pairs("pv=view,buy=purchase") == {"pv": "view", "buy": "purchase"}
    for bad in ("user", "user=", "=x", "", "a=b,a=c"):
        with pytest.raises(InputError):
            parse_pairs(bad)


def test_mapping_and_type_map(tmp_path: Path, dev_key: bytes) -> None:
    path = write(tmp_path, "clicks.csv", CLICKS)
    options = ReadOptions(
        mapping=parse_pairs("user=visitorid,item=itemid,type=event,ts=ts"),
        type_map=parse_pairs("pv=view,buy=purchase"),
    )
    reader = open_records(path, kind="events", options=options)
    assert reader.fields == {"user_id": "visitorid", "item_id": "itemid", "type": "event", "timestamp": "ts"}
    assert reader.ignored == ("extra",)
    (batch,) = list(reader)
    assert isinstance(batch, RawBatch) and batch.source == str(path)
    assert batch.table.column_names == ["user_id", "item_id", "type", "timestamp"]
    assert batch.table["type"].to_pylist() == ["view", "purchase", "teleport"]  # unmapped passes through
    assert batch.positions.to_pylist() == [2, 3, 4]
    checked = validate_events(batch.table, pseudonymizer=Pseudonymizer(dev_key), positions=batch.positions)
    assert checked.valid.num_rows == 2
    assert [(e.position, e.field, e.value) for e in checked.errors] == [(4, "type", "teleport")]


def test_no_header_with_alias_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "plain.csv", "u1,i1,shoes/red,view,1700000000\nu2,i2,,purchase,1700000000.5\n")
    options = ReadOptions(no_header=True, columns=["user", "item", "category", "type", "timestamp"])
    table, positions, problems = read_all(path, **options.__dict__)
    assert table.column_names == ["user_id", "item_id", "type", "timestamp"]  # category is not an event field
    assert table["timestamp"].to_pylist() == ["1700000000", "1700000000.5"]
    assert positions == [1, 2] and problems == []
    items, _, _ = read_all(path, kind="items", **options.__dict__)
    assert items.column_names == ["item_id", "category"]


def test_constants_fill_a_missing_field(tmp_path: Path) -> None:
    path = write(tmp_path, "clicks.tsv", "SessionId\tItemId\tTime\n1\t7\t1396437466.94\n")
    table, _, _ = read_all(path, mapping={"session": "SessionId", "item": "ItemId", "ts": "Time"}, constants={"type": "view"})
    assert table.to_pylist() == [{"session_id": "1", "item_id": "7", "type": "view", "timestamp": "1396437466.94"}]


def test_bad_rows_are_reported_by_line_and_the_rest_lands(tmp_path: Path) -> None:
    # line 3: too few fields; line 4 blank; line 5-6: one record with a line break in a quoted value;
    # line 7: too many fields; line 9: truncated last line without newline.
    content = (
        "user,item,type,ts\n"
        "a,i1,view,1\n"
        "b,i2,view\n"
        "\n"
        'c,"two\nlines",view,2\n'
        "d,i4,view,3,extra\n"
        "e,i5,view,4\n"
        "f,i6,vi"
    )
    path = write(tmp_path, "bad.csv", content)
    table, positions, problems = read_all(path)
    assert table["user_id"].to_pylist() == ["a", "c", "e"]
    assert table["item_id"].to_pylist()[1] == "two\nlines"
    assert positions == [2, 5, 8]
    assert [(p.position, p.field) for p in problems] == [(3, "row"), (7, "row"), (9, "row")]
    assert "expected 4 fields, found 3" in str(problems[0]) and str(problems[0]).startswith(f"{path}: line 3")


def test_batches_are_bounded_and_positions_continue(tmp_path: Path) -> None:
    rows = "".join(f"u{i},i{i},view,{1700000000 + i}\n" for i in range(7))
    path = write(tmp_path, "many.csv", "user,item,type,ts\n" + rows)
    batches = list(read_records(path, kind="events", options=ReadOptions(batch_rows=3)))
    assert [b.table.num_rows for b in batches] == [3, 3, 1]
    assert [p for b in batches for p in b.positions.to_pylist()] == list(range(2, 9))


def test_gzip_and_tsv_by_suffix(tmp_path: Path) -> None:
    path = write(tmp_path, "clicks.csv.gz", gzip.compress(CLICKS.encode()))
    table, positions, _ = read_all(path, mapping={"user": "visitorid", "item": "itemid", "type": "event"})
    assert table.num_rows == 3 and positions == [2, 3, 4]
    tsv = write(tmp_path, "x.tsv", CLICKS.replace(",", "\t"))
    assert read_all(tsv, mapping={"item": "itemid"})[0].num_rows == 3


def test_encoding_is_declared_not_guessed(tmp_path: Path) -> None:
    path = write(tmp_path, "items.csv", "item_id,title\n1,Caf\xe9 noir\n".encode("latin-1"))
    with pytest.raises(InputError, match="encoding"):
        read_all(path, kind="items")
    table, _, _ = read_all(path, kind="items", encoding="latin-1")
    assert table["title"].to_pylist() == ["Café noir"]


def test_jsonl_keeps_json_types_distinguishable(tmp_path: Path) -> None:
    lines = [
        '{"item_id": "i1", "type": "view", "timestamp": 1700000000, "price": 9.5}',
        '{"item_id": "i2", "type": "view", "timestamp": 1700000000, "price": false}',
        '{"item_id": "i3", "type": "view", "timestamp": 1700000000, "price": "abc"}',
        "{not json",
        "[1, 2]",
        '{"item_id": 4, "type": "view", "timestamp": "2024-01-01T00:00:00Z", "junk": 1}',
    ]
    path = write(tmp_path, "events.jsonl", "\n".join(lines) + "\n")
    reader = open_records(path, kind="events", options=ReadOptions())
    assert "junk" in reader.ignored
    table, positions, problems = read_all(path)
    assert positions == [1, 3, 6]
    assert table["price"].to_pylist() == ["9.5", "abc", None]
    assert table["item_id"].to_pylist() == ["i1", "i3", "4"]
    by_line = {p.position: p for p in problems}
    assert set(by_line) == {2, 4, 5}
    assert by_line[2].field == "price" and by_line[2].value == "false" and "boolean" in by_line[2].expected
    checked = validate_events(table, pseudonymizer=Pseudonymizer(b"k"), positions=pa.array(positions))
    assert checked.rejected_positions == [3]  # "abc" is not a number either


def test_parquet_keeps_types_and_numbers_records(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pq.write_table(pa.table({"sku": ["a", "b"], "type": ["view", "buy"], "timestamp": [1, 2], "price": [1.5, 2.0]}), path)
    table, positions, _ = read_all(path, mapping={"item": "sku"}, type_map={"buy": "purchase"})
    assert table.schema.field("price").type == pa.float64()
    assert table["type"].to_pylist() == ["view", "purchase"] and positions == [1, 2]


def test_parquet_batches_come_from_the_pool_chosen_after_opening(tmp_path: Path) -> None:
    """The ingest picks its memory pool after the source was opened (and checked); a Parquet
    reader allocates from the pool that was the default when it was opened, so batches must be
    read through a reader opened at read time, not the one the checks used."""
    path = tmp_path / "events.parquet"
    pq.write_table(pa.table({"item_id": [f"item-{i}" for i in range(50_000)], "type": ["view"] * 50_000,
                             "timestamp": list(range(50_000))}), path)
    system = pa.system_memory_pool()
    previous = pa.default_memory_pool()
    batches = read_records(path, kind="events", options=ReadOptions())  # opened (and checked) here
    pa.set_memory_pool(system)
    try:
        before = system.bytes_allocated()
        batch = next(iter(batches))
        assert batch.table.num_rows == 50_000
        assert system.bytes_allocated() - before >= batch.table["item_id"].nbytes
    finally:
        pa.set_memory_pool(previous)


# --- bad input: each a clear InputError saying what, where, and what was expected -------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_records(tmp_path / "nope.csv", kind="events")


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"empty \(0 bytes\)"):
        read_records(write(tmp_path, "e.csv", ""), kind="events")
    with pytest.raises(InputError, match="header .* but no data rows"):
        read_records(write(tmp_path, "h.csv", "user,item,type,ts\n\n"), kind="events")
    with pytest.raises(InputError, match="no records"):
        read_records(write(tmp_path, "e.jsonl", "\n\n"), kind="events")
    empty = tmp_path / "e.parquet"
    pq.write_table(pa.table({"item_id": pa.array([], pa.string())}), empty)
    with pytest.raises(InputError, match="no rows"):
        read_records(empty, kind="events")


def test_mapping_to_a_missing_column_lists_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "clicks.csv", CLICKS)
    with pytest.raises(InputError, match=r"no column 'visitor'.*\['visitorid', 'itemid', 'event', 'ts', 'extra'\]"):
        read_records(path, kind="events", options=ReadOptions(mapping={"user": "visitor"}))
    with pytest.raises(InputError, match="not a field of events"):
        read_records(path, kind="events", options=ReadOptions(mapping={"colour": "extra"}))
    semi = write(tmp_path, "semi.csv", "a;b\n1;2\n")
    with pytest.raises(InputError, match="delimiter"):
        read_records(semi, kind="events", options=ReadOptions(mapping={"item": "a"}))


def test_wrong_format_is_named(tmp_path: Path) -> None:
    parquet = tmp_path / "data.parquet"
    pq.write_table(pa.table({"item_id": ["a"]}), parquet)
    as_csv = write(tmp_path, "data.csv", parquet.read_bytes())
    with pytest.raises(InputError, match="Parquet file, not csv"):
        read_records(as_csv, kind="events")
    with pytest.raises(InputError, match="not a Parquet file.*text"):
        read_records(write(tmp_path, "x.csv", CLICKS), kind="events", options=ReadOptions(format="parquet"))
    junk = write(tmp_path, "junk.jsonl", bytes(range(256)) * 10)
    with pytest.raises(InputError, match="binary data"):
        read_records(junk, kind="events")
    with pytest.raises(InputError, match="not JSON lines"):
        read_records(write(tmp_path, "c.jsonl", CLICKS), kind="events")
    with pytest.raises(InputError, match="--format"):
        read_records(write(tmp_path, "x.dat", CLICKS), kind="events")


def test_columns_must_match_a_headerless_file(tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", "a,b,c\n")
    with pytest.raises(InputError, match="names 2 columns .* line 1 has 3 fields"):
        read_records(path, kind="events", options=ReadOptions(no_header=True, columns=["item", "type"]))
    with pytest.raises(InputError, match="--no-header"):
        ReadOptions(columns=["item"])


# --- property: whatever the csv module writes, the reader reads back with the right lines -----

cell = st.text(alphabet=st.sampled_from(list('ab ,"\n\r\té')), max_size=6)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(cell, cell), min_size=1, max_size=12))
def test_csv_round_trip_with_line_numbers(tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[str, str]]) -> None:
    out = io.StringIO(newline="")
    writer = csv.writer(out)  # quotes values holding \r or \n; lines end in \r\n
    writer.writerow(["item_id", "title"])
    lines = [2]
    for row in rows:
        writer.writerow(row)
        lines.append(len(io.StringIO(out.getvalue(), newline="").readlines()) + 1)
    path = tmp_path_factory.mktemp("rt") / "items.csv"
    path.write_text(out.getvalue(), encoding="utf-8", newline="")
    table, positions, problems = read_all(path, kind="items")
    assert problems == []
    assert [tuple(r.values()) for r in table.to_pylist()] == [tuple(r) for r in rows]
    assert positions == lines[:-1]
