"""Shoppers' sessions turned into events, vectorised per block of sessions.

The generator walks the period day by day. Each day it draws every shopper's sessions (count
from activity and weekday, start from the hour-of-day profile), sorts them by start and turns
blocks of sessions into events with numpy, one array per column, never a Python loop per
event. Events of a block that end after the next block's first start wait in a small buffer,
so batches come out in time order with memory bounded by a block plus that buffer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np

from shelf.datasets.simulate.config import SimulationConfig
from shelf.datasets.simulate.truth import (
    DAY_US,
    DEVICES,
    HOUR_PROBS,
    PAGES,
    REFERRER_PROBS,
    REFERRERS,
    WEEKDAY_FACTORS,
    GroundTruth,
)
from shelf.schema import BUILTIN_EVENT_TYPES

KIND = {name: i for i, name in enumerate(BUILTIN_EVENT_TYPES)}
PAGE = {name: i for i, name in enumerate(PAGES)}
EMAIL = REFERRERS.index("email")
SECOND = 1_000_000
NEVER = np.int32(1 << 30)  # login position of sessions that stay anonymous

BLOCK_SESSIONS = (
    16_384  # sessions turned into events at once; fixed so output never depends on chunking
)
CANDIDATES = (
    8  # items a shopper "considers" per freshly found view (popularity-drawn, picked by taste)
)
VIEW_RING, ENGAGED_RING = (
    8,
    4,
)  # recent views and recent carts/wishes/purchases remembered per shopper
MAX_VIEWS = 60

# Funnel (logits over true affinity a ~ N(0, 1)).
CART_BIAS, CART_SLOPE = -3.1, 1.1
WISH_BIAS, WISH_SLOPE = -4.6, 0.9
BUY_BIAS, BUY_SLOPE = 0.6, 0.8
CHECKOUT_SHARE = 0.55  # sessions that reach checkout at all; carts of the others are abandoned
REMOVE_SHARE = 0.35  # abandoned cart lines explicitly removed before leaving
REVISIT_SHARE, REENGAGE_SHARE, REPEAT_SHARE = 0.15, 0.10, 0.12
FOCUS_SHARE = 0.6  # views within the session's focus category


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class EventColumns:
    """Events as aligned numpy arrays (the simulator's internal form, before strings).

    ``user`` is -1 where no user id is shown, ``session`` -1 where there is none; ``value`` and
    ``price`` are NaN where absent; small columns index the vocabularies in ``truth``.
    """

    ts: np.ndarray  # int64 microseconds since the epoch, UTC
    user: np.ndarray  # int32
    session: np.ndarray  # int64
    item: np.ndarray  # int32
    kind: np.ndarray  # int8, index into BUILTIN_EVENT_TYPES
    value: np.ndarray  # float64
    price: np.ndarray  # float64
    device: np.ndarray  # int8
    region: np.ndarray  # int8
    page: np.ndarray  # int8
    referrer: np.ndarray  # int8

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, idx: np.ndarray | slice) -> EventColumns:
        return EventColumns(*(getattr(self, f.name)[idx] for f in fields(self)))

    @staticmethod
    def concat(parts: list[EventColumns]) -> EventColumns:
        return EventColumns(
            *(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(EventColumns))
        )

    @staticmethod
    def empty() -> EventColumns:
        dtypes = (
            np.int64,
            np.int32,
            np.int64,
            np.int32,
            np.int8,
            np.float64,
            np.float64,
            np.int8,
            np.int8,
            np.int8,
            np.int8,
        )
        return EventColumns(*(np.zeros(0, dtype=d) for d in dtypes))


@dataclass
class Sessions:
    """One day's sessions, sorted by start."""

    user: np.ndarray  # true shopper (int32), even when the session is anonymous
    start: np.ndarray  # int64 us
    n_views: np.ndarray  # int64
    device: np.ndarray  # int8
    referrer: np.ndarray  # int8
    checkout: np.ndarray  # bool
    known_from: (
        np.ndarray
    )  # int32: view position from which the user id is shown; NEVER if anonymous
    session_id: np.ndarray  # int64, global counter

    def __len__(self) -> int:
        return len(self.user)

    def take(self, idx: np.ndarray | slice) -> Sessions:
        return Sessions(*(getattr(self, f.name)[idx] for f in fields(self)))


class DayState:
    """What the shop looks like on one day: stock, prices, how findable each item is."""

    def __init__(self, truth: GroundTruth) -> None:
        self.truth = truth
        self.in_stock = truth.initial_stock > 0
        self.price = truth.item_price.copy()
        cat = truth.item_category
        self.cat_start = np.searchsorted(cat, np.arange(truth.config.categories))
        self.cat_end = np.searchsorted(cat, np.arange(truth.config.categories), side="right")

    def advance(self, day: int) -> None:
        truth = self.truth
        changes = truth.stock_changes
        s = changes.on_day(day)
        self.in_stock[changes.item[s]] = changes.stock[s] > 0
        self.price[changes.item[s]] = changes.price[s]
        lw = truth.item_log_weight(day)
        finite = np.isfinite(lw)
        weight = np.zeros_like(lw)
        weight[finite] = np.exp(lw[finite] - lw[finite].max())
        weight *= np.where(self.in_stock, 1.0, 0.3)  # sold-out pages are still found, less often
        cum = np.cumsum(weight)
        before = np.concatenate([[0.0], cum])[self.cat_start]
        self.cat_mass = cum[self.cat_end - 1] - before
        cat = truth.item_category
        within = (cum - before[cat]) / np.where(self.cat_mass > 0, self.cat_mass, 1.0)[cat]
        within[self.cat_end - 1] = 1.0
        # Category k's items occupy (k, k+1] of one increasing array: one searchsorted draws for all.
        self.item_cdf = cat + within
        self.log_cat_mass = np.where(
            self.cat_mass > 0, np.log(np.maximum(self.cat_mass, 1e-300)), -np.inf
        )


def _push(ring: np.ndarray, head: np.ndarray, users: np.ndarray, items: np.ndarray) -> None:
    """Append items to each user's ring of recent items (oldest overwritten)."""
    if len(users) == 0:
        return
    k = ring.shape[1]
    order = np.argsort(users, kind="stable")
    u, it = users[order], items[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    counts = np.diff(np.r_[starts, len(u)])
    rank = np.arange(len(u)) - np.repeat(starts, counts)
    keep = rank >= np.repeat(counts, counts) - k
    uu = u[keep]
    ring[uu, (head[uu] + rank[keep]) % k] = it[keep]
    first = u[starts]
    head[first] = (head[first] + counts) % k


class EventStream:
    """One pass over the period; ``batches()`` yields time-ordered ``EventColumns``."""

    def __init__(self, truth: GroundTruth) -> None:
        self.truth = truth
        self.config: SimulationConfig = truth.config
        n = self.config.users
        self.view_ring = np.full((n, VIEW_RING), -1, dtype=np.int32)
        self.view_head = np.zeros(n, dtype=np.int64)
        self.engaged_ring = np.full((n, ENGAGED_RING), -1, dtype=np.int32)
        self.engaged_head = np.zeros(n, dtype=np.int64)
        self.next_session = 0
        self.state = DayState(truth)
        self.end_us = self.config.start_us + self.config.days * DAY_US

    def batches(self) -> Iterator[EventColumns]:
        buffer = EventColumns.empty()
        for day in range(self.config.days):
            self.state.advance(day)
            if not (self.state.cat_mass > 0).any():
                continue  # nothing on sale yet (every item launches later): nobody visits
            rng = np.random.default_rng(np.random.SeedSequence([self.config.seed, 1, day]))
            sessions = self.sample_sessions(day, rng)
            for lo in range(0, len(sessions), BLOCK_SESSIONS):
                block = sessions.take(slice(lo, lo + BLOCK_SESSIONS))
                merged = EventColumns.concat([buffer, self.block_events(block, day, rng)])
                merged = merged.take(np.argsort(merged.ts, kind="stable"))
                # Every later session starts at or after this block's last start.
                cut = int(np.searchsorted(merged.ts, block.start[-1], side="left"))
                if cut:
                    yield merged.take(slice(0, cut))
                buffer = merged.take(slice(cut, None))
        if len(buffer):
            yield buffer

    # -- sessions -----------------------------------------------------------------------------

    def sample_sessions(self, day: int, rng: np.random.Generator) -> Sessions:
        cfg, truth = self.config, self.truth
        weekday = (self.config.start.weekday() + day) % 7
        mean = cfg.sessions_per_user_day / (1.0 - cfg.anonymous_share) * WEEKDAY_FACTORS[weekday]
        counts = rng.poisson(mean * truth.user_activity)
        user = np.repeat(np.arange(cfg.users, dtype=np.int32), counts)
        start = (
            cfg.start_us
            + day * DAY_US
            + rng.choice(24, len(user), p=HOUR_PROBS).astype(np.int64) * 3600 * SECOND
            + rng.integers(0, 3600 * SECOND, len(user))
        )
        order = np.argsort(start, kind="stable")
        user, start = user[order], start[order]
        n = len(user)
        signed = truth.signup_day[user] < day  # sign-ups of today browse anonymously until tomorrow
        anonymous = ~signed | (rng.random(n) < cfg.anonymous_share)
        n_views = np.minimum(rng.geometric(1.0 / cfg.mean_views_per_session, n), MAX_VIEWS)
        device = np.where(
            rng.random(n) < 0.75, truth.user_device[user], rng.integers(0, len(DEVICES), n)
        ).astype(np.int8)
        referrer = rng.choice(len(REFERRERS), n, p=REFERRER_PROBS).astype(np.int8)
        checkout = rng.random(n) < CHECKOUT_SHARE
        known_from = np.where(anonymous, NEVER, 0).astype(np.int32)
        login = anonymous & signed & (n_views >= 2) & (rng.random(n) < cfg.login_share)
        known_from[login] = rng.integers(1, n_views[login])
        ids = self.next_session + np.arange(n, dtype=np.int64)
        self.next_session += n
        return Sessions(user, start, n_views, device, referrer, checkout, known_from, ids)

    # -- events -------------------------------------------------------------------------------

    def _draw_rows(
        self, prob_rows: np.ndarray, rows: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """One column index per entry of ``rows``, drawn from that row of ``prob_rows``."""
        cum = np.cumsum(prob_rows, axis=1)
        cum /= cum[:, -1:]
        flat = (cum + np.arange(len(cum))[:, None]).ravel()
        u = np.minimum(rng.random(len(rows)), 1.0 - 1e-9)
        idx = np.searchsorted(flat, rows + u, side="right")
        return (idx - rows * prob_rows.shape[1]).clip(0, prob_rows.shape[1] - 1)

    def block_events(self, s: Sessions, day: int, rng: np.random.Generator) -> EventColumns:
        truth, cfg, state = self.truth, self.config, self.state
        n_sessions = len(s)
        views_per = s.n_views
        n_views = int(views_per.sum())
        vs = np.repeat(np.arange(n_sessions), views_per)
        first = np.cumsum(views_per) - views_per
        pos = np.arange(n_views) - first[vs]
        user = s.user[vs]

        gaps = rng.lognormal(np.log(35.0), 0.9, n_views) * SECOND
        gaps[pos == 0] = 0.0
        c = np.cumsum(gaps)
        t = s.start[vs] + (c - c[first][vs]).astype(np.int64)

        # Where the shopper looks: a focus category per session, taste-weighted otherwise.
        taste = truth.taste(day, s.user)
        logits = taste @ truth.category_vec.T.astype(np.float32) + state.log_cat_mass
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))
        focus = self._draw_rows(prob, np.arange(n_sessions), rng)
        other = self._draw_rows(prob, vs, rng)
        cat = np.where(rng.random(n_views) < FOCUS_SHARE, focus[vs], other)
        cat = np.where(state.cat_mass[cat] > 0, cat, np.argmax(logits, axis=1)[vs])

        # Fresh items: candidates by today's popularity within the category, picked by taste.
        u = np.minimum(rng.random((n_views, CANDIDATES)), 1.0 - 1e-9)
        cand = np.searchsorted(state.item_cdf, cat[:, None] + u, side="right").clip(
            0, cfg.items - 1
        )
        tv = taste[vs]
        aff = (
            np.einsum("vd,vmd->vm", tv, truth.item_vec[cand])
            - truth.user_price_sensitivity[user][:, None] * truth.item_price_z[cand]
        )
        pick = np.argmax(aff + rng.gumbel(size=aff.shape), axis=1)
        item = cand[np.arange(n_views), pick].astype(np.int32)

        # Re-engagement: recently viewed items, earlier carts/wishes/purchases, repeats in session.
        source = np.zeros(n_views, dtype=np.int8)  # 0 fresh, 1 recently viewed, 2 engaged, 3 repeat
        h = rng.random(n_views)
        recent = self.view_ring[user, rng.integers(0, VIEW_RING, n_views)]
        use = (h < REVISIT_SHARE) & (recent >= 0)
        item[use], source[use] = recent[use], 1
        engaged = self.engaged_ring[user, rng.integers(0, ENGAGED_RING, n_views)]
        use = (h >= REVISIT_SHARE) & (h < REVISIT_SHARE + REENGAGE_SHARE) & (engaged >= 0)
        item[use], source[use] = engaged[use], 2
        repeat = (pos > 0) & (rng.random(n_views) < REPEAT_SHARE)
        ptr = np.where(
            repeat, first[vs] + (rng.random(n_views) * pos).astype(np.int64), np.arange(n_views)
        )
        while True:  # pointer jumping: a repeat of a repeat is a repeat of the original
            nxt = ptr[ptr]
            if np.array_equal(nxt, ptr):
                break
            ptr = nxt
        item = item[ptr]
        source[repeat] = 3

        searched = (source == 0) & (rng.random(n_views) < cfg.search_rate)
        view_t = t + np.where(searched, 2 * SECOND, 0)
        a = (
            np.einsum("vd,vd->v", tv, truth.item_vec[item])
            - truth.user_price_sensitivity[user] * truth.item_price_z[item]
        )

        # Funnel.
        cart = state.in_stock[item] & (rng.random(n_views) < sigmoid(CART_BIAS + CART_SLOPE * a))
        wish = ~cart & (rng.random(n_views) < sigmoid(WISH_BIAS + WISH_SLOPE * a))
        qty = 1.0 + (rng.random(n_views) < 0.12) + (rng.random(n_views) < 0.04)
        buy = cart & s.checkout[vs] & (rng.random(n_views) < sigmoid(BUY_BIAS + BUY_SLOPE * a))
        remove = cart & ~buy & (rng.random(n_views) < REMOVE_SHARE)
        logged_in = s.known_from < views_per
        rate = buy & logged_in[vs] & (rng.random(n_views) < cfg.rating_rate)
        last = first + views_per - 1
        t_end = t[last] + (100 + rng.uniform(20, 180, n_sessions)) * SECOND
        cart_t = view_t + (rng.uniform(5, 90, n_views) * SECOND).astype(np.int64)
        wish_t = view_t + (rng.uniform(3, 40, n_views) * SECOND).astype(np.int64)
        buy_t = t_end[vs].astype(np.int64) + pos * SECOND
        remove_t = cart_t + (rng.random(n_views) * (t_end[vs] - cart_t)).astype(np.int64)
        rate_t = t_end[vs].astype(np.int64) + rng.integers(DAY_US // 4, 7 * DAY_US, n_views)
        rate = rate & (rate_t < self.end_us)
        stars = np.clip(np.round(3.3 + 1.1 * a + rng.normal(0, 0.7, n_views)), 1, 5)

        fresh_page = np.array([PAGE["home"], PAGE["category"], PAGE["category"], PAGE["product"]])[
            rng.integers(0, 4, n_views)
        ]
        view_page = np.select(
            [searched, source == 1, source == 2, source == 3],
            [PAGE["search"], PAGE["home"], PAGE["account"], PAGE["product"]],
            fresh_page,
        ).astype(np.int8)
        shown_user = np.where(pos >= s.known_from[vs], user, -1).astype(np.int32)
        end_user = np.where(logged_in[vs], user, -1).astype(np.int32)
        session = s.session_id[vs]
        device, referrer, region = s.device[vs], s.referrer[vs], truth.user_region[user]
        price = state.price[item]
        nan = np.full(n_views, np.nan)

        def part(
            mask: np.ndarray,
            ts: np.ndarray,
            kind: str,
            users: np.ndarray,
            value: np.ndarray,
            has_price: bool,
            page: np.ndarray | int,
        ) -> EventColumns:
            n = int(mask.sum())
            return EventColumns(
                ts[mask].astype(np.int64),
                users[mask],
                session[mask],
                item[mask],
                np.full(n, KIND[kind], dtype=np.int8),
                value[mask],
                price[mask] if has_price else np.full(n, np.nan),
                device[mask],
                region[mask],
                np.broadcast_to(page, (n_views,))[mask].astype(np.int8),
                referrer[mask],
            )

        everything = np.ones(n_views, dtype=bool)
        events = [
            part(searched, t, "search", shown_user, nan, False, PAGE["search"]),
            part(everything, view_t, "view", shown_user, nan, True, view_page),
            part(cart, cart_t, "add_to_cart", shown_user, qty, True, PAGE["product"]),
            part(wish, wish_t, "add_to_wishlist", shown_user, nan, True, PAGE["product"]),
            part(remove, remove_t, "remove_from_cart", end_user, qty, True, PAGE["cart"]),
            part(buy, buy_t, "purchase", end_user, qty, True, PAGE["checkout"]),
        ]
        ratings = part(rate, rate_t, "rating", end_user, stars, False, PAGE["account"])
        ratings.session[:] = -1  # a review written days later, from an email, outside any session
        ratings.device[:] = truth.user_device[ratings.user]
        ratings.referrer[:] = EMAIL
        events.append(ratings)

        _push(self.view_ring, self.view_head, user, item)
        _push(self.engaged_ring, self.engaged_head, user[cart | wish], item[cart | wish])
        return EventColumns.concat(events)
