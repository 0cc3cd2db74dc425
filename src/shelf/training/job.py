"""`shelf train`: snapshot → fit → validation metrics → a versioned bundle with its card."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow.compute as pc

from shelf.errors import ShelfError
from shelf.models.base import Interactions
from shelf.models.io import ModelFitError
from shelf.registry import Card, Registry
from shelf.registry.bundles import code_version
from shelf.training.config import TrainConfig
from shelf.training.zoo import pick

MODEL_FOLDER = "model"
# Retrieval-only bundles carry no ranker features yet; the version says so explicitly.
RETRIEVAL_ONLY_FEATURES = "none (retrieval only)"
# Test users scored for the card's validation metrics at most (a seeded sample above it; the card
# records how many were scored and how many there were).
VALIDATION_USERS = 5_000


class TrainingError(ShelfError):
    """The snapshot cannot train a model (empty, one item) or the model cannot be saved."""


def _config_of(model: Any) -> dict[str, Any]:
    config = getattr(model, "config", None)
    if config is not None and is_dataclass(config):
        return {k: v if isinstance(v, int | float | str | bool | type(None)) else repr(v) for k, v in asdict(config).items()}
    return {"repr": repr(model)[:500]}


def _validation_metrics(lake: Any, as_of: datetime | None, config: TrainConfig, events_end: datetime) -> dict[str, float]:
    from shelf.evaluation import ANY_ENGAGEMENT, CappedSource, TemporalSplit, evaluate
    from shelf.evaluation.errors import EvaluationError

    window = timedelta(days=config.validation_days)
    cut = events_end - window
    source = CappedSource(lake, as_of) if as_of is not None else lake
    try:
        split = TemporalSplit(cut, window).build(source)
        tested = len(split.test_users)
        if tested > VALIDATION_USERS:
            # The card's metrics are informational: a fixed-seed sample of the test users measures
            # them well enough, and scoring every user of a large shop would cost minutes.
            sample = np.random.default_rng(config.seed).choice(split.test_users, size=VALIDATION_USERS, replace=False)
            split = dataclasses.replace(split, test_users=np.sort(sample))
        result = evaluate(
            None,
            split,
            pick([config.model], seed=config.seed, tune=True),
            ks=config.ks,
            target=ANY_ENGAGEMENT,
            views=("all", "new"),
        )
    except (EvaluationError, ModelFitError) as error:
        # Too little data before the validation cut (e.g. no returning shoppers for the ranker):
        # the bundle is still trained on everything, the card says why it has no metrics.
        return {"validation_unavailable": 1.0, "reason_" + type(error).__name__: 0.0}
    metrics: dict[str, float] = {"validation_users": float(len(split.test_users)), "validation_users_available": float(tested)}
    for view in ("all", "new"):
        for k in config.ks:
            for metric in ("ndcg", "recall", "hitrate"):
                metrics[f"{view}/{metric}@{k}"] = round(result.value(config.model, metric, k, view), 6)
    return metrics


def train(lake: Any, registry: Registry, config: TrainConfig, *, as_of: datetime | None = None) -> Card:
    """Fit ``config.model`` on ``lake.snapshot(as_of)`` and publish a bundle (not promoted)."""
    snapshot = lake.snapshot(as_of)
    events = snapshot.events()
    if events.num_rows == 0:
        when = f"before {as_of.isoformat()}" if as_of else "at all"
        raise TrainingError(f"the snapshot holds no events {when}; ingest or simulate data first")
    n_items = len(pc.unique(events["item_id"]))
    if n_items < 2:
        raise TrainingError(f"the snapshot's events name {n_items} item; a recommender needs at least 2 to rank")
    items, users = snapshot.items(), snapshot.users()
    factory = pick([config.model], seed=config.seed, tune=False)[config.model]
    model = factory()
    if not hasattr(model, "save"):
        raise TrainingError(f"model {config.model!r} cannot be saved into a bundle (peers are for evaluation); pick a shelf-* model")
    last = pc.max(events["timestamp"]).as_py()
    metrics = _validation_metrics(lake, as_of, config, last + timedelta(microseconds=1))
    data = Interactions.from_events(events, as_of=as_of, item_table=items, user_table=users)
    started = time.perf_counter()
    model_name, fallback_note = config.model, ""
    try:
        model.fit(data)
    except ModelFitError as error:
        retriever = getattr(model, "retriever_template", None)
        if retriever is None:
            raise TrainingError(f"{config.model} cannot be fitted on this snapshot: {error}") from error
        # A young shop has too few returning shoppers to replay requests for the ranker; its
        # retrieval stage alone still serves well, and a bundle beats no bundle at 3 a.m.
        model = retriever
        model.fit(data)
        model_name = f"{config.model} (retrieval stage only)"
        fallback_note = f"; {config.model} fell back to its retrieval stage: {error}"
    fit_seconds = time.perf_counter() - started
    with registry.stage() as folder:
        model.save(folder / MODEL_FOLDER)
        card = Card(
            version="",
            created_at=datetime.now(UTC).isoformat(),
            snapshot_as_of=as_of.isoformat() if as_of else None,
            data_counts={
                "events": events.num_rows,
                "users": data.n_users,
                "items": data.n_items,
                "sessions": len(data.sessions),
                "catalogue_items": items.num_rows,
                "profiles": users.num_rows,
            },
            parameters={
                "model": model_name, "requested_model": config.model, "seed": config.seed, "config": _config_of(model),
                "fit_seconds": round(fit_seconds, 3),
            },
            metrics=metrics,
            # A two-stage model reports the version of the features its ranker was trained on.
            feature_set_version=str(getattr(model, "feature_set_version", None) or RETRIEVAL_ONLY_FEATURES),
            code_version=code_version(),
            notes=f"last event in snapshot: {last.isoformat()}{fallback_note}",
        )
        return registry.publish(folder, card)
