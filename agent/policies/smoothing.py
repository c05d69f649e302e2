"""Kernel smoothing of per-field values over the stage (the surrogate of the heuristic policies)."""

from __future__ import annotations

import numpy as np


def kernel_smooth(
    observed_xy: np.ndarray, values: np.ndarray, query_xy: np.ndarray, length_nm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Nadaraya-Watson estimate with a Gaussian kernel, and how much data supports it.

    ``w_ij = exp(-|q_i - o_j|^2 / (2 l^2))``, ``mean_i = sum_j w_ij v_j / sum_j w_ij``.

    Parameters
    ----------
    observed_xy : (m, 2) float, stage positions of the observed fields, nm.
    values : (m,) float, one value per observed field.
    query_xy : (n, 2) float, where to estimate.
    length_nm : kernel length scale, nm.

    Returns
    -------
    mean : (n,) float64, the estimate (0 where no data is near).
    support : (n,) float64, ``sum_j w_ij``: about the number of observations within one length scale.
    """
    if len(observed_xy) == 0:
        return np.zeros(len(query_xy)), np.zeros(len(query_xy))
    w = np.exp(-0.5 * squared_distances(query_xy, observed_xy) / length_nm**2)
    support = w.sum(1)
    mean = (w @ np.asarray(values, dtype=np.float64)) / np.maximum(support, 1e-12)
    return np.where(support > 1e-9, mean, 0.0), support


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``|a_i - b_j|^2`` for (n, 2) and (m, 2) arrays, shape (n, m), without an (n, m, 2) temporary."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d2 = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d2, 0.0)


def overlap_fraction(query_xy: np.ndarray, visited_xy: np.ndarray, fov_nm: float) -> np.ndarray:
    """Largest fraction of each query field's area already scanned by one visited field (axis-aligned squares).

    Returns
    -------
    (n,) float64 in [0, 1].
    """
    if len(visited_xy) == 0:
        return np.zeros(len(query_xy))
    dx = np.abs(query_xy[:, None, 0] - visited_xy[None, :, 0])
    dy = np.abs(query_xy[:, None, 1] - visited_xy[None, :, 1])
    area = np.clip(fov_nm - dx, 0, None) * np.clip(fov_nm - dy, 0, None)
    return area.max(1) / fov_nm**2
