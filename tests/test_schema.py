"""Strict validation of events, items and users: precise reasons, nothing coerced, nothing valid lost."""

from __future__ import annotations

import pyarrow as pa
import pytest

from shelf.errors import InputError
from shelf.privacy import Pseudonymizer
from shelf.schema import EVENT_SCHEMA, EventRules, validate_events, validate_items, validate_users


@pytest.fixture
def pseudo(dev_key: bytes) -> Pseudonymizer:
    return Pseudonymizer(dev_key)


def events(**columns: list) -> pa.Table:
    return pa.table({k: pa.array(v) for k, v in columns.items()})


def test_good_and_bad_rows_are_split_with_reasons(pseudo: Pseudonymizer) -> None:
    raw = events(
        user_id=["a", "b", "c", "d", "e"],
        item_id=["i1", "", "i3", "i4", "i5"],
        type=["view", "purchase", "teleport", "view", "view"],
        timestamp=["2024-05-01T12:00:00Z", "2024-05-01T12:00:00Z", "2024-05-01T12:00:00Z",
                   "2024-05-01 12:00:00", "2024-05-01T12:00:00+02:00"],
        price=["1.5", "2", "3", "4", "abc"],
    )
    result = validate_events(raw, pseudonymizer=pseudo, source="x.csv", first_position=2)
    assert result.valid.schema == EVENT_SCHEMA
    assert result.valid.num_rows == 1
    assert result.rejected_positions == [3, 4, 5, 6]
    by_line = {e.position: e for e in result.errors}
    assert by_line[3].field == "item_id"
    assert by_line[4].field == "type" and "teleport" in str(by_line[4])
    assert by_line[5].field == "timestamp" and "timezone" in by_line[5].expected
    assert by_line[6].field == "price" and by_line[6].value == "abc"
    assert str(by_line[6]).startswith("x.csv: line 6: price 'abc'")


def test_no_silent_coercion(pseudo: Pseudonymizer) -> None:
    raw = events(item_id=["i", "i"], type=["view", "view"], timestamp=["2024-01-01T00:00:00Z"] * 2, price=["false", "nan"])
    result = validate_events(raw, pseudonymizer=pseudo)
    assert result.valid.num_rows == 0
    assert [e.expected for e in result.errors] == ["a number", "a finite number"]


def test_boolean_column_for_a_number_is_refused_whole(pseudo: Pseudonymizer) -> None:
    raw = pa.table({"item_id": ["i"], "type": ["view"], "timestamp": ["2024-01-01T00:00:00Z"], "price": [False]})
    with pytest.raises(InputError, match="price"):
        validate_events(raw, pseudonymizer=pseudo)


def test_declared_timezone_is_applied(pseudo: Pseudonymizer) -> None:
    raw = events(item_id=["i"], type=["view"], timestamp=["2024-01-01 12:00:00"])
    result = validate_events(raw, pseudonymizer=pseudo, rules=EventRules(assume_timezone="Europe/Berlin"))
    assert result.valid["timestamp"][0].as_py().hour == 11


def test_epoch_units_and_range_check(pseudo: Pseudonymizer) -> None:
    raw = events(item_id=["i", "j"], type=["view", "view"], timestamp=["1396437466.94", "1659304800025"])
    seconds = validate_events(raw, pseudonymizer=pseudo)
    assert seconds.valid.num_rows == 1 and "time unit" in seconds.errors[0].expected
    millis = validate_events(raw, pseudonymizer=pseudo, rules=EventRules(time_unit="ms"))
    assert millis.valid.num_rows == 1 and millis.valid["item_id"][0].as_py() == "j"


def test_ratings_need_a_value_in_range(pseudo: Pseudonymizer) -> None:
    raw = events(item_id=["i"] * 3, type=["rating"] * 3, timestamp=["2024-01-01T00:00:00Z"] * 3, value=["4", "7", None])
    result = validate_events(raw, pseudonymizer=pseudo)
    assert result.valid.num_rows == 1 and result.rejected_positions == [2, 3]


def test_user_ids_are_pseudonymized_stably(pseudo: Pseudonymizer) -> None:
    raw = events(user_id=["alice", "alice", ""], item_id=["i", "j", "k"], type=["view"] * 3, timestamp=["2024-01-01T00:00:00Z"] * 3)
    ids = validate_events(raw, pseudonymizer=pseudo).valid["user_id"].to_pylist()
    assert ids[0] == ids[1] == pseudo.one("alice") and ids[0] != "alice" and ids[2] is None


