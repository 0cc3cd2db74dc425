"""The packages export what their docs promise, and importing them does no work."""

from __future__ import annotations

import shelf.features
import shelf.models.ranking


def test_exports_resolve() -> None:
    for module in (shelf.features, shelf.models.ranking):
        for name in module.__all__:
            assert getattr(module, name) is not None, name
    assert {"FeatureSet", "OnlineFeatures", "compute_offline", "audit_leakage"} <= set(shelf.features.__all__)
    assert {"NeuralRanker", "LightGBMRanker", "CandidateGenerator", "ablate"} <= set(shelf.models.ranking.__all__)
