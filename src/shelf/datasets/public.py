"""Public data sets (REES46, MovieLens 100K, YooChoose, OTTO) as sources of raw records.

Each loader takes the data set's folder (e.g. ``../shared/data/rees46-oct2019-head``) and returns a
:class:`DatasetSource`; nothing is read until a batch iterator is called. The records are raw, for
:func:`shelf.schema.validate_events` and friends with ``source.rules``. What each loader derives
or leaves out is written in ``source.notes``. The data are research data: read them in place and
never copy them into the repository.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import duckdb
import orjson
import pyarrow as pa

from shelf.datasets.formats import json_lines
from shelf.datasets.readers import (
    DEFAULT_BATCH_ROWS,
    RawBatch,
    ReadOptions,
    read_columns,
    read_records,
)
from shelf.errors import InputError
from shelf.schema import EventRules, RecordError

Batches = Callable[[], Iterator[RawBatch]]


@dataclass(frozen=True)
class DatasetSource:
    """A public data set: how to read its events, items and users, and the rules its events need."""

    name: str
    events: Batches
    items: Batches | None = None
    users: Batches | None = None
    rules: EventRules = field(default_factory=EventRules)
    notes: tuple[str, ...] = ()


def _file(folder: str | Path, name: str) -> Path:
    path = Path(folder) / name
    if not path.is_file():
        raise InputError(f"{path}: no such file (expected in the data set folder {folder})")
    return path


def _query(sql: str, **tables: pa.Table) -> pa.Table:
    """Run one DuckDB query over Arrow tables on a private in-memory connection."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        for name, table in tables.items():
            con.register(name, table)
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def _single(table: pa.Table, source: str) -> Iterator[RawBatch]:
    yield RawBatch(table, pa.array(range(1, table.num_rows + 1), type=pa.int64()), [], source)


# ---------------------------------------------------------------------------------------------
# REES46 (eCommerce behavior data from multi category store)

_REES46_FILE = "2019-Oct_head.csv"
_REES46_TYPES = {"view": "view", "cart": "add_to_cart", "purchase": "purchase"}

# One row per change of an item's attributes, in time order (the first sighting is a change).
_REES46_ITEM_CHANGES = """
WITH t AS (
    SELECT item_id, seen_at, pos, category, brand, price, category_id FROM {source}
), l AS (
    SELECT *,
        lag(category) OVER w AS prev_category, lag(brand) OVER w AS prev_brand,
        lag(price) OVER w AS prev_price, row_number() OVER w AS rn
    FROM t WINDOW w AS (PARTITION BY item_id ORDER BY seen_at, pos)
)
SELECT item_id, seen_at, pos, category, brand, price, category_id FROM l
WHERE rn = 1 OR category IS DISTINCT FROM prev_category OR brand IS DISTINCT FROM prev_brand
    OR price IS DISTINCT FROM prev_price
"""


def _rees46_item_rows(batch: pa.Table, positions: pa.Array) -> pa.Table:
    raw = batch.append_column("__pos", positions)
    normalised = """
        SELECT product_id AS item_id, event_time AS seen_at, __pos AS pos,
            coalesce(replace(NULLIF(category_code, ''), '.', '/'), NULLIF(category_id, '')) AS category,
            NULLIF(brand, '') AS brand, NULLIF(price, '') AS price, NULLIF(category_id, '') AS category_id
        FROM raw WHERE NULLIF(product_id, '') IS NOT NULL
    """
    return _query(_REES46_ITEM_CHANGES.format(source=f"({normalised})"), raw=raw)


def rees46(folder: str | Path, *, batch_rows: int = DEFAULT_BATCH_ROWS) -> DatasetSource:
    """REES46 2019-Oct (head sample): view/cart/purchase events with price; items derived from them.

    Events: event_time → timestamp (text "… UTC"), event_type view/cart/purchase → view/
    add_to_cart/purchase, product_id → item_id, user_session → session_id, price → price. The
    truncated last line of the head sample is reported as a problem and skipped.

    Items: one version per product and change of (category, brand, price), valid from the first
    event that shows it. category is category_code with "." levels joined by "/", else the numeric
    category_id; attributes hold {"category_id": …}.
    """
    path = _file(folder, _REES46_FILE)
    events_options = ReadOptions(
        format="csv",
        mapping={
            "timestamp": "event_time",
            "type": "event_type",
            "item_id": "product_id",
            "user_id": "user_id",
            "session_id": "user_session",
            "price": "price",
        },
        type_map=_REES46_TYPES,
        batch_rows=batch_rows,
    )

    def events() -> Iterator[RawBatch]:
        return read_records(path, kind="events", options=events_options)

    def items() -> Iterator[RawBatch]:
        columns = ["product_id", "event_time", "category_id", "category_code", "brand", "price"]
        parts = [
            _rees46_item_rows(batch.table.select(columns), batch.positions)
            for batch in read_columns(path, ReadOptions(format="csv", batch_rows=batch_rows))
            if batch.table.num_rows
        ]
        changes = _query(_REES46_ITEM_CHANGES.format(source="parts") + " ORDER BY seen_at, pos", parts=pa.concat_tables(parts))
        attributes = [
            None if cid is None else orjson.dumps({"category_id": cid}).decode()
            for cid in changes["category_id"].to_pylist()
        ]
        table = pa.table(
            {
                "item_id": changes["item_id"],
                "category": changes["category"],
                "brand": changes["brand"],
                "price": changes["price"],
                "attributes": pa.array(attributes, pa.string()),
                "valid_from": changes["seen_at"],
            }
        )
        return _single(table, f"{path} (items derived from events)")

    return DatasetSource(
        name="rees46",
        events=events,
        items=items,
        rules=EventRules(time_unit="s"),
        notes=(
            "no user profiles in the data (users is None)",
            "items derived from events: a version per change of category/brand/price, valid from first sighting",
        ),
    )


