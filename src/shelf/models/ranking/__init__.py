"""Rankers: engagement probability of retrieved candidates, from point-in-time features.

Importing this package does no training and loads no model; torch and lightgbm are imported only
when a ranker trains or loads.
"""

from shelf.models.ranking._base import FeatureSource, Ranker, RankerBase
from shelf.models.ranking.ablation import AblationResult, ablate
from shelf.models.ranking.calibration import Calibrator
from shelf.models.ranking.data import (
    CandidateGenerator,
    LabelConfig,
    PopularityCandidates,
    RankingSet,
    build_ranking_set,
    sample_requests,
)
from shelf.models.ranking.diagnostics import (
    confusion_matrix,
    expected_calibration_error,
    log_loss,
    partial_dependence,
    plot_diagnostics,
    precision_recall_curve,
    reliability_curve,
    roc_auc,
    top_features,
)
from shelf.models.ranking.encoding import EncoderConfig, FeatureEncoder
from shelf.models.ranking.gbdt import LightGBMRanker, LightGBMRankerConfig
from shelf.models.ranking.neural import NeuralRanker, NeuralRankerConfig

__all__ = [
    "AblationResult",
    "CandidateGenerator",
    "Calibrator",
    "EncoderConfig",
    "FeatureEncoder",
    "FeatureSource",
    "LabelConfig",
    "LightGBMRanker",
    "LightGBMRankerConfig",
    "NeuralRanker",
    "NeuralRankerConfig",
    "PopularityCandidates",
    "Ranker",
    "RankerBase",
    "RankingSet",
    "ablate",
    "build_ranking_set",
    "confusion_matrix",
    "expected_calibration_error",
    "log_loss",
    "partial_dependence",
    "plot_diagnostics",
    "precision_recall_curve",
    "reliability_curve",
    "roc_auc",
    "sample_requests",
    "top_features",
]
