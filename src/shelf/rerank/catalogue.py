"""What rerankers know about an item, and the small helpers every rule shares.

Rerankers are pure: they read a catalogue lookup (``Mapping[str, ItemMeta]``) and a query and
return a new ``Scored``. Items missing from the catalogue have no attributes: attribute rules do
not match them and stock rules treat them as described per rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np

from shelf.models.base import Query, Scored
from shelf.schema import CATEGORY_SEPARATOR

Attribute = Literal["item_id", "category", "brand"]


@dataclass(frozen=True)
class ItemMeta:
    """Catalogue facts about one item, as serving knows them now."""

    category: str | None = None  # path, levels joined by "/"
    brand: str | None = None
    stock: int | None = None  # None: unknown (never treated as out of stock)
    launched_at: datetime | None = None  # timezone-aware
    price: float | None = None

    @property
    def in_stock(self) -> bool:
        return self.stock is None or self.stock > 0


Catalogue = Mapping[str, ItemMeta]
NO_META = ItemMeta()


class StockedCatalogue(dict[str, ItemMeta]):
    """A catalogue that also keeps the ids of its out-of-stock items (``out_of_stock``).

    Stock filters then look candidates up in that small set instead of reading every
    candidate's record from a catalogue of many thousands (one scattered memory access per
    record, and another for its stock): :class:`~shelf.rerank.rules.Filters` uses it when the
    catalogue has it, and answers exactly as with any other mapping. Every way of changing the
    mapping keeps the set in step (each single change is one step for a concurrent reader).
    """

    def __init__(self, items: Mapping[str, ItemMeta] | Iterable[tuple[str, ItemMeta]] = ()) -> None:
        super().__init__(items)
        self.out_of_stock: set[str] = {item for item, meta in self.items() if not meta.in_stock}

    def _track(self, item: str, meta: ItemMeta) -> None:
        if meta.in_stock:
            self.out_of_stock.discard(item)
        else:
            self.out_of_stock.add(item)

    def __setitem__(self, item: str, meta: ItemMeta) -> None:
        super().__setitem__(item, meta)
        self._track(item, meta)

    def __delitem__(self, item: str) -> None:
        super().__delitem__(item)
        self.out_of_stock.discard(item)

    def update(self, *args: Any, **kwargs: ItemMeta) -> None:
        for item, meta in dict(*args, **kwargs).items():
            self[item] = meta

    def setdefault(self, item: str, default: ItemMeta = NO_META) -> ItemMeta:  # type: ignore[override]
        if item not in self:
            self[item] = default
        return self[item]

    def pop(self, item: str, *default: Any) -> Any:  # type: ignore[override]
        self.out_of_stock.discard(item)
        return super().pop(item, *default)

    def popitem(self) -> tuple[str, ItemMeta]:
        item, meta = super().popitem()
        self.out_of_stock.discard(item)
        return item, meta

    def clear(self) -> None:
        super().clear()
        self.out_of_stock.clear()

    def __ior__(self, other: Any) -> StockedCatalogue:  # type: ignore[override,misc]
        self.update(other)
        return self

    # Copies stay stocked catalogues (dict's own would return plain dicts without the set:
    # still correct answers, but every stock check would read the catalogue again).
    def copy(self) -> StockedCatalogue:
        return StockedCatalogue(self)

    def __or__(self, other: Any) -> StockedCatalogue:  # type: ignore[override]
        merged = self.copy()
        merged.update(other)
        return merged


class Reranker(Protocol):
    """Reorders or filters candidates; pure, no I/O.

    Contract: the first ``n`` entries of the result are the rule's decision; a reranker may keep
    the remaining candidates after them (ordered) so that later rules can still draw on them.
    It never adds an item that was not among its input and never returns an item twice.
    """

    def __call__(self, query: Query, items: Scored, n: int) -> Scored: ...


class Entry(NamedTuple):
    item: str
    score: float
    source: str


def entries(items: Scored) -> list[Entry]:
    sources = items.sources.tolist() if items.sources is not None else [""] * len(items)
    return [Entry(str(i), s, str(src)) for i, s, src in zip(items.items.tolist(), items.scores.tolist(), sources, strict=True)]


def item_ids(items: Scored) -> list[str]:
    """The candidates' ids as Python strings (what the catalogue is keyed by)."""
    return [i if type(i) is str else str(i) for i in items.items.tolist()]


class Chosen(NamedTuple):
    """A final list as plain Python lists (ids, scores, source names): what a response and its
    exposure record are written from, with no arrays in between."""

    items: list[str]
    scores: list[float]
    sources: list[str]


def as_chosen(items: Scored) -> Chosen:
    """``items`` as a :class:`Chosen` (ids and sources as strings; no sources: empty names)."""
    ids = [str(i) for i in items.items.tolist()]
    sources = [str(s) for s in items.sources.tolist()] if items.sources is not None else [""] * len(ids)
    return Chosen(ids, items.scores.tolist(), sources)


def select(items: Scored, keep: Sequence[int]) -> Scored:
    """The candidates at positions ``keep`` (in that order); ``items`` itself when all are kept.

    What the filters use: they look at item ids only and never build entries, so a filter costs
    a lookup per candidate (never anything proportional to the catalogue).
    """
    if len(keep) == len(items):
        return items
    index = np.asarray(keep, dtype=np.intp)
    return Scored(items.items[index], items.scores[index], None if items.sources is None else items.sources[index])


def to_scored(chosen: Iterable[Entry]) -> Scored:
    chosen = list(chosen)
    return Scored(
        np.array([e.item for e in chosen], dtype=object),
        np.array([e.score for e in chosen], dtype=np.float32),
        np.array([e.source for e in chosen], dtype=object),
    )


def category_at(meta: ItemMeta, level: int | None) -> str | None:
    """The category path cut to ``level`` levels (None: the full path)."""
    if not meta.category:
        return None
    if level is None:
        return meta.category
    parts = [p for p in meta.category.split(CATEGORY_SEPARATOR) if p]
    return CATEGORY_SEPARATOR.join(parts[:level]) or None


def attribute_of(item: str, meta: ItemMeta, attribute: Attribute) -> str | None:
    if attribute == "item_id":
        return item
    if attribute == "brand":
        return meta.brand
    return meta.category


def matches(item: str, meta: ItemMeta, attribute: Attribute, value: str) -> bool:
    """Equality, except categories match by path prefix ("shoes" matches "shoes/running")."""
    actual = attribute_of(item, meta, attribute)
    if actual is None:
        return False
    if attribute == "category":
        return actual == value or actual.startswith(value.rstrip(CATEGORY_SEPARATOR) + CATEGORY_SEPARATOR)
    return actual == value
