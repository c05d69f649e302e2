"""Shared part of the GP policies (``bayes``, ``dkl``): initial design, acquisition, penalties."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.guard import Decision
from agent.observation import Observation
from agent.policies.base import CandidatePolicy, PolicyContext
from agent.policies.smoothing import overlap_fraction

ACQUISITIONS = ("ucb", "ei", "thompson")


def new_defects(observation: Observation) -> float:
    """The default reward: distinct defects first seen in the field."""
    return float(observation.new_defects)


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AcquisitionConfig:
    """Acquisition and its penalties.

    Attributes
    ----------
    acquisition : ``ucb``, ``ei`` or ``thompson``.
    beta : UCB exploration weight.
    xi : EI margin, reward units.
    travel_cost : acquisition lost per field of view travelled (in reward standard deviations).
    revisit_penalty : acquisition lost per unit of field area already scanned (reward standard deviations).
    refit_every : refit hyperparameters after this many new observations (not every step).
    initial_fields : random fields before the first fit.
    thompson_points : a Thompson sample is drawn jointly over at most this many open candidates.
    """

    acquisition: str = "ucb"
    beta: float = 2.0
    xi: float = 0.01
    travel_cost: float = 0.02
    revisit_penalty: float = 1.0
    refit_every: int = 5
    initial_fields: int = 3
    thompson_points: int = 1024

    def __post_init__(self) -> None:
        if self.acquisition not in ACQUISITIONS:
            raise ValueError(f"acquisition must be one of {', '.join(ACQUISITIONS)} (got {self.acquisition!r})")


class GPPolicy(CandidatePolicy):
    """Choose fields by a GP surrogate of the reward; subclasses say what the GP sees of a candidate.

    Acquisition ``a_i`` over open candidates (``mu``, ``sigma``: posterior mean and standard deviation
    of the reward, ``f*`` the best reward seen):

    * UCB: ``a = mu + beta * sigma``;
    * EI: ``a = (mu - f* - xi) Phi(z) + sigma phi(z)``, ``z = (mu - f* - xi) / sigma``;
    * Thompson: ``a = f~``, one joint draw from the posterior.

    ``score_i = a_i / s - travel_cost * d_i / fov - revisit_penalty * overlap_i`` with ``s`` the spread of
    the rewards seen, ``d_i`` the distance from the current position, ``overlap_i`` the fraction of the
    field already scanned.  The first ``initial_fields`` fields are drawn at random.
    """

    def __init__(
        self,
        context: PolicyContext,
        reward: Callable[[Observation], float] | None = None,
        config: AcquisitionConfig | None = None,
    ) -> None:
        super().__init__(context)
        self.reward = reward or new_defects
        self.config = config or AcquisitionConfig()
        self._rng = np.random.default_rng([context.seed, 0xB0])
        self._seen_index: list[int] = []
        self._rewards: list[float] = []
        self._surrogate: Any = None
        self.last_decision_s = 0.0
        import agent.policies.gp  # noqa: F401 (torch and gpytorch load now, not inside the first decision)

    # -- what subclasses provide ---------------------------------------------------------------------
    def candidate_inputs(self) -> np.ndarray:
        """GP inputs of every candidate, shape (n, d)."""
        raise NotImplementedError

    def make_surrogate(self) -> Any:
        """A fresh :class:`~agent.policies.gp.GPSurrogate`."""
        raise NotImplementedError

    # -- the protocol --------------------------------------------------------------------------------
    def ingest(self, observation: Observation) -> None:
        """Record the reward of a high-resolution field."""
        super().ingest(observation)
        h = observation.header
        if observation.atoms_resolved and abs(h.fov_nm - self.context.field.fov_nm) < 1e-6:
            reward = float(self.reward(observation))
            if not math.isfinite(reward):  # the surrogate cannot learn from it; the field stays closed
                logger.warning("reward %r at (%g, %g) nm is not finite: not for the surrogate", reward, h.x_nm, h.y_nm)
                return
            self._seen_index.append(self._index_of(h.x_nm, h.y_nm))
            self._rewards.append(reward)

    def suggest(self, n: int = 1) -> list[Decision]:
        """Up to ``n`` fields: at random for the initial design, then by acquisition."""
        if not self.open.any():
            return []
        if len(self._rewards) < self.config.initial_fields:
            return self._at_random(n, "initial design")
        t0 = time.perf_counter()
        score, parts = self._scores()
        usable = self.choosable() & np.isfinite(score)  # a closed field is never chosen, nor one scored NaN
        if not usable.any():  # the surrogate failed everywhere: an open field at random, said so
            return self._at_random(n, "random: the surrogate's scores are not finite")
        score = np.where(usable, score, -np.inf)
        best = np.argsort(-score)[: min(n, int(usable.sum()))]
        self.last_decision_s = time.perf_counter() - t0
        return [
            self.decide(
                int(i),
                acquisition=self.config.acquisition,
                acquisition_value=float(parts["acquisition"][i]),
                predicted_reward=float(parts["mean"][i]),
                uncertainty=float(parts["std"][i]),
                score=float(score[i]),
                refitted=bool(parts["refitted"]),
                observations=len(self._rewards),
            )
            for i in best
        ]

    def _at_random(self, n: int, phase: str) -> list[Decision]:
        """Up to ``n`` distinct choosable fields drawn at random, with ``phase`` as their rationale."""
        choices = np.flatnonzero(self.choosable())
        picks = self._rng.choice(choices, size=min(n, len(choices)), replace=False)
        return [self.decide(int(i), phase=phase) for i in picks]

    def _scores(self) -> tuple[np.ndarray, dict[str, Any]]:
        from agent.policies.gp import expected_improvement, standardisation

        c, fov = self.config, self.context.field.fov_nm
        if self._surrogate is None:
            self._surrogate = self.make_surrogate()
        inputs = self.candidate_inputs()
        rewards = np.asarray(self._rewards)
        refitted = self._surrogate.update(inputs[self._seen_index], rewards)
        mean, std = self._surrogate.predict(inputs)
        if c.acquisition == "ucb":
            acq = mean + c.beta * std
        elif c.acquisition == "ei":
            acq = expected_improvement(mean, std, float(rewards.max()), c.xi)
        else:
            acq = np.full(len(mean), -np.inf)
            open_idx = np.flatnonzero(self.open)
            if len(open_idx) > c.thompson_points:
                open_idx = np.sort(self._rng.choice(open_idx, c.thompson_points, replace=False))
            acq[open_idx] = self._surrogate.sample(inputs[open_idx], int(self._rng.integers(2**31)))
        spread = standardisation(rewards)[1]
        here = self.position or self.context.region.center_nm
        distance = np.hypot(self.xy[:, 0] - here[0], self.xy[:, 1] - here[1])
        seen_xy = self.xy[self._seen_index]
        score = (
            acq / spread - c.travel_cost * distance / fov - c.revisit_penalty * overlap_fraction(self.xy, seen_xy, fov)
        )
        return score, {"acquisition": acq, "mean": mean, "std": std, "refitted": refitted}
