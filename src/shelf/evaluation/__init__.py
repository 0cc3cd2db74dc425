"""Offline evaluation: snapshot-based splits, full-catalogue metrics, peers, runner, reports.

Submodules are imported lazily by the names below, so ``import shelf.evaluation`` does no work.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # splits
    "SnapshotSource": "splits", "SnapshotLike": "splits", "TableSource": "splits", "CappedSource": "splits",
    "TemporalSplit": "splits", "LastNDays": "splits", "LeaveLastOut": "splits", "SessionNextItem": "splits",
    "session_split_from_tables": "splits", "UserSplit": "splits", "SessionSplit": "splits",
    "audit_leakage": "splits", "audit_split": "splits",
    # targets
    "Target": "targets", "ANY_ENGAGEMENT": "targets", "CART_OR_PURCHASE": "targets", "PURCHASE": "targets",
    "WEIGHTED": "targets", "TARGETS": "targets", "weighted": "targets",
    # runner
    "evaluate": "runner", "EvaluationOptions": "runner", "EvaluationResult": "runner", "MetricRow": "runner",
    "ModelFactory": "runner",
    # peers
    "Popularity": "peers", "Trending": "peers", "RecentThenPopular": "peers", "ALSPeer": "peers",
    "BPRPeer": "peers", "Tuned": "peers", "default_peers": "peers",
    # segments
    "paired_bootstrap": "segments", "BootstrapResult": "segments",
    # batch + report
    "recommend_users_csv": "batch", "recommend_sessions_csv": "batch", "write_report": "report",
    # errors
    "EvaluationError": "errors", "EmptySplitError": "errors", "NoTestUsersError": "errors",
    "LeakageError": "errors", "InvalidCutoffError": "errors", "ModelOutputError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shelf.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"shelf.evaluation.{module}"), name)
