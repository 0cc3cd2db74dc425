"""Shared fixtures. Real public logs live in ../shared/data and are never copied into the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("SHELF_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")).resolve()


def shared_dataset(name: str) -> Path:
    """Path of one shared data set, or skip the test saying what is missing."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"shared data set {name!r} not found at {path} (it lives in ../shared/data beside the repo)")
    return path


@pytest.fixture
def dev_key() -> bytes:
    return b"test-key-0123456789abcdef"
