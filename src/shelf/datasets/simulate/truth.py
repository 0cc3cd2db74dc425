"""The simulated shop's hidden ground truth: shoppers' tastes, the catalogue, supply over time.

Everything here is drawn once from the config's seed, before any event is generated, so the
catalogue and user tables do not depend on how the events are streamed. Tastes live in a
``taste_dim``-dimensional space; a shopper's true affinity for an item is the dot product of
their (drifting) taste with the item's vector minus their price sensitivity times how
expensive the item is within its category. Affinities are roughly standard normal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shelf.datasets.simulate.config import SimulationConfig

DAY_US = 86_400_000_000

TOP_CATEGORIES: dict[str, tuple[str, ...]] = {
    "electronics": (
        "phones",
        "laptops",
        "headphones",
        "cameras",
        "tablets",
        "wearables",
        "accessories",
    ),
    "fashion": ("shirts", "dresses", "shoes", "jackets", "bags", "jeans", "watches"),
    "home": ("furniture", "kitchen", "bedding", "lighting", "decor", "storage"),
    "beauty": ("skincare", "makeup", "fragrance", "haircare"),
    "sports": ("running", "cycling", "fitness", "outdoor", "swimming"),
    "books": ("fiction", "cooking", "children", "science", "travel"),
    "toys": ("puzzles", "building", "dolls", "games"),
    "grocery": ("coffee", "snacks", "tea", "pantry"),
    "garden": ("tools", "plants", "grills"),
    "pets": ("dogs", "cats", "aquarium"),
}
# Typical log price per top level (exp: electronics ~150, grocery ~9).
TOP_LOG_PRICE = {
    "electronics": 5.0,
    "fashion": 3.8,
    "home": 4.2,
    "beauty": 3.2,
    "sports": 3.9,
    "books": 2.8,
    "toys": 3.3,
    "grocery": 2.2,
    "garden": 3.6,
    "pets": 3.0,
}
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
AGE_PROBS = (0.14, 0.26, 0.22, 0.17, 0.12, 0.09)
GENDERS = ("female", "male", "other")
GENDER_PROBS = (0.49, 0.48, 0.03)
REGIONS = ("DE", "FR", "GB", "ES", "IT", "NL", "PL", "SE")
REGION_PROBS = (0.24, 0.18, 0.17, 0.11, 0.11, 0.08, 0.07, 0.04)
DEVICES = ("mobile", "desktop", "tablet", "app")
# Preferred device by age band: the young browse on phones and the app, the old on desktops.
DEVICE_BY_AGE = np.array(
    [
        [0.55, 0.12, 0.05, 0.28],
        [0.50, 0.20, 0.07, 0.23],
        [0.45, 0.28, 0.10, 0.17],
        [0.38, 0.37, 0.13, 0.12],
        [0.30, 0.47, 0.15, 0.08],
        [0.22, 0.55, 0.18, 0.05],
    ]
)
REFERRERS = ("direct", "search_engine", "social", "email", "ads", "affiliate")
REFERRER_PROBS = (0.38, 0.25, 0.12, 0.08, 0.12, 0.05)
PAGES = ("home", "category", "product", "search", "cart", "checkout", "account", "recommendation")
COLORS = ("black", "white", "grey", "red", "blue", "green", "beige", "pink")
ADJECTIVES = (
    "classic",
    "pro",
    "eco",
    "compact",
    "premium",
    "essential",
    "smart",
    "vintage",
    "ultra",
    "soft",
)
_BRAND_HEADS = (
    "Nor",
    "Lum",
    "Vex",
    "Ald",
    "Bri",
    "Cor",
    "Dal",
    "Fen",
    "Gar",
    "Hal",
    "Ivo",
    "Jun",
    "Kes",
    "Mar",
    "Ost",
    "Pel",
)
_BRAND_TAILS = ("ena", "ix", "ora", "wick", "berg", "ton", "ley", "ano", "ova", "is", "um", "ello")
# Share of each hour's traffic (UTC, one shop's time zone): quiet nights, lunch bump, evening peak.
HOUR_WEIGHTS = np.array(
    [
        1.2,
        0.7,
        0.45,
        0.35,
        0.35,
        0.5,
        1.0,
        1.8,
        2.6,
        3.2,
        3.6,
        3.9,
        4.3,
        4.1,
        3.8,
        3.8,
        4.0,
        4.4,
        5.0,
        5.8,
        6.3,
        5.9,
        4.4,
        2.5,
    ]
)
HOUR_PROBS = HOUR_WEIGHTS / HOUR_WEIGHTS.sum()
# Monday .. Sunday: weekends are busier.
WEEKDAY_FACTORS = np.array([0.92, 0.9, 0.94, 0.97, 1.0, 1.12, 1.15])


def category_paths(n: int) -> list[str]:
    """``n`` leaf category paths, round-robin over the top levels so small shops stay varied."""
    tops = list(TOP_CATEGORIES)
    paths: list[str] = []
    round_ = 0
    while len(paths) < n:
        for top in tops:
            subs = TOP_CATEGORIES[top]
            sub = subs[round_ % len(subs)]
            if round_ >= len(subs):
                sub = f"{sub}-{round_ // len(subs) + 1}"
            paths.append(f"{top}/{sub}")
            if len(paths) == n:
                break
        round_ += 1
    return paths


def brand_names(n: int) -> list[str]:
    names = [h + t for t in _BRAND_TAILS for h in _BRAND_HEADS]
    return [
        names[i % len(names)] + ("" if i < len(names) else f" {i // len(names) + 1}")
        for i in range(n)
    ]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


@dataclass(frozen=True)
class StockChanges:
    """Item versions after the first one, sorted by day: sell-outs, restocks, price changes."""

    item: np.ndarray  # int32 item index
    day: np.ndarray  # int32; the version is valid from that day's start
    stock: np.ndarray  # int64
    price: np.ndarray  # float64

    def on_day(self, day: int) -> slice:
        lo, hi = np.searchsorted(self.day, [day, day + 1])
        return slice(int(lo), int(hi))


class GroundTruth:
    """Hidden state of the simulated shop. Indices are dense (``0..users-1``, ``0..items-1``).

    Attributes worth knowing for tests: ``item_category`` (leaf index per item),
    ``item_price`` (initial price), ``launch_day`` (-1 for items on sale before the period),
    ``user_age``/``user_gender``/``user_region`` (indices into the vocabularies above).
    """

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0]))
        dim, n_users, n_items, days = config.taste_dim, config.users, config.items, config.days
        self.taste_scale = 2.2

        # Catalogue structure: leaf categories cluster around their top level in taste space.
        self.category_names = category_paths(config.categories)
        tops = [p.split("/")[0] for p in self.category_names]
        top_names = sorted(set(tops))
        top_vec = rng.normal(size=(len(top_names), dim))
        self.category_top = np.array([top_names.index(t) for t in tops], dtype=np.int32)
        self.category_vec = _unit(
            top_vec[self.category_top] + 0.6 * rng.normal(size=(config.categories, dim))
        )
        self.category_log_weight = rng.normal(0.0, 0.5, size=config.categories)
        self.category_drift = rng.normal(0.0, 0.8, size=config.categories)
        self.category_log_price = np.array([TOP_LOG_PRICE[t] for t in tops]) + rng.normal(
            0, 0.3, config.categories
        )
        self.brand_names = brand_names(config.brands)
        self.brand_vec = rng.normal(size=(config.brands, dim))

        # Items: category (sizes vary), brand (mostly one top level per brand), vector, price.
        cat_share = rng.dirichlet(np.full(config.categories, 2.0))
        self.item_category = np.sort(
            np.concatenate(
                [
                    np.arange(config.categories),
                    rng.choice(config.categories, n_items - config.categories, p=cat_share),
                ]
            )
        ).astype(np.int32)
        brand_top = rng.integers(0, len(top_names), size=config.brands)
        item_top = self.category_top[self.item_category]
        brand_pick = rng.integers(0, config.brands, size=n_items)
        for _ in range(3):  # re-draw brands from another top level, so brands mostly specialise
            wrong = brand_top[brand_pick] != item_top
            brand_pick[wrong] = rng.integers(0, config.brands, size=int(wrong.sum()))
        self.item_brand = brand_pick.astype(np.int32)
        self.item_vec = _unit(
            self.category_vec[self.item_category]
            + 0.35 * _unit(self.brand_vec[self.item_brand])
            + 0.55 * _unit(rng.normal(size=(n_items, dim)))
        ).astype(np.float32)
        log_price = self.category_log_price[self.item_category] + rng.normal(0.0, 0.5, n_items)
        self.item_price = np.round(np.exp(log_price), 0) - 0.01
        self.item_price = np.maximum(self.item_price, 0.99)
        self.item_price_z = (
            (log_price - self.category_log_price[self.item_category]) / 0.5
        ).astype(np.float32)
        self.item_log_popularity = rng.normal(0.0, 1.1, n_items)
        trending = rng.random(n_items) < config.trending_share
        self.item_trend = np.where(
            trending, rng.choice([-1.0, 1.0], n_items) * rng.uniform(1.0, 2.5, n_items), 0.0
        )
        self.item_color = rng.integers(0, len(COLORS), n_items).astype(np.int32)
        self.item_adjective = rng.integers(0, len(ADJECTIVES), n_items).astype(np.int32)
        self.item_model = rng.integers(1, 100, n_items).astype(np.int32)
        launched = rng.random(n_items) < config.launch_share
        self.launch_day = np.where(launched, rng.integers(0, days, n_items), -1).astype(np.int32)
        # Items on sale before the period were launched up to three years earlier.
        self.launched_at_us = np.where(
            launched,
            config.start_us + self.launch_day.astype(np.int64) * DAY_US,
            config.start_us
            - rng.integers(1, 3 * 365, n_items) * DAY_US
            - rng.integers(0, DAY_US, n_items),
        ).astype(np.int64)

        # Users: segments shift tastes; activity is heavy-tailed; some sign up during the period.
        self.user_age = rng.choice(len(AGE_BANDS), n_users, p=AGE_PROBS).astype(np.int8)
        self.user_gender = rng.choice(len(GENDERS), n_users, p=GENDER_PROBS).astype(np.int8)
        self.user_region = rng.choice(len(REGIONS), n_users, p=REGION_PROBS).astype(np.int8)
        segment = (
            rng.normal(0, 0.7, (len(AGE_BANDS), dim))[self.user_age]
            + rng.normal(0, 0.7, (len(GENDERS), dim))[self.user_gender]
            + rng.normal(0, 0.5, (len(REGIONS), dim))[self.user_region]
        )
        self.user_taste0 = (
            self.taste_scale * _unit(segment + rng.normal(size=(n_users, dim)))
        ).astype(np.float32)
        self.user_drift = (self.taste_scale * _unit(rng.normal(size=(n_users, dim)))).astype(
            np.float32
        )
        self.user_price_sensitivity = np.clip(rng.normal(0.35, 0.2, n_users), 0.0, None).astype(
            np.float32
        )
        activity = rng.lognormal(0.0, 0.9, n_users)
        self.user_activity = activity / activity.mean()
        cum = DEVICE_BY_AGE[self.user_age].cumsum(axis=1)
        self.user_device = (
            (rng.random((n_users, 1)) > cum).sum(axis=1).clip(0, len(DEVICES) - 1).astype(np.int8)
        )
        late = rng.random(n_users) < config.signup_share
        self.signup_day = np.where(late, rng.integers(0, days, n_users), -1).astype(np.int32)
        self.signed_up_at_us = np.where(
            late,
            config.start_us
            + self.signup_day.astype(np.int64) * DAY_US
            + rng.integers(0, DAY_US, n_users),
            config.start_us
            - rng.integers(1, 3 * 365, n_users) * DAY_US
            - rng.integers(0, DAY_US, n_users),
        ).astype(np.int64)
        self.consent_personalization = rng.random(n_users) < 0.92
        self.consent_marketing = rng.random(n_users) < 0.45
        # A few shoppers change their marketing consent during the period (a second profile version).
        changes = (rng.random(n_users) < 0.05) & (self.signup_day < days - 1)
        first_day = np.maximum(self.signup_day, 0) + 1
        change_day = first_day + (rng.random(n_users) * np.maximum(days - first_day, 1)).astype(
            np.int64
        )
        self.consent_change_us = np.where(
            changes & (change_day < days),
            config.start_us + change_day * DAY_US + rng.integers(0, DAY_US, n_users),
            -1,
        ).astype(np.int64)

        self.initial_stock, self.stock_changes = self._simulate_supply(rng)

    # -- time-dependent truth -------------------------------------------------------------

    def progress(self, day: int) -> float:
        """How far into the period ``day`` is, 0 on the first day, 1 on the last."""
        return day / max(self.config.days - 1, 1)

    def taste(self, day: int = 0, users: np.ndarray | None = None) -> np.ndarray:
        """True taste vectors on ``day``, shape (n, taste_dim), float32."""
        idx = slice(None) if users is None else users
        return (
            self.user_taste0[idx]
            + np.float32(self.config.drift * self.progress(day)) * self.user_drift[idx]
        )

    def affinity(
        self, users: np.ndarray | int, items: np.ndarray | int, day: int = 0
    ) -> np.ndarray:
        """True affinity of ``users`` for ``items`` on ``day``, broadcast elementwise.

        Pass ``users[:, None]`` and ``items[None, :]`` for a matrix. Roughly standard normal; a
        shopper clicks, carts, buys and rates higher where it is higher.
        """
        u, i = np.broadcast_arrays(np.asarray(users), np.asarray(items))
        taste = self.taste(day, u.ravel())
        score = np.einsum("nd,nd->n", taste, self.item_vec[i.ravel()])
        score -= self.user_price_sensitivity[u.ravel()] * self.item_price_z[i.ravel()]
        return score.reshape(u.shape)

    def scores(self, user: int, day: int = 0) -> np.ndarray:
        """True affinity of one user for every item, shape (items,)."""
        taste = self.taste(day, np.array([user]))[0]
        return self.item_vec @ taste - self.user_price_sensitivity[user] * self.item_price_z

    def launched_by(self, day: int) -> np.ndarray:
        """Which items are on sale on ``day`` (launched at or before its start)."""
        return self.launch_day <= day

    def preferred_items(self, user: int, n: int, day: int = 0) -> np.ndarray:
        """The ``n`` items on sale on ``day`` that ``user`` truly likes most, best first."""
        s = np.where(self.launched_by(day), self.scores(user, day), -np.inf)
        n = min(n, int(np.isfinite(s).sum()))
        top = np.argpartition(-s, n - 1)[:n] if n > 0 else np.array([], dtype=np.int64)
        return top[np.argsort(-s[top], kind="stable")]

    def item_log_weight(self, day: int) -> np.ndarray:
        """Log of how often each item is shown/found on ``day`` (popularity, trend, novelty); -inf if not launched."""
        t = self.progress(day)
        cat = self.category_log_weight + self.config.drift * t * self.category_drift
        novelty = np.where(
            self.launch_day >= 0, 1.5 * np.exp(-np.maximum(day - self.launch_day, 0) / 7.0), 0.0
        )
        w = (
            self.item_log_popularity
            + self.item_trend * (t - 0.5)
            + novelty
            + cat[self.item_category]
        )
        return np.where(self.launched_by(day), w, -np.inf)

    # -- supply ---------------------------------------------------------------------------

    def _simulate_supply(self, rng: np.random.Generator) -> tuple[np.ndarray, StockChanges]:
        """Stock as an exogenous process: demand eats it, items sell out and come back later.

        Events respect it (no cart or purchase of an item while a version says stock 0), but it
        is not driven by the simulated purchases, so the catalogue does not depend on the events.
        """
        cfg = self.config
        n = cfg.items
        expected_sales = (
            0.03
            * cfg.users
            * cfg.sessions_per_user_day
            * cfg.mean_views_per_session
            / (1 - cfg.anonymous_share)
        )
        base = np.exp(self.item_log_weight(0))
        daily0 = (
            expected_sales
            * np.where(np.isfinite(self.item_log_weight(0)), base, np.exp(self.item_log_popularity))
            / max(base.sum(), 1e-9)
        )
        stock = np.ceil(daily0 * rng.uniform(3.0, 60.0, n)).astype(np.int64) + rng.integers(0, 5, n)
        initial = stock.copy()
        price = self.item_price.copy()
        restock_day = np.full(n, -1, dtype=np.int64)
        parts: list[tuple[np.ndarray, int, np.ndarray, np.ndarray]] = []
        for day in range(cfg.days):
            lw = self.item_log_weight(day)
            weight = np.exp(lw)
            daily = expected_sales * weight / max(weight.sum(), 1e-9)
            back = restock_day == day
            if back.any():
                amount = (
                    np.ceil(daily[back] * rng.uniform(15.0, 60.0, int(back.sum()))).astype(np.int64)
                    + 5
                )
                stock[back] = amount
                repriced = rng.random(int(back.sum())) < 0.3
                new_price = np.maximum(
                    np.round(price[back] * np.exp(rng.normal(0.0, 0.08, int(back.sum())))) - 0.01,
                    0.99,
                )
                price[back] = np.where(repriced, new_price, price[back])
                restock_day[back] = -1
                idx = np.flatnonzero(back)
                parts.append((idx, day, stock[idx].copy(), price[idx].copy()))
            # Sell-outs observed at the start of a day; the item is back after a lead time.
            # (never on a launch or restock day: one version per item and day)
            selling = np.isfinite(lw) & (stock > 0) & ~back & (self.launch_day != day)
            if day > 0:
                sold = rng.poisson(daily[selling])
                stock[selling] = np.maximum(stock[selling] - sold, 0)
                out = np.flatnonzero(selling)[stock[selling] == 0]
                if len(out):
                    restock_day[out] = day + rng.integers(2, 11, len(out))
                    parts.append((out, day, np.zeros(len(out), np.int64), price[out].copy()))
        if parts:
            item = np.concatenate([p[0] for p in parts]).astype(np.int32)
            day_arr = np.concatenate([np.full(len(p[0]), p[1], np.int32) for p in parts])
            st = np.concatenate([p[2] for p in parts])
            pr = np.concatenate([p[3] for p in parts])
            order = np.argsort(day_arr, kind="stable")
            changes = StockChanges(item[order], day_arr[order], st[order], pr[order])
        else:
            changes = StockChanges(
                np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0)
            )
        return initial, changes
