"""faiss-backed approximate search: HNSW (default) or IVF-Flat, inner product or cosine.

Chosen by ``bench/bench_ann.py`` over hnswlib and usearch: see BENCHMARKS.md for the numbers.
faiss is an optional dependency (``shelf[ann]``), imported only when an index is built/loaded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np

from shelf.index.base import (
    VectorIndexError,
    check_build_input,
    check_metric,
    check_queries,
    normalise,
    read_manifest,
    write_manifest,
)

_DATA_FILE = "index.faiss"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise VectorIndexError("FaissIndex needs faiss: pip install 'shelf[ann]' (faiss-cpu)") from exc
    return faiss


@dataclass(frozen=True)
class FaissConfig:
    """Structure and accuracy/speed knobs.

    Attributes:
        structure: ``"hnsw"`` (graph; best speed at high recall, slower build) or ``"ivf"``
            (inverted lists over k-means cells; fast build, more memory traffic per query).
        hnsw_m: graph degree (memory ~ 2 * m * 4 bytes per vector on top of the vectors).
        ef_construction: HNSW build beam; higher builds slower and a better graph.
        ef_search: HNSW search beam; the main recall/speed knob at query time (>= k is used).
        ivf_lists: IVF cells; ``None`` means ``4 * sqrt(n)``.
        nprobe: IVF cells visited per query.
        seed: seeds IVF's k-means training sample.
    """

    structure: Literal["hnsw", "ivf"] = "hnsw"
    hnsw_m: int = 32
    ef_construction: int = 100
    ef_search: int = 128
    ivf_lists: int | None = None
    nprobe: int = 24
    seed: int = 0

    def __post_init__(self) -> None:
        if self.structure not in ("hnsw", "ivf"):
            raise VectorIndexError(f"FaissConfig.structure must be 'hnsw' or 'ivf', got {self.structure!r}")
        for name in ("hnsw_m", "ef_construction", "ef_search", "nprobe"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise VectorIndexError(f"FaissConfig.{name} must be a positive integer, got {value!r}")
        if self.ivf_lists is not None and self.ivf_lists < 1:
            raise VectorIndexError(f"FaissConfig.ivf_lists must be >= 1 or None, got {self.ivf_lists!r}")


class FaissIndex:
    """Approximate nearest neighbours with faiss (see :class:`FaissConfig`)."""

    kind = "faiss"

    def __init__(self, metric: str = "ip", config: FaissConfig | None = None) -> None:
        check_metric(metric)
        self.metric = metric
        self.config = FaissConfig() if config is None else config
        self.dim_: int | None = None

    def __len__(self) -> int:
        return 0 if self.dim_ is None else len(self.ids_)

    def build(self, vectors: np.ndarray, ids: Sequence[str] | np.ndarray) -> Self:
        faiss = _faiss()
        vectors, ids_array = check_build_input(vectors, ids)
        if self.metric == "cosine":
            vectors = normalise(vectors)
        n, dim = vectors.shape
        cfg = self.config
        if cfg.structure == "hnsw":
            index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = cfg.ef_construction
        else:
            # faiss wants >= 39 training points per cell; small catalogues get fewer cells.
            lists = cfg.ivf_lists or int(4 * math.sqrt(n))
            lists = max(1, min(lists, n // 39 or 1))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
            sample = np.random.default_rng(cfg.seed).permutation(n)[: lists * 64]
            index.cp.seed = cfg.seed
            index.train(vectors[np.sort(sample)])
        index.add(vectors)
        self.index_, self.ids_, self.dim_ = index, ids_array, dim
        return self

    def _apply_search_params(self, k: int) -> None:
        if self.config.structure == "hnsw":
            self.index_.hnsw.efSearch = max(self.config.ef_search, k)
        else:
            self.index_.nprobe = self.config.nprobe

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = check_queries(queries, self.dim_, k)
        if self.metric == "cosine":
            queries = normalise(queries)
        k = min(k, len(self.ids_))
        self._apply_search_params(k)
        scores, labels = self.index_.search(queries, k)
        missing = labels < 0
        ids = self.ids_[np.where(missing, 0, labels)]
        ids[missing] = None
        scores = np.where(missing, -np.inf, scores).astype(np.float32)
        return ids, scores

    def save(self, path: str | Path) -> Path:
        if self.dim_ is None:
            raise VectorIndexError("the index is empty: call build(vectors, ids) first")
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        _faiss().write_index(self.index_, str(folder / _DATA_FILE))
        config = dataclasses.asdict(self.config)
        write_manifest(folder, kind=self.kind, metric=self.metric, dim=self.dim_, ids=self.ids_, config=config, data_file=_DATA_FILE)
        return folder

    @classmethod
    def load(cls, path: str | Path) -> Self:
        manifest, data_path = read_manifest(path, kind=cls.kind)
        try:
            config = FaissConfig(**manifest["config"])
        except TypeError as exc:
            raise VectorIndexError(f"{path}: unknown FaissConfig fields ({exc})") from exc
        index = cls(manifest["metric"], config)
        try:
            index.index_ = _faiss().read_index(str(data_path))
        except RuntimeError as exc:
            raise VectorIndexError(f"{data_path}: faiss cannot read it ({exc})") from exc
        index.ids_, index.dim_ = manifest["ids"], int(manifest["dim"])
        if index.index_.ntotal != len(index.ids_) or index.index_.d != index.dim_:
            raise VectorIndexError(f"{path}: the faiss index does not match its manifest")
        return index
