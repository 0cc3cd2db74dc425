"""A small synthetic shop for evaluation tests: users with tastes, items in categories, 60 days."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pyarrow as pa
import pytest

from shelf.schema import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA

START = datetime(2024, 1, 1, tzinfo=UTC)
TYPES = ("view", "add_to_cart", "purchase", "remove_from_cart")


def event_table(rows: list[dict]) -> pa.Table:
    """EVENT_SCHEMA table from dicts with at least user_id, item_id, type, timestamp."""
    full = []
    for i, r in enumerate(rows):
        full.append({"event_id": r.get("event_id", f"e{i}"), "user_id": r.get("user_id"), "session_id": r.get("session_id"),
                     "item_id": r["item_id"], "type": r.get("type", "view"), "timestamp": r["timestamp"],
                     "value": r.get("value"), "price": None, "device": None, "region": None, "page": None, "referrer": None})
    return pa.Table.from_pylist(full, schema=EVENT_SCHEMA)


def synthetic_shop(n_users: int = 120, n_items: int = 60, days: int = 60, seed: int = 0) -> tuple[pa.Table, pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    cats = ["shoes", "shirts", "bags"]
    item_cat = rng.integers(0, len(cats), n_items)
    user_cat = rng.integers(0, len(cats), n_users)
    popularity = rng.zipf(1.6, n_items).astype(float)
    events = []
    for u in range(n_users):
        n = int(rng.integers(5, 25))
        w = popularity * np.where(item_cat == user_cat[u], 6.0, 1.0)
        times = np.sort(rng.uniform(0, days * 86400, n))
        items = rng.choice(n_items, size=n, p=w / w.sum())
        for s, (it, t) in enumerate(zip(items, times, strict=True)):
            kind = rng.choice(TYPES, p=[0.7, 0.15, 0.1, 0.05])
            events.append({"user_id": f"u{u:03d}", "session_id": f"s{u:03d}-{s // 4}", "item_id": f"i{it:03d}",
                           "type": str(kind), "timestamp": START + timedelta(seconds=float(t))})
    # Most items launched before the data starts, a few during it (a record becomes visible at launch).
    launched = [START + timedelta(days=float(d)) for d in np.where(rng.random(n_items) < 0.85, rng.uniform(-100, 0, n_items), rng.uniform(0, 40, n_items))]
    items_t = pa.Table.from_pylist([
        {"item_id": f"i{i:03d}", "title": None, "category": f"{cats[item_cat[i]]}/x", "brand": None,
         "price": float(rng.uniform(5, 100)), "stock": 1, "launched_at": launched[i], "attributes": None,
         "valid_from": launched[i]} for i in range(n_items)], schema=ITEM_SCHEMA)
    users_t = pa.Table.from_pylist([
        {"user_id": f"u{u:03d}", "signed_up_at": None, "age_band": ["18-24", "25-34", "35+"][u % 3],
         "gender": ["f", "m"][u % 2], "region": None, "consent_personalization": True, "consent_marketing": None,
         "valid_from": START - timedelta(days=200)} for u in range(n_users)], schema=USER_SCHEMA)
    return event_table(events), items_t, users_t


@pytest.fixture(scope="session")
def shop() -> tuple[pa.Table, pa.Table, pa.Table]:
    return synthetic_shop()
