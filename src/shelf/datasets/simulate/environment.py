"""Recommender in the loop: a policy's slates shown to simulated shoppers, who react.

A policy is anything callable as ``policy(query, n)`` that returns raw item ids best first (a
list, or a ``Scored`` such as a retriever's answer). The shopper looks down the slate with a
position bias (the chance to examine position k is ``1 / log2(k + 2)``), clicks what they
examined with a probability that rises with their true affinity, and carts and buys by the
same funnel as the logged traffic. Every reaction comes back as raw events (EVENT_SCHEMA,
page "recommendation"), ready to be validated and fed back to the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from shelf.datasets.simulate.behaviour import (
    BUY_BIAS,
    BUY_SLOPE,
    CART_BIAS,
    CART_SLOPE,
    CHECKOUT_SHARE,
    KIND,
    PAGE,
    SECOND,
    DayState,
    EventColumns,
    sigmoid,
)
from shelf.datasets.simulate.truth import (
    AGE_BANDS,
    DAY_US,
    DEVICES,
    GENDERS,
    HOUR_PROBS,
    REFERRERS,
    REGIONS,
)
from shelf.models.base import Context, Query, Scored

if TYPE_CHECKING:
    from shelf.datasets.simulate.simulator import Simulator
    from shelf.privacy import Pseudonymizer

Policy = Callable[[Query, int], "Sequence[str] | Scored"]

# A recommendation click needs more than a glance: lower base rate than browsing.
CLICK_BIAS, CLICK_SLOPE = -2.0, 1.2


@dataclass(frozen=True)
class SessionOutcome:
    """What one shopper did with a policy's slates."""

    user_id: str | None  # raw user id ("user-12"); None for an anonymous shopper
    events: pa.Table  # EVENT_SCHEMA, time order
    shown: int  # slate positions shown, over all steps
    clicks: int
    carts: int
    purchases: int
    revenue: float  # sum of price * quantity over purchases


