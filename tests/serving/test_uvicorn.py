"""The app under a real uvicorn on 127.0.0.1: answers, and drains on SIGTERM (WAL and exposures)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shelf.lake.wal import WriteAheadLog
from shelf.serving import create_key
from shelf.serving.config import WAL_FOLDER

CHILD = Path(__file__).with_name("_serve_child.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(client: httpx.Client, process: subprocess.Popen[bytes], seconds: float = 20) -> None:
    """Poll ``/ready`` until the server in ``process`` answers 200 (fail if it dies or takes too long)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if client.get("/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and process.poll() is None, "server did not become ready"
        time.sleep(0.05)


def test_real_server_round_trip_and_graceful_shutdown(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _, writer = create_key(home, "events:write")
    _, reader = create_key(home, "recommendations:read")
    port = free_port()
    env = os.environ | {"SHELF_HOME": str(home), "SHELF_PSEUDONYM_KEY": "a-real-secret-of-enough-length", "SHELF_DEV": "0"}
    server = subprocess.Popen([sys.executable, str(CHILD), str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=5) as client:
            wait_ready(client, server)
            events = [
                {"event_id": f"e{i}", "session_id": f"s{i}", "item_id": item, "type": "view", "timestamp": 1714560000 + i}
                for i, item in enumerate(["a", "b", "a", "b"])
            ]
            posted = client.post("/events", json={"events": events}, headers={"Authorization": f"Bearer {writer}"})
            assert posted.status_code == 200, posted.text
            similar = client.get("/items/a/similar", headers={"Authorization": f"Bearer {reader}"})
            assert similar.status_code == 200
            body = similar.json()
            assert body["items"][0]["item_id"] == "b"
            assert client.get("/recommendations", headers={"Authorization": f"Bearer {writer}"}).status_code == 403
            assert "shelf_request_seconds" in client.get("/metrics").text
        server.send_signal(signal.SIGTERM)
        # uvicorn drains, runs the lifespan shutdown, then re-raises SIGTERM for its exit status.
        assert server.wait(timeout=20) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
        assert server.stdout is not None and server.stderr is not None
        server.stdout.close()
        stderr = server.stderr.read().decode()
        server.stderr.close()
    assert "Traceback" not in stderr, stderr
    exposures = list((home / "exposures").glob("*.jsonl"))
    assert exposures and exposures[0].read_bytes().count(b"\n") == 1, "exposures flushed on shutdown"
    with WriteAheadLog(home / WAL_FOLDER) as wal:
        assert wal.read_all()["event_id"].to_pylist() == ["e0", "e1", "e2", "e3"]
