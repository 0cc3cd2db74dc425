"""Public data sets read, validated, and counted against the counts their PROVENANCE.md verifies."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from tests.conftest import SHARED_DATA, shared_dataset

from shelf.datasets import (
    PUBLIC_DATASETS,
    RawBatch,
    movielens_100k,
    otto_sample,
    public_dataset,
    rees46,
    yoochoose,
)
from shelf.errors import InputError
from shelf.privacy import Pseudonymizer
from shelf.schema import (
    EVENT_SCHEMA,
    ITEM_SCHEMA,
    USER_SCHEMA,
    EventRules,
    RecordError,
    validate_events,
    validate_items,
    validate_users,
)

pytestmark = pytest.mark.shared_data
KEY = b"test-key-0123456789abcdef"


def valid_events(batches: Iterator[RawBatch], rules: EventRules) -> tuple[pa.Table, list[RecordError]]:
    tables, problems = [], []
    for batch in batches:
        problems += batch.problems
        checked = validate_events(
            batch.table, pseudonymizer=Pseudonymizer(KEY), rules=rules, positions=batch.positions, source=batch.source
        )
        assert checked.errors == [], checked.errors[:3]
        tables.append(checked.valid)
    table = pa.concat_tables(tables)
    assert table.schema == EVENT_SCHEMA
    return table, problems


def valid_records(batches: Iterator[RawBatch], validate: Callable[..., object], **kwargs: object) -> pa.Table:
    tables = []
    for batch in batches:
        assert batch.problems == []
        checked = validate(batch.table, positions=batch.positions, source=batch.source, **kwargs)
        assert checked.errors == [], checked.errors[:3]  # type: ignore[attr-defined]
        tables.append(checked.valid)  # type: ignore[attr-defined]
    return pa.concat_tables(tables)


def distinct(table: pa.Table, column: str) -> int:
    return len(pc.unique(table[column].drop_null()))


def test_rees46() -> None:
    source = rees46(shared_dataset("rees46-oct2019-head"))
    events, problems = valid_events(source.events(), source.rules)
    assert [(p.position, p.field) for p in problems] == [(17436, "row")]  # the truncated last line
    assert events.num_rows == 17_434
    assert Counter(events["type"].to_pylist()) == {"view": 17_055, "add_to_cart": 165, "purchase": 214}
    assert (distinct(events, "user_id"), distinct(events, "session_id"), distinct(events, "item_id")) == (4_504, 5_066, 6_493)
    assert distinct(events, "event_id") == 17_429  # 5 exact duplicate rows share a derived id
    assert events["user_id"][0].as_py().startswith("u_")  # pseudonymized
    assert source.items is not None and source.users is None
    items = valid_records(source.items(), validate_items)
    assert items.schema == ITEM_SCHEMA
    assert items.num_rows == distinct(items, "item_id") == 6_493  # price etc. constant in the slice
    first = items.filter(pc.equal(items["item_id"], "3900821")).to_pylist()[0]
    assert first["category"] == "appliances/environment/water_heater" and first["brand"] == "aqua"
    assert first["price"] == 33.20 and first["valid_from"].isoformat() == "2019-10-01T00:00:00+00:00"
    fallback = items.filter(pc.equal(items["item_id"], "44600062")).to_pylist()[0]
    assert fallback["category"] == "2103807459595387724"  # no category_code: the category id


def test_movielens_100k() -> None:
    source = movielens_100k(shared_dataset("movielens-100k"))
    events, problems = valid_events(source.events(), source.rules)
    assert problems == [] and events.num_rows == 100_000
    assert set(events["type"].to_pylist()) == {"rating"}
    assert Counter(events["value"].to_pylist()) == {1.0: 6110, 2.0: 11370, 3.0: 27145, 4.0: 34174, 5.0: 21201}
    assert (distinct(events, "user_id"), distinct(events, "item_id"), distinct(events, "session_id")) == (943, 1_682, 0)
    assert source.users is not None and source.items is not None
    users = valid_records(source.users(), validate_users, pseudonymizer=Pseudonymizer(KEY))
    assert users.schema == USER_SCHEMA and users.num_rows == 943
    assert set(pc.unique(users["user_id"]).to_pylist()) == set(pc.unique(events["user_id"]).to_pylist())
    assert Counter(users["gender"].to_pylist()) == {"M": 670, "F": 273}
    assert set(users["age_band"].to_pylist()) <= {"under 18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+"}
    assert None not in users["region"].to_pylist()
    items = valid_records(source.items(), validate_items)
    assert items.schema == ITEM_SCHEMA and items.num_rows == 1_682
    by_id = {row["item_id"]: row for row in items.to_pylist()}
    assert by_id["1"]["title"] == "Toy Story (1995)" and by_id["1"]["category"] == "Animation"
    assert by_id["1"]["launched_at"].isoformat() == "1995-01-01T00:00:00+00:00"
    assert '"genres":["Animation","Children\'s","Comedy"]' in by_id["1"]["attributes"]
    assert by_id["267"]["launched_at"] is None  # the one movie without a release date
    # Catalogue dates may predate epoch-era events: films from 1942 keep their release date.
    assert items["launched_at"].null_count == 1
    old = next(row for row in by_id.values() if row["title"] == "Casablanca (1942)")
    assert old["launched_at"].year == 1942 and '"release_date":"1942-01-01"' in old["attributes"]
    assert any("é" in row["title"] for row in by_id.values())  # latin-1 read as such


@pytest.mark.parametrize(
    ("split", "counts"), [("train_full", (70_278, 17_794, 2_933)), ("test", (13_568, 3_416, 1_771))]
)
def test_yoochoose(split: str, counts: tuple[int, int, int]) -> None:
    source = yoochoose(shared_dataset("yoochoose-rsc15-100k"), split=split)  # type: ignore[arg-type]
    events, problems = valid_events(source.events(), source.rules)
    assert problems == []
    assert (events.num_rows, distinct(events, "session_id"), distinct(events, "item_id")) == counts
    assert set(events["type"].to_pylist()) == {"view"} and events["user_id"].null_count == events.num_rows


def test_otto_sample() -> None:
    source = otto_sample(shared_dataset("otto-sample"))
    events, problems = valid_events(source.events(), source.rules)
    assert problems == [] and events.num_rows == 862
    assert Counter(events["type"].to_pylist()) == {"view": 800, "add_to_cart": 52, "purchase": 10}
    assert (distinct(events, "session_id"), distinct(events, "item_id")) == (20, 510)
    assert events["timestamp"][0].as_py().year == 2022


def test_registry_and_missing_data(tmp_path: object) -> None:
    shared_dataset("otto-sample")
    assert set(PUBLIC_DATASETS) == {"rees46-oct2019-head", "movielens-100k", "yoochoose-rsc15-100k", "otto-sample"}
    assert public_dataset("otto-sample", SHARED_DATA).name == "otto-sample"
    with pytest.raises(InputError, match="unknown public data set"):
        public_dataset("netflix", SHARED_DATA)
    with pytest.raises(InputError, match="no such file"):
        rees46(SHARED_DATA / "otto-sample")
