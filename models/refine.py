"""Sub-pixel refinement of atom positions by a local 2-D Gaussian fit on the image.

Each column found by :func:`models.localize.localize` is refitted on the input image
with ``background + amplitude * exp(-|x - x0|^2 / (2 sigma^2))`` over the pixels of a
disc around it (radius: half the atoms' median nearest-neighbour spacing, so the
neighbours stay out) and one width shared by all columns.  All columns are fitted at
once by Levenberg-Marquardt with a damping factor per column.  A fit that fails (no
bright peak, the centre runs off, a centre the data determine too loosely, non-finite
numbers) keeps the starting position and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

_N_PARAMS = 5  # background, amplitude, row, col, sigma
_MIN_RADIUS_PX = 1.5
_MAX_RADIUS_PX = 20.0
_DEFAULT_RADIUS_PX = 3.0  # when fewer than two atoms give no spacing to go by
_MAX_ERROR_OF_RADIUS = 0.1  # default largest standard error of a kept centre, as a fraction of the radius
_SMOOTH_PX = 1.0  # smoothing of the image the columns' width is estimated on


@dataclass(frozen=True)
class Refinement:
    """Refined positions (all shape (n,)).

    Attributes
    ----------
    row, col : float64, refined position where the fit held, else the starting one (input pixels).
    error_px : float64, standard error of each fitted centre (NaN where it could not be computed).
    refined : bool, whether the fit held.
    sigma_px : the columns' Gaussian width used (given or estimated).
    radius_px : the fitting disc's radius.
    """

    row: np.ndarray
    col: np.ndarray
    error_px: np.ndarray
    sigma_px: float
    refined: np.ndarray
    radius_px: float


def fitting_radius_px(row: np.ndarray, col: np.ndarray) -> float:
    """Half the median nearest-neighbour spacing of the atoms, clipped to [1.5, 20] pixels."""
    if len(row) < 2:
        return _DEFAULT_RADIUS_PX
    dist, _ = cKDTree(np.column_stack([row, col])).query(np.column_stack([row, col]), k=2)
    return float(np.clip(0.5 * np.median(dist[:, 1]), _MIN_RADIUS_PX, _MAX_RADIUS_PX))


def refine_gaussian(
    image: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    radius_px: float | None = None,
    sigma_px: float | None = None,
    max_error_px: float | None = None,
    iterations: int = 12,
) -> Refinement:
    """Refit each atom at (``row``, ``col``) with a 2-D Gaussian on ``image``.

    Parameters
    ----------
    image
        (H, W) finite image, atoms bright (HAADF-like); in the same pixels as ``row``, ``col``.
    row, col
        (n,) starting positions (e.g. the centres of mass from :func:`models.localize.localize`).
    radius_px
        Radius of the fitting disc; by default half the median nearest-neighbour spacing.
    sigma_px
        The columns' Gaussian width, shared by all; by default estimated (see :func:`estimate_sigma_px`).
        One width for all keeps a fit from shrinking onto a noise spike, as a free width per column does
        at the doses of live imaging.
    max_error_px
        A fit whose centre's standard error (from the fit's covariance and residuals) exceeds this keeps
        the starting position: on a faint column in a noisy frame the fitted centre is worth less than
        the segmentation's centre of mass.  By default a tenth of the radius (a twentieth of the
        spacing), about the centre of mass's own error measured on simulated and abTEM frames.
    iterations
        Levenberg-Marquardt steps.

    Returns
    -------
    Refinement
        A fit is kept when its amplitude is positive, its centre moved less than half the radius and the
        centre's standard error is at most ``max_error_px``.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"the image must be 2-D, not of shape {image.shape}")
    row = np.asarray(row, dtype=np.float64)
    col = np.asarray(col, dtype=np.float64)
    radius = fitting_radius_px(row, col) if radius_px is None else float(radius_px)
    if not radius > 0:
        raise ValueError(f"the fitting radius must be positive, not {radius_px}")
    n = len(row)
    if n == 0:
        e = np.empty(0)
        return Refinement(e, e, e, float("nan"), e.astype(bool), radius)
    sigma = estimate_sigma_px(image, row, col, radius) if sigma_px is None else float(sigma_px)
    if not 0 < sigma <= radius:
        raise ValueError(f"the column width must lie in (0, radius {radius:.3g}] pixels, not {sigma:.3g}")
    rr, cc, values, weight = _windows(image, row, col, radius)
    start = _initial(values, weight, row, col, sigma)
    params, fitted, jac = _levenberg_marquardt(start, rr, cc, values, weight, iterations, free_sigma=False)
    error = _position_error(fitted, jac, values, weight)
    with np.errstate(invalid="ignore"):
        ok = _plausible(params, row, col, radius) & (
            error <= (_MAX_ERROR_OF_RADIUS * radius if max_error_px is None else max_error_px)
        )
    return Refinement(np.where(ok, params[:, 2], row), np.where(ok, params[:, 3], col), error, sigma, ok, radius)


