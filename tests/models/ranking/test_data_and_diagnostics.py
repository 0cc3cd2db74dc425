"""Ranking-set construction, calibration and diagnostics, and the ablation report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shelf.models.ranking import (
    Calibrator,
    CandidateGenerator,
    LightGBMRanker,
    LightGBMRankerConfig,
    PopularityCandidates,
    RankingSet,
    ablate,
    confusion_matrix,
    expected_calibration_error,
    partial_dependence,
    plot_diagnostics,
    precision_recall_curve,
    reliability_curve,
    roc_auc,
)


def test_ranking_set_labels_come_from_after_t_and_candidates(ranking_set: RankingSet, shop: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    events = shop[0]
    assert isinstance(PopularityCandidates(events), CandidateGenerator)
    assert 0 < ranking_set.labels.mean() < 1
    ex = ranking_set.examples
    for row in ex.filter(pc.equal(ex["label"], 1.0)).slice(0, 20).to_pylist():
        after = events.filter(pc.and_(
            pc.and_(pc.equal(events["user_id"], row["user_id"]), pc.equal(events["item_id"], row["item_id"])),
            pc.greater(events["timestamp"], pa.scalar(row["timestamp"], events["timestamp"].type)),
        ))
        assert after.num_rows > 0
    # negatives carry inverse sampling weights >= 1; positives weight 1
    assert np.all(ranking_set.weights[ranking_set.labels == 1] == 1)
    assert np.all(ranking_set.weights >= 1)
    train, valid = ranking_set.split_by_time(0.2)
    assert train.timestamp_us.max() <= valid.timestamp_us.min()


def test_calibrators_fix_a_miscalibrated_score() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-(2 * z - 1)))).astype(float)
    raw = 1 / (1 + np.exp(-z))
    for method in ("platt", "isotonic"):
        cal = Calibrator(method).fit(z, y)
        assert expected_calibration_error(y, cal(z)) < expected_calibration_error(y, raw)
        assert expected_calibration_error(y, cal(z)) < 0.03
        again = Calibrator.from_dict(cal.to_dict())
        np.testing.assert_allclose(again(z), cal(z))


def test_metric_helpers_on_known_values() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    assert roc_auc(y, p) == 0.75
    assert confusion_matrix(y, p, 0.5).tolist() == [[2, 0], [1, 1]]
    precision, recall, thresholds, ap = precision_recall_curve(y, p)
    assert recall[-1] == 1.0 and thresholds[0] == 0.8 and 0 < ap <= 1
    curve = reliability_curve(y, p, n_bins=2)
    assert curve.weight.sum() == 4


def test_ablation_and_plots(ranking_set: RankingSet, tmp_path: Path) -> None:
    def make() -> LightGBMRanker:
        return LightGBMRanker(LightGBMRankerConfig(max_rounds=40, early_stopping_rounds=10))

    results = ablate(ranking_set, make, ["candidate", "context"], n_boot=30)
    assert [r.group for r in results] == ["candidate", "context"]
    for r in results:
        assert r.ci_low <= r.delta + 1e-9 or r.ci_low <= r.ci_high
        assert np.isfinite(r.full) and np.isfinite(r.ablated)
    ranker = make().fit(ranking_set)
    grid, values = partial_dependence(ranker, ranking_set.features, "candidate_rank")
    assert len(grid) == len(values) and np.all((values >= 0) & (values <= 1))
    p = ranker.predict_frame(ranking_set.features)
    out = plot_diagnostics(ranking_set.labels, p, tmp_path / "diag.png", ranking_set.weights,
                           {"candidate_rank": (grid, values)})
    assert out.stat().st_size > 1000
