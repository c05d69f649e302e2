"""``bayes``: Gaussian-process Bayesian optimisation of a per-field reward over stage coordinates."""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.policies.acquire import GPPolicy


class BayesPolicy(GPPolicy):
    """A GP over (x, y) (scaled to the region) of the reward; see :class:`GPPolicy` for the acquisitions.

    Hyperparameters (length scales, output scale, noise) are refitted every ``refit_every`` new
    observations by maximising the marginal likelihood.
    """

    name = "bayes"

    def candidate_inputs(self) -> np.ndarray:
        """Candidate centres scaled to about [-1, 1] over the region."""
        cx, cy = self.context.region.center_nm
        half = 0.5 * max(*self.context.region.size_nm, self.context.field.fov_nm)
        return (self.xy - np.array([cx, cy])) / half

    def make_surrogate(self) -> Any:
        """A GP on the two scaled coordinates."""
        from agent.policies.gp import GPSurrogate

        return GPSurrogate(dims=2, refit_every=self.config.refit_every, seed=self.context.seed)
