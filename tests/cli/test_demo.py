"""`shelf demo`, the README's front door, on a tiny simulated shop."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from shelf.cli import main
from shelf.registry import Registry


def test_demo_builds_trains_and_evaluates(tmp_path: Path) -> None:
    home = tmp_path / "home"
    args = ["--home", str(home), "demo", "--users", "120", "--items", "60", "--days", "4", "--model", "shelf-trending", "--no-serve"]
    result = CliRunner().invoke(main, args, env={"SHELF_DEV": "1"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "distinct sessions" in result.output and "promoted bundle v0001" in result.output
    assert "shelf-trending" in result.output and "ndcg@10" in result.output
    assert Registry(home).promoted() == "v0001"
    assert (home / "report" / "report.html").is_file()
