"""Approximate nearest-neighbour search over item embeddings (inner product or cosine).

Two implementations behind one protocol (:class:`VectorIndex`): :class:`ExactIndex`, batched
BLAS over every vector (the reference, and fine up to ~100k items), and :class:`FaissIndex`,
faiss HNSW or IVF (chosen by ``bench/bench_ann.py``: see BENCHMARKS.md). Both save to a folder
without pickle and refuse corrupted or newer files.

faiss is an optional extra (``pip install shelf[ann]``); it is imported only when a
``FaissIndex`` is built or loaded.
"""

from shelf.index.base import FORMAT_VERSION, VectorIndex, VectorIndexError, load_index
from shelf.index.exact import ExactIndex
from shelf.index.faiss_index import FaissConfig, FaissIndex

__all__ = [
    "FORMAT_VERSION",
    "ExactIndex",
    "FaissConfig",
    "FaissIndex",
    "VectorIndex",
    "VectorIndexError",
    "load_index",
]
