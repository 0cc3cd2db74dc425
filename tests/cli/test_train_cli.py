"""`shelf train`, `shelf models ...` and `shelf recommend-batch` on a real lake and registry."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from shelf.cli import main
from shelf.registry import Registry


def shelf(home: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--home", str(home), *args], env={"SHELF_DEV": "1"}, catch_exceptions=False)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("shop")
    result = shelf(home, "simulate", "--users", "150", "--items", "80", "--days", "5", "--seed", "11")
    assert result.exit_code == 0, result.output
    return home


def test_train_promote_rollback_and_batch(shop: Path, tmp_path: Path) -> None:
    first = shelf(shop, "train", "--model", "shelf-trending", "--promote")
    assert first.exit_code == 0, first.output
    assert "published bundle v0001" in first.output and "validation all/ndcg@10" in first.output
    second = shelf(shop, "train", "--model", "shelf-cooccurrence")
    assert "published bundle v0002" in second.output
    card = Registry(shop).card("v0002")
    assert card.snapshot_as_of is None and card.data_counts["events"] > 0 and card.code_version
    assert card.parameters["model"] == "shelf-cooccurrence" and "all/ndcg@10" in card.metrics
    assert shelf(shop, "models", "promote", "v0002").exit_code == 0
    listing = shelf(shop, "models", "list").output
    assert "* v0002" in listing and "  v0001" in listing
    assert "rolled back to v0001" in shelf(shop, "models", "rollback").output
    users = tmp_path / "users.txt"
    users.write_text("user\nuser-1\nuser-2\nsomebody-new\n")
    out = tmp_path / "recs.csv"
    result = shelf(shop, "recommend-batch", "--users", str(users), "--k", "5", "--out", str(out))
    assert result.exit_code == 0, result.output
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["user"] for r in rows} == {"user-1", "user-2", "somebody-new"}  # raw ids, not pseudonyms
    assert all(len([r for r in rows if r["user"] == u]) == 5 for u in ("user-1", "somebody-new"))
    sessions = tmp_path / "sessions.csv"
    sessions.write_text("session,item,type,ts\ns1,item-3,view,2024-01-02T10:00:00Z\ns1,item-7,add_to_cart,2024-01-02T10:01:00Z\n"
                        "s2,item-11,view,2024-01-02T11:00:00Z\n")
    session_out = tmp_path / "session-recs.csv"
    result = shelf(shop, "recommend-batch", "--sessions", str(sessions), "--k", "4", "--out", str(session_out))
    assert result.exit_code == 0, result.output
    with session_out.open() as handle:
        session_rows = list(csv.DictReader(handle))
    assert [r["rank"] for r in session_rows if r["session"] == "s1"] == ["1", "2", "3", "4"]
    assert {r["session"] for r in session_rows} == {"s1", "s2"}


def test_train_as_of_records_the_snapshot(shop: Path) -> None:
    result = shelf(shop, "train", "--model", "shelf-trending", "--as-of", "2024-01-04T00:00:00Z")
    assert result.exit_code == 0, result.output
    version = Registry(shop).versions()[-1]
    card = Registry(shop).card(version)
    assert card.snapshot_as_of == "2024-01-04T00:00:00+00:00"
    assert "2024-01-03" in card.notes  # the last event it saw is before the cut


def test_corrupted_bundle_is_refused_and_never_promoted(shop: Path) -> None:
    registry = Registry(shop)
    shelf(shop, "train", "--model", "shelf-trending")
    version = registry.versions()[-1]
    before = registry.promoted()
    victim = next(p for p in (registry.path(version) / "model").iterdir() if p.is_file() and p.suffix == ".npz")
    victim.write_bytes(victim.read_bytes()[:-7] + b"garbage")
    result = shelf(shop, "models", "promote", version)
    assert result.exit_code == 2 and "corrupted" in result.output
    assert registry.promoted() == before


def test_newer_bundle_format_is_refused(shop: Path) -> None:
    registry = Registry(shop)
    shelf(shop, "train", "--model", "shelf-trending")
    version = registry.versions()[-1]
    card_path = registry.path(version) / "card.json"
    raw = orjson.loads(card_path.read_bytes())
    raw["format_version"] = 99
    card_path.write_bytes(orjson.dumps(raw))
    result = shelf(shop, "models", "promote", version)
    assert result.exit_code == 2 and "newer than this shelf reads" in result.output


def test_training_on_an_empty_snapshot_or_one_item(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert shelf(home, "simulate", "--users", "20", "--items", "40", "--days", "2").exit_code == 0
    early = shelf(home, "train", "--as-of", "2000-01-01T00:00:00Z")
    assert early.exit_code == 2 and "no events before 2000-01-01" in early.output
    one = tmp_path / "one"
    events = tmp_path / "one.csv"
    events.write_text("user,item,type,timestamp\nu1,a,view,2024-01-01T00:00:00Z\nu2,a,view,2024-01-01T01:00:00Z\n")
    shelf(one, "ingest", "events", str(events))
    result = shelf(one, "train")
    assert result.exit_code == 2 and "needs at least 2" in result.output


def test_bad_pipeline_config(tmp_path: Path, shop: Path) -> None:
    config = tmp_path / "pipeline.toml"
    config.write_text('[train]\nmodel = "shelf-blend"\nepochs = 3\n')
    result = shelf(shop, "train", "--config", str(config))
    assert result.exit_code == 2 and "unknown key 'epochs'" in result.output


def test_evaluate_prints_a_table(shop: Path, tmp_path: Path) -> None:
    result = shelf(shop, "evaluate", "--models", "popularity,recent+popular,shelf-repeat", "--test-days", "1", "--no-tune",
                   "--report", str(tmp_path / "report"))
    assert result.exit_code == 0, result.output
    assert "recent+popular" in result.output and "ndcg@10" in result.output
    assert (tmp_path / "report" / "report.html").is_file()


def test_evaluate_refuses_k_beyond_the_catalogue(shop: Path) -> None:
    result = shelf(shop, "evaluate", "--models", "popularity", "--k", "100000")
    assert result.exit_code == 2 and "100000" in result.output


def test_the_default_two_stage_falls_back_to_its_retrieval_stage_on_a_young_shop(tmp_path: Path) -> None:
    from shelf.models.retrieval import BlendRetriever
    from shelf.registry import Registry
    from shelf.registry.loader import load_bundle

    home = tmp_path / "young"
    assert shelf(home, "simulate", "--users", "20", "--items", "40", "--days", "2").exit_code == 0
    result = shelf(home, "train", "--promote")  # two days: no returning shoppers to replay a day-long label window
    assert result.exit_code == 0, result.output
    assert "shelf-twostage (retrieval stage only)" in result.output and "fell back to its retrieval stage" in result.output
    registry = Registry(home)
    card = registry.card(registry.promoted())
    assert card.parameters["requested_model"] == "shelf-twostage" and "request moment" in card.notes
    assert isinstance(load_bundle(registry).model, BlendRetriever)
