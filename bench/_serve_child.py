"""A server for bench_serving: ``python -m bench._serve_child (shelf|hello|hello-sync) PORT`` (env: SHELF_*).

All run under the same uvicorn settings (:data:`UVICORN`): one worker process, the uvloop event
loop, the httptools HTTP parser, no access log. ``hello`` is FastAPI's bare ``async def`` route
returning a small dict (the ceiling of this stack for a route that does not need a thread, as
shelf's recommendation routes no longer do); ``hello-sync`` is the same as a ``def`` route
(FastAPI runs it in its thread pool), measured for reference.
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn
from fastapi import FastAPI

UVICORN: dict[str, Any] = {"workers": 1, "loop": "uvloop", "http": "httptools", "log_level": "warning", "access_log": False}


def hello_app(sync: bool = False) -> FastAPI:
    app = FastAPI()

    if sync:

        @app.get("/hello")
        def hello_sync() -> dict[str, str]:
            return {"hello": "world"}

    else:

        @app.get("/hello")
        async def hello() -> dict[str, str]:
            return {"hello": "world"}

    @app.get("/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


def shelf_app() -> FastAPI:
    from shelf.serving import ServeConfig, create_app
    from shelf.settings import Settings

    return create_app(Settings.load(), config=ServeConfig(compact_seconds=5.0))


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    app = shelf_app() if kind == "shelf" else hello_app(sync=kind == "hello-sync")
    uvicorn.run(app, host="127.0.0.1", port=port, **UVICORN)
