"""The explicit registry of retriever kinds (the name saved in a model's manifest → its class)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shelf.models.io import ModelFormatError, read_kind
from shelf.models.retrieval.als import ALSRetriever
from shelf.models.retrieval.blend import BlendRetriever
from shelf.models.retrieval.content import ContentRetriever
from shelf.models.retrieval.cooccurrence import CoOccurrenceRetriever
from shelf.models.retrieval.ease import EASERetriever
from shelf.models.retrieval.neighbours import NeighboursRetriever
from shelf.models.retrieval.popularity import PopularityRetriever
from shelf.models.retrieval.repeat import RepeatRetriever
from shelf.models.retrieval.sasrec import SASRec
from shelf.models.retrieval.sequential import SequentialRulesRetriever

RETRIEVERS: dict[str, type[Any]] = {
    cls.name: cls
    for cls in (
        PopularityRetriever,
        RepeatRetriever,
        CoOccurrenceRetriever,
        ALSRetriever,
        EASERetriever,
        NeighboursRetriever,
        ContentRetriever,
        BlendRetriever,
        SASRec,
        SequentialRulesRetriever,
    )
}


def register(cls: type[Any]) -> type[Any]:
    """Add a retriever class (usable as a decorator); its ``name`` must be new."""
    if cls.name in RETRIEVERS and RETRIEVERS[cls.name] is not cls:
        raise ValueError(f"a retriever named {cls.name!r} is already registered")
    RETRIEVERS[cls.name] = cls
    return cls


def retriever_class(kind: str) -> type[Any]:
    try:
        return RETRIEVERS[kind]
    except KeyError:
        raise ModelFormatError(f"unknown retriever kind {kind!r}; known: {sorted(RETRIEVERS)}") from None


def load_retriever(path: Path | str) -> Any:
    """Load any saved retriever, picking its class from the manifest's kind."""
    return retriever_class(read_kind(path)).load(path)
