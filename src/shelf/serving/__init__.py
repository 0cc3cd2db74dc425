"""The HTTP service: app factory, API keys, online state, bundle hot swap, exposure log.

FastAPI and uvicorn are the ``serve`` extra; nothing here is imported by the core package.
"""

from shelf.serving.app import create_app, route_roles
from shelf.serving.auth import ROLES, ApiKey, create_key, list_keys, revoke_key
from shelf.serving.bundles import RecommenderLoader, verified
from shelf.serving.config import ServeConfig
from shelf.serving.online import (
    COLD_START_VERSION,
    OnlinePopularity,
    OnlineRecommender,
    OnlineState,
    StateLimits,
)

__all__ = [
    "COLD_START_VERSION",
    "ROLES",
    "ApiKey",
    "OnlinePopularity",
    "OnlineRecommender",
    "OnlineState",
    "RecommenderLoader",
    "ServeConfig",
    "StateLimits",
    "create_app",
    "create_key",
    "list_keys",
    "revoke_key",
    "route_roles",
    "verified",
]
