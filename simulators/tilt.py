"""Single-axis tilt series of a phantom: parallel projections at any angle, with dose-dependent noise.

Convention (shared with the reconstruction in :mod:`models.tomo`): the volume is ``(z, y, x)``, the
tilt axis is ``y``, and a projection at ``tilt_deg`` is an image ``(y, x)``: row ``y`` of every
projection is one sinogram, the Radon transform of slice ``volume[:, y, :]`` (scikit-image's
``radon`` convention: at 0 degrees the beam runs along ``z`` and the detector along ``x``).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from skimage.transform import radon


class TiltImaging(BaseModel):
    """How projections are recorded."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    dose_e_per_px: float = Field(2000.0, gt=0.0, description="Electrons per detector pixel per projection.")
    signal_per_voxel: float = Field(0.02, gt=0.0, description="Detected fraction per unit density and voxel.")
    background: float = Field(0.01, ge=0.0, description="Detected fraction through vacuum.")
    reachable_deg: tuple[float, float] = Field((-70.0, 70.0), description="The holder's tilt range.")


def project(volume: np.ndarray, tilt_deg: float) -> np.ndarray:
    """Noise-free projection of ``volume`` (z, y, x) at ``tilt_deg`` about ``y``: an (y, x) float32 image.

    Each (z, x) slab must be square (``z`` as deep as ``x`` is wide): the projection keeps the circle
    inscribed in it, which a slab of other proportions would crop, losing mass or failing.

    Raises
    ------
    ValueError
        If the volume is not 3-D or its ``z`` and ``x`` sizes differ.
    """
    if volume.ndim != 3 or volume.shape[0] != volume.shape[2]:
        raise ValueError(f"volume must be (z, y, x) with z as deep as x is wide, got shape {volume.shape}")
    n_y = volume.shape[1]
    out = np.empty((n_y, volume.shape[2]), dtype=np.float32)
    for j in range(n_y):
        slab = volume[:, j, :]
        out[j] = radon(slab, theta=[tilt_deg], circle=True)[:, 0] if slab.any() else 0.0
    return out


def record_projection(
    volume: np.ndarray, tilt_deg: float, imaging: TiltImaging, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A noisy projection in detected electrons per pixel, and its noise-free expectation.

    ``counts ~ Poisson(D * (b + k * p))`` with ``D`` the dose per pixel, ``b`` the background fraction,
    ``k`` the detected fraction per unit projected density and ``p`` the projection.

    Raises
    ------
    ValueError
        For a tilt outside the holder's reachable range.
    """
    low, high = imaging.reachable_deg
    if not (np.isfinite(tilt_deg) and low <= tilt_deg <= high):
        raise ValueError(f"tilt_deg={tilt_deg!r} is outside the reachable [{low:g}, {high:g}] deg")
    expected = imaging.dose_e_per_px * (imaging.background + imaging.signal_per_voxel * project(volume, tilt_deg))
    return rng.poisson(np.clip(expected, 0, None)).astype(np.float32), expected.astype(np.float32)


def to_projected_density(counts: np.ndarray, imaging: TiltImaging) -> np.ndarray:
    """Invert :func:`record_projection`'s expectation: counts -> projected density (what back-projection wants)."""
    return (counts / imaging.dose_e_per_px - imaging.background) / imaging.signal_per_voxel
