"""The simulator's one configuration object, validated up front."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta

from shelf.schema import MAX_TIMESTAMP_YEAR, MIN_TIMESTAMP_YEAR


def _default_start() -> datetime:
    return datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SimulationConfig:
    """What shop to simulate. Every field has a sensible default; nonsense raises ``ValueError``.

    Rates are per day and shares are fractions in [0, 1]. Roughly, the number of events is
    ``users * days * sessions_per_user_day / (1 - anonymous_share) * mean_views_per_session * 1.4``.
    """

    users: int = 1_000
    items: int = 500
    days: int = 28
    seed: int = 0
    start: datetime = field(default_factory=_default_start)  # timezone-aware; first day starts here
    categories: int = 24  # leaf categories ("electronics/phones"), spread over the top levels
    brands: int = 40
    taste_dim: int = 16  # size of the latent taste space
    sessions_per_user_day: float = 0.2  # logged-in sessions of an average user per day
    mean_views_per_session: float = 5.0
    anonymous_share: float = 0.3  # share of sessions that start without a user id
    login_share: float = 0.15  # share of anonymous sessions that log in midway
    signup_share: float = 0.1  # share of users who sign up during the period
    drift: float = (
        0.3  # 0: tastes and category popularity fixed; 1: they move by a full taste scale
    )
    launch_share: float = 0.15  # share of items launched during the period
    trending_share: float = 0.2  # share of items whose popularity rises or falls over the period
    search_rate: float = 0.12  # share of freshly found items reached through a search
    rating_rate: float = 0.25  # share of logged-in purchases rated a few days later

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"SimulationConfig.{f.name} must be an integer, got {value!r}")
            if f.type == "float" and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise ValueError(
                    f"SimulationConfig.{f.name} must be a finite number, got {value!r}"
                )
        for name in ("users", "items", "days", "categories", "brands"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"SimulationConfig.{name} must be at least 1, got {getattr(self, name)}"
                )
        if self.categories > self.items:
            raise ValueError(
                f"SimulationConfig.categories ({self.categories}) must not exceed items ({self.items})"
            )
        if self.taste_dim < 2:
            raise ValueError(f"SimulationConfig.taste_dim must be at least 2, got {self.taste_dim}")
        if self.seed < 0:
            raise ValueError(f"SimulationConfig.seed must be >= 0, got {self.seed}")
        if self.sessions_per_user_day <= 0:
            raise ValueError(
                f"SimulationConfig.sessions_per_user_day must be > 0, got {self.sessions_per_user_day}"
            )
        if self.mean_views_per_session < 1:
            raise ValueError(
                f"SimulationConfig.mean_views_per_session must be >= 1, got {self.mean_views_per_session}"
            )
        for name in (
            "login_share",
            "signup_share",
            "launch_share",
            "trending_share",
            "search_rate",
            "rating_rate",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"SimulationConfig.{name} must be in [0, 1], got {getattr(self, name)}"
                )
        if not 0.0 <= self.anonymous_share < 1.0:
            raise ValueError(
                f"SimulationConfig.anonymous_share must be in [0, 1), got {self.anonymous_share}"
            )
        if not 0.0 <= self.drift <= 5.0:
            raise ValueError(f"SimulationConfig.drift must be in [0, 5], got {self.drift}")
        if (
            not isinstance(self.start, datetime)
            or self.start.tzinfo is None
            or self.start.utcoffset() is None
        ):
            raise ValueError(
                f"SimulationConfig.start must be a timezone-aware datetime, got {self.start!r}"
            )
        first = self.start - timedelta(days=3 * 366)  # catalogue and sign-ups reach back 3 years
        last = self.start + timedelta(days=self.days + 15)
        if first.year < MIN_TIMESTAMP_YEAR or last.year > MAX_TIMESTAMP_YEAR:
            raise ValueError(
                f"SimulationConfig.start {self.start.isoformat()} with {self.days} days leaves the "
                f"years {MIN_TIMESTAMP_YEAR + 3}..{MAX_TIMESTAMP_YEAR} that timestamps must stay in"
            )

    @property
    def start_us(self) -> int:
        """The first day's start in microseconds since the epoch (UTC)."""
        delta = self.start.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
