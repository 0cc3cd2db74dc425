"""Small pieces of the recommendation path that must answer as what they replaced."""

from __future__ import annotations

import types
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import orjson
import pytest

import shelf.serving.app as app_module
from shelf.privacy import Pseudonymizer
from shelf.serving.app import Runtime, _iso


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 12, 1, 12, 30, 5, 123456, tzinfo=UTC),
        datetime(2026, 12, 1, 12, 30, 5, tzinfo=UTC),  # no microseconds: none written
        datetime(2026, 12, 1, 12, 30, 5, 1, tzinfo=UTC),
        datetime(1999, 1, 1, tzinfo=UTC),
        datetime(2026, 12, 1, 12, 30, 5, 10, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 7, 1, 12, tzinfo=ZoneInfo("Europe/Berlin")),
        datetime(2026, 12, 1, 12, 30, 5, 7),  # naive
    ],
)
def test_exposure_time_is_written_as_isoformat_writes_it(at: datetime) -> None:
    assert orjson.dumps({"at": _iso(at)}) == orjson.dumps({"at": at.isoformat()})


def test_remembered_pseudonyms_are_the_pseudonyms_and_stay_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pseudonymizer = Pseudonymizer(b"a key for the test")
    runtime = types.SimpleNamespace(pseudonymizer=pseudonymizer, _pseudonyms={})
    monkeypatch.setattr(app_module, "PSEUDONYMS_REMEMBERED", 3)
    raw = [f"shopper-{i}" for i in range(7)] * 2
    assert [Runtime._pseudonym(runtime, r) for r in raw] == [pseudonymizer.one(r) for r in raw]  # type: ignore[arg-type]
    assert len(runtime._pseudonyms) <= 3
