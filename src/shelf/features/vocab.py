"""Vocabularies for categorical features, built from training data, with an out-of-vocabulary bucket.

Code 0 is the out-of-vocabulary (OOV) bucket: values unseen in training, values seen fewer than
``min_count`` times, and missing values (``None``) all map there, so serving never fails or
produces NaN on a category that appeared after training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

OOV = 0


class Vocabulary:
    """A frozen map from category strings to codes ``1..n``; everything else is ``OOV`` (0)."""

    def __init__(self, values: Sequence[str]) -> None:
        self.values: tuple[str, ...] = tuple(values)
        self._codes = {v: i + 1 for i, v in enumerate(self.values)}
        if len(self._codes) != len(self.values):
            raise ValueError("vocabulary values must be unique")

    @classmethod
    def build(cls, column: Iterable[Any], *, min_count: int = 1, max_size: int | None = None) -> Vocabulary:
        """Most frequent first (ties by value), dropping values seen fewer than ``min_count`` times."""
        counts = Counter(v for v in column if v is not None)
        kept = sorted(((c, v) for v, c in counts.items() if c >= min_count), key=lambda cv: (-cv[0], str(cv[1])))
        if max_size is not None:
            kept = kept[:max_size]
        return cls([str(v) for _, v in kept])

    def __len__(self) -> int:
        """Number of codes including the OOV bucket."""
        return len(self.values) + 1

    def encode(self, column: Sequence[Any] | np.ndarray) -> np.ndarray:
        get = self._codes.get
        return np.fromiter((OOV if v is None else get(str(v), OOV) for v in column), dtype=np.int64, count=len(column))

    def to_list(self) -> list[str]:
        return list(self.values)
