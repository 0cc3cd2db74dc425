from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from shelf.evaluation import metrics as M
from shelf.evaluation.errors import InvalidCutoffError, ModelOutputError
from shelf.evaluation.segments import paired_bootstrap


def rel(rows: list[dict[int, float]], n_items: int) -> sp.csr_matrix:
    data, r, c = [], [], []
    for i, row in enumerate(rows):
        for item, g in row.items():
            r.append(i)
            c.append(item)
            data.append(g)
    return sp.csr_matrix((data, (r, c)), shape=(len(rows), n_items))


def test_top_k_orders_by_score_and_breaks_ties_by_index() -> None:
    s = np.array([[0.1, 0.9, 0.5, 0.9, 0.2], [1, 1, 1, 1, 1]], dtype=np.float32)
    assert M.top_k(s, 3).tolist() == [[1, 3, 2], [0, 1, 2]]


def test_top_k_pads_minus_inf_as_missing() -> None:
    s = np.array([[0.3, -np.inf, 0.7, -np.inf]])
    assert M.top_k(s, 3).tolist() == [[2, 0, -1]]


def test_top_k_refuses_nan_and_bad_k() -> None:
    with pytest.raises(ModelOutputError):
        M.top_k(np.array([[0.1, np.nan]]), 1)
    with pytest.raises(InvalidCutoffError):
        M.top_k(np.zeros((1, 3)), 4)
    with pytest.raises(InvalidCutoffError):
        M.check_cutoffs([10, 50], 20)


def test_top_k_matches_stable_argsort_on_random_and_tied_blocks() -> None:
    rng = np.random.default_rng(3)
    for scores in (rng.standard_normal((50, 500)), np.round(rng.standard_normal((50, 500)), 1), rng.integers(0, 3, (20, 400)).astype(float)):
        for k in (1, 7, 40):
            assert (M.top_k(scores, k) == np.argsort(-scores, axis=1, kind="stable")[:, :k]).all()


def test_hand_computed_case() -> None:
    # user 0: ranked [1, 3, 2], relevant {3, 4}; user 1: ranked [0, -1, -1], relevant {0}
    ranked = np.array([[1, 3, 2], [0, -1, -1]])
    r = rel([{3: 1, 4: 1}, {0: 1}], 5)
    out = M.ranking_metrics(ranked, r, [1, 3])
    assert out[("recall", 3)].tolist() == [0.5, 1.0]
    assert out[("precision", 3)].tolist() == pytest.approx([1 / 3, 1 / 3])  # fewer than K: still /K
    assert out[("hitrate", 1)].tolist() == [0.0, 1.0]
    assert out[("mrr", 3)].tolist() == [0.5, 1.0]
    assert out[("mrr", 1)].tolist() == [0.0, 1.0]
    idcg0 = 1 + 1 / np.log2(3)
    assert out[("ndcg", 3)][0] == pytest.approx((1 / np.log2(3)) / idcg0)
    assert out[("ndcg", 3)][1] == pytest.approx(1.0)
    assert out[("map", 3)][0] == pytest.approx((1 / 2) / 2)


def test_empty_relevance_is_nan_not_zero() -> None:
    out = M.ranking_metrics(np.array([[0, 1]]), rel([{}], 3), [2])
    assert all(np.isnan(v[0]) for v in out.values())


def test_graded_ndcg() -> None:
    ranked = np.array([[0, 1, 2]])
    r = rel([{1: 3.0, 2: 1.0}], 3)
    dcg = 3 / np.log2(3) + 1 / np.log2(4)
    idcg = 3 + 1 / np.log2(3)
    assert M.ranking_metrics(ranked, r, [3])[("ndcg", 3)][0] == pytest.approx(dcg / idcg)