# ---------------------------------------------------------------------------------------------
# MovieLens 100K

_ML_AGE_BANDS = "CASE WHEN a < 18 THEN 'under 18' WHEN a < 25 THEN '18-24' WHEN a < 35 THEN '25-34' " \
    "WHEN a < 45 THEN '35-44' WHEN a < 55 THEN '45-54' WHEN a < 65 THEN '55-64' ELSE '65+' END"


def _ml_users(path: Path) -> Iterator[RawBatch]:
    options = ReadOptions(
        format="csv", delimiter="|", quoting=False, no_header=True,
        columns=["user_id", "age", "gender", "occupation", "zip_code"],
    )
    for batch in read_columns(path, options):
        table = _query(
            f"""
            SELECT user_id,
                (SELECT {_ML_AGE_BANDS} FROM (SELECT TRY_CAST(age AS INTEGER) AS a) WHERE a IS NOT NULL) AS age_band,
                NULLIF(gender, '') AS gender,
                CASE WHEN regexp_full_match(left(zip_code, 1), '[0-9]') THEN 'US-ZIP-' || left(zip_code, 1)
                     WHEN regexp_full_match(left(zip_code, 1), '[A-Za-z]') THEN 'CA-' || upper(left(zip_code, 1))
                END AS region
            FROM raw
            """,
            raw=batch.table,
        )
        yield RawBatch(table, batch.positions, batch.problems, batch.source)


def _ml_items(path: Path, genres: list[str]) -> Iterator[RawBatch]:
    flags = [f"g{i}" for i in range(len(genres))]
    options = ReadOptions(
        format="csv", delimiter="|", quoting=False, no_header=True, encoding="latin-1",
        columns=["item_id", "title", "release_date", "video_release_date", "imdb_url", *flags],
    )
    for batch in read_columns(path, options):
        t = batch.table
        rows = zip(*(t[f].to_pylist() for f in flags), strict=True)
        named = [[g for g, flag in zip(genres, row, strict=True) if flag == "1"] for row in rows]
        dates = _query(
            """SELECT strftime(d, '%Y-%m-%d') AS day,
                strftime(d, '%Y-%m-%dT%H:%M:%SZ') AS launched
            FROM (SELECT try_strptime(NULLIF(release_date, ''), '%d-%b-%Y') AS d FROM raw)""",
            raw=t.select(["release_date"]),
        )
        attributes = [
            orjson.dumps({k: v for k, v in (("genres", g), ("release_date", day), ("imdb_url", url or None)) if v}).decode()
            for g, day, url in zip(named, dates["day"].to_pylist(), t["imdb_url"].to_pylist(), strict=True)
        ]
        table = pa.table(
            {
                "item_id": t["item_id"],
                "title": t["title"],
                "category": pa.array([g[0] if g else None for g in named], pa.string()),
                "launched_at": dates["launched"],
                "attributes": pa.array(attributes, pa.string()),
            }
        )
        yield RawBatch(table, batch.positions, batch.problems, batch.source)


def movielens_100k(folder: str | Path, *, batch_rows: int = DEFAULT_BATCH_ROWS) -> DatasetSource:
    """MovieLens 100K: ratings (u.data), users (u.user), movies (u.item, latin-1).

    Events are ``rating`` events with the rating as value and unix-second timestamps; the data has
    no sessions, so session_id is left empty. Users: age → age_band ("under 18", "18-24", "25-34",
    …, "65+"), gender as published (M/F), region from the zip code's first character ("US-ZIP-9";
    Canadian postal codes give "CA-<letter>"); occupation is left out (no such user field).
    Movies: category is the first of the movie's genres in u.genre order (one level, not a path);
    all genres, the release date and the IMDb URL go to attributes; launched_at is the release date
    at 00:00 UTC (one movie has none).
    """
    ratings, user_file, item_file, genre_file = (
        _file(folder, name) for name in ("u.data", "u.user", "u.item", "u.genre")
    )
    genres = [line.split("|")[0] for line in genre_file.read_text(encoding="latin-1").splitlines() if line.strip()]
    options = ReadOptions(
        format="tsv", no_header=True, columns=["user_id", "item_id", "value", "timestamp"],
        constants={"type": "rating"}, batch_rows=batch_rows,
    )
    return DatasetSource(
        name="movielens-100k",
        events=lambda: read_records(ratings, kind="events", options=options),
        items=lambda: _ml_items(item_file, genres),
        users=lambda: _ml_users(user_file),
        rules=EventRules(time_unit="s"),
        notes=(
            "no sessions in the data: session_id is empty",
            "occupation is not a user field and is left out",
            "item category = first genre; all genres in attributes",
            "launched_at = release date at 00:00 UTC (one movie has none)",
        ),
    )


