"""Tomographic reconstruction of single-axis tilt series: weighted back-projection and SART.

Convention (see :mod:`simulators.tilt`): a tilt series is ``(n_tilts, rows, cols)``; with
``tilt_axis="rows"`` the tilt axis runs along the image rows' index (``y``), so each row ``y`` of the
series is a sinogram and the volume is ``(z, y, x)``; with ``tilt_axis="cols"`` the images are
transposed first.  Angles are in degrees, 0 = beam along ``z``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from skimage.transform import iradon, iradon_sart

Method = Literal["wbp", "sart"]
METHODS = ("wbp", "sart")


class TomoError(ValueError):
    """A tilt series or its angles that cannot be reconstructed (the problem is named)."""


#: Fewest detector pixels across the tilt axis a projection may have (a volume is that wide).
MIN_DETECTOR_PX = 4


def require_real(dtype: np.dtype, where: str = "") -> None:
    """Refuse projections that are not real numbers (complex, bool, object...); ``where`` prefixes the message.

    Raises
    ------
    TomoError
        Naming the dtype.
    """
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise TomoError(f"{where}projections must be real numbers, not {dtype}")


def check_series(series: np.ndarray, angles_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return ``(series float32, angles float64)``.

    Raises
    ------
    TomoError
        Not 3-D, angles not matching the first axis, fewer than 2 tilts, complex or non-numeric values,
        projections narrower than ``MIN_DETECTOR_PX`` or without rows, non-finite values, repeated angles,
        angles outside [-180, 360] degrees, or five or more angles all within +-pi (radians, surely).
    """
    series = np.asarray(series)
    angles = np.asarray(angles_deg, dtype=np.float64)
    if series.ndim != 3:
        raise TomoError(f"a tilt series is (n_tilts, rows, cols); got shape {series.shape}")
    if angles.shape != (series.shape[0],):
        raise TomoError(f"{series.shape[0]} projections but {angles.size} angles")
    if series.shape[0] < 2:
        raise TomoError("at least 2 projections are needed")
    require_real(series.dtype)
    if series.shape[1] < 1 or series.shape[2] < MIN_DETECTOR_PX:
        raise TomoError(
            f"projections of {series.shape[1]} x {series.shape[2]} pixels: at least 1 row and "
            f"{MIN_DETECTOR_PX} pixels across the tilt axis are needed"
        )
    if not np.isfinite(angles).all() or not np.isfinite(series).all():
        raise TomoError("the tilt series or its angles contain NaN or Inf")
    if len(np.unique(np.round(angles, 6))) != len(angles):
        raise TomoError("repeated tilt angles")
    if angles.min() < -180.0 or angles.max() > 360.0:
        raise TomoError(f"tilt angles span {angles.min():g} to {angles.max():g} deg, outside [-180, 360]")
    if len(angles) >= 5 and np.abs(angles).max() <= math.pi + 1e-9:
        widest = np.abs(angles).max()
        raise TomoError(f"{len(angles)} tilts within +-{widest:.3g} deg: are they in radians? autoscope reads degrees")
    return series.astype(np.float32, copy=False), angles


#: The largest volume reconstructed (4 GiB of float32).
MAX_VOLUME_VOXELS = 10**9


def reconstruct(
    series: np.ndarray,
    angles_deg: np.ndarray,
    method: Method = "wbp",
    tilt_axis: Literal["rows", "cols"] = "rows",
    sart_iterations: int = 2,
) -> np.ndarray:
    """Reconstruct a volume ``(z, y, x)`` (float32, ``x``-by-``x`` slices) slice by slice.

    ``wbp``: filtered (ramp) back-projection, each projection weighted by its share of the angles
    (:func:`angular_weights`); ``sart``: ``sart_iterations`` passes of the simultaneous
    algebraic reconstruction technique, each starting from the previous one.

    Raises
    ------
    TomoError
        For a bad series, bad angles or an unknown method.
    """
    if method not in METHODS:
        raise TomoError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    if tilt_axis == "cols" and np.ndim(series) == 3:  # (before the check: the detector is then along rows)
        series = np.asarray(series).transpose(0, 2, 1)
    series, angles = check_series(series, angles_deg)
    order = np.argsort(angles)
    series, angles = series[order], angles[order]
    _, rows, cols = series.shape
    voxels = cols * rows * cols
    if voxels > MAX_VOLUME_VOXELS:  # (a 3 x 1 x 40000 series asked for 6 GiB, and ended in a MemoryError)
        raise TomoError(
            f"projections of {rows} x {cols} px make a {cols} x {rows} x {cols} volume ({4 * voxels / 2**30:.1f} GiB "
            f"of float32), more than {MAX_VOLUME_VOXELS:.0e} voxels: crop or bin the projections first"
        )
    weights = angular_weights(angles)
    volume = np.empty((cols, rows, cols), dtype=np.float32)
    for y in range(rows):
        sinogram = series[:, y, :].T.astype(np.float64)  # (detector, angle), scikit-image's layout
        if method == "wbp":
            sinogram = sinogram * weights[None, :]
        volume[:, y, :] = _slice(sinogram, angles, method, sart_iterations)
    return volume


def _slice(sinogram: np.ndarray, angles: np.ndarray, method: Method, iterations: int) -> np.ndarray:
    if method == "wbp":
        return iradon(sinogram, theta=angles, filter_name="ramp", circle=True, output_size=sinogram.shape[0])
    image = None
    for _ in range(max(1, iterations)):
        image = iradon_sart(sinogram, theta=angles, image=image, relaxation=0.15)
    assert image is not None
    return image


def angular_weights(sorted_angles_deg: np.ndarray) -> np.ndarray:
    """Quadrature weights of back-projection for uneven tilts: each projection's share of the angles.

    ``w_i = (theta_{i+1} - theta_{i-1}) / 2`` (one-sided at the ends), normalised to mean 1, so evenly
    spaced tilts get 1 each and a crowded angle does not count several times over.
    """
    a = np.asarray(sorted_angles_deg, dtype=np.float64)
    if len(a) < 2:
        return np.ones(len(a))
    gaps = np.diff(a)
    w = np.empty(len(a))
    w[0], w[-1] = gaps[0], gaps[-1]
    w[1:-1] = 0.5 * (gaps[:-1] + gaps[1:])
    return w / w.mean()


def psnr_db(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Peak signal-to-noise ratio, dB, with the truth's range as the peak."""
    mse = float(np.mean((np.asarray(estimate, np.float64) - truth) ** 2))
    peak = float(truth.max() - truth.min()) or 1.0
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)