def _loop_ndcg_recall(scores: np.ndarray, r: sp.csr_matrix, k: int) -> tuple[list[float], list[float]]:
    nd, rc = [], []
    for u in range(scores.shape[0]):
        order = sorted(range(scores.shape[1]), key=lambda i: (-scores[u, i], i))[:k]
        gains = dict(zip(r[u].indices.tolist(), r[u].data.tolist(), strict=True))
        if not gains:
            nd.append(float("nan"))
            rc.append(float("nan"))
            continue
        dcg = sum(gains.get(i, 0.0) / np.log2(pos + 2) for pos, i in enumerate(order))
        ideal = sorted(gains.values(), reverse=True)[:k]
        idcg = sum(g / np.log2(pos + 2) for pos, g in enumerate(ideal))
        nd.append(dcg / idcg)
        rc.append(sum(1 for i in order if i in gains) / len(gains))
    return nd, rc


def test_ndcg_and_recall_match_a_loop_implementation_on_random_data() -> None:
    rng = np.random.default_rng(7)
    scores = np.round(rng.standard_normal((60, 80)), 1)  # rounding makes ties
    dense = (rng.random((60, 80)) < 0.06) * rng.integers(1, 4, (60, 80))
    r = sp.csr_matrix(dense.astype(float))
    for k in (1, 5, 20):
        out = M.ranking_metrics(M.top_k(scores, k), r, [k])
        nd, rc = _loop_ndcg_recall(scores, r, k)
        np.testing.assert_allclose(out[("ndcg", k)], nd, equal_nan=True)
        np.testing.assert_allclose(out[("recall", k)], rc, equal_nan=True)


def test_beyond_accuracy() -> None:
    ranked = np.array([[0, 1, -1], [0, 2, 3]])
    ex = M.exposure_counts(ranked, 5)
    assert ex.tolist() == [2, 1, 1, 1, 0]
    assert M.catalogue_coverage(ex) == pytest.approx(0.8)
    assert M.gini(np.array([1, 1, 1, 1])) == pytest.approx(0.0)
    assert M.gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)
    pop = np.array([0.5, 0.25, 0.25, 0.125, 1.0])
    assert M.novelty(ranked, pop).tolist() == pytest.approx([1.5, 2.0])
    assert M.average_popularity(ranked, pop).tolist() == pytest.approx([0.375, (0.5 + 0.25 + 0.125) / 3])
    cats = np.array([0, 0, 1, 1, 2])
    assert M.intra_list_diversity(ranked, cats).tolist() == pytest.approx([0.0, 2 / 3])
    assert M.new_item_share(ranked, np.array([1, 0, 0, 0, 0], bool)).tolist() == pytest.approx([0.5, 1 / 3])


def test_probability_metrics() -> None:
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.8, 0.8])
    pairs = [(a, b) for a in p[y == 1] for b in p[y == 0]]
    loop_auc = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])
    assert M.roc_auc(y, p) == pytest.approx(loop_auc)
    assert M.log_loss(y, p) == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    # bins of width 0.5: [0.1, 0.4, 0.35] -> rate 1/3; [0.8]*3 -> rate 2/3
    ece = (3 * abs(np.mean([0.1, 0.4, 0.35]) - 1 / 3) + 3 * abs(0.8 - 2 / 3)) / 6
    assert M.expected_calibration_error(y, p, n_bins=2) == pytest.approx(ece)
    acc = M.ProbabilityAccumulator()
    acc.add(p[:3], y[:3])
    acc.add(p[3:], y[3:])
    assert acc.auc() == pytest.approx(loop_auc)
    assert acc.log_loss() == pytest.approx(M.log_loss(y, p))
    with pytest.raises(ModelOutputError):
        M.log_loss(y, p + 1)


def test_paired_bootstrap_finds_a_real_difference_and_not_a_null_one() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(500)
    better = paired_bootstrap(base + 0.05, base, n_resamples=500)
    assert better.low > 0 and better.significant
    same = paired_bootstrap(base + rng.normal(0, 0.01, 500), base, n_resamples=500)
    assert same.low < 0 < same.high


def test_public_api_is_exported() -> None:
    import shelf.evaluation as ev

    for name in ev.__all__:
        assert getattr(ev, name) is not None


