"""Shared machinery of the heuristic adaptive policies: an optimistic smoothed estimate per candidate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.guard import Decision
from agent.observation import Observation
from agent.policies.base import CandidatePolicy, PolicyContext
from agent.policies.smoothing import kernel_smooth, overlap_fraction


@dataclass(frozen=True)
class ScoreWeights:
    """How a heuristic policy trades value against exploration, travel and revisits.

    Attributes
    ----------
    length_nm : smoothing length; about the size of the structures sought (defect hot spots: 5-20 nm).
    prior_weight : pseudo-observations of the optimistic prior at an unvisited place (kappa below).
    travel_cost : score lost per field of view travelled.
    revisit_penalty : score lost per unit of field area already scanned.
    """

    length_nm: float = 25.0
    prior_weight: float = 0.5
    travel_cost: float = 0.02
    revisit_penalty: float = 1.0


class ScoredPolicy(CandidatePolicy):
    """Choose the open candidate of highest score (subclasses say what a field's value is).

    ``estimate_i = (S_i m_i + kappa p) / (S_i + kappa)`` with ``m_i``, ``S_i`` the kernel-smoothed value
    and its support (:func:`~agent.policies.smoothing.kernel_smooth`) and ``p`` an optimistic prior (the
    90th percentile of the values seen): places with little data look promising until visited.
    ``score_i = estimate_i / scale - travel_cost * d_i / fov - revisit_penalty * overlap_i`` where
    ``scale`` is the spread of the values seen, ``d_i`` the distance from the current position and
    ``overlap_i`` the largest fraction of the field already scanned.
    """

    def __init__(self, context: PolicyContext, weights: ScoreWeights | None = None) -> None:
        super().__init__(context)
        self.weights = weights or ScoreWeights()
        self._xy: list[tuple[float, float]] = []
        self._values: list[float] = []

    def value(self, observation: Observation) -> float:
        """A field's value (higher is better)."""
        raise NotImplementedError

    def ingest(self, observation: Observation) -> None:
        """Record the field's value at its position."""
        super().ingest(observation)
        if observation.atoms_resolved:
            self._xy.append((observation.header.x_nm, observation.header.y_nm))
            self._values.append(self.value(observation))

    def scores(self) -> tuple[np.ndarray, np.ndarray]:
        """Score and optimistic estimate of every candidate, shape (n,) each."""
        w, fov = self.weights, self.context.field.fov_nm
        values = np.asarray(self._values)
        seen = np.asarray(self._xy).reshape(-1, 2)
        mean, support = kernel_smooth(seen, values, self.xy, w.length_nm)
        prior = float(np.percentile(values, 90)) if len(values) else 1.0
        estimate = (support * mean + w.prior_weight * prior) / (support + w.prior_weight)
        scale = float(values.std()) if len(values) > 1 and values.std() > 0 else 1.0
        here = self.position or self.context.region.center_nm
        distance = np.hypot(self.xy[:, 0] - here[0], self.xy[:, 1] - here[1])
        score = (
            estimate / scale - w.travel_cost * distance / fov - w.revisit_penalty * overlap_fraction(self.xy, seen, fov)
        )
        return score, estimate

    def suggest(self, n: int = 1) -> list[Decision]:
        """The ``n`` open candidates of highest score."""
        if not self.open.any():
            return []
        score, estimate = self.scores()
        usable = self.choosable()
        score = np.where(usable, score, -np.inf)
        best = np.argsort(-score)[: min(n, int(usable.sum()))]
        return [
            self.decide(
                int(i), score=float(score[i]), predicted_value=float(estimate[i]), observed_fields=len(self._values)
            )
            for i in best
        ]
