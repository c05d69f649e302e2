"""``dkl``: deep kernel learning from a low-magnification survey to the reward of high-resolution fields.

As in the automated-microscopy literature (a small network maps image patches to features, a GP on
those features predicts the property of interest, and the acquisition picks the next spot), adapted to
fields: one survey of the whole region first; each candidate's input is the survey patch around it;
the reward is measured in the high-resolution field there.  What the survey shows (holes,
contamination, thickness) then steers the search before any field nearby has been visited.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from agent.guard import Decision
from agent.observation import Observation
from agent.policies.acquire import AcquisitionConfig, GPPolicy
from agent.policies.base import PolicyContext


class DKLPolicy(GPPolicy):
    """Survey, then a GP with a neural feature extractor over survey patches.

    Parameters
    ----------
    context, reward, config
        As for :class:`~agent.policies.acquire.GPPolicy`.
    survey_pixels, survey_dwell_us
        The survey scan: one square field covering the region, at low dose.
    patch_pixels
        Side of the patch sampled around each candidate (covering ``patch_fields`` fields of view).
    feature_dims
        Output size of the feature extractor (the GP's input dimension).
    """

    name = "dkl"

    def __init__(
        self,
        context: PolicyContext,
        reward: Callable[[Observation], float] | None = None,
        config: AcquisitionConfig | None = None,
        survey_pixels: int = 512,
        survey_dwell_us: float = 2.0,
        patch_pixels: int = 8,
        patch_fields: float = 2.0,
        feature_dims: int = 4,
    ) -> None:
        super().__init__(context, reward, config)
        self.survey_pixels, self.survey_dwell_us = survey_pixels, survey_dwell_us
        self.patch_pixels, self.patch_fields, self.feature_dims = patch_pixels, patch_fields, feature_dims
        self._patches: np.ndarray | None = None
        self._survey_asked = False

    @property
    def surveyed(self) -> bool:
        """True once the survey frame was ingested."""
        return self._patches is not None

    def survey_decision(self) -> Decision:
        """One scan over the whole region plus a field's margin: square pixels, ``survey_pixels`` on its longer side.

        A region wider than tall gets a survey wider than tall (a square one would reach past the region,
        and past the stage, along the short side).
        """
        region, field = self.context.region, self.context.field
        width, height = region.size_nm[0] + field.fov_nm, region.size_nm[1] + field.fov_nm
        n = self.survey_pixels
        if width >= height:  # floor: the survey never reaches past the region's margin
            cols, rows = n, max(16, math.floor(n * height / width))
        else:
            rows, cols = n, max(16, math.floor(n * width / height))
        x, y = region.center_nm
        return Decision(
            "scan", x, y, width, rows, cols, self.survey_dwell_us, 0.0,
            rationale={"phase": "survey", "pixel_size_nm": width / cols},
        )  # fmt: skip

    def suggest(self, n: int = 1) -> list[Decision]:
        """The survey first (once), then as :class:`GPPolicy`."""
        if not self.surveyed:
            if self._survey_asked:
                return []  # the survey is in flight or was refused: nothing sensible to propose yet
            self._survey_asked = True
            return [self.survey_decision()]
        return super().suggest(n)

    def reject(self, decision: Decision, reason: str) -> None:
        """A refused survey is asked for once more; a refused field is closed."""
        if decision.rationale.get("phase") == "survey":
            self._survey_asked = False
            return
        super().reject(decision, reason)

    def release(self, decision: Decision) -> None:
        """A survey no one took is proposed again; a field opens again."""
        if decision.rationale.get("phase") == "survey":
            self._survey_asked = False
            return
        super().release(decision)

    def ingest(self, observation: Observation) -> None:
        """Take the survey's patches, or a field's reward."""
        h = observation.header
        if not self.surveyed and observation.image is not None and h.fov_nm > self.context.field.fov_nm:
            rotation = observation.rotation_deg
            self._patches = survey_patches(
                observation.image, h.x_nm, h.y_nm, h.pixel_size_nm, rotation, self.xy,
                self.patch_pixels, self.patch_fields * self.context.field.fov_nm,
            )  # fmt: skip
            self.position = (h.x_nm, h.y_nm)  # the stage is over the survey's centre now
            return
        super().ingest(observation)

    def candidate_inputs(self) -> np.ndarray:
        """Flattened, standardised survey patches, shape (n, patch_pixels**2)."""
        assert self._patches is not None
        return self._patches

    def make_surrogate(self) -> Any:
        """A GP on features from a two-layer perceptron (weights learned with the GP's hyperparameters)."""
        from agent.policies.gp import GPSurrogate, perceptron

        features = perceptron(self.patch_pixels**2, 32, self.feature_dims, seed=self.context.seed)
        return GPSurrogate(dims=self.feature_dims, features=features, refit_every=self.config.refit_every,
                           train_iters=80, seed=self.context.seed)  # fmt: skip


def survey_patches(
    image: np.ndarray,
    x_nm: float,
    y_nm: float,
    pixel_size_nm: float,
    rotation_deg: float,
    centres_xy: np.ndarray,
    patch_pixels: int,
    patch_nm: float,
) -> np.ndarray:
    """Sample a ``patch_pixels``-square patch of ``patch_nm`` around each centre from a survey image.

    Parameters
    ----------
    image : (rows, cols) survey frame centred at (x_nm, y_nm), scan rotation ``rotation_deg``.
    centres_xy : (n, 2) stage positions, nm.

    Returns
    -------
    (n, patch_pixels**2) float32, standardised by the survey's mean and standard deviation (0 outside).
    """
    img = np.asarray(image, dtype=np.float64)
    rows, cols = img.shape
    img = (img - img.mean()) / (img.std() or 1.0)
    step_nm = patch_nm / patch_pixels
    img = gaussian_filter(img, 0.5 * step_nm / pixel_size_nm)  # no aliasing when sampling every step_nm
    offsets = (np.arange(patch_pixels) - (patch_pixels - 1) / 2.0) * step_nm
    ox, oy = np.meshgrid(offsets, offsets)
    px = centres_xy[:, None, 0] + ox.ravel()[None, :]
    py = centres_xy[:, None, 1] + oy.ravel()[None, :]
    t = math.radians(rotation_deg)
    qx, qy = px - x_nm, py - y_nm
    u, v = math.cos(t) * qx + math.sin(t) * qy, -math.sin(t) * qx + math.cos(t) * qy
    col = u / pixel_size_nm + (cols - 1) / 2.0
    row = v / pixel_size_nm + (rows - 1) / 2.0
    values = map_coordinates(img, [row.ravel(), col.ravel()], order=1, mode="constant", cval=0.0)
    return values.reshape(len(centres_xy), patch_pixels**2).astype(np.float32)