def _masked_top_k(scores: np.ndarray, excluded: sp.csr_matrix, k: int) -> np.ndarray:
    masked = scores.copy()
    masked[np.repeat(np.arange(scores.shape[0]), np.diff(excluded.indptr)), excluded.indices] = -np.inf
    ref = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(masked, ref, 1) == -np.inf, -1, ref)


def test_top_k_matches_stable_argsort_on_odd_shapes_and_minus_inf() -> None:
    rng = np.random.default_rng(11)
    for trial in range(200):
        n, m = int(rng.integers(1, 12)), int(rng.integers(1, 2500))
        k = int(rng.integers(1, m + 1))
        scores = rng.standard_normal((n, m)).astype(np.float32 if trial % 2 else np.float64)
        if trial % 3 == 1:
            scores = np.round(scores, 1)
        if trial % 5 == 2:
            scores[rng.random((n, m)) < 0.5] = -np.inf
        assert (M.top_k(scores, k) == _masked_top_k(scores, sp.csr_matrix((n, m)), k)).all(), (n, m, k)


def test_drop_excluded_of_a_wider_top_k_equals_masking_the_scores() -> None:
    rng = np.random.default_rng(5)
    for trial in range(100):
        n, m, k = int(rng.integers(1, 10)), int(rng.integers(20, 400)), int(rng.integers(1, 15))
        scores = np.round(rng.standard_normal((n, m)), 1)
        if trial % 4 == 3:
            scores[rng.random((n, m)) < 0.3] = -np.inf
        excluded = sp.csr_matrix((rng.random((n, m)) < 0.05).astype(np.float32))
        width = min(m, k + int(np.diff(excluded.indptr).max(initial=0)))
        # rows sliced out of a bigger matrix: the pointers start above zero
        padded = sp.vstack([sp.csr_matrix(np.ones((2, m), dtype=np.float32)), excluded]).tocsr()
        got = M.drop_excluded(M.top_k(scores, width), padded.indptr[2:], padded.indices, k)
        assert (got == _masked_top_k(scores, excluded, k)).all(), trial


def test_one_pass_views_equal_masked_rankings_for_light_and_heavy_users() -> None:
    from shelf.evaluation.runner import _rank_views

    rng = np.random.default_rng(2)
    n, m, k = 40, 3000, 10
    scores = np.round(rng.standard_normal((n, m)), 1).astype(np.float32)
    seen = (rng.random((n, m)) < 0.003).astype(np.float32)
    seen[3, rng.choice(m, 400, replace=False)] = 1  # heavy users: ranked again with a mask
    seen[17, : m // 2] = 1
    seen = sp.csr_matrix(seen)
    before = scores.copy()
    out = _rank_views(scores, seen.indptr, seen.indices, k, ("all", "new"))
    assert (scores == before).all()  # the model's block is left as it was
    masked = np.where(seen.toarray() > 0, -np.inf, scores)
    assert (out["all"] == np.argsort(-scores, axis=1, kind="stable")[:, :k]).all()
    assert (out["new"] == np.argsort(-masked, axis=1, kind="stable")[:, :k]).all()


def test_scoring_ahead_gives_the_same_results_as_scoring_in_line(shop) -> None:
    from datetime import timedelta

    from shelf.evaluation.peers import ALSPeer, Popularity
    from shelf.evaluation.runner import EvaluationOptions, evaluate
    from shelf.evaluation.splits import TableSource, TemporalSplit

    from .conftest import START

    split = TemporalSplit(START + timedelta(days=45), timedelta(days=15))
    results = [
        evaluate(TableSource(*shop), split, {"als": ALSPeer, "popularity": Popularity}, ks=(5, 10), options=EvaluationOptions(batch_size=16, score_ahead=ahead))
        for ahead in (False, True)
    ]
    rows = [[(r.model, r.view, r.k, r.metric, r.value, r.n_users) for r in result.rows] for result in results]
    assert rows[0] == rows[1]
