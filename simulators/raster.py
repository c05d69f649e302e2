"""Rasterising primitives: probe-blurred columns, discs and smooth fields on a frame.

All functions take the per-pixel stage offsets ``dx, dy`` (shape (rows, cols),
relative to the field centre) produced by :class:`~simulators.scan.ScanGeometry`,
so every distortion of the scan is honoured exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from simulators.features import WobblyDiscs
from simulators.scan import ScanGeometry


def splat_columns(
    geometry: ScanGeometry,
    x_nm: np.ndarray,
    y_nm: np.ndarray,
    row_f: np.ndarray,
    col_f: np.ndarray,
    weight: np.ndarray,
    sigma_nm: float,
    radius_px: int,
    mask: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    mask_radius_nm: float = 0.0,
) -> np.ndarray:
    """Sum of area-normalised Gaussians ``sum_i w_i exp(-d_i^2 / 2 s^2) / (2 pi s^2)`` per pixel.

    Each column is evaluated on a (2k+1)^2 patch around the pixel nearest to
    its position in the frame, at the pixels' true (distorted) positions.  The
    distance is computed in scan coordinates (u along the lines, v across),
    where it separates into a per-line part (jitter, drift) and a per-pixel
    part (nominal position, flyback); drift is taken at the patch's centre
    column, an error of ``k * dwell * v_drift`` (micro-nanometres).

    Parameters
    ----------
    geometry
        The frame's scan geometry, with its distortion.
    x_nm, y_nm
        (n,) stage positions of the columns.
    row_f, col_f
        (n,) the columns' sub-pixel frame coordinates (patch centres).
    weight
        (n,) weights.
    sigma_nm
        Gaussian sigma of the effective probe, nm.
    radius_px
        Patch half-width k in pixels.
    mask, labels, mask_radius_nm
        When given, ``mask`` (rows, cols) uint8 is updated in place with
        ``max(mask, label)`` for pixels within ``mask_radius_nm`` of a column.

    Returns
    -------
    ndarray
        (rows, cols) float64, units of weight per nm^2.
    """
    scan, px, k = geometry.scan, geometry.px, radius_px
    rows, cols = scan.rows, scan.cols
    if len(weight) == 0:
        return np.zeros((rows, cols))
    r0 = np.rint(row_f).astype(np.int64)
    c0 = np.rint(col_f).astype(np.int64)
    # Only patches that can touch the frame; raster order keeps the scatter cache-friendly.
    touches = (r0 >= -k) & (r0 <= rows - 1 + k) & (c0 >= -k) & (c0 <= cols - 1 + k)
    order = np.flatnonzero(touches)[np.argsort((r0 * (cols + 1) + c0)[touches], kind="stable")]
    r0, c0, weight = r0[order], c0[order], weight[order]
    ua, va = geometry.scan_coordinates(x_nm[order], y_nm[order])
    off = np.arange(-k, k + 1)
    ri = r0[:, None] + off  # (n, K)
    ci = c0[:, None] + off
    shift_u, shift_v = geometry.line_shift(ri, c0[:, None])
    dv = ((ri - geometry.row_center) * px + shift_v - va[:, None]).astype(np.float32)
    du_col = (ci - geometry.col_center) * px + geometry.flyback(ci.astype(np.float64)) - ua[:, None]
    du = du_col.astype(np.float32)[:, None, :] + shift_u.astype(np.float32)[:, :, None]  # (n, K, K)
    d2 = du * du + (dv * dv)[:, :, None]
    amp = (weight / (2.0 * np.pi * sigma_nm**2)).astype(np.float32)
    g = np.exp(d2 * np.float32(-0.5 / sigma_nm**2)) * amp[:, None, None]
    wpad = cols + 4 * k  # pad by 2k so every patch pixel has an index; crop afterwards
    flat = ((ri + 2 * k) * wpad)[:, :, None] + (ci + 2 * k)[:, None, :]
    size = (rows + 4 * k) * wpad
    # int64 indices and float64 weights: bincount converts anything else, slowly.
    out = np.bincount(flat.ravel(), weights=g.ravel().astype(np.float64), minlength=size)
    crop = (slice(2 * k, 2 * k + rows), slice(2 * k, 2 * k + cols))
    if mask is not None and labels is not None:
        hit = d2 < np.float32(mask_radius_nm**2)
        lab = np.broadcast_to(labels[order].astype(np.uint8)[:, None, None], hit.shape)
        padded = np.zeros(size, dtype=np.uint8)
        np.maximum.at(padded, flat[hit], lab[hit])
        np.maximum(mask, padded.reshape(rows + 4 * k, wpad)[crop], out=mask)
    return out.reshape(rows + 4 * k, wpad)[crop]


def _interp_matrix(n_full: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    knots = np.unique(np.r_[np.arange(0, n_full, stride), n_full - 1])
    eye = np.eye(len(knots))
    return knots, np.stack([np.interp(np.arange(n_full), knots, e) for e in eye])


def smooth_field(
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    geometry: ScanGeometry,
    stride: int,
    rows: slice = slice(None),
    cols: slice = slice(None),
) -> np.ndarray:
    """Evaluate a smooth field on every ``stride``-th pixel and interpolate bilinearly.

    Parameters
    ----------
    fn
        The field, evaluated at absolute stage coordinates (x_nm, y_nm).
    geometry
        The frame's scan geometry (gives the pixels' true positions).
    stride
        Sampling step in pixels (1 evaluates every pixel).
    rows, cols
        The part of the frame to cover (the whole frame by default).

    Returns
    -------
    ndarray
        Shape of the selected part, float64.
    """
    r0, r1, _ = rows.indices(geometry.scan.rows)
    c0, c1, _ = cols.indices(geometry.scan.cols)
    if stride <= 1:
        x, y = geometry.positions_at(np.arange(r0, r1), np.arange(c0, c1))
        return np.asarray(fn(x, y), dtype=np.float64)
    rk, wr = _interp_matrix(r1 - r0, stride)
    ck, wc = _interp_matrix(c1 - c0, stride)
    x, y = geometry.positions_at(rk + r0, ck + c0)
    return wr.T @ np.asarray(fn(x, y), dtype=np.float64) @ wc


def disc_slices(
    discs: WobblyDiscs, indices: np.ndarray, geometry: ScanGeometry, reach: float, pad_px: int
) -> list[tuple[int, slice, slice]]:
    """For each disc, the (row, col) slices of the frame its ``reach * max radius`` can touch."""
    scan = geometry.scan
    out = []
    for j in indices:
        r = reach * discs.max_radii_nm[j]
        cx, cy = discs.centers_nm[j]
        xs = cx + np.array([-r, r, -r, r])
        ys = cy + np.array([-r, -r, r, r])
        row, col = geometry.to_pixels(xs, ys)  # (drift exactly: a window that misses none of the disc)
        r0 = max(int(np.floor(row.min())) - pad_px, 0)
        r1 = min(int(np.ceil(row.max())) + pad_px + 1, scan.rows)
        c0 = max(int(np.floor(col.min())) - pad_px, 0)
        c1 = min(int(np.ceil(col.max())) + pad_px + 1, scan.cols)
        if r0 < r1 and c0 < c1:
            out.append((int(j), slice(r0, r1), slice(c0, c1)))
    return out
