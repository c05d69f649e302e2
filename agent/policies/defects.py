"""``defects``: seek defect-rich regions, exploiting their spatial clustering."""

from __future__ import annotations

from agent.observation import Observation
from agent.policies.scored import ScoredPolicy


class DefectPolicy(ScoredPolicy):
    """Seek fields where many distinct defects are expected.

    Defects cluster in hot spots a few to a few tens of nm across, so the kernel-smoothed count of new
    defects around a candidate predicts its yield; already-scanned area is penalised (a defect counts
    once), and travel costs a little.
    """

    name = "defects"

    def value(self, observation: Observation) -> float:
        """Distinct defects first seen in this field."""
        return float(observation.new_defects)
