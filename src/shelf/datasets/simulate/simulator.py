"""``Simulator``: the simulated shop's tables, as raw records in canonical column names."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shelf.datasets.simulate.behaviour import EventColumns, EventStream
from shelf.datasets.simulate.config import SimulationConfig
from shelf.datasets.simulate.truth import (
    ADJECTIVES,
    AGE_BANDS,
    COLORS,
    DAY_US,
    DEVICES,
    GENDERS,
    PAGES,
    REFERRERS,
    REGIONS,
    GroundTruth,
)
from shelf.schema import BUILTIN_EVENT_TYPES, EVENT_SCHEMA, ITEM_SCHEMA, TIMESTAMP_TYPE, USER_SCHEMA

if TYPE_CHECKING:
    from shelf.datasets.simulate.environment import ShopEnvironment
    from shelf.privacy import Pseudonymizer


def _ids(prefix: str, n: int) -> pa.Array:
    return pc.binary_join_element_wise(
        prefix, pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string()), ""
    )


def _vocab(words: tuple[str, ...] | list[str]) -> pa.Array:
    return pa.array(list(words), type=pa.string())


def _timestamps(us: np.ndarray) -> pa.Array:
    return pa.array(us.astype(np.int64), type=pa.int64()).cast(TIMESTAMP_TYPE)


def _take(values: pa.Array, idx: np.ndarray) -> pa.Array:
    """``values[idx]``, null where ``idx`` is negative."""
    idx = np.asarray(idx)
    mask = idx < 0
    indices = pa.array(np.where(mask, 0, idx), mask=mask if mask.any() else None)
    return values.take(indices)


class Simulator:
    """A seeded, reproducible synthetic shop.

    >>> sim = Simulator(SimulationConfig(users=100, items=50, days=7, categories=5))
    >>> items, users = sim.items(), sim.users()
    >>> for chunk in sim.events(chunk_rows=100_000): ...

    Raw user ids are ``"user-<index>"`` and item ids ``"item-<index>"``: ``truth`` uses the same
    indices (``sim.truth.affinity(user_index, item_index, day)``), and ``user_index``/
    ``item_index`` map raw ids back. Search events carry the item the search led to (the
    schema has no field for the query text).
    """

    def __init__(self, config: SimulationConfig | None = None) -> None:
        self.config = config if config is not None else SimulationConfig()

    @cached_property
    def truth(self) -> GroundTruth:
        """The hidden ground truth, drawn on first use."""
        return GroundTruth(self.config)

    @cached_property
    def user_ids(self) -> pa.Array:
        return _ids("user-", self.config.users)

    @cached_property
    def item_ids(self) -> pa.Array:
        return _ids("item-", self.config.items)

    @staticmethod
    def user_index(raw_id: str) -> int:
        return int(raw_id.removeprefix("user-"))

    @staticmethod
    def item_index(raw_id: str) -> int:
        return int(raw_id.removeprefix("item-"))

    # -- catalogue and profiles -----------------------------------------------------------

    def items(self) -> pa.Table:
        """Catalogue versions (ITEM_SCHEMA), ordered by ``valid_from``.

        Each item's first version is valid from its launch; later versions record sell-outs
        (stock 0), restocks and price changes at the start of the day they happen.
        """
        truth = self.truth
        changes = truth.stock_changes
        index = np.concatenate([np.arange(self.config.items), changes.item]).astype(np.int64)
        stock = np.concatenate([truth.initial_stock, changes.stock])
        price = np.concatenate([truth.item_price, changes.price])
        valid_from = np.concatenate(
            [truth.launched_at_us, self.config.start_us + changes.day.astype(np.int64) * DAY_US]
        )
        order = np.lexsort((index, valid_from))
        index, stock, price, valid_from = (
            index[order],
            stock[order],
            price[order],
            valid_from[order],
        )
        category_names = _vocab(truth.category_names)
        leaf = pc.list_element(pc.split_pattern(category_names, "/"), 1)
        cat = truth.item_category[index]
        model = pc.binary_join_element_wise(
            pa.array(np.array(list("ABCDEFGHKMRSTVXZ"))[truth.item_model[index] % 16]),
            pc.cast(pa.array(truth.item_model[index]), pa.string()),
            "",
        )
        brand = _vocab(truth.brand_names).take(pa.array(truth.item_brand[index]))
        title = pc.binary_join_element_wise(
            brand,
            _vocab(ADJECTIVES).take(pa.array(truth.item_adjective[index])),
            leaf.take(pa.array(cat)),
            model,
            " ",
        )
        eco = pa.array(
            np.where(truth.item_adjective[index] == ADJECTIVES.index("eco"), "true", "false")
        )
        attributes = pc.binary_join_element_wise(
            '{"color": "',
            _vocab(COLORS).take(pa.array(truth.item_color[index])),
            '", "eco": ',
            eco,
            "}",
            "",
        )
        columns = {
            "item_id": self.item_ids.take(pa.array(index)),
            "title": title,
            "category": category_names.take(pa.array(cat)),
            "brand": brand,
            "price": pa.array(price, type=pa.float64()),
            "stock": pa.array(stock, type=pa.int64()),
            "launched_at": _timestamps(truth.launched_at_us[index]),
            "attributes": attributes,
            "valid_from": _timestamps(valid_from),
        }
        return pa.Table.from_pydict(columns, schema=ITEM_SCHEMA)

    def users(self) -> pa.Table:
        """User profile versions (USER_SCHEMA): one per sign-up, one per later consent change."""
        truth = self.truth
        changed = np.flatnonzero(truth.consent_change_us >= 0)
        index = np.concatenate([np.arange(self.config.users), changed])
        later = np.r_[np.zeros(self.config.users, dtype=bool), np.ones(len(changed), dtype=bool)]
        valid_from = np.concatenate([truth.signed_up_at_us, truth.consent_change_us[changed]])
        order = np.lexsort((index, valid_from))
        index, later, valid_from = index[order], later[order], valid_from[order]
        columns = {
            "user_id": self.user_ids.take(pa.array(index)),
            "signed_up_at": _timestamps(truth.signed_up_at_us[index]),
            "age_band": _vocab(AGE_BANDS).take(pa.array(truth.user_age[index])),
            "gender": _vocab(GENDERS).take(pa.array(truth.user_gender[index])),
            "region": _vocab(REGIONS).take(pa.array(truth.user_region[index])),
            "consent_personalization": pa.array(truth.consent_personalization[index]),
            "consent_marketing": pa.array(truth.consent_marketing[index] ^ later),
            "valid_from": _timestamps(valid_from),
        }
        return pa.Table.from_pydict(columns, schema=USER_SCHEMA)

    # -- events ---------------------------------------------------------------------------

    def events(self, chunk_rows: int = 1_000_000) -> Iterator[pa.Table]:
        """Raw events (EVENT_SCHEMA) in time order, ``chunk_rows`` per table (the last may be shorter).

        The events do not depend on ``chunk_rows``; memory stays bounded by one chunk plus one
        internal block of sessions, whatever the period's length.
        """
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        pending: list[EventColumns] = []
        held = 0
        emitted = 0
        for batch in EventStream(self.truth).batches():
            pending.append(batch)
            held += len(batch)
            while held >= chunk_rows:
                merged = EventColumns.concat(pending)
                yield self._table(merged.take(slice(0, chunk_rows)), emitted)
                emitted += chunk_rows
                rest = merged.take(slice(chunk_rows, None))
                pending, held = [rest], len(rest)
        if held:
            yield self._table(EventColumns.concat(pending), emitted)

    def event_table(self) -> pa.Table:
        """All events in one table (for small simulations)."""
        chunks = list(self.events(chunk_rows=1 << 62))
        return pa.concat_tables(chunks) if chunks else EVENT_SCHEMA.empty_table()

    def _table(self, ev: EventColumns, first_number: int, prefix: str = "") -> pa.Table:
        """Internal columns to raw records; ``prefix`` keeps ids of other streams apart."""
        numbers = pa.array(np.arange(first_number, first_number + len(ev), dtype=np.int64))
        tag = f"{prefix}{self.config.seed}-"
        session = pc.binary_join_element_wise(
            "s", tag, pc.cast(pa.array(ev.session), pa.string()), ""
        )
        session = pc.if_else(pa.array(ev.session < 0), pa.scalar(None, pa.string()), session)
        columns = {
            # Explicit ids keep identical-looking events (same second, item, type) distinct.
            "event_id": pc.binary_join_element_wise("sim", tag, pc.cast(numbers, pa.string()), ""),
            "user_id": _take(self.user_ids, ev.user),
            "session_id": session,
            "item_id": self.item_ids.take(pa.array(ev.item)),
            "type": _vocab(BUILTIN_EVENT_TYPES).take(pa.array(ev.kind)),
            "timestamp": _timestamps(ev.ts),
            "value": pa.array(ev.value, type=pa.float64(), from_pandas=True),
            "price": pa.array(ev.price, type=pa.float64(), from_pandas=True),
            "device": _vocab(DEVICES).take(pa.array(ev.device)),
            "region": _vocab(REGIONS).take(pa.array(ev.region)),
            "page": _vocab(PAGES).take(pa.array(ev.page)),
            "referrer": _vocab(REFERRERS).take(pa.array(ev.referrer)),
        }
        return pa.Table.from_pydict(columns, schema=EVENT_SCHEMA)

    # -- recommender in the loop ----------------------------------------------------------

    def environment(
        self, *, seed: int = 0, pseudonymizer: Pseudonymizer | None = None
    ) -> ShopEnvironment:
        """An interactive shop where a policy's recommendations meet simulated shoppers."""
        from shelf.datasets.simulate.environment import ShopEnvironment

        return ShopEnvironment(self, seed=seed, pseudonymizer=pseudonymizer)
