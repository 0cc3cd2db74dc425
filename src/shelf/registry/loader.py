"""Loading a bundle's model for serving or batch scoring (after verifying every hash)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shelf.registry.bundles import BundleError, Card, Registry

MODEL_FOLDER = "model"


@dataclass(frozen=True)
class LoadedBundle:
    card: Card
    model: Any


def load_bundle(registry: Registry, version: str | None = None) -> LoadedBundle:
    """The bundle ``version`` (default: the promoted one), verified and loaded."""
    from shelf.models.io import read_kind
    from shelf.models.retrieval import ModelError, load_retriever

    chosen = version or registry.promoted()
    if chosen is None:
        raise BundleError("no bundle is promoted; run `shelf train` then `shelf models promote VERSION`")
    card = registry.verify(chosen)
    folder = registry.path(chosen) / MODEL_FOLDER
    try:
        if read_kind(folder) == "twostage":
            # The two-stage model sits above retrieval (it holds a retriever), so it is not in the
            # retrieval registry; bundles name it by kind.
            from shelf.models.twostage import TwoStage

            model = TwoStage.load(folder)
        else:
            model = load_retriever(folder)
    except ModelError as error:
        raise BundleError(f"bundle {chosen}: the model does not load ({error})") from error
    return LoadedBundle(card, model)
