"""Choosing the ranker weight on the held cut: the NDCG estimate and the conservative choice."""

from __future__ import annotations

import numpy as np
import pytest

from shelf.models.ranking.selection import choose_weight, estimated_ndcg


def exact_ndcg(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    order = np.lexsort((labels, -scores))  # ties: negatives first, as the estimate does
    gains = labels[order][:k] / np.log2(np.arange(2, min(k, len(order)) + 2))
    ideal = (1.0 / np.log2(np.arange(2, min(k, int(labels.sum())) + 2))).sum()
    return float(gains.sum() / ideal)


def test_with_full_lists_the_estimate_is_the_exact_ndcg() -> None:
    rng = np.random.default_rng(3)
    request = np.repeat(np.arange(30), 25)
    labels = (rng.random(len(request)) < 0.1).astype(np.float64)
    labels[::25] = 1.0  # every request has a positive
    score = rng.integers(0, 8, len(request)).astype(np.float64)  # many ties
    got = estimated_ndcg(score, labels, np.ones(len(request)), request, k=10)
    want = [exact_ndcg(score[request == r], labels[request == r], 10) for r in range(30)]
    np.testing.assert_allclose(got, want)


def test_sampled_negatives_count_by_their_weight_and_requests_without_positives_are_nan() -> None:
    # One positive below a negative standing for 9 (weight 9): estimated rank 10 -> 1/log2(11).
    score = np.array([2.0, 1.0, 5.0, 4.0])
    labels = np.array([0.0, 1.0, 0.0, 0.0])
    weights = np.array([9.0, 1.0, 1.0, 1.0])
    request = np.array([0, 0, 1, 1])
    got = estimated_ndcg(score, labels, weights, request, k=10)
    assert got[0] == pytest.approx(1.0 / np.log2(11.0))
    assert np.isnan(got[1])
    assert estimated_ndcg(score, labels, np.array([10.0, 1.0, 1.0, 1.0]), request, k=10)[0] == 0.0


def shop(n_requests: int, signal: float, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    request = np.repeat(np.arange(n_requests), 20)
    labels = (rng.random(len(request)) < 0.15).astype(np.float64)
    prior = rng.random(len(request))  # retrieval's order knows nothing here
    p_ranker = np.clip(signal * labels + rng.random(len(request)) * 0.5, 0, 1)
    return prior, p_ranker, labels, np.ones(len(request)), request


def test_a_ranker_that_clearly_wins_gets_weight() -> None:
    choice = choose_weight(*shop(200, signal=0.6))
    assert choice.weight > 0 and choice.gain_lower_95 > 0
    assert choice.ndcg[choice.weight] > choice.ndcg[0.0]


def test_a_ranker_that_knows_nothing_keeps_retrievals_order() -> None:
    choice = choose_weight(*shop(200, signal=0.0))
    assert choice.weight == 0.0


def test_too_few_requests_keep_retrievals_order_and_the_grid_needs_zero() -> None:
    prior, p_ranker, labels, weights, request = shop(1, signal=0.9)
    labels[:] = 0
    labels[0] = 1
    assert choose_weight(prior, p_ranker, labels, weights, request).weight == 0.0
    with pytest.raises(ValueError, match="contain 0"):
        choose_weight(*shop(10, 0.5), grid=(0.5, 1.0))
