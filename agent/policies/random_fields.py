"""``random``: fields drawn uniformly from the open candidates (the other baseline)."""

from __future__ import annotations

import numpy as np

from agent.guard import Decision
from agent.policies.base import CandidatePolicy, PolicyContext


class RandomPolicy(CandidatePolicy):
    """Draw open candidates uniformly at random, without replacement, from a seeded generator."""

    name = "random"
    commits_ahead = True

    def __init__(self, context: PolicyContext) -> None:
        super().__init__(context)
        self._rng = np.random.default_rng([context.seed, 0x7A])

    def suggest(self, n: int = 1) -> list[Decision]:
        """Up to ``n`` random open fields."""
        out = []
        for _ in range(n):
            choices = np.flatnonzero(self.choosable())
            if not len(choices):
                break
            out.append(self.decide(int(self._rng.choice(choices)), open_fields=len(choices)))
        return out
