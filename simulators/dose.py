"""Accumulated electron dose over a specimen, on a coarse grid.

Knock-on damage depends on the dose a site has received, so the specimen keeps
a dose map (electrons per square angstrom) that every rendered frame adds to.
The grid is coarse (0.5 nm cells, or coarser for very large specimens so it
never exceeds 2048 x 2048 float32 = 16 MiB).
"""

from __future__ import annotations

import numpy as np

_MAX_CELLS = 2048


class DoseMap:
    """Dose in e/A^2 per grid cell over ``bounds`` = (x0, x1, y0, y1) nm."""

    def __init__(self, bounds: tuple[float, float, float, float], cell_nm: float = 0.5) -> None:
        x0, x1, y0, y1 = bounds
        self.bounds = bounds
        self.cell_nm = max(cell_nm, (x1 - x0) / _MAX_CELLS, (y1 - y0) / _MAX_CELLS)
        self.shape = (int(np.ceil((y1 - y0) / self.cell_nm)), int(np.ceil((x1 - x0) / self.cell_nm)))
        self._grid: np.ndarray | None = None  # allocated on the first exposure

    @property
    def total_e_per_a2_nm2(self) -> float:
        """Integral of the dose over the specimen, e/A^2 * nm^2 (0 before any exposure)."""
        return 0.0 if self._grid is None else float(self._grid.sum(dtype=np.float64)) * self.cell_nm**2

    def _cell(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        col = np.floor((np.asarray(x) - self.bounds[0]) / self.cell_nm).astype(np.int64)
        row = np.floor((np.asarray(y) - self.bounds[2]) / self.cell_nm).astype(np.int64)
        ok = (row >= 0) & (row < self.shape[0]) & (col >= 0) & (col < self.shape[1])
        return row, col, ok

    def at(self, x_nm: np.ndarray, y_nm: np.ndarray) -> np.ndarray:
        """Dose received at points (any shape), float64, e/A^2 (0 outside the map)."""
        out = np.zeros(np.shape(x_nm))
        if self._grid is None:
            return out
        row, col, ok = self._cell(x_nm, y_nm)
        out[ok] = self._grid[row[ok], col[ok]]
        return out

    def expose(
        self, center_nm: tuple[float, float], size_nm: tuple[float, float], rotation_deg: float, dose_e_per_a2: float
    ) -> None:
        """Add ``dose_e_per_a2`` to every cell whose centre lies in a rotated rectangle.

        Parameters
        ----------
        center_nm
            (x_nm, y_nm) of the rectangle's centre.
        size_nm
            (width along the scan's columns, height along its rows).
        rotation_deg
            Scan rotation.
        dose_e_per_a2
            Dose of the frame.
        """
        if self._grid is None:
            self._grid = np.zeros(self.shape, dtype=np.float32)
        cx, cy = center_nm
        half = 0.5 * np.hypot(*size_nm)
        row0, col0, _ = self._cell(np.array(cx - half), np.array(cy - half))
        row1, col1, _ = self._cell(np.array(cx + half), np.array(cy + half))
        r0, r1 = max(int(row0), 0), min(int(row1) + 1, self.shape[0])
        c0, c1 = max(int(col0), 0), min(int(col1) + 1, self.shape[1])
        if r0 >= r1 or c0 >= c1:
            return
        ys = self.bounds[2] + (np.arange(r0, r1) + 0.5) * self.cell_nm - cy
        xs = self.bounds[0] + (np.arange(c0, c1) + 0.5) * self.cell_nm - cx
        t = np.deg2rad(rotation_deg)
        u = np.cos(t) * xs[None, :] + np.sin(t) * ys[:, None]
        v = -np.sin(t) * xs[None, :] + np.cos(t) * ys[:, None]
        inside = (np.abs(u) <= size_nm[0] / 2) & (np.abs(v) <= size_nm[1] / 2)
        self._grid[r0:r1, c0:c1] += np.where(inside, np.float32(dose_e_per_a2), np.float32(0))