def estimate_sigma_px(image: np.ndarray, row: np.ndarray, col: np.ndarray, radius_px: float) -> float:
    """The columns' Gaussian width: the median of free-width fits on the image smoothed by 1 pixel.

    The smoothing keeps the fits off single-pixel noise; its width is taken out again
    (``sigma^2 = fitted^2 - 1``).  Where no fit holds, a third of the radius.
    """
    smooth = ndimage.gaussian_filter(np.asarray(image, dtype=np.float64), _SMOOTH_PX)
    rr, cc, values, weight = _windows(smooth, row, col, radius_px)
    start = _initial(values, weight, row, col, radius_px / 2)
    params, _, _ = _levenberg_marquardt(start, rr, cc, values, weight, iterations=12, free_sigma=True)
    ok = _plausible(params, row, col, radius_px) & (params[:, 4] > _SMOOTH_PX) & (params[:, 4] <= radius_px)
    if not ok.any():
        return radius_px / 3
    return float(np.sqrt(np.median(params[ok, 4]) ** 2 - _SMOOTH_PX**2))


def _position_error(fitted: np.ndarray, jac: np.ndarray, values: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Standard error of a fixed-width fit's centre, sqrt(var_row + var_col), from its covariance (NaN if singular).

    ``fitted`` and ``jac``: the model and its Jacobian at the fitted parameters (the width's column,
    the last, is left out: it was not fitted).
    """
    free = _N_PARAMS - 1
    jac = jac[..., :free]
    dof = np.maximum(weight.sum(axis=1) - free, 1.0)
    noise_var = np.sum(weight * (values - fitted) ** 2, axis=1) / dof
    normal = (jac.transpose(0, 2, 1) * weight[:, None, :]) @ jac
    cov = np.full_like(normal, np.nan)
    with np.errstate(all="ignore"):  # (the determinant of a singular system may underflow)
        invertible = np.isfinite(normal).all(axis=(1, 2)) & (np.abs(np.linalg.det(normal)) > 1e-300)
    cov[invertible] = np.linalg.pinv(normal[invertible])
    with np.errstate(invalid="ignore"):
        return np.sqrt(noise_var * (cov[:, 2, 2] + cov[:, 3, 3]))


def _windows(
    image: np.ndarray, row: np.ndarray, col: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(n, k) pixel rows, columns, values and weights of the disc around each atom (0 weight outside)."""
    half = int(np.ceil(radius))
    offsets = np.arange(-half, half + 1)
    dr, dc = (a.ravel() for a in np.meshgrid(offsets, offsets, indexing="ij"))
    centre_r = np.rint(row).astype(np.int64)[:, None]
    centre_c = np.rint(col).astype(np.int64)[:, None]
    rr, cc = centre_r + dr, centre_c + dc
    inside = (rr >= 0) & (rr < image.shape[0]) & (cc >= 0) & (cc < image.shape[1])
    values = image[np.clip(rr, 0, image.shape[0] - 1), np.clip(cc, 0, image.shape[1] - 1)]
    in_disc = (rr - row[:, None]) ** 2 + (cc - col[:, None]) ** 2 <= radius**2
    return rr.astype(np.float64), cc.astype(np.float64), values, (inside & in_disc).astype(np.float64)


def _initial(values: np.ndarray, weight: np.ndarray, row: np.ndarray, col: np.ndarray, sigma: float) -> np.ndarray:
    """Starting (background, amplitude, row, col, sigma) per atom."""
    masked = np.where(weight > 0, values, np.nan)
    with np.errstate(all="ignore"):
        low = np.nanmin(masked, axis=1)
        high = np.nanmax(masked, axis=1)
    params = np.empty((len(row), _N_PARAMS))
    params[:, 0] = np.nan_to_num(low)
    params[:, 1] = np.nan_to_num(high - low)
    params[:, 2] = row
    params[:, 3] = col
    params[:, 4] = sigma
    return params


def _model(params: np.ndarray, rr: np.ndarray, cc: np.ndarray, free_sigma: bool) -> tuple[np.ndarray, np.ndarray]:
    """Model values and the (n, k, 5) Jacobian at ``params`` (its width column zero when the width is fixed)."""
    bg, amp, r0, c0, sigma = (params[:, i : i + 1] for i in range(_N_PARAMS))
    dr, dc = rr - r0, cc - c0
    d2 = dr**2 + dc**2
    gauss = np.exp(-d2 / (2 * sigma**2))
    peak = amp * gauss
    width = peak * d2 / sigma**3 if free_sigma else np.zeros_like(gauss)
    jac = np.stack([np.ones_like(gauss), gauss, peak * dr / sigma**2, peak * dc / sigma**2, width], -1)
    return bg + peak, jac


def _levenberg_marquardt(
    params: np.ndarray,
    rr: np.ndarray,
    cc: np.ndarray,
    values: np.ndarray,
    weight: np.ndarray,
    iterations: int,
    free_sigma: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least squares for all atoms at once, a damping factor per atom.

    Returns the fitted (n, 5) parameters, and the model and its Jacobian at them.
    """
    damping = np.full(len(params), 1e-2)
    fitted, jac = _model(params, rr, cc, free_sigma)
    cost = np.sum(weight * (fitted - values) ** 2, axis=1)
    eye = np.eye(_N_PARAMS)
    for _ in range(iterations):
        residual = values - fitted
        jtw = jac.transpose(0, 2, 1) * weight[:, None, :]
        normal = jtw @ jac
        scaled = normal + damping[:, None, None] * (normal * eye + 1e-12 * eye)
        step = _solve(scaled, np.einsum("nik,nk->ni", jtw, residual))
        trial = params + step
        trial[:, 4] = np.abs(trial[:, 4])
        trial_fit, trial_jac = _model(trial, rr, cc, free_sigma)
        trial_cost = np.sum(weight * (trial_fit - values) ** 2, axis=1)
        better = np.isfinite(trial_cost) & (trial_cost < cost)
        params = np.where(better[:, None], trial, params)
        fitted = np.where(better[:, None], trial_fit, fitted)
        jac = np.where(better[:, None, None], trial_jac, jac)
        cost = np.where(better, trial_cost, cost)
        damping = np.where(better, damping / 3, damping * 3)
    return params, fitted, jac


def _solve(matrices: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Batched solve; a singular system gives a zero step (that atom stays where it is)."""
    try:
        return np.linalg.solve(matrices, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        out = np.zeros_like(rhs)
        for i, (a, b) in enumerate(zip(matrices, rhs, strict=True)):
            try:
                out[i] = np.linalg.solve(a, b)
            except np.linalg.LinAlgError:
                continue
        return out


def _plausible(params: np.ndarray, row: np.ndarray, col: np.ndarray, radius: float) -> np.ndarray:
    """Fits to keep: finite, a bright peak, the centre moved less than radius / 2."""
    moved = np.hypot(params[:, 2] - row, params[:, 3] - col)
    with np.errstate(invalid="ignore"):
        return np.isfinite(params).all(axis=1) & (params[:, 1] > 0) & (moved < radius / 2)
