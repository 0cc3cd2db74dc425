"""The request and response bodies of the HTTP API (they are its OpenAPI schema)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shelf.schema import MAX_ID_LENGTH, MAX_TEXT_LENGTH

Id = str | int
MAX_EPOCH_SECONDS = 1e11  # year 5138: anything larger is a unit mistake
_EPOCH_TEXT = re.compile(r"[0-9]+([.][0-9]*)?")
MAX_K = 100  # items per recommendation request
MAX_BATCH = 1000  # events per POST /events, items per PUT /items


def parse_aware_time(text: str) -> datetime:
    """An ISO 8601 time with a zone (``Z`` or ``+hh:mm``); ValueError otherwise."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError("expected an ISO 8601 time such as 2024-05-01T12:00:00Z") from None
    if value.tzinfo is None:
        raise ValueError("expected a time with a zone (Z or +hh:mm)")
    return value


class EventIn(BaseModel):
    """One shopper event. Types are strict: ``true`` is not a number, ``"3"`` is not a number."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    event_id: str | None = Field(None, max_length=MAX_ID_LENGTH, description="Idempotency key; derived from the content when absent.")
    user_id: Id | None = Field(None, description="The shop's raw user id; pseudonymized on arrival, never stored raw.")
    session_id: Id | None = None
    item_id: Id
    type: str = Field(max_length=64, description="view, add_to_cart, remove_from_cart, add_to_wishlist, purchase, rating, search")
    timestamp: Annotated[str, Field(max_length=64)] | Annotated[float, Field(ge=0, lt=MAX_EPOCH_SECONDS)] = Field(
        description="ISO 8601 with a zone (2024-05-01T12:00:00Z) or epoch seconds."
    )
    value: float | None = Field(None, description="Quantity (cart, purchase: > 0) or rating (1..5).")
    price: float | None = Field(None, ge=0)
    device: str | None = Field(None, max_length=MAX_TEXT_LENGTH)
    region: str | None = Field(None, max_length=MAX_TEXT_LENGTH)
    page: str | None = Field(None, max_length=MAX_TEXT_LENGTH)
    referrer: str | None = Field(None, max_length=MAX_TEXT_LENGTH)

    @field_validator("timestamp")
    @classmethod
    def _epoch_in_range(cls, value: str | float) -> str | float:
        # Out-of-range epochs overflow inside validate_events' SQL; refuse them here by record.
        text = value.strip() if isinstance(value, str) else None
        if text is not None and _EPOCH_TEXT.fullmatch(text) and float(text) >= MAX_EPOCH_SECONDS:
            raise ValueError(f"epoch seconds below {MAX_EPOCH_SECONDS:.0e} (is it in milliseconds?)")
        return value


class EventBatchIn(BaseModel):
    """Up to ``max_batch`` events. Each record is accepted or refused on its own."""

    events: list[EventIn] = Field(max_length=MAX_BATCH)


class RecordProblem(BaseModel):
    """Why a record (or the batch) was refused."""

    index: int | None = Field(description="0-based position of the record in `events`; null for the batch as a whole.")
    loc: list[str | int] = Field(description='Where, as a path: ["events", 3, "value"].')
    field: str
    value: str = Field(description="What the field held (cut to 80 characters); empty when missing.")
    expected: str


class EventsResult(BaseModel):
    """200: every record accepted. 422: some refused; the ``accepted`` ones are durable anyway."""

    accepted: int
    rejected: int
    errors: list[RecordProblem]


class ScoredItem(BaseModel):
    item_id: str
    score: float
    source: str = Field(description="Which candidate source proposed it (covisit, popular, a model name).")


class Recommendations(BaseModel):
    bundle_version: str
    exposure_id: str = Field(description="Join key for outcomes; this list is in the exposure log under it.")
    items: list[ScoredItem]


class BasketIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    item_ids: list[Id] = Field(min_length=1, max_length=100)
    user_id: Id | None = None
    session_id: Id | None = None
    k: int = Field(10, ge=1, le=MAX_K)


class ItemUpdate(BaseModel):
    """Catalogue facts serving reranks with; absent fields keep their current value."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    item_id: Id
    stock: int | None = Field(None, ge=0)
    price: float | None = Field(None, ge=0)
    category: str | None = Field(None, max_length=MAX_TEXT_LENGTH)
    brand: str | None = Field(None, max_length=MAX_TEXT_LENGTH)
    launched_at: str | None = Field(None, max_length=64, description="ISO 8601 with a zone.")

    @field_validator("launched_at")
    @classmethod
    def _aware_time(cls, value: str | None) -> str | None:
        if value is not None:
            parse_aware_time(value)
        return value


class ItemsIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    items: list[ItemUpdate] = Field(min_length=1, max_length=MAX_BATCH)


class ItemsResult(BaseModel):
    updated: int


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "starting"]
    bundle_version: str | None


class Problem(BaseModel):
    """An error that is not about one record: bad JSON, too large, no key, wrong role."""

    error: str
    detail: str


class Status(BaseModel):
    bundle_version: str
    last_bundle_failure: str | None
    online_state: dict[str, int]
    events_accepted: int
    events_rejected: int
    wal_segments: int
    wal_appends: int
    wal_fsyncs: int
    wal_replayed: int = Field(0, description="Events replayed from the WAL into the online state at start-up.")
    events_compacted: int = Field(0, description="Events this process moved from the WAL into the lake.")
    catalogue_items: int = Field(0, description="Items the rerankers know (lake catalogue plus PUT /items).")
    exposures_pending: int
