"""Feature definitions, computed offline (point-in-time, DuckDB) and online (incremental), from one declaration.

Importing this package does no work; the engines are imported with it because they are light.
"""

from shelf.features.definitions import (
    DAY,
    GROUPS,
    HOUR,
    MONTH,
    NO_HISTORY_SECONDS,
    WEEK,
    Attribute,
    CandidateField,
    ContextField,
    EventAggregate,
    Feature,
    FeatureDefinitionError,
    FeatureFrame,
    FeatureSet,
    Relative,
    SessionField,
    SourceScore,
    default_feature_set,
    relative_feature_set,
    source_score_features,
)
from shelf.features.leakage import LeakageReport, audit_leakage
from shelf.features.offline import compute_offline
from shelf.features.online import OnlineFeatures
from shelf.features.vocab import OOV, Vocabulary

__all__ = [
    "DAY",
    "GROUPS",
    "HOUR",
    "MONTH",
    "NO_HISTORY_SECONDS",
    "OOV",
    "WEEK",
    "Attribute",
    "CandidateField",
    "ContextField",
    "EventAggregate",
    "Feature",
    "FeatureDefinitionError",
    "FeatureFrame",
    "FeatureSet",
    "LeakageReport",
    "OnlineFeatures",
    "Relative",
    "SessionField",
    "SourceScore",
    "Vocabulary",
    "audit_leakage",
    "compute_offline",
    "default_feature_set",
    "relative_feature_set",
    "source_score_features",
]