class ShopEnvironment:
    """Simulated shoppers of one ``Simulator`` reacting to a policy, one session at a time."""

    def __init__(
        self, simulator: Simulator, *, seed: int = 0, pseudonymizer: Pseudonymizer | None = None
    ) -> None:
        self.simulator = simulator
        self.truth = simulator.truth
        self.pseudonymizer = pseudonymizer
        self.rng = np.random.default_rng(np.random.SeedSequence([simulator.config.seed, 2, seed]))
        self._seed = seed
        self._state = DayState(self.truth)
        self._day = -1
        self._sessions = 0
        self._events = 0

    def _state_on(self, day: int) -> DayState:
        if not 0 <= day < self.simulator.config.days:
            raise ValueError(f"day must be in 0..{self.simulator.config.days - 1}, got {day}")
        if day < self._day:
            self._state, self._day = DayState(self.truth), -1
        while self._day < day:
            self._day += 1
            self._state.advance(self._day)
        return self._state

    def session(
        self,
        policy: Policy,
        *,
        user: int | str | None = None,
        day: int = 0,
        slate_size: int = 10,
        steps: int = 3,
        anonymous: bool = False,
    ) -> SessionOutcome:
        """One shopper's session: ``steps`` slates of ``slate_size`` from ``policy``, and the reactions.

        ``user`` is a user index or raw id; None draws one at random. ``anonymous`` hides the
        user id from the policy and from the events (the shopper still has a taste).
        """
        cfg, truth = self.simulator.config, self.truth
        if slate_size < 1 or steps < 1:
            raise ValueError(
                f"slate_size and steps must be at least 1, got {slate_size} and {steps}"
            )
        state = self._state_on(day)
        rng = self.rng
        u = (
            int(rng.integers(cfg.users))
            if user is None
            else (self.simulator.user_index(user) if isinstance(user, str) else int(user))
        )
        if not 0 <= u < cfg.users:
            raise ValueError(f"user index {u} is outside 0..{cfg.users - 1}")
        raw_user = None if anonymous else f"user-{u}"
        shown_id = (
            raw_user
            if raw_user is None or self.pseudonymizer is None
            else self.pseudonymizer.one(raw_user)
        )
        device = int(truth.user_device[u])
        ts = (
            cfg.start_us
            + day * DAY_US
            + int(rng.choice(24, p=HOUR_PROBS)) * 3600 * SECOND
            + int(rng.integers(3600 * SECOND))
        )
        context = Context(
            timestamp=datetime.fromtimestamp(ts / SECOND, tz=UTC),
            region=REGIONS[truth.user_region[u]],
            device=DEVICES[device],
            age_band=None if anonymous else AGE_BANDS[truth.user_age[u]],
            gender=None if anonymous else GENDERS[truth.user_gender[u]],
        )
        session_items: list[str] = []
        rows: list[tuple[int, int, int, float]] = []  # (ts, item, kind, value)
        shown = 0
        carted: list[tuple[int, float]] = []
        launched = truth.launched_by(day)
        for _ in range(steps):
            query = Query(user_id=shown_id, session_items=tuple(session_items), context=context)
            answer = policy(query, slate_size)
            raw = answer.items.tolist() if isinstance(answer, Scored) else list(answer)
            slate = [self._known_item(r) for r in raw[:slate_size]]
            shown += len(slate)
            idx = np.array([i for i in slate if i >= 0], dtype=np.int64)
            positions = np.array([k for k, i in enumerate(slate) if i >= 0], dtype=np.int64)
            if len(idx) == 0:
                ts += 30 * SECOND
                continue
            a = truth.affinity(np.full(len(idx), u), idx, day)
            examined = rng.random(len(idx)) < 1.0 / np.log2(positions + 2)
            click = (
                examined
                & launched[idx]
                & (rng.random(len(idx)) < sigmoid(CLICK_BIAS + CLICK_SLOPE * a))
            )
            cart = (
                click
                & state.in_stock[idx]
                & (rng.random(len(idx)) < sigmoid(CART_BIAS + 1.0 + CART_SLOPE * a))
            )
            for i, c, aff in zip(
                idx[click].tolist(), cart[click].tolist(), a[click].tolist(), strict=True
            ):
                ts += int(rng.uniform(10, 90) * SECOND)
                rows.append((ts, i, KIND["view"], np.nan))
                session_items.append(f"item-{i}")
                if c:
                    ts += int(rng.uniform(5, 30) * SECOND)
                    rows.append((ts, i, KIND["add_to_cart"], 1.0))
                    carted.append((i, aff))
            ts += int(rng.uniform(10, 60) * SECOND)
        purchases, revenue = 0, 0.0
        if carted and rng.random() < CHECKOUT_SHARE:
            for i, aff in carted:
                if rng.random() < sigmoid(BUY_BIAS + BUY_SLOPE * aff):
                    ts += SECOND
                    rows.append((ts, i, KIND["purchase"], 1.0))
                    purchases += 1
                    revenue += float(state.price[i])
        events = self._events_table(
            rows, u if raw_user else -1, device, int(truth.user_region[u]), state
        )
        clicks = sum(1 for r in rows if r[2] == KIND["view"])
        return SessionOutcome(raw_user, events, shown, clicks, len(carted), purchases, revenue)

    def _known_item(self, raw: object) -> int:
        """Index of a raw item id, -1 for anything not in the catalogue (the shopper ignores it)."""
        if not isinstance(raw, str) or not raw.startswith("item-"):
            return -1
        try:
            i = int(raw[5:])
        except ValueError:
            return -1
        return i if 0 <= i < self.simulator.config.items and raw == f"item-{i}" else -1

    def _events_table(
        self,
        rows: list[tuple[int, int, int, float]],
        user: int,
        device: int,
        region: int,
        state: DayState,
    ) -> pa.Table:
        n = len(rows)
        item = np.array([r[1] for r in rows], dtype=np.int32)
        kind = np.array([r[2] for r in rows], dtype=np.int8)
        ev = EventColumns(
            ts=np.array([r[0] for r in rows], dtype=np.int64),
            user=np.full(n, user, dtype=np.int32),
            session=np.full(n, self._sessions, dtype=np.int64),
            item=item,
            kind=kind,
            value=np.array([r[3] for r in rows], dtype=np.float64),
            price=state.price[item] if n else np.zeros(0),
            device=np.full(n, device, dtype=np.int8),
            region=np.full(n, region, dtype=np.int8),
            page=np.where(
                kind == KIND["purchase"], PAGE["checkout"], PAGE["recommendation"]
            ).astype(np.int8),
            referrer=np.full(n, REFERRERS.index("direct"), dtype=np.int8),
        )
        table = self.simulator._table(ev, self._events, prefix=f"env{self._seed}-")
        self._sessions += 1
        self._events += n
        return table
