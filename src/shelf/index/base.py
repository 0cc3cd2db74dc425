"""The index protocol, its error, input checks and the on-disk layout shared by implementations.

A saved index is a folder::

    manifest.json   {"format": "shelf-vector-index", "format_version": 1, "kind": "exact"|"faiss",
                     "metric": ..., "dim": ..., "config": {...}, "ids": [...],
                     "data": {"file": ..., "sha256": ...}}
    <data file>     vectors.npy (exact, read with allow_pickle=False) or index.faiss

The manifest is written last (a half-written folder is refused) and the checksum of the data
file is verified before any library parses it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, Self, runtime_checkable

import numpy as np

from shelf.errors import ShelfError
from shelf.fsutil import file_sha256

FORMAT_NAME = "shelf-vector-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

Metric = Literal["ip", "cosine"]
METRICS: tuple[str, ...] = ("ip", "cosine")


class VectorIndexError(ShelfError):
    """Misuse of an index (empty, wrong dimension, bad k) or an unreadable saved index."""


@runtime_checkable
class VectorIndex(Protocol):
    """Nearest neighbours by inner product (``"ip"``) or cosine similarity (``"cosine"``).

    ``search`` returns ``(ids, scores)``, both ``(n_queries, min(k, n))``: raw ids (object
    array) best first and float32 scores. An approximate index may find fewer than ``k`` for a
    query; those slots hold id ``None`` and score ``-inf``.
    """

    metric: str

    def build(self, vectors: np.ndarray, ids: Sequence[str] | np.ndarray) -> Self: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def save(self, path: str | Path) -> Path: ...

    @classmethod
    def load(cls, path: str | Path) -> Self: ...


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise VectorIndexError(f"metric must be one of {METRICS}, got {metric!r}")


def check_build_input(vectors: np.ndarray, ids: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 C-contiguous ``(n, d)`` vectors and an object array of unique string ids."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise VectorIndexError(f"vectors must be a 2-d array (n, d) with d >= 1, got shape {vectors.shape}")
    if vectors.shape[0] == 0:
        raise VectorIndexError("cannot build an index from zero vectors")
    ids_array = np.asarray([str(i) for i in ids], dtype=object)
    if len(ids_array) != len(vectors):
        raise VectorIndexError(f"got {len(vectors)} vectors but {len(ids_array)} ids")
    if len(set(ids_array.tolist())) != len(ids_array):
        raise VectorIndexError("ids must be unique")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(vectors).all():
        raise VectorIndexError("vectors contain NaN or infinite values")
    return vectors, ids_array


def check_queries(queries: np.ndarray, dim: int | None, k: int) -> np.ndarray:
    if dim is None:
        raise VectorIndexError("the index is empty: call build(vectors, ids) or load(path) first")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise VectorIndexError(f"k must be a positive integer, got {k!r}")
    queries = np.asarray(queries)
    if queries.ndim == 1:
        queries = queries[None, :]
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise VectorIndexError(f"queries must have shape (q, {dim}) for this index, got {queries.shape}")
    return np.ascontiguousarray(queries, dtype=np.float32)


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def write_manifest(folder: Path, *, kind: str, metric: str, dim: int, ids: np.ndarray, config: dict[str, Any], data_file: str) -> None:
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "metric": metric,
        "dim": dim,
        "config": config,
        "ids": [str(i) for i in ids.tolist()],
        "data": {"file": data_file, "sha256": file_sha256(folder / data_file)},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def read_manifest(path: str | Path, kind: str | None = None) -> tuple[dict[str, Any], Path]:
    """The verified manifest of a saved index and the path of its (checksum-verified) data file."""
    folder = Path(path)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise VectorIndexError(f"{folder}: no {MANIFEST}; not a saved index (or its save did not finish)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VectorIndexError(f"{manifest_path}: corrupted manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise VectorIndexError(f"{manifest_path}: not a shelf vector index manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise VectorIndexError(f"{manifest_path}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise VectorIndexError(
            f"{folder}: saved with index format version {version}, newer than this shelf reads "
            f"({FORMAT_VERSION}); upgrade shelf to load it"
        )
    if kind is not None and manifest.get("kind") != kind:
        raise VectorIndexError(f"{folder}: holds a {manifest.get('kind')!r} index, expected {kind!r}")
    try:
        data_path = folder / str(manifest["data"]["file"])
        expected = manifest["data"]["sha256"]
        check_metric(manifest["metric"])
        int(manifest["dim"])
        manifest["ids"] = np.asarray(manifest["ids"], dtype=object)
    except (KeyError, TypeError, ValueError) as exc:
        raise VectorIndexError(f"{manifest_path}: incomplete manifest ({exc})") from exc
    if not data_path.is_file():
        raise VectorIndexError(f"{data_path}: missing")
    if file_sha256(data_path) != expected:
        raise VectorIndexError(f"{data_path}: checksum mismatch; the file is corrupted or was altered")
    return manifest, data_path


def load_index(path: str | Path) -> VectorIndex:
    """Load any saved index, choosing its class from the manifest's kind (explicit registry)."""
    from shelf.index.exact import ExactIndex
    from shelf.index.faiss_index import FaissIndex

    kinds: dict[str, Any] = {"exact": ExactIndex, "faiss": FaissIndex}
    manifest, _ = read_manifest(path)
    try:
        cls = kinds[manifest["kind"]]
    except KeyError:
        raise VectorIndexError(f"{path}: unknown index kind {manifest.get('kind')!r}; known: {sorted(kinds)}") from None
    return cls.load(path)


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of the ``k`` largest entries of each row, best first."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    values = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(values, order, axis=1)
