"""Fixtures: a serving home with one key per role, and the app under an in-process client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from shelf.serving import ServeConfig, create_app, create_key
from shelf.settings import Settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", pseudonym_key="test-key-0123456789abcdef", dev_mode=False)


@pytest.fixture
def keys(settings: Settings) -> dict[str, str]:
    """Secrets by role."""
    return {role: create_key(settings.home, role)[1] for role in ("admin", "events:write", "recommendations:read")}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


FAST = ServeConfig(bundle_poll_seconds=0.05, exposure_flush_seconds=0.05)


@pytest.fixture
def app(settings: Settings, keys: dict[str, str]) -> FastAPI:
    return create_app(settings, config=FAST)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """httpx over the ASGI transport, with the app's lifespan running around it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shelf.test") as c:
            yield c
