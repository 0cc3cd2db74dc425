"""The training job's typed configuration, read from ``pipeline.toml`` (unknown keys refused).

Example::

    [train]
    model = "shelf-twostage"   # any name `shelf evaluate --models` knows that can be saved
    seed = 0
    validation_days = 1.0      # the card's metrics come from a cut this long before as_of

    [evaluate]
    ks = [10, 20]
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from shelf.errors import InputError


@dataclass(frozen=True)
class TrainConfig:
    # Retrieve -> rank: the blend's candidates ordered by the engagement ranker, whose weight
    # against the blend's own order is chosen on the last training cut (0 unless it wins clearly).
    model: str = "shelf-twostage"
    seed: int = 0
    validation_days: float = 1.0
    ks: tuple[int, ...] = (10, 20)

    def __post_init__(self) -> None:
        if self.validation_days <= 0:
            raise InputError(f"validation_days must be positive, got {self.validation_days}")
        if not self.ks or any(k < 1 for k in self.ks):
            raise InputError(f"ks must be positive cut-offs, got {list(self.ks)}")

    @classmethod
    def from_toml(cls, path: Path) -> TrainConfig:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise InputError(f"{path}: no such pipeline file") from error
        except tomllib.TOMLDecodeError as error:
            raise InputError(f"{path}: not valid TOML ({error})") from error
        allowed = {"train": {"model", "seed", "validation_days"}, "evaluate": {"ks"}}
        values: dict[str, Any] = {}
        for section, body in raw.items():
            if section not in allowed or not isinstance(body, dict):
                raise InputError(f"{path}: unknown section [{section}]; expected {sorted(allowed)}")
            for key, value in body.items():
                if key not in allowed[section]:
                    raise InputError(f"{path}: unknown key {key!r} in [{section}]; expected one of {sorted(allowed[section])}")
                values[key] = tuple(value) if key == "ks" else value
        types = {f.name: f.type for f in fields(cls)}
        for key, value in values.items():
            expected = {"model": str, "seed": int, "validation_days": (int, float), "ks": tuple}[key]
            if isinstance(value, bool) or not isinstance(value, expected):
                raise InputError(f"{path}: {key} = {value!r} is not a {types[key]}")
        return cls(**values)