# ---------------------------------------------------------------------------------------------
# YooChoose (RecSys Challenge 2015, session-rec 100k sample)

YoochooseSplit = Literal["train_full", "test", "train_tr", "train_valid"]


def yoochoose(folder: str | Path, *, split: YoochooseSplit = "train_full", batch_rows: int = DEFAULT_BATCH_ROWS) -> DatasetSource:
    """YooChoose clicks (tab-separated SessionId, ItemId, Time in unix seconds) as anonymous views."""
    path = _file(folder, f"yoochoose-clicks-100k_{split}.txt")
    options = ReadOptions(
        format="tsv",
        mapping={"session_id": "SessionId", "item_id": "ItemId", "timestamp": "Time"},
        constants={"type": "view"},
        batch_rows=batch_rows,
    )
    return DatasetSource(
        name=f"yoochoose-{split}",
        events=lambda: read_records(path, kind="events", options=options),
        rules=EventRules(time_unit="s"),
        notes=("clicks only (buys were dropped by the publisher's preprocessing); no user ids, no item metadata",),
    )


# ---------------------------------------------------------------------------------------------
# OTTO (20-session sample)

_OTTO_TYPES = {"clicks": "view", "carts": "add_to_cart", "orders": "purchase"}


def _otto_events(path: Path, batch_rows: int) -> Iterator[RawBatch]:
    columns: dict[str, list[str | None]] = {"session_id": [], "item_id": [], "type": [], "timestamp": []}
    positions: list[int] = []
    problems: list[RecordError] = []

    def flush() -> RawBatch:
        table = pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()})
        batch = RawBatch(table, pa.array(positions, pa.int64()), list(problems), str(path))
        for values in columns.values():
            values.clear()
        positions.clear()
        problems.clear()
        return batch

    def text(value: object) -> str | None:
        return None if value is None or isinstance(value, bool) else str(value)

    for number, record in json_lines(path, "utf-8"):
        if isinstance(record, RecordError):
            problems.append(record)
            continue
        events = record.get("events") if isinstance(record, dict) else None
        if not isinstance(record, dict) or not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            shown = repr(record)[:80]
            problems.append(RecordError(number, "events", shown, "a list of event objects", str(path)))
            continue
        session = text(record.get("session"))
        event: dict[str, object]
        for event in events:
            kind = event.get("type")
            columns["session_id"].append(session)
            columns["item_id"].append(text(event.get("aid")))
            columns["type"].append(_OTTO_TYPES.get(kind, kind) if isinstance(kind, str) else None)
            columns["timestamp"].append(text(event.get("ts")))
            positions.append(number)
        if len(positions) >= batch_rows:
            yield flush()
    if positions or problems:
        yield flush()


def otto_sample(folder: str | Path, *, batch_rows: int = DEFAULT_BATCH_ROWS) -> DatasetSource:
    """OTTO sample: one session per line with its events; clicks/carts/orders → view/add_to_cart/purchase.

    Every event of a session carries the session's line number as its position.
    """
    path = _file(folder, "train_sample.jsonl")
    return DatasetSource(
        name="otto-sample",
        events=lambda: _otto_events(path, batch_rows),
        rules=EventRules(time_unit="ms"),
        notes=("no user ids and no item metadata in the data",),
    )


# ---------------------------------------------------------------------------------------------
# Registry: folder name in the shared data directory → loader

PUBLIC_DATASETS: dict[str, Callable[[Path], DatasetSource]] = {
    "rees46-oct2019-head": rees46,
    "movielens-100k": movielens_100k,
    "yoochoose-rsc15-100k": yoochoose,
    "otto-sample": otto_sample,
}


def public_dataset(name: str, data_dir: str | Path) -> DatasetSource:
    """The data set ``name`` (a key of ``PUBLIC_DATASETS``) in ``data_dir``."""
    loader = PUBLIC_DATASETS.get(name)
    if loader is None:
        raise InputError(f"unknown public data set {name!r}; known: {', '.join(PUBLIC_DATASETS)}")
    folder = Path(data_dir) / name
    if not folder.is_dir():
        raise InputError(f"{folder}: data set folder not found")
    return loader(folder)
