"""Serving configuration: one frozen object, defaults that are safe for a first deployment."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shelf.rerank import RerankConfig
from shelf.serving.api import MAX_BATCH
from shelf.serving.online import StateLimits

WAL_FOLDER = Path("lake") / "wal"  # under <home>; the lake reads it for fresh snapshots
EXPOSURE_FOLDER = Path("exposures")


@dataclass(frozen=True)
class ServeConfig:
    """How the HTTP service behaves; everything a request can ask for is bounded here."""

    max_body_bytes: int = 2 * 1024 * 1024
    max_batch: int = MAX_BATCH  # events per POST /events (at most MAX_BATCH, as documented)
    bundle_poll_seconds: float = 5.0
    exposure_flush_seconds: float = 1.0
    exposure_buffer: int = 10_000
    wal_segment_bytes: int = 64 * 1024 * 1024
    compact_seconds: float = 30.0  # how often sealed WAL segments move into the lake (and the catalogue refreshes)
    compact_lock_timeout_seconds: float = 5.0  # wait this long for the lake's writer lock, else retry later
    exclude_seen: bool = True  # leave the session's own items out of "recommended for you"
    candidates_per_slot: int = 4  # the recommender proposes k * this, rerankers choose k
    limits: StateLimits = field(default_factory=StateLimits)
    rerank_recommendations: RerankConfig = field(default_factory=lambda: RerankConfig(drop_purchased=True))
    rerank_similar: RerankConfig = field(default_factory=RerankConfig)
    rerank_basket: RerankConfig = field(default_factory=lambda: RerankConfig(drop_purchased=True))

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_batch", "candidates_per_slot"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServeConfig.{name} must be at least 1")
        if self.max_batch > MAX_BATCH:
            raise ValueError(f"ServeConfig.max_batch may be at most {MAX_BATCH} (the documented API bound)")
        if self.bundle_poll_seconds <= 0 or self.exposure_flush_seconds <= 0 or self.compact_seconds <= 0:
            raise ValueError("ServeConfig poll, flush and compaction intervals must be positive")
