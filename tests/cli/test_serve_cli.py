"""`shelf keys ...` (CliRunner) and `shelf serve` (a real uvicorn on 127.0.0.1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from click.testing import CliRunner, Result
from tests.serving.test_uvicorn import free_port, wait_ready

from shelf.cli import main
from shelf.serving.auth import list_keys

SECRET = "a-real-secret-of-enough-length"


def shelf(home: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["--home", str(home), *args], env=env or {"SHELF_PSEUDONYM_KEY": SECRET, "SHELF_DEV": "0"})


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    home = tmp_path / "home"
    created = shelf(home, "keys", "create", "--role", "events:write")
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("shelf_k_")
    [key] = list_keys(home)
    assert key.role == "events:write" and key.id in secret
    listed = shelf(home, "keys", "list")
    assert key.id in listed.stdout and "active" in listed.stdout and secret not in listed.stdout
    assert secret not in (home / "keys.json").read_text(), "only a hash is stored"
    revoked = shelf(home, "keys", "revoke", key.id)
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout
    assert not list_keys(home)[0].active
    assert "revoked" in shelf(home, "keys", "list").stdout
    missing = shelf(home, "keys", "revoke", "k_000000000000")
    assert missing.exit_code == 2 and "no key" in missing.output
    bad_role = shelf(home, "keys", "create", "--role", "root")
    assert bad_role.exit_code != 0 and "root" in bad_role.output


def test_serve_refuses_the_default_key_outside_dev(tmp_path: Path) -> None:
    result = shelf(tmp_path / "home", "serve", "--port", "1", env={"SHELF_DEV": "0", "SHELF_PSEUDONYM_KEY": ""})
    assert result.exit_code == 2 and "SHELF_PSEUDONYM_KEY" in result.output
    result = shelf(tmp_path / "home", "serve", env={"SHELF_DEV": "0", "SHELF_PSEUDONYM_KEY": "shelf-development-key-not-secret"})
    assert result.exit_code == 2 and "development key" in result.output


def test_shelf_serve_answers_with_a_created_key_and_stops_on_sigterm(tmp_path: Path) -> None:
    home = tmp_path / "home"
    secret = shelf(home, "keys", "create", "--role", "admin").stdout.strip().splitlines()[-1]
    port = free_port()
    env = os.environ | {"SHELF_PSEUDONYM_KEY": SECRET, "SHELF_DEV": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "shelf.cli", "--home", str(home), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5, headers={"Authorization": f"Bearer {secret}"}) as client:
            wait_ready(client, server)
            event = {"session_id": "s1", "item_id": "a", "type": "view", "timestamp": "2024-05-01T12:00:00Z"}
            assert client.post("/events", json={"events": [event]}).status_code == 200
            assert client.get("/recommendations", params={"session_id": "s1"}).status_code == 200
            assert client.get("/admin/status").json()["events_accepted"] == 1
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
        assert server.stderr is not None
        stderr = server.stderr.read().decode()
        server.stderr.close()
    assert "Traceback" not in stderr, stderr


def test_limit_concurrency_sheds_load_with_503(tmp_path: Path) -> None:
    """Once --limit-concurrency connections are open (the asking one included), requests get an
    immediate 503 (retry later) instead of queueing; under the limit they are served."""
    home = tmp_path / "home"
    secret = shelf(home, "keys", "create", "--role", "admin").stdout.strip().splitlines()[-1]
    port = free_port()
    env = os.environ | {"SHELF_PSEUDONYM_KEY": SECRET, "SHELF_DEV": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "shelf.cli", "--home", str(home), "serve", "--port", str(port), "--limit-concurrency", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    headers = {"Authorization": f"Bearer {secret}"}
    clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5, headers=headers) for _ in range(3)]
    try:
        wait_ready(clients[0], server)
        assert clients[0].get("/recommendations").status_code == 200  # one open connection: served
        assert clients[1].get("/recommendations").status_code == 503  # a second open connection: shed
        clients[1].close()
        # Back under the limit once the server has seen that close (it learns of it
        # asynchronously: a request racing it may still be shed).
        deadline = time.monotonic() + 10
        while (status := clients[0].get("/recommendations").status_code) == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status == 200
    finally:
        for client in clients:
            client.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(timeout=10)
