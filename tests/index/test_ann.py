"""Vector indexes: recall against exact search, persistence, and misuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shelf.index import (
    ExactIndex,
    FaissConfig,
    FaissIndex,
    VectorIndex,
    VectorIndexError,
    load_index,
)

FACTORIES = {
    "exact": lambda metric: ExactIndex(metric),
    "faiss-hnsw": lambda metric: FaissIndex(metric, FaissConfig(structure="hnsw")),
    "faiss-ivf": lambda metric: FaissIndex(metric, FaissConfig(structure="ivf")),
}


def clustered(n: int, d: int = 32, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """Item-embedding-like vectors: cluster centres plus noise, with varied norms."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    x = centres[rng.integers(clusters, size=n)] + 0.5 * rng.normal(size=(n, d))
    return (x * rng.lognormal(0.0, 0.3, size=(n, 1))).astype(np.float32)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(5000)


IDS = np.array([f"item{i}" for i in range(5000)], dtype=object)


def recall(truth: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(t) & set(f)) / len(t) for t, f in zip(truth.tolist(), found.tolist(), strict=True)]))


@pytest.mark.parametrize("metric", ["ip", "cosine"])
@pytest.mark.parametrize("name", ["faiss-hnsw", "faiss-ivf"])
def test_recall_against_exact(name: str, metric: str, vectors: np.ndarray) -> None:
    queries = clustered(300, seed=1)
    truth, _ = ExactIndex(metric).build(vectors, IDS).search(queries, 10)
    found, scores = FACTORIES[name](metric).build(vectors, IDS).search(queries, 10)
    assert found.shape == (300, 10) and scores.dtype == np.float32
    assert recall(truth, found) >= 0.95
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    # Scores are the true similarities of the returned items.
    position = {raw: i for i, raw in enumerate(IDS.tolist())}
    base = vectors / np.linalg.norm(vectors, axis=1, keepdims=True) if metric == "cosine" else vectors
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True) if metric == "cosine" else queries
    rows = np.array([[position[i] for i in row] for row in found.tolist()])
    true = np.einsum("qd,qkd->qk", q, base[rows])
    np.testing.assert_allclose(scores, true, rtol=1e-4, atol=1e-3)


def test_exact_matches_brute_force(vectors: np.ndarray) -> None:
    queries = clustered(7, seed=2)
    ids, scores = ExactIndex("cosine", block_floats=10_000).build(vectors, IDS).search(queries, 5)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    brute = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    expected = np.argsort(-brute, axis=1)[:, :5]
    assert ids.tolist() == IDS[expected].tolist()
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, 1), rtol=1e-5)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_save_load_round_trip(name: str, vectors: np.ndarray, tmp_path: Path) -> None:
    index = FACTORIES[name]("cosine").build(vectors, IDS)
    assert isinstance(index, VectorIndex)
    queries = clustered(20, seed=3)
    path = index.save(tmp_path / "ix")
    for loaded in (type(index).load(path), load_index(path)):
        a, b = index.search(queries, 10), loaded.search(queries, 10)
        assert a[0].tolist() == b[0].tolist()
        np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("name", list(FACTORIES))
def test_refuses_bad_files(name: str, vectors: np.ndarray, tmp_path: Path) -> None:
    index = FACTORIES[name]("ip").build(vectors[:500], IDS[:500])
    path = index.save(tmp_path / "ix")
    manifest = json.loads((path / "manifest.json").read_text())
    data = path / manifest["data"]["file"]
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))
    with pytest.raises(VectorIndexError, match="checksum"):
        type(index).load(path)
    manifest["format_version"] = 2
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(VectorIndexError, match="newer"):
        type(index).load(path)
    with pytest.raises(VectorIndexError, match="no manifest"):
        type(index).load(tmp_path / "nothing")


@pytest.mark.parametrize("name", list(FACTORIES))
def test_k_larger_than_n(name: str, vectors: np.ndarray) -> None:
    index = FACTORIES[name]("ip").build(vectors[:40], IDS[:40])
    ids, scores = index.search(vectors[:3], 100)
    assert ids.shape == (3, 40)
    if name == "exact":
        assert all(sorted(row) == sorted(IDS[:40].tolist()) for row in ids.tolist())
    else:  # approximate: whatever is returned is real, best first, no duplicates
        for row, row_scores in zip(ids.tolist(), scores, strict=True):
            real = [i for i in row if i is not None]
            assert len(set(real)) == len(real) and np.all(np.diff(row_scores[np.isfinite(row_scores)]) <= 1e-6)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_misuse(name: str, vectors: np.ndarray) -> None:
    empty = FACTORIES[name]("ip")
    with pytest.raises(VectorIndexError, match="empty"):
        empty.search(vectors[:2], 5)
    with pytest.raises(VectorIndexError, match="zero vectors"):
        empty.build(np.zeros((0, 32), dtype=np.float32), [])
    index = FACTORIES[name]("ip").build(vectors[:100], IDS[:100])
    with pytest.raises(VectorIndexError, match="shape"):
        index.search(np.zeros((2, 31), dtype=np.float32), 5)
    with pytest.raises(VectorIndexError, match="k must"):
        index.search(vectors[:2], 0)
    with pytest.raises(VectorIndexError, match="ids"):
        FACTORIES[name]("ip").build(vectors[:10], IDS[:9])
    with pytest.raises(VectorIndexError, match="metric"):
        FACTORIES[name]("l2")
