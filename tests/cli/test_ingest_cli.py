"""`shelf ingest` end to end on a real lake: what lands, what is refused, and why."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from tests.conftest import shared_dataset

from shelf.cli import main
from shelf.lake import Lake

GOOD = "user,item,type,timestamp,price\nu1,a,view,2024-05-01T10:00:00Z,1.5\nu2,b,purchase,2024-05-01T11:00:00Z,2\n"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def shelf(home: Path, *args: str, dev: bool = True) -> Result:
    env = {"SHELF_DEV": "1" if dev else "0", "SHELF_PSEUDONYM_KEY": ""}
    return CliRunner().invoke(main, ["--home", str(home), *args], env=env, catch_exceptions=False)


def event_count(home: Path) -> int:
    if not (home / "lake").exists():
        return 0  # the command refused before creating a lake: nothing landed
    return Lake.open(home, create=False).snapshot(None).count_events()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_ingest_is_idempotent(home: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "e.csv", GOOD)
    first = shelf(home, "ingest", "events", str(path))
    assert first.exit_code == 0 and "added 2" in first.output
    again = shelf(home, "ingest", "events", str(path))
    assert again.exit_code == 0 and "added 0, duplicates skipped 2" in again.output
    assert event_count(home) == 2


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("u3,c,teleport,2024-05-01T12:00:00Z,1", "type 'teleport': expected one of"),
        ("u3,,view,2024-05-01T12:00:00Z,1", "item_id missing: expected an item id"),
        ("u3,c,view,2024-05-01 12:00:00,1", "expected a timezone-aware timestamp"),
        ("u3,c,view,2024-05-01T12:00:00Z,cheap", "price 'cheap': expected a number"),
        ("u3,c,view,2024-05-01T12", "expected 5 fields, found 4"),  # a truncated last line
    ],
)
def test_bad_records_are_reported_by_line_and_valid_ones_land(home: Path, tmp_path: Path, row: str, reason: str) -> None:
    path = write(tmp_path, "e.csv", GOOD + row)
    result = shelf(home, "ingest", "events", str(path))
    assert result.exit_code == 0, result.output
    assert "added 2" in result.output
    assert any(line.strip().startswith(f"{path}: line 4: ") and reason in line for line in result.output.splitlines())
    assert event_count(home) == 2
    rejects = list((home / "rejects").glob("*.jsonl"))
    assert len(rejects) == 1 and '"line":4' in rejects[0].read_text()


def test_max_rejects_aborts_and_leaves_the_lake_unchanged(home: Path, tmp_path: Path) -> None:
    shelf(home, "ingest", "events", str(write(tmp_path, "ok.csv", GOOD)))
    bad = write(tmp_path, "bad.csv", GOOD.replace("u1,a,view,2024-05-01T10:00:00Z", "u9,z,view,2024-06-01T10:00:00Z") + "u3,c,zap,2024-05-01T12:00:00Z,1\n")
    result = shelf(home, "ingest", "events", str(bad), "--max-rejects", "0")
    assert result.exit_code == 2 and "nothing was ingested" in result.output
    assert event_count(home) == 2


@pytest.mark.parametrize(
    ("name", "content", "args", "message"),
    [
        ("empty.csv", "", (), "empty"),
        ("e.csv", GOOD, ("--format", "parquet"), "not a Parquet file"),
        ("e.csv", GOOD, ("--map", "user=visitor"), "there is no column 'visitor'"),
    ],
)
def test_unreadable_input_is_one_clear_line_and_lands_nothing(
    home: Path, tmp_path: Path, name: str, content: str, args: tuple[str, ...], message: str
) -> None:
    path = write(tmp_path, name, content)
    result = shelf(home, "ingest", "events", str(path), *args)
    assert result.exit_code == 2
    assert result.output.startswith("shelf: error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert event_count(home) == 0


def test_parquet_read_as_csv_is_refused(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    pq.write_table(pa.table({"item": ["a"]}), path)
    result = shelf(home, "ingest", "events", str(path))
    assert result.exit_code == 2 and "Parquet" in result.output


def test_shop_export_with_mapping_types_and_epoch_units(home: Path, tmp_path: Path) -> None:
    export = "visitorid,itemid,event,ts\n1,a,pv,1700000000\n2,b,buy,1700000001.5\n"
    path = write(tmp_path, "export.csv", export)
    result = shelf(home, "ingest", "events", str(path), "--map", "user=visitorid,item=itemid,type=event,timestamp=ts",
                   "--types", "pv=view,buy=purchase", "--time-unit", "s")
    assert result.exit_code == 0 and "added 2" in result.output
    events = Lake.open(home, create=False).snapshot(None).events()
    assert sorted(events["type"].to_pylist()) == ["purchase", "view"]
    assert all(u.startswith("u_") for u in events["user_id"].to_pylist())  # pseudonymized


def test_headerless_file_with_columns(home: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "raw.csv", "u1,a,shoes,view,2024-05-01T10:00:00Z\n")
    result = shelf(home, "ingest", "events", str(path), "--no-header", "--columns", "user,item,category,type,timestamp")
    assert result.exit_code == 0 and "added 1" in result.output


def test_default_key_is_refused_outside_development(home: Path, tmp_path: Path) -> None:
    result = shelf(home, "ingest", "events", str(write(tmp_path, "e.csv", GOOD)), dev=False)
    assert result.exit_code == 2 and "SHELF_PSEUDONYM_KEY is not set" in result.output


def test_catalogue_reload_versions_only_what_changed(home: Path, tmp_path: Path) -> None:
    first = write(tmp_path, "c1.csv", "item_id,title,price,stock\na,Apple,1.5,3\nb,Pear,2,0\n")
    second = write(tmp_path, "c2.csv", "item_id,title,price,stock\na,Apple,1.5,3\nb,Pear,2.5,4\nc,Fig,1,1\n")
    assert "added 2" in shelf(home, "ingest", "items", str(first)).output
    assert "added 0, duplicates skipped 2" in shelf(home, "ingest", "items", str(first)).output
    assert "added 2, duplicates skipped 1" in shelf(home, "ingest", "items", str(second)).output
    lake = Lake.open(home, create=False)
    history = lake.snapshot(None).item_history()
    assert history.num_rows == 4
    items = {r["item_id"]: r for r in lake.snapshot(None).items().to_pylist()}
    assert items["b"]["price"] == 2.5 and items["b"]["stock"] == 4
    # A snapshot from before the reload still sees the old price.
    old = lake.snapshot(history.filter(pa.compute.equal(history["item_id"], "b"))["valid_from"][1].as_py())
    assert {r["item_id"]: r["price"] for r in old.items().to_pylist()}["b"] == 2.0


def test_rees46_counts_match_provenance(home: Path) -> None:
    data = shared_dataset("rees46-oct2019-head")
    result = shelf(home, "ingest", "dataset", "rees46", "--data-dir", str(data.parent))
    assert result.exit_code == 0, result.output
    assert "line 17436" in result.output  # the truncated last line, by number
    stats = Lake.open(home, create=False).stats()
    # PROVENANCE.md: 17,434 events after the truncated line, 5 of them exact duplicates.
    assert stats.events == 17_429
    # PROVENANCE's 17,055 views / 165 carts / 214 purchases include the 5 duplicates (4 views, 1 cart).
    assert stats.events_by_type == {"view": 17_051, "add_to_cart": 164, "purchase": 214}
    assert stats.distinct_users == 4_504 and stats.distinct_sessions == 5_066 and stats.distinct_items == 6_493
    again = shelf(home, "ingest", "dataset", "rees46", "--data-dir", str(data.parent))
    assert "added 0" in again.output and Lake.open(home, create=False).stats().events == 17_429


def test_movielens_counts_match_provenance(home: Path) -> None:
    data = shared_dataset("movielens-100k")
    result = shelf(home, "ingest", "dataset", "movielens", "--data-dir", str(data.parent))
    assert result.exit_code == 0, result.output
    stats = Lake.open(home, create=False).stats()
    assert stats.events == 100_000 and stats.events_by_type == {"rating": 100_000}
    assert stats.distinct_users == 943 and stats.distinct_items == 1_682
    assert stats.users == 943 and stats.items == 1_682


def test_simulate_then_stats(home: Path) -> None:
    result = shelf(home, "simulate", "--users", "50", "--items", "40", "--days", "3", "--seed", "3")
    assert result.exit_code == 0, result.output
    stats = shelf(home, "lake", "stats")
    assert stats.exit_code == 0 and "view" in stats.output and "distinct sessions" in stats.output
    again = shelf(home, "simulate", "--users", "50", "--items", "40", "--days", "3", "--seed", "3")
    assert "added 0" in again.output.splitlines()[-1]


def test_simulate_rejects_nonsense(home: Path) -> None:
    result = shelf(home, "simulate", "--users", "0")
    assert result.exit_code != 0 and "users" in result.output


def test_batches_stream_through_a_pool_that_returns_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Arrow's jemalloc with a short decay (or the system allocator) while batches stream, and
    Arrow's default pool again afterwards; ARROW_DEFAULT_MEMORY_POOL, when set, is left alone."""
    from shelf.ingest import _memory_returned_to_the_system

    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    before = pa.default_memory_pool().backend_name
    with _memory_returned_to_the_system():
        inside = pa.default_memory_pool().backend_name
    assert inside in ("jemalloc", "system") and inside != "mimalloc"
    assert pa.default_memory_pool().backend_name == before
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "mimalloc")
    with _memory_returned_to_the_system():
        assert pa.default_memory_pool().backend_name == before
