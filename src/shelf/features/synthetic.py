"""A small synthetic shop (events, catalogue, profiles) with learnable structure, for tests and docs.

Shoppers prefer one category; items have a popularity; carts follow views and purchases follow
carts at item-dependent rates. Some items change category or price mid-way (two catalogue
versions) so that as-of joins are exercised. Everything goes through the real validators.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from shelf.privacy import Pseudonymizer
from shelf.schema import validate_events, validate_items, validate_users

TEST_KEY = b"test-key-0123456789abcdef"
START = datetime(2024, 3, 1, tzinfo=UTC)
CATEGORIES = ("home/kitchen", "home/garden", "tech/phone", "tech/audio", "fashion/shoes", "fashion/bags")
DEVICES = ("mobile", "desktop", "tablet")
REGIONS = ("north", "south", "east", "west")


def synthetic_shop(
    n_users: int = 60, n_items: int = 80, n_sessions: int = 500, days: int = 40, seed: int = 0
) -> tuple[pa.Table, pa.Table, pa.Table]:
    """``(events, items, users)`` as validated EVENT/ITEM/USER_SCHEMA tables."""
    rng = np.random.default_rng(seed)
    pseudo = Pseudonymizer(TEST_KEY)
    item_cat = rng.integers(0, len(CATEGORIES), n_items)
    item_pop = rng.pareto(1.2, n_items) + 0.2
    item_conv = rng.uniform(0.05, 0.5, n_items)
    price = np.round(rng.lognormal(3.0, 1.0, n_items), 2)
    items_raw: dict[str, list[object]] = {k: [] for k in ("item_id", "category", "brand", "price", "stock", "launched_at", "valid_from")}
    for i in range(n_items):
        launched = START - timedelta(days=int(rng.integers(1, 400)))
        versions = [(launched, CATEGORIES[item_cat[i]], price[i])]
        if i % 10 == 3:  # a re-categorised, re-priced item
            versions.append((START + timedelta(days=days // 2, hours=5), CATEGORIES[(item_cat[i] + 1) % len(CATEGORIES)], price[i] * 0.8))
        for when, cat, p in versions:
            items_raw["item_id"].append(f"i{i}")
            items_raw["category"].append(None if i % 17 == 5 else cat)
            items_raw["brand"].append(None if i % 13 == 7 else f"brand{i % 9}")
            items_raw["price"].append(None if i % 19 == 11 else float(p))
            items_raw["stock"].append(int(rng.integers(0, 50)))
            items_raw["launched_at"].append(launched.isoformat())
            items_raw["valid_from"].append(when.isoformat())
    items = validate_items(pa.table(items_raw)).valid

    users_raw = {
        "user_id": [f"c{u}" for u in range(n_users)],
        "age_band": [("18-24", "25-34", "35-54", "55+")[u % 4] for u in range(n_users)],
        "gender": [None if u % 7 == 0 else ("f", "m")[u % 2] for u in range(n_users)],
        "region": [REGIONS[u % 4] for u in range(n_users)],
        "valid_from": [(START - timedelta(days=30)).isoformat()] * n_users,
    }
    users = validate_users(pa.table(users_raw), pseudonymizer=pseudo).valid

    user_pref = rng.integers(0, len(CATEGORIES), n_users)
    rows: dict[str, list[object]] = {k: [] for k in ("user_id", "session_id", "item_id", "type", "timestamp", "value", "price", "device", "region")}
    for s in range(n_sessions):
        u = int(rng.integers(0, n_users))
        t = START + timedelta(seconds=float(rng.uniform(0, days * 86_400)))
        device = DEVICES[int(rng.integers(0, len(DEVICES)))]
        anonymous = rng.random() < 0.05
        weights = item_pop * np.where(item_cat == user_pref[u], 6.0, 1.0)
        weights /= weights.sum()
        for _ in range(int(rng.integers(1, 8))):
            i = int(rng.choice(n_items, p=weights))
            t += timedelta(seconds=float(rng.exponential(90)))

            def emit(kind: str, value: float | None, when: datetime, item: int = i, u: int = u, s: int = s,
                     device: str = device, anonymous: bool = bool(anonymous)) -> None:
                rows["user_id"].append(None if anonymous else f"c{u}")
                rows["session_id"].append(f"s{s}")
                rows["item_id"].append(f"i{item}")
                rows["type"].append(kind)
                rows["timestamp"].append(when.isoformat())
                rows["value"].append(value)
                rows["price"].append(None if np.isnan(price[item]) else float(price[item]))
                rows["device"].append(device)
                rows["region"].append(REGIONS[u % 4])

            emit("view", None, t)
            if rng.random() < item_conv[i] * 2:
                t += timedelta(seconds=float(rng.exponential(30)))
                emit("add_to_cart", 1.0, t)
                r = rng.random()
                if r < item_conv[i] * 1.5:
                    t += timedelta(seconds=float(rng.exponential(60)))
                    emit("purchase", float(rng.integers(1, 3)), t)
                    if rng.random() < 0.3:
                        emit("rating", float(rng.integers(1, 6)), t + timedelta(days=1))
                elif r > 0.8:
                    emit("remove_from_cart", 1.0, t + timedelta(seconds=20))
    events = validate_events(pa.table(rows), pseudonymizer=pseudo).valid
    return events.sort_by([("timestamp", "ascending")]), items, users
