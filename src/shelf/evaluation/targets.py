"""What counts as relevant in the test period: configurable, and always stated in results.

A :class:`Target` turns test events into a sparse ``users × items`` gain matrix. Binary targets
give gain 1 to every (user, item) with at least one qualifying event; a weighted target gives the
largest per-event weight the user showed the item (graded relevance, used by NDCG; Recall,
Precision, HitRate, MRR and MAP only ask whether the gain is positive).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from shelf.models.base import DEFAULT_EVENT_WEIGHTS, IdIndex

# Events that show interest in an item. A removal is a change of mind, a search carries a query
# rather than a choice; neither makes an item relevant.
ENGAGEMENT_TYPES: frozenset[str] = frozenset(
    {"view", "add_to_cart", "add_to_wishlist", "purchase", "rating"}
)


@dataclass(frozen=True)
class Target:
    """Which test events make an item relevant, and how much.

    Attributes
    ----------
    name:
        Short name printed in every result ("any engagement", "purchase").
    event_types:
        Event types that qualify.
    weights:
        Per-type gain; ``None`` means binary relevance (gain 1).
    min_rating:
        For ``rating`` events, the lowest rating value that counts (``None``: every rating).
    """

    name: str
    event_types: frozenset[str]
    weights: Mapping[str, float] | None = None
    min_rating: float | None = None

    def describe(self) -> str:
        types = ", ".join(sorted(self.event_types))
        if self.weights is None:
            how = "binary relevance"
        else:
            shown = ", ".join(f"{t}={self.weights.get(t, 0.0):g}" for t in sorted(self.event_types))
            how = f"graded relevance, max weight per item ({shown})"
        rating = f"; ratings >= {self.min_rating:g}" if self.min_rating is not None else ""
        return f"{self.name}: events of type {types}; {how}{rating}"

    def gains(self, events: pa.Table) -> np.ndarray:
        """One gain per event (0 where the event does not qualify)."""
        types = events["type"].to_numpy(zero_copy_only=False).astype(str)
        qualifies = np.isin(types, np.array(sorted(self.event_types), dtype=str))
        if self.min_rating is not None:
            values = events["value"].to_numpy(zero_copy_only=False).astype(np.float64)
            low = (types == "rating") & ~(np.nan_to_num(values, nan=-np.inf) >= self.min_rating)
            qualifies &= ~low
        if self.weights is None:
            return qualifies.astype(np.float32)
        per_type = np.array([float(self.weights.get(t, 0.0)) for t in types], dtype=np.float32)
        return np.where(qualifies, np.maximum(per_type, 0.0), 0.0).astype(np.float32)

    def matrix(self, events: pa.Table, users: IdIndex, items: IdIndex) -> tuple[sp.csr_matrix, int]:
        """``len(users) × len(items)`` gains, and how many qualifying pairs fell outside ``items``.

        Events of users outside ``users`` are ignored. Items outside the catalogue index cannot
        be recommended by any model; they are left out and counted, so a report can say so.
        """
        gains = self.gains(events)
        user_idx = users.lookup(events["user_id"].to_numpy(zero_copy_only=False))
        item_idx = items.lookup(events["item_id"].to_numpy(zero_copy_only=False))
        keep = (gains > 0) & (user_idx >= 0)
        outside = keep & (item_idx < 0)
        raw_items = np.asarray(events["item_id"].to_numpy(zero_copy_only=False), dtype=object)
        unknown_pairs = len(set(zip(user_idx[outside].tolist(), raw_items[outside].tolist(), strict=True)))
        keep &= item_idx >= 0
        # Duplicated (user, item) pairs: graded relevance takes the strongest event, not the sum.
        m = _max_duplicates(gains[keep], user_idx[keep], item_idx[keep], (len(users), len(items)))
        return m, unknown_pairs


def _max_duplicates(
    data: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]
) -> sp.csr_matrix:
    if len(data) == 0:
        return sp.csr_matrix(shape, dtype=np.float32)
    key = rows.astype(np.int64) * shape[1] + cols.astype(np.int64)
    order = np.lexsort((-data, key))
    key, data = key[order], data[order]
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    key, data = key[first], data[first]
    return sp.csr_matrix(
        (data.astype(np.float32), (key // shape[1], key % shape[1])), shape=shape, dtype=np.float32
    )


def _binary(name: str, types: frozenset[str]) -> Target:
    return Target(name=name, event_types=types)


ANY_ENGAGEMENT = _binary("any engagement", ENGAGEMENT_TYPES)
CART_OR_PURCHASE = _binary("add_to_cart or purchase", frozenset({"add_to_cart", "purchase"}))
PURCHASE = _binary("purchase", frozenset({"purchase"}))


def weighted(weights: Mapping[str, float] = DEFAULT_EVENT_WEIGHTS, name: str = "weighted engagement") -> Target:
    """Graded relevance: each item's gain is the largest weight of the user's events on it."""
    positive = frozenset(t for t, w in weights.items() if w > 0)
    return Target(name=name, event_types=positive, weights=MappingProxyType(dict(weights)))


WEIGHTED = weighted()

TARGETS: Mapping[str, Target] = MappingProxyType(
    {"engagement": ANY_ENGAGEMENT, "cart_or_purchase": CART_OR_PURCHASE, "purchase": PURCHASE, "weighted": WEIGHTED}
)


def events_of(table: pa.Table, types: frozenset[str]) -> pa.Table:
    """Rows of ``table`` whose type is in ``types``."""
    return table.filter(pc.is_in(table["type"], value_set=pa.array(sorted(types), type=pa.string())))
