"""A seeded, reproducible synthetic shop: catalogue, shoppers, their events, and their reactions.

Used by tests, demos and scale benchmarks, and to close the loop offline: ``Simulator`` writes
raw records in the canonical column names (they pass ``shelf.schema``'s validators), keeps the
true preferences it drew (``Simulator.truth``) so tests can check that a model learns something
real, and ``ShopEnvironment`` shows a policy's recommendations to simulated shoppers.

Nothing is drawn at import or construction; the ground truth is drawn on first use.
"""

from shelf.datasets.simulate.config import SimulationConfig
from shelf.datasets.simulate.environment import Policy, SessionOutcome, ShopEnvironment
from shelf.datasets.simulate.simulator import Simulator
from shelf.datasets.simulate.truth import GroundTruth

__all__ = [
    "GroundTruth",
    "Policy",
    "SessionOutcome",
    "ShopEnvironment",
    "SimulationConfig",
    "Simulator",
]
