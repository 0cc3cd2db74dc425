"""A server for bench_serving: ``python -m bench._serve_child (shelf|hello) PORT`` (env: SHELF_*).

Both run the same way: one uvicorn worker, the same log level, a sync route (thread pool), so
the hello endpoint is the ceiling of this stack on this machine.
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI


def hello_app() -> FastAPI:
    app = FastAPI()

    @app.get("/hello")
    def hello() -> dict[str, str]:
        return {"hello": "world"}

    @app.get("/ready")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


def shelf_app() -> FastAPI:
    from shelf.serving import ServeConfig, create_app
    from shelf.settings import Settings

    return create_app(Settings.load(), config=ServeConfig(compact_seconds=5.0))


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    app = hello_app() if kind == "hello" else shelf_app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
