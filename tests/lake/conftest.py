"""Builders of canonical event, item and user tables for the lake tests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from shelf.lake import Lake, LakeOptions
from shelf.schema import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def events(rows: Sequence[tuple[str, str, float]] | None = None, *, n: int = 0, start: int = 0, type_: str = "view") -> pa.Table:
    """Events from (event_id, item_id, seconds after T0) triples, or ``n`` generated ones."""
    if rows is None:
        rows = [(f"e{i}", f"i{i % 7}", float(i)) for i in range(start, start + n)]
    count = len(rows)
    return pa.table(
        {
            "event_id": [r[0] for r in rows],
            "user_id": [f"u_{i % 3}" for i in range(count)],
            "session_id": [f"s{i % 5}" for i in range(count)],
            "item_id": [r[1] for r in rows],
            "type": [type_] * count,
            "timestamp": [at(r[2]) for r in rows],
            "value": [None] * count,
            "price": [9.5] * count,
            "device": ["mobile"] * count,
            "region": [None] * count,
            "page": [None] * count,
            "referrer": [None] * count,
        },
        schema=EVENT_SCHEMA,
    )


def items(rows: Sequence[tuple[str, float, float]]) -> pa.Table:
    """Item versions from (item_id, price, valid_from seconds after T0)."""
    return pa.table(
        {
            "item_id": [r[0] for r in rows],
            "title": [f"title {r[0]}" for r in rows],
            "category": ["shoes/running"] * len(rows),
            "brand": ["acme"] * len(rows),
            "price": [r[1] for r in rows],
            "stock": [3] * len(rows),
            "launched_at": [None] * len(rows),
            "attributes": [None] * len(rows),
            "valid_from": [at(r[2]) for r in rows],
        },
        schema=ITEM_SCHEMA,
    )


def users(rows: Sequence[tuple[str, str, float]]) -> pa.Table:
    """User versions from (user_id, region, valid_from seconds after T0)."""
    return pa.table(
        {
            "user_id": [r[0] for r in rows],
            "signed_up_at": [None] * len(rows),
            "age_band": ["25-34"] * len(rows),
            "gender": [None] * len(rows),
            "region": [r[1] for r in rows],
            "consent_personalization": [True] * len(rows),
            "consent_marketing": [False] * len(rows),
            "valid_from": [at(r[2]) for r in rows],
        },
        schema=USER_SCHEMA,
    )


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake.open(tmp_path / "home", options=LakeOptions(retired_grace_s=0.0))
