"""``uncertainty``: go where the model knows least."""

from __future__ import annotations

import math

from agent.observation import Observation
from agent.policies.scored import ScoredPolicy


class UncertaintyPolicy(ScoredPolicy):
    """Seek fields of high expected epistemic uncertainty.

    A field's value is its frame OOD score (mean mutual information in calibration standard deviations)
    when the model is calibrated, else its mean mutual information in millinats; unvisited places get
    the optimistic estimate of :class:`~agent.policies.scored.ScoredPolicy`.
    """

    name = "uncertainty"

    def value(self, observation: Observation) -> float:
        """OOD score, or mean mutual information (mnats) without calibration."""
        if math.isfinite(observation.ood_score):
            return observation.ood_score
        return 1e3 * observation.uncertainty["mean_mutual_info"]
