"""API keys: hashed at rest, listed without secrets, revoked live; every route checks its role."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from shelf.errors import InputError
from shelf.serving import create_key, list_keys, revoke_key, route_roles
from shelf.serving.app import PUBLIC_PATHS
from shelf.serving.auth import KeyStore, grants
from shelf.settings import Settings


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_keys_are_hashed_listed_and_revoked(tmp_path: Path) -> None:
    key_id, secret = create_key(tmp_path, "events:write")
    raw = (tmp_path / "keys.json").read_text()
    # The random part follows "<prefix><key id>_"; token_urlsafe may itself hold "_", so it is
    # cut by position (splitting on "_" once left a 1-character tail that the file held by chance).
    random_part = secret[secret.index(key_id) + len(key_id) + 1 :]
    assert len(random_part) >= 40
    assert secret not in raw and random_part not in raw
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600
    (listed,) = list_keys(tmp_path)
    assert (listed.id, listed.role, listed.active) == (key_id, "events:write", True)
    assert not hasattr(listed, "sha256")
    store = KeyStore(tmp_path)
    assert store.authenticate(secret) is not None
    assert store.authenticate(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert store.authenticate("nonsense") is None
    revoked = revoke_key(tmp_path, key_id)
    assert revoked.revoked is not None and not list_keys(tmp_path)[0].active
    assert store.authenticate(secret) is None, "a revocation applies without a restart"
    with pytest.raises(InputError, match="no key"):
        revoke_key(tmp_path, "k_000000000000")
    with pytest.raises(InputError, match="unknown role"):
        create_key(tmp_path, "root")


def test_admin_implies_every_role() -> None:
    assert grants("admin", "events:write") and grants("admin", "recommendations:read")
    assert not grants("recommendations:read", "events:write")
    assert not grants("events:write", "admin")


def test_every_route_is_public_or_guarded(app: FastAPI) -> None:
    table = route_roles(app)
    assert {path for (_, path), role in table.items() if role is None} == set(PUBLIC_PATHS)
    assert len(table) >= 9


def _call(app: FastAPI) -> list[tuple[str, str, str]]:
    return [(m, p, r) for (m, p), r in sorted(route_roles(app).items()) if r is not None]


def _url(path: str) -> str:
    return path.replace("{item_id:item_id}", "sku-1").replace("{item_id}", "sku-1")


@pytest.mark.anyio
async def test_every_guarded_route_refuses_missing_wrong_and_revoked_keys(
    app: FastAPI, client: httpx.AsyncClient, keys: dict[str, str], settings: Settings
) -> None:
    routes = _call(app)
    assert routes
    for method, path, role in routes:
        url = _url(path)
        response = await client.request(method, url, json={})
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"] == "Bearer"
        response = await client.request(method, url, json={}, headers=bearer("shelf_k_000000000000_nope"))
        assert response.status_code == 401, (method, path)
        for other, secret in keys.items():
            response = await client.request(method, url, json={}, headers=bearer(secret))
            if grants(other, role):  # type: ignore[arg-type]
                assert response.status_code not in (401, 403), (method, path, other)
            else:
                assert response.status_code == 403, (method, path, other)
                assert role in response.json()["detail"]
    # Public routes need no key.
    for path in PUBLIC_PATHS:
        assert (await client.get(path)).status_code == 200
    # A revoked admin key stops working at once.
    admin_id = next(k.id for k in list_keys(settings.home) if k.role == "admin")
    revoke_key(settings.home, admin_id)
    assert (await client.get("/admin/status", headers=bearer(keys["admin"]))).status_code == 401
