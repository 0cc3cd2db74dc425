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
