"""The Spark integration is an extra: absent, it says how to install it; present, it agrees with DuckDB."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shelf.lake import Lake
from shelf.lake.spark import MissingExtraError, spark_snapshot


def test_importing_the_module_does_not_need_pyspark() -> None:
    import shelf.lake.spark as module

    assert module.require_pyspark is not None


@pytest.mark.skipif(importlib.util.find_spec("pyspark") is not None, reason="pyspark is installed; the guard is not reachable")
def test_missing_extra_is_a_clear_instruction(tmp_path: Path) -> None:
    with pytest.raises(MissingExtraError, match=r"pip install 'shelf\[spark\]'"):
        spark_snapshot(Lake.open(tmp_path), datetime(2024, 1, 1, tzinfo=UTC))


@pytest.mark.skipif(importlib.util.find_spec("pyspark") is None, reason="pyspark (the 'spark' extra) is not installed")
def test_spark_snapshot_matches_duckdb_snapshot(tmp_path: Path) -> None:  # pragma: no cover - needs the extra
    from shelf.datasets.simulate import SimulationConfig, Simulator
    from shelf.privacy import Pseudonymizer
    from shelf.schema import validate_events

    lake = Lake.open(tmp_path)
    raw = Simulator(SimulationConfig(users=30, items=30, days=2, seed=1)).event_table()
    with lake.writer() as writer:
        writer.append_events(validate_events(raw, pseudonymizer=Pseudonymizer(b"k" * 16)).valid)
    as_of = datetime(2024, 1, 2, tzinfo=UTC)
    assert spark_snapshot(lake, as_of).events().count() == lake.snapshot(as_of).count_events()
