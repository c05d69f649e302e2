"""Mesoscale features of a specimen, as analytic fields over stage coordinates.

Everything here is evaluated at arbitrary points ``(x_nm, y_nm)`` (arrays of
any shape), so the same specimen renders at any magnification without
rasterising it first.  Features are small lists of parameters drawn once from
the specimen's seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_N_HARMONICS = 3


@dataclass(frozen=True)
class WobblyDiscs:
    """Discs whose radius wobbles with angle: holes and contamination patches.

    The boundary of disc ``j`` is ``R_j(theta) = R_j * (1 + sum_k a_jk cos(k theta + phi_jk))``
    for k = 2..4.

    Attributes
    ----------
    centers_nm
        Shape (n, 2), float64: (x_nm, y_nm) of each disc.
    radii_nm
        Shape (n,), mean radii.
    amplitudes, phases
        Shape (n, 3): harmonic amplitudes (relative) and phases (rad).
    """

    centers_nm: np.ndarray
    radii_nm: np.ndarray
    amplitudes: np.ndarray
    phases: np.ndarray

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        count: int,
        bounds: tuple[float, float, float, float],
        radius_range_nm: tuple[float, float],
    ) -> WobblyDiscs:
        """Draw ``count`` discs uniformly inside ``bounds`` = (x0, x1, y0, y1)."""
        x0, x1, y0, y1 = bounds
        centers = np.column_stack([rng.uniform(x0, x1, count), rng.uniform(y0, y1, count)])
        radii = rng.uniform(*radius_range_nm, count)
        amplitudes = rng.uniform(0.0, 0.12, (count, _N_HARMONICS))
        phases = rng.uniform(0.0, 2 * np.pi, (count, _N_HARMONICS))
        return cls(centers, radii, amplitudes, phases)

    @property
    def count(self) -> int:
        """Number of discs."""
        return len(self.radii_nm)

    @property
    def max_radii_nm(self) -> np.ndarray:
        """Upper bound of each disc's boundary radius, shape (n,)."""
        return self.radii_nm * (1.0 + self.amplitudes.sum(axis=1))

    def near(self, x0: float, x1: float, y0: float, y1: float, reach: float = 1.0) -> np.ndarray:
        """Indices of discs whose ``reach * max radius`` overlaps the box."""
        r = reach * self.max_radii_nm
        cx, cy = self.centers_nm[:, 0], self.centers_nm[:, 1]
        hit = (cx + r >= x0) & (cx - r <= x1) & (cy + r >= y0) & (cy - r <= y1)
        return np.flatnonzero(hit)

    def relative_distance(self, j: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``rho / R_j(theta)`` of points relative to disc ``j``: < 1 inside."""
        dx = x - self.centers_nm[j, 0]
        dy = y - self.centers_nm[j, 1]
        rho = np.hypot(dx, dy)
        safe = np.where(rho > 0, rho, 1.0)
        c, s = dx / safe, dy / safe
        # cos(k t) and sin(k t) from cos t, sin t: no arctan2 on the hot path.
        c2, s2 = 2 * c * c - 1, 2 * s * c
        c3, s3 = c * c2 - s * s2, s * c2 + c * s2
        c4, s4 = c2 * c2 - s2 * s2, 2 * s2 * c2
        wobble = np.ones_like(rho)
        for k, (ck, sk) in enumerate(((c2, s2), (c3, s3), (c4, s4))):
            a, p = self.amplitudes[j, k], self.phases[j, k]
            wobble += a * (ck * np.cos(p) - sk * np.sin(p))
        return rho / (self.radii_nm[j] * wobble)

    def edge_point(self, j: int, theta: float) -> tuple[float, float]:
        """A point on the boundary of disc ``j`` at angle ``theta`` (rad)."""
        k = np.arange(2, 2 + _N_HARMONICS)
        r = self.radii_nm[j] * (1 + np.sum(self.amplitudes[j] * np.cos(k * theta + self.phases[j])))
        return (float(self.centers_nm[j, 0] + r * np.cos(theta)), float(self.centers_nm[j, 1] + r * np.sin(theta)))


def _box(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    return float(np.min(x)), float(np.max(x)), float(np.min(y)), float(np.max(y))


def inside_holes(holes: WobblyDiscs, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of points that fall into any hole (same shape as ``x``)."""
    out = np.zeros(np.shape(x), dtype=bool)
    if np.size(x) == 0:
        return out
    for j in holes.near(*_box(x, y)):
        out |= holes.relative_distance(j, x, y) < 1.0
    return out


def contamination_cover(patches: WobblyDiscs, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Contamination cover in [0, 1]: ``min(1, sum_j exp(-(rho_j / R_j)**4))``.

    The fourth power gives a flat-topped patch with a soft edge (0.37 at the
    nominal radius, 0.06 at 1.3 times it).
    """
    out = np.zeros(np.shape(x), dtype=np.float64)
    if np.size(x) == 0:
        return out
    for j in patches.near(*_box(x, y), reach=1.6):
        d = patches.relative_distance(j, x, y)
        out += np.exp(-(d**4))
    return np.minimum(out, 1.0)


@dataclass(frozen=True)
class ThicknessMap:
    """Relative thickness ``t = clip(1 + A * s(x, y), 0.2, 3)``.

    ``s`` is a sum of ``m`` random plane waves with wavelengths around
    ``length_nm``, scaled to unit standard deviation.
    """

    wavevectors_per_nm: np.ndarray
    phases: np.ndarray
    amplitude: float

    @classmethod
    def draw(cls, rng: np.random.Generator, amplitude: float, length_nm: float, modes: int = 8) -> ThicknessMap:
        """Draw a thickness map with ``modes`` plane waves."""
        angle = rng.uniform(0, np.pi, modes)
        k = 2 * np.pi / (length_nm * rng.uniform(0.6, 1.8, modes))
        vecs = np.column_stack([k * np.cos(angle), k * np.sin(angle)])
        return cls(vecs, rng.uniform(0, 2 * np.pi, modes), amplitude)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Evaluate the relative thickness at points (any shape)."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        s = np.zeros(x.shape)
        for (kx, ky), p in zip(self.wavevectors_per_nm, self.phases, strict=True):
            s += np.cos(kx * x + ky * y + p)
        s *= np.sqrt(2.0 / max(len(self.phases), 1))
        return np.clip(1.0 + self.amplitude * s, 0.2, 3.0)


@dataclass(frozen=True)
class HotSpots:
    """Defect hot spots: ``p(x, y) = min(0.9, base + sum_k peak * exp(-d_k^2 / (2 s_k^2)))``.

    ``anchored`` marks hot spots placed on a low-magnification feature.
    """

    centers_nm: np.ndarray
    sigmas_nm: np.ndarray
    anchored: np.ndarray
    base_rate: float
    peak_rate: float

    def probability(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-site defect probability at points (any shape), float64."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        p = np.full(x.shape, self.base_rate)
        if x.size == 0:
            return p
        x0, x1, y0, y1 = _box(x, y)
        reach = 4.0 * self.sigmas_nm
        cx, cy = self.centers_nm[:, 0], self.centers_nm[:, 1]
        near = (cx + reach >= x0) & (cx - reach <= x1) & (cy + reach >= y0) & (cy - reach <= y1)
        for k in np.flatnonzero(near):
            d2 = (x - cx[k]) ** 2 + (y - cy[k]) ** 2
            p += self.peak_rate * np.exp(-d2 / (2.0 * self.sigmas_nm[k] ** 2))
        return np.minimum(p, 0.9)
