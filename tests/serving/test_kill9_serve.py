"""The real server under load: SIGKILL during event load loses no acknowledged event and
duplicates none after compaction; bundles swap under load with zero failed requests."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pyarrow.compute as pc

from shelf.lake import Lake
from shelf.registry.bundles import Registry
from shelf.serving import create_key
from shelf.settings import Settings

from .conftest import SHOP_KEY
from .test_uvicorn import free_port, wait_ready

CHILD = Path(__file__).with_name("_serve_child.py")


@contextmanager
def server(home: Path, port: int, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    env = os.environ | {"SHELF_HOME": str(home), "SHELF_PSEUDONYM_KEY": SHOP_KEY, "SHELF_DEV": "0"}
    process = subprocess.Popen([sys.executable, str(CHILD), str(port), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            wait_ready(client, process, 30)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        assert process.stderr is not None
        process.stderr.close()


def batch(client_id: int, number: int, size: int = 50) -> list[dict[str, object]]:
    return [
        {
            "event_id": f"c{client_id}-b{number}-{i}",
            "session_id": f"s{client_id}-{number % 20}",
            "item_id": f"item-{(number * size + i) % 97}",
            "type": "view",
            "timestamp": 1714560000 + number,
        }
        for i in range(size)
    ]


def test_sigkill_during_event_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    secret = create_key(home, "admin")[1]
    headers = {"Authorization": f"Bearer {secret}"}
    port = free_port()
    acked: set[str] = set()
    unacked: list[list[dict[str, object]]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load(client_id: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5, headers=headers) as client:
            for number in range(2000):  # bounded; the kill ends it much sooner
                if stop.is_set():
                    return
                events = batch(client_id, number)
                try:
                    response = client.post("/events", json={"events": events})
                except httpx.TransportError:
                    with lock:
                        unacked.append(events)
                    return
                assert response.status_code == 200, response.text
                with lock:
                    acked.update(str(e["event_id"]) for e in events)

    # Small segments and fast compaction, so the kill can land mid-compaction too.
    with server(home, port, "0.2", "5", "16384") as process:
        clients = [threading.Thread(target=load, args=(c,)) for c in range(3)]
        for thread in clients:
            thread.start()
        time.sleep(random.uniform(0.5, 2.0))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        stop.set()
        for thread in clients:
            thread.join(timeout=10)
    assert len(acked) >= 50, "the load ran before the kill"

    with server(home, port, "0.2", "5", "16384"), httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5, headers=headers) as client:
        status = client.get("/admin/status").json()
        assert status["wal_replayed"] > 0 or Lake.open(home).stats().events >= len(acked)
        for events in unacked:  # the client resends what it never saw acknowledged
            assert client.post("/events", json={"events": events}).status_code == 200
            acked.update(str(e["event_id"]) for e in events)
        deadline = time.monotonic() + 15
        while client.get("/admin/status").json()["wal_segments"] > 1 and time.monotonic() < deadline:
            time.sleep(0.1)

    lake = Lake.open(home)
    with lake.snapshot(live=False) as snap:
        committed = snap.events(["event_id"])["event_id"]
    assert len(pc.unique(committed)) == len(committed), "no event is duplicated in the lake"
    with lake.snapshot() as snap:
        everything = snap.events(["event_id"])["event_id"]
    assert len(pc.unique(everything)) == len(everything)
    missing = acked - set(everything.to_pylist())
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:3]}"
    assert len(committed) >= len(acked) * 0.5, "compaction moved the log into the lake"


def test_bundles_swap_under_load_without_a_failed_request(shop: Settings) -> None:
    secret = create_key(shop.home, "recommendations:read")[1]
    registry = Registry(shop.home)
    port = free_port()
    failures: list[str] = []
    versions: list[str] = []
    done = threading.Event()

    def loop() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5, headers={"Authorization": f"Bearer {secret}"}) as client:
            for n in range(5000):  # bounded in count, and by the swap loop's end
                if done.is_set():
                    return
                try:
                    response = client.get("/recommendations", params={"session_id": f"s{n % 7}", "k": 10})
                except httpx.TransportError as error:
                    failures.append(repr(error))
                    continue
                if response.status_code != 200 or len(response.json()["items"]) != 10:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                else:
                    versions.append(response.json()["bundle_version"])

    with server(shop.home, port, "3600", "0.02"):
        threads = [threading.Thread(target=loop) for _ in range(2)]
        for thread in threads:
            thread.start()
        for swap in range(12):
            registry.promote("v0002" if swap % 2 == 0 else "v0001")
            time.sleep(0.25)
        done.set()
        for thread in threads:
            thread.join(timeout=10)
    assert not failures, failures[:5]
    assert {"v0001", "v0002"} <= set(versions), "both bundles served during the run"
    assert len(versions) > 50
