"""Fixtures shared by the two-stage tests."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shelf.evaluation import TableSource, TemporalSplit
from shelf.evaluation.splits import UserSplit, end_of_data
from shelf.features.synthetic import synthetic_shop


@pytest.fixture(scope="module")
def split() -> UserSplit:
    """A small synthetic shop cut 5 days before its end (the two-stage tests' label window)."""
    events, items, users = synthetic_shop(n_users=60, n_items=80, n_sessions=600, days=40, seed=1)
    source = TableSource(events, items, users)
    return TemporalSplit(end_of_data(source) - timedelta(days=5), timedelta(days=5)).build(source)