def test_derived_event_ids_are_content_hashes(pseudo: Pseudonymizer) -> None:
    raw = events(item_id=["i", "i", "j"], type=["view"] * 3, timestamp=["2024-01-01T00:00:00Z"] * 3)
    ids = validate_events(raw, pseudonymizer=pseudo).valid["event_id"].to_pylist()
    assert ids[0] == ids[1] != ids[2]


def test_missing_required_column(pseudo: Pseudonymizer) -> None:
    with pytest.raises(InputError, match="item_id"):
        validate_events(events(type=["view"], timestamp=["2024-01-01T00:00:00Z"]), pseudonymizer=pseudo)


def test_items_integer_stock_and_json_attributes() -> None:
    raw = events(item_id=["a", "b", "c"], stock=["3", "3.5", "1"], attributes=['{"k": 1}', None, "[1]"])
    result = validate_items(raw)
    assert result.valid["item_id"].to_pylist() == ["a"]
    assert {e.field for e in result.errors} == {"stock", "attributes"}


def test_users_consent_flags_are_strict(pseudo: Pseudonymizer) -> None:
    result = validate_users(events(user_id=["x", "y"], consent_marketing=["true", "1"]), pseudonymizer=pseudo)
    assert result.valid.num_rows == 1 and result.errors[0].expected == "true or false"


def test_huge_epochs_are_refused_not_crashing(pseudo: Pseudonymizer) -> None:
    raw = pa.table({"item_id": ["a", "b"], "type": ["view", "view"], "timestamp": ["9300000000000", "99999999999999999"]})
    result = validate_events(raw, pseudonymizer=pseudo)
    assert result.valid.num_rows == 0 and {e.field for e in result.errors} == {"timestamp"}
    numeric = pa.table({"item_id": ["a"], "type": ["view"], "timestamp": pa.array([9.3e12])})
    assert validate_events(numeric, pseudonymizer=pseudo).errors[0].field == "timestamp"


def test_pseudonym_cache_is_bounded_and_consistent(dev_key: bytes) -> None:
    small = Pseudonymizer(dev_key, cache_entries=2)
    ids = pa.array(["a", "b", "c", "a", "c"])
    first, second = small.array(ids), small.array(ids)
    assert first.equals(second)
    assert first.to_pylist() == [small.one(x) for x in ids.to_pylist()]
    assert small.cached == 2
    blanks = Pseudonymizer(dev_key).array(pa.array(["", "a", None, ""]), blank_is_null=True)
    assert blanks.to_pylist() == [None, small.one("a"), None, None]


def test_anonymous_only_batches_pseudonymize(dev_key: bytes) -> None:
    pseudo = Pseudonymizer(dev_key)
    assert pseudo.array(pa.array([None, None], type=pa.string())).to_pylist() == [None, None]
    pseudo.array(pa.array(["a"]))
    assert pseudo.array(pa.array([None], type=pa.string())).to_pylist() == [None]


def test_prepared_checks_match_the_planned_query_across_changing_batches(pseudo: Pseudonymizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small batches run a statement prepared once per query text, which DuckDB binds again to
    each batch: the same answers as planning the query each time, whatever the batches' types
    and whether they repeat, interleave or outnumber the prepared statements kept."""
    from shelf import schema

    batches = [
        pa.table({"item_id": ["a", "", "c"], "type": ["view", "view", "teleport"], "timestamp": [1.7e9, 1.7e9, 1.7e9]}),
        pa.table({"item_id": ["a", "b"], "type": ["view", "purchase"], "timestamp": ["2024-01-01T00:00:00Z", "yesterday"]}),
        pa.table({"item_id": ["a"], "user_id": ["u1"], "type": ["rating"], "value": [4.0], "timestamp": pa.array([1_700_000_000], pa.int64())}),
        pa.table({"item_id": ["x", "y"], "type": ["view", "view"], "timestamp": [1.7e9, float("nan")]}),
    ]

    def outcome(table: pa.Table) -> tuple[list[dict[str, object]], list[tuple[int, str, str]]]:
        checked = validate_events(table, pseudonymizer=pseudo)
        return checked.valid.to_pylist(), [(e.position, e.field, e.expected) for e in checked.errors]

    monkeypatch.setattr(schema, "PREPARED_MAX_ROWS", -1)  # every batch plans its query
    planned = [outcome(t) for t in batches]
    monkeypatch.setattr(schema, "PREPARED_MAX_ROWS", 50_000)
    monkeypatch.setattr(schema, "PREPARED_PER_CONNECTION", 2)  # statements are deallocated and prepared again
    for _ in range(3):
        assert [outcome(t) for t in batches] == planned
        assert [outcome(t) for t in reversed(batches)] == planned[::-1]
    assert any(errors for _, errors in planned) and all(valid or errors for valid, errors in planned)
