"""Runs the app under uvicorn the way `shelf serve` will: python _serve_child.py PORT (env: SHELF_*)."""

from __future__ import annotations

import sys

import uvicorn

from shelf.serving import create_app
from shelf.settings import Settings

if __name__ == "__main__":
    app = create_app(Settings.load())
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", timeout_graceful_shutdown=10)
