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


# ----------------------------------------------------------------------------------------------
# A simulated shop with trained bundles (built once per session, copied per test)

SHOP_KEY = "test-key-0123456789abcdef"


def build_shop(home: Path, *, users: int = 200, items: int = 100, days: int = 5) -> None:
    """Simulate a shop into ``home``'s lake; v0001 = shelf-blend (promoted), v0002 = shelf-trending."""
    from click.testing import CliRunner

    from shelf.cli import main

    env = {"SHELF_PSEUDONYM_KEY": SHOP_KEY, "SHELF_DEV": "0"}
    runner = CliRunner()
    for args in (
        ["simulate", "--users", str(users), "--items", str(items), "--days", str(days)],
        ["train", "--model", "shelf-blend", "--promote"],
        ["train", "--model", "shelf-trending"],
    ):
        result = runner.invoke(main, ["--home", str(home), *args], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output


@pytest.fixture(scope="session")
def shop_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("shop") / "home"
    build_shop(home)
    return home


@pytest.fixture
def shop(shop_template: Path, tmp_path: Path) -> Settings:
    """Settings over a fresh copy of the simulated shop (bundle v0001 promoted)."""
    import shutil

    home = tmp_path / "shop"
    shutil.copytree(shop_template, home)
    return Settings(home=home, pseudonym_key=SHOP_KEY, dev_mode=False)
