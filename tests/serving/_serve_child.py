"""Runs the app under uvicorn the way `shelf serve` does: python _serve_child.py PORT [COMPACT_S [POLL_S [SEGMENT_BYTES]]]
(env: SHELF_*). The optional arguments shorten the background intervals for tests."""

from __future__ import annotations

import sys

import uvicorn

from shelf.serving import ServeConfig, create_app
from shelf.settings import Settings

if __name__ == "__main__":
    config = ServeConfig()
    if len(sys.argv) > 2:
        config = ServeConfig(
            compact_seconds=float(sys.argv[2]),
            bundle_poll_seconds=float(sys.argv[3]) if len(sys.argv) > 3 else 5.0,
            wal_segment_bytes=int(sys.argv[4]) if len(sys.argv) > 4 else 64 * 1024 * 1024,
        )
    app = create_app(Settings.load(), config=config)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", timeout_graceful_shutdown=10)
