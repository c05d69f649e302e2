"""Scan geometry: where each pixel really sampled the specimen, and back.

A pixel (row, col) is nominally sampled at scan offset
``u = (col - (cols-1)/2) * px``, ``v = (row - (rows-1)/2) * px``, rotated by the
scan rotation and added to the field centre.  Three distortions move it:

* line jitter: a random x offset per line, ``N(0, line_jitter_nm)``;
* flyback: ``A * exp(-t_line / tau)`` along x at the start of each line, where
  ``t_line = col * dwell`` is the time since the line started;
* drift: ``v_drift * t`` with ``t = row * (cols * dwell + flyback) + col * dwell``.

The ground truth is expressed in the frame's own (distorted) pixel
coordinates by inverting this map (:meth:`ScanGeometry.to_pixels`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from simulators.config import ImagingParams, ScanRequest


def flyback_backstep_nm(flyback_amplitude_nm: float, dwell_us: float, settle_us: float) -> float:
    """How far the flyback's decay moves the beam back during a line's first pixel, nm.

    At a pixel or more the beam runs backwards at the start of each line and the image folds.
    """
    return flyback_amplitude_nm * dwell_us / settle_us


@dataclass(frozen=True)
class ScanDistortion:
    """One realisation of the scan distortions of a frame.

    Attributes
    ----------
    line_offsets_nm
        Shape (rows,), float64: jitter of each line along the fast axis.
    flyback_amplitude_nm, flyback_settle_us
        Flyback offset at the line start and its decay time.
    drift_nm_per_us
        (vx, vy): drift velocity in stage coordinates.
    """

    line_offsets_nm: np.ndarray
    flyback_amplitude_nm: float
    flyback_settle_us: float
    drift_nm_per_us: tuple[float, float]

    @classmethod
    def draw(cls, rng: np.random.Generator, scan: ScanRequest, imaging: ImagingParams) -> ScanDistortion:
        """Draw jitter and the drift direction from ``rng``."""
        jitter = rng.normal(0.0, 1.0, scan.rows) * imaging.line_jitter_nm
        angle = rng.uniform(0, 2 * np.pi)
        speed = imaging.drift_nm_per_s * 1e-6
        return cls(
            jitter,
            imaging.flyback_amplitude_nm,
            imaging.flyback_settle_us,
            (speed * np.cos(angle), speed * np.sin(angle)),
        )

    @classmethod
    def none(cls, rows: int) -> ScanDistortion:
        """An ideal scan."""
        return cls(np.zeros(rows), 0.0, 1.0, (0.0, 0.0))


class ScanGeometry:
    """Forward and inverse maps between frame pixels and stage coordinates."""

    def __init__(
        self, scan: ScanRequest, distortion: ScanDistortion, flyback_time_us: float, truth_smoothing_rows: float = 0.0
    ) -> None:
        self.scan = scan
        self.distortion = distortion
        # A column spans a few lines, so the image shows it at the probe-weighted
        # mean of their jitter: the truth uses that mean, the scan the raw offsets.
        offsets = distortion.line_offsets_nm
        self._truth_jitter = (
            gaussian_filter1d(offsets, truth_smoothing_rows, mode="nearest") if truth_smoothing_rows > 0 else offsets
        )
        self.px = scan.pixel_size_nm
        self.line_time_us = scan.cols * scan.dwell_us + flyback_time_us
        t = np.deg2rad(scan.rotation_deg)
        self._cos, self._sin = float(np.cos(t)), float(np.sin(t))
        self._rc, self._cc = (scan.rows - 1) / 2.0, (scan.cols - 1) / 2.0
        self._has_jitter = bool(np.any(self._truth_jitter))

    @property
    def row_center(self) -> float:
        """Row index of the field centre, (rows - 1) / 2."""
        return self._rc

    @property
    def col_center(self) -> float:
        """Column index of the field centre, (cols - 1) / 2."""
        return self._cc

    def scan_coordinates(self, x_nm: np.ndarray, y_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stage points in undistorted scan coordinates (u along lines, v across), nm from the centre."""
        qx = np.asarray(x_nm, dtype=np.float64) - self.scan.x_nm
        qy = np.asarray(y_nm, dtype=np.float64) - self.scan.y_nm
        return self._cos * qx + self._sin * qy, -self._sin * qx + self._cos * qy

    def line_shift(self, row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-line displacement in scan coordinates: jitter plus drift at (row, col).

        Rows outside the frame take the jitter of the nearest line.

        Returns
        -------
        du_nm, dv_nm : ndarray, broadcast shape of the inputs, float64.
        """
        jitter = self.distortion.line_offsets_nm[np.clip(row, 0, self.scan.rows - 1)]
        t = self._time(row.astype(np.float64), np.asarray(col, dtype=np.float64))
        vx, vy = self.distortion.drift_nm_per_us
        vu, vv = self._cos * vx + self._sin * vy, -self._sin * vx + self._cos * vy
        return jitter + vu * t, vv * t

    def flyback(self, col: np.ndarray) -> np.ndarray:
        """Flyback offset along the lines at (fractional) column ``col``, nm."""
        d = self.distortion
        if d.flyback_amplitude_nm == 0.0:
            return np.zeros_like(col)
        return d.flyback_amplitude_nm * np.exp(-np.maximum(col, 0.0) * self.scan.dwell_us / d.flyback_settle_us)

    def _time(self, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        return row * self.line_time_us + col * self.scan.dwell_us

    def positions_at(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Absolute stage positions of the pixel grid ``rows x cols`` (index arrays).

        Returns
        -------
        x_nm, y_nm : ndarray, shape (len(rows), len(cols)), float64.
        """
        r = np.asarray(rows, dtype=np.float64)[:, None]
        c = np.asarray(cols, dtype=np.float64)[None, :]
        jitter = self.distortion.line_offsets_nm[np.asarray(rows)][:, None]
        u = (c - self._cc) * self.px + jitter + self.flyback(c)
        v = (r - self._rc) * self.px
        t = self._time(r, c)
        vx, vy = self.distortion.drift_nm_per_us
        x = self.scan.x_nm + self._cos * u - self._sin * v + vx * t
        y = self.scan.y_nm + self._sin * u + self._cos * v + vy * t
        return x, y

    def to_pixels(self, x_nm: np.ndarray, y_nm: np.ndarray, iterations: int = 6) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (row, col), sub-pixel, where stage points appear in the frame.

        Without jitter and flyback the map from (row, col) to the stage is affine (rotation, pixel
        size and the drift over the scan time), so it is inverted exactly, however strong the drift.
        Jitter and flyback move a point along the lines by a small, smooth amount: a fixed-point
        iteration on them converges geometrically (line jitter is interpolated linearly between lines).

        Returns
        -------
        row, col : ndarray, float64, same shape as the inputs.
        """
        qx = np.asarray(x_nm, dtype=np.float64) - self.scan.x_nm
        qy = np.asarray(y_nm, dtype=np.float64) - self.scan.y_nm
        (m00, m01), (m10, m11) = self._affine
        det = m00 * m11 - m01 * m10
        bx = qx + self._cos * self.px * self._cc - self._sin * self.px * self._rc
        by = qy + self._sin * self.px * self._cc + self._cos * self.px * self._rc

        def solve(du_nm: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
            ex, ey = bx - self._cos * du_nm, by - self._sin * du_nm
            return (m00 * ey - m10 * ex) / det, (ex * m11 - m01 * ey) / det

        row, col = solve(0.0)
        if not (self._has_jitter or self.distortion.flyback_amplitude_nm):
            return row, col
        lines = np.arange(self.scan.rows, dtype=np.float64)
        for _ in range(iterations):
            row, col = solve(np.interp(row, lines, self._truth_jitter) + self.flyback(col))
        return row, col

    @property
    def _affine(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """d(x, y) / d(col, row) of the undistorted scan plus drift: [[dx/dcol, dx/drow], [dy/dcol, dy/drow]]."""
        vx, vy = self.distortion.drift_nm_per_us
        d, line = self.scan.dwell_us, self.line_time_us
        return (
            (self._cos * self.px + vx * d, -self._sin * self.px + vx * line),
            (self._sin * self.px + vy * d, self._cos * self.px + vy * line),
        )

    def fold_problem(self) -> str | None:
        """Why this scan would fold or smear the image (no one compact place per column), or None.

        Flyback moves the beam backwards at the start of each line when its decay outruns the scan
        (``A * dwell / tau`` at least a pixel), so some columns are crossed twice; drift of more than half
        a pixel per line shears each column over several lines, beyond what a column's patch covers.
        """
        d = self.distortion
        backwards_nm = flyback_backstep_nm(d.flyback_amplitude_nm, self.scan.dwell_us, d.flyback_settle_us)
        if backwards_nm >= self.px:
            return (
                f"a flyback of {d.flyback_amplitude_nm:g} nm settling over {d.flyback_settle_us:g} us moves the beam"
                f" back {backwards_nm:.3g} nm per {self.scan.dwell_us:g} us pixel at the start of each line, more"
                f" than the {self.px:.3g} nm pixel: the image folds"
            )
        vx, vy = d.drift_nm_per_us
        per_line_nm = float(np.hypot(vx, vy)) * self.line_time_us
        if per_line_nm > 0.5 * self.px:
            return (
                f"a drift of {1e6 * float(np.hypot(vx, vy)):.3g} nm/s moves the field {per_line_nm:.3g} nm per"
                f" {self.line_time_us:g} us line, more than half the {self.px:.3g} nm pixel: each column would be"
                " smeared over several lines (lower the drift, the dwell or the columns)"
            )
        return None

    def footprint_box(self, margin_nm: float) -> tuple[float, float, float, float]:
        """Stage-coordinate bounding box (x0, x1, y0, y1) of the field plus a margin."""
        hw = 0.5 * self.scan.cols * self.px
        hh = 0.5 * self.scan.rows * self.px
        ex = abs(self._cos) * hw + abs(self._sin) * hh
        ey = abs(self._sin) * hw + abs(self._cos) * hh
        d = self.distortion
        total_t = self.scan.rows * self.line_time_us
        slack = (
            margin_nm
            + float(np.max(np.abs(d.line_offsets_nm), initial=0.0))
            + d.flyback_amplitude_nm
            + total_t * float(np.hypot(*d.drift_nm_per_us))
        )
        return (
            self.scan.x_nm - ex - slack,
            self.scan.x_nm + ex + slack,
            self.scan.y_nm - ey - slack,
            self.scan.y_nm + ey + slack,
        )
