"""Exact search: one BLAS matrix product per block of queries, then a partial sort per row."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Self

import numpy as np

from shelf.index.base import (
    VectorIndexError,
    check_build_input,
    check_metric,
    check_queries,
    normalise,
    read_manifest,
    top_k_rows,
    write_manifest,
)

_DATA_FILE = "vectors.npy"


class ExactIndex:
    """Brute-force nearest neighbours; the reference every approximate index is measured against.

    Args:
        metric: ``"ip"`` (inner product) or ``"cosine"``.
        block_floats: queries are scored in blocks of at most this many scores (memory bound:
            32M float32 scores is 128 MiB).
    """

    kind = "exact"

    def __init__(self, metric: str = "ip", *, block_floats: int = 1 << 25) -> None:
        check_metric(metric)
        self.metric = metric
        self.block_floats = block_floats
        self.dim_: int | None = None

    def __len__(self) -> int:
        return 0 if self.dim_ is None else len(self.ids_)

    def build(self, vectors: np.ndarray, ids: Sequence[str] | np.ndarray) -> Self:
        vectors, self.ids_ = check_build_input(vectors, ids)
        self.vectors_ = normalise(vectors) if self.metric == "cosine" else vectors
        self.dim_ = vectors.shape[1]
        return self

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = check_queries(queries, self.dim_, k)
        if self.metric == "cosine":
            queries = normalise(queries)
        n = len(self.vectors_)
        k = min(k, n)
        out_idx = np.empty((len(queries), k), dtype=np.int64)
        out_scores = np.empty((len(queries), k), dtype=np.float32)
        step = max(1, self.block_floats // n)
        for start in range(0, len(queries), step):
            scores = queries[start : start + step] @ self.vectors_.T
            idx, values = top_k_rows(scores, k)
            out_idx[start : start + step], out_scores[start : start + step] = idx, values
        return self.ids_[out_idx], out_scores

    def save(self, path: str | Path) -> Path:
        if self.dim_ is None:
            raise VectorIndexError("the index is empty: call build(vectors, ids) first")
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / _DATA_FILE, self.vectors_, allow_pickle=False)
        write_manifest(folder, kind=self.kind, metric=self.metric, dim=self.dim_, ids=self.ids_, config={}, data_file=_DATA_FILE)
        return folder

    @classmethod
    def load(cls, path: str | Path) -> Self:
        manifest, data_path = read_manifest(path, kind=cls.kind)
        index = cls(manifest["metric"])
        index.vectors_ = np.load(data_path, allow_pickle=False)
        index.ids_ = manifest["ids"]
        index.dim_ = int(manifest["dim"])
        if index.vectors_.shape != (len(index.ids_), index.dim_):
            raise VectorIndexError(f"{path}: vectors {index.vectors_.shape} do not match the manifest")
        return index

