"""The retrieval stage: retrievers that propose candidates for a query.

Each takes a frozen config, learns in ``fit(Interactions)``, answers ``retrieve(Query, n)`` with
raw ids, scores training users in batch (``score_users``) and saves without pickle.
"""

from shelf.models.io import ModelError, ModelFitError, ModelFormatError, NotFittedError
from shelf.models.retrieval._base import RetrieverBase
from shelf.models.retrieval.als import ALSConfig, ALSRetriever
from shelf.models.retrieval.blend import BlendConfig, BlendRetriever, Candidates, default_blend
from shelf.models.retrieval.content import ContentConfig, ContentRetriever
from shelf.models.retrieval.cooccurrence import CoOccurrenceConfig, CoOccurrenceRetriever
from shelf.models.retrieval.ease import EASEConfig, EASERetriever
from shelf.models.retrieval.neighbours import NeighboursConfig, NeighboursRetriever
from shelf.models.retrieval.popularity import PopularityConfig, PopularityRetriever
from shelf.models.retrieval.registry import RETRIEVERS, load_retriever, register, retriever_class
from shelf.models.retrieval.repeat import RepeatConfig, RepeatRetriever
from shelf.models.retrieval.sasrec import SASRec, SASRecConfig
from shelf.models.retrieval.sequential import SequentialRulesConfig, SequentialRulesRetriever

__all__ = [
    "RETRIEVERS",
    "ALSConfig",
    "ALSRetriever",
    "BlendConfig",
    "BlendRetriever",
    "Candidates",
    "CoOccurrenceConfig",
    "CoOccurrenceRetriever",
    "ContentConfig",
    "ContentRetriever",
    "EASEConfig",
    "EASERetriever",
    "ModelError",
    "ModelFitError",
    "ModelFormatError",
    "NeighboursConfig",
    "NeighboursRetriever",
    "NotFittedError",
    "PopularityConfig",
    "PopularityRetriever",
    "RepeatConfig",
    "RepeatRetriever",
    "RetrieverBase",
    "SASRec",
    "SASRecConfig",
    "SequentialRulesConfig",
    "SequentialRulesRetriever",
    "default_blend",
    "load_retriever",
    "register",
    "retriever_class",
]
