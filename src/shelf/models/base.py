"""The exchange types between stages and the protocols every model follows.

Raw catalogue and user ids live at the edges (``Query``, ``Scored``); dense integer indices are a
model's private business and never leave it, except through ``Interactions``, which owns the
id maps that a fitted model shares with whoever evaluates it in the same process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, Self, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

# How much each event type says about a shopper's interest, used wherever events become one
# implicit-feedback weight. A removal is a weak negative; a purchase the strongest signal.
DEFAULT_EVENT_WEIGHTS: Mapping[str, float] = {
    "view": 1.0,
    "search": 0.5,
    "add_to_wishlist": 3.0,
    "add_to_cart": 4.0,
    "remove_from_cart": -1.0,
    "purchase": 8.0,
    "rating": 2.0,  # scaled by the rating value in Interactions.matrix
}


class IdIndex:
    """A bijection between raw ids (strings) and dense indices ``0..n-1``."""

    def __init__(self, ids: Sequence[str] | np.ndarray) -> None:
        self.ids: np.ndarray = np.asarray(ids, dtype=object)
        self._index: dict[str, int] = {raw: i for i, raw in enumerate(self.ids.tolist())}
        if len(self._index) != len(self.ids):
            raise ValueError("IdIndex ids must be unique")
        self._last: tuple[object, np.ndarray] = ((), np.empty(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, raw: object) -> bool:
        return raw in self._index

    def get(self, raw: str, default: int = -1) -> int:
        return self._index.get(raw, default)

    def lookup(self, raws: Sequence[str] | np.ndarray) -> np.ndarray:
        """Indices of ``raws``; -1 where unknown.

        A tuple looked up again (the very same object: a request's session items, which every
        source of a blend sharing this index asks for) gets the answer of the last lookup, which
        is read-only for that reason. The tuple is held, so its identity cannot be reused.
        """
        last = self._last  # one read: another thread may replace it meanwhile
        if last[0] is raws:
            return last[1]
        get = self._index.get
        found = np.fromiter((get(r, -1) for r in raws), dtype=np.int64, count=len(raws))
        if type(raws) is tuple:
            found.flags.writeable = False
            self._last = (raws, found)
        return found


@dataclass(frozen=True)
class Interactions:
    """Events of one snapshot as dense arrays, sorted by time. Built once, shared by all models.

    Arrays are aligned, one entry per event: ``user`` (-1 for anonymous), ``item``, ``session``
    (-1 when none), ``kind`` (index into ``event_types``), ``timestamp`` (microseconds since the
    epoch, UTC), ``value`` (NaN when absent).
    """

    user: np.ndarray
    item: np.ndarray
    session: np.ndarray
    kind: np.ndarray
    timestamp: np.ndarray
    value: np.ndarray
    users: IdIndex
    items: IdIndex
    sessions: IdIndex
    event_types: tuple[str, ...]
    as_of: datetime | None = None
    item_table: pa.Table | None = None  # catalogue as of the snapshot (ITEM_SCHEMA), if known
    user_table: pa.Table | None = None  # profiles as of the snapshot (USER_SCHEMA), if known

    def __len__(self) -> int:
        return len(self.item)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @classmethod
    def from_events(
        cls,
        events: pa.Table,
        *,
        as_of: datetime | None = None,
        item_table: pa.Table | None = None,
        user_table: pa.Table | None = None,
        items: IdIndex | None = None,
    ) -> Interactions:
        """Build from an EVENT_SCHEMA table. ``items`` fixes the item index (e.g. the catalogue)."""
        events = events.sort_by([("timestamp", "ascending")])
        if items is None:
            item_ids = pc.unique(events["item_id"]).to_numpy(zero_copy_only=False)
            if item_table is not None and item_table.num_rows:
                catalogue = item_table["item_id"].to_numpy(zero_copy_only=False)
                item_ids = np.concatenate([item_ids, catalogue])
            items = IdIndex(np.unique(item_ids.astype(str)).astype(object))
        user_ids = pc.unique(pc.drop_null(events["user_id"])).to_numpy(zero_copy_only=False)
        users = IdIndex(np.sort(user_ids.astype(str)).astype(object))
        session_ids = pc.unique(pc.drop_null(events["session_id"])).to_numpy(zero_copy_only=False)
        sessions = IdIndex(np.sort(session_ids.astype(str)).astype(object))
        type_values = events["type"].to_numpy(zero_copy_only=False)
        event_types, kind = np.unique(type_values.astype(str), return_inverse=True)

        def encode(column: str, index: IdIndex) -> np.ndarray:
            value_set = pa.array(index.ids.tolist(), type=pa.string())
            found = pc.index_in(events[column], value_set=value_set)
            return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int32)

        ts = pc.cast(events["timestamp"], pa.int64()).to_numpy()
        value = events["value"].to_numpy(zero_copy_only=False).astype(np.float32)
        return cls(
            user=encode("user_id", users),
            item=encode("item_id", items),
            session=encode("session_id", sessions),
            kind=kind.astype(np.int8),
            timestamp=ts.astype(np.int64),
            value=np.nan_to_num(value, nan=np.nan),
            users=users,
            items=items,
            sessions=sessions,
            event_types=tuple(str(t) for t in event_types),
            as_of=as_of,
            item_table=item_table,
            user_table=user_table,
        )

    def event_weights(self, weights: Mapping[str, float] = DEFAULT_EVENT_WEIGHTS) -> np.ndarray:
        """One weight per event from its type (ratings scaled by value/5)."""
        per_kind = np.array([weights.get(t, 0.0) for t in self.event_types], dtype=np.float32)
        w = per_kind[self.kind]
        if "rating" in self.event_types:
            is_rating = self.kind == self.event_types.index("rating")
            w = np.where(is_rating, w * np.nan_to_num(self.value, nan=5.0) / 5.0, w)
        return w

    def matrix(self, weights: Mapping[str, float] = DEFAULT_EVENT_WEIGHTS) -> sp.csr_matrix:
        """users × items matrix of summed event weights (anonymous events left out), clipped at 0."""
        known = self.user >= 0
        m = sp.csr_matrix(
            (self.event_weights(weights)[known], (self.user[known], self.item[known])),
            shape=(self.n_users, self.n_items),
            dtype=np.float32,
        )
        m.sum_duplicates()
        m.data = np.maximum(m.data, 0.0)
        m.eliminate_zeros()
        return m


@dataclass(frozen=True)
class Context:
    """What is known about the request besides the shopper."""

    timestamp: datetime | None = None
    region: str | None = None
    device: str | None = None
    age_band: str | None = None
    gender: str | None = None


@dataclass(frozen=True)
class Query:
    """One recommendation request, in raw ids."""

    user_id: str | None = None  # pseudonymized id; None for anonymous traffic
    session_items: tuple[str, ...] = ()  # items of the current session so far, oldest first
    context: Context = field(default_factory=Context)
    exclude: frozenset[str] = frozenset()  # items that must not be returned


@dataclass(frozen=True)
class Scored:
    """A ranked list of raw item ids with scores, and which source proposed each one."""

    items: np.ndarray  # object array of raw ids, best first
    scores: np.ndarray  # float32, same length, non-increasing
    sources: np.ndarray | None = None  # object array of source names, same length

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def empty(cls) -> Scored:
        return cls(np.array([], dtype=object), np.array([], dtype=np.float32), np.array([], dtype=object))

    def head(self, n: int) -> Scored:
        return Scored(self.items[:n], self.scores[:n], None if self.sources is None else self.sources[:n])


@runtime_checkable
class Retriever(Protocol):
    """Proposes candidates for a query. Constructors store configuration; ``fit`` learns."""

    name: str

    def fit(self, data: Interactions) -> Self: ...

    def retrieve(self, query: Query, n: int) -> Scored: ...


@runtime_checkable
class BatchRetriever(Retriever, Protocol):
    """A retriever that scores many known users at once (what offline evaluation needs).

    ``score_users`` returns a dense ``len(users) × data.n_items`` float32 matrix over the item
    index of the ``Interactions`` it was fitted on; higher is better; ``-inf`` means "never".
    """

    def score_users(self, users: np.ndarray) -> np.ndarray: ...
