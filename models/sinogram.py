"""Sinograms on the inpainting grid: masks of measured angles, input packing, per-sample scaling.

Shared by training (torch) and inference (onnxruntime): no torch here.  The grid is the TomoFillNet
convention, ``N_ANGLES`` angles at 180 / N_ANGLES degrees from -90.  A sinogram is ``(angles, detector)``.
"""

from __future__ import annotations

import numpy as np

N_ANGLES = 128
GRID_DEG = -90.0 + (180.0 / N_ANGLES) * np.arange(N_ANGLES)


def grid_index(angles_deg: np.ndarray) -> np.ndarray:
    """The grid row nearest each angle (angles beyond +90 wrap to -90 with the detector mirrored: not used)."""
    angles = np.asarray(angles_deg, dtype=np.float64)
    return np.clip(np.round((angles + 90.0) / (180.0 / N_ANGLES)).astype(np.int64), 0, N_ANGLES - 1)


def pack(sinograms: np.ndarray, measured: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Network input ``(B, 2, A, D)`` float32 (scaled sinogram with unmeasured rows zeroed, mask) and scales.

    Parameters
    ----------
    sinograms : (B, A, D) projected density on the grid (unmeasured rows are ignored).
    measured : (B, A) bool, True where a row was measured.

    Returns
    -------
    inputs : (B, 2, A, D) float32.
    scale : (B,) float64, divide-by factors (the 99th percentile of measured values; 1 for an empty one).
    """
    b, a, d = sinograms.shape
    scale = np.ones(b)
    for i in range(b):
        values = sinograms[i][measured[i]]
        if values.size:
            scale[i] = max(float(np.percentile(values, 99)), 1e-6)
    x = np.zeros((b, 2, a, d), dtype=np.float32)
    x[:, 0] = np.where(measured[:, :, None], sinograms / scale[:, None, None], 0.0)
    x[:, 1] = measured[:, :, None].astype(np.float32)
    return x, scale


def unpack(mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Network output ``(B, 1, A, D)`` back to projected density ``(B, A, D)``."""
    return mean[:, 0] * scale[:, None, None]
