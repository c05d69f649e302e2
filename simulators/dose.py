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
        """Add ``dose_e_per_a2`` to each cell in proportion to the share of it a rotated rectangle covers.

        A cell wholly inside the scanned field gets the frame's dose, one partly inside gets that share
        of it (sampled at least 8 times a side, and 64 times across the field), so the map's integral is the
        frame's dose times its area whatever the field's size and rotation.

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
        field = _Field(center_nm, size_nm, rotation_deg)
        window = self._window(field)
        if window is None:
            return
        if self._grid is None:
            self._grid = np.zeros(self.shape, dtype=np.float32)
        (r0, r1), (c0, c1) = window
        y_edges = self.bounds[2] + np.arange(r0, r1 + 1) * self.cell_nm
        touch0, whole0, whole1, touch1 = self._column_spans(field.row_spans(y_edges), (c0, c1))
        # Whole cells: a running sum along each row from +dose at the first to -dose past the last.
        steps = np.zeros((r1 - r0, c1 - c0 + 1), dtype=np.float32)
        band = np.arange(r1 - r0)
        steps[band, whole0 - c0] += np.float32(dose_e_per_a2)
        steps[band, whole1 - c0] -= np.float32(dose_e_per_a2)
        self._grid[r0:r1, c0:c1] += np.cumsum(steps, axis=1)[:, :-1]
        # Cells the field's edge crosses: touched before and after the whole ones.
        (rows_a, cols_a), (rows_b, cols_b) = _ranges(touch0, whole0), _ranges(whole1, touch1)
        rows, cols = np.concatenate([rows_a, rows_b]) + r0, np.concatenate([cols_a, cols_b])
        if rows.size:
            x0 = self.bounds[0] + cols * self.cell_nm
            y0 = self.bounds[2] + rows * self.cell_nm
            self._grid[rows, cols] += (field.coverage(x0, y0, self.cell_nm) * dose_e_per_a2).astype(np.float32)

    def _column_spans(
        self, spans_nm: tuple[np.ndarray, ...], clip: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Columns per row: first touched, first whole, past the last whole, past the last touched."""
        col = lambda x_nm: (x_nm - self.bounds[0]) / self.cell_nm  # noqa: E731
        with np.errstate(invalid="ignore"):  # rows the field misses have infinite spans: emptied here
            touch0 = np.clip(np.floor(col(spans_nm[0])), *clip)
            touch1 = np.maximum(np.clip(np.ceil(col(spans_nm[1])), *clip), touch0).astype(np.int64)
            touch0 = touch0.astype(np.int64)
            whole0 = np.clip(np.ceil(col(spans_nm[2])), touch0, touch1).astype(np.int64)
            whole1 = np.clip(np.floor(col(spans_nm[3])), whole0, touch1).astype(np.int64)
        return touch0, whole0, whole1, touch1

    def _window(self, field: _Field) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """Rows and columns of the cells the field's bounding box touches, clipped to the map."""
        x0, x1, y0, y1 = field.bounding_box()
        row0, col0, _ = self._cell(np.array(x0), np.array(y0))
        row1, col1, _ = self._cell(np.array(x1), np.array(y1))
        r0, r1 = max(int(row0), 0), min(int(row1) + 1, self.shape[0])
        c0, c1 = max(int(col0), 0), min(int(col1) + 1, self.shape[1])
        return None if r0 >= r1 or c0 >= c1 else ((r0, r1), (c0, c1))


def _ranges(start: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (i, j) with ``start[i] <= j < stop[i]``, as two index arrays."""
    length = np.maximum(stop - start, 0)
    row = np.repeat(np.arange(len(start)), length)
    first = np.repeat(np.cumsum(length) - length, length)
    return row, start[row] + np.arange(len(row)) - first


# Samples per side of a cell the field's edge crosses: at least 8, and at least 64 across the field's
# shorter side, so a field smaller than a cell is measured as finely as a large one.
_MIN_SAMPLES_PER_SIDE, _SAMPLES_ACROSS_FIELD, _MAX_SAMPLES_PER_SIDE = 8, 64, 256


class _Field:
    """A rotated rectangle: the area one frame scans, in specimen nm."""

    def __init__(self, center_nm: tuple[float, float], size_nm: tuple[float, float], rotation_deg: float) -> None:
        self.cx, self.cy = center_nm
        self.half_u, self.half_v = size_nm[0] / 2, size_nm[1] / 2
        t = np.deg2rad(rotation_deg)
        self.cos, self.sin = float(np.cos(t)), float(np.sin(t))

    def _uv(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = x - self.cx, y - self.cy
        return self.cos * dx + self.sin * dy, -self.sin * dx + self.cos * dy

    def _inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = self._uv(x, y)
        return (np.abs(u) <= self.half_u) & (np.abs(v) <= self.half_v)

    def corners(self) -> np.ndarray:
        """(4, 2) x_nm, y_nm of the rectangle's corners."""
        su, sv = np.array([1, 1, -1, -1]) * self.half_u, np.array([1, -1, -1, 1]) * self.half_v
        return np.stack([self.cx + self.cos * su - self.sin * sv, self.cy + self.sin * su + self.cos * sv], axis=1)

    def bounding_box(self) -> tuple[float, float, float, float]:
        """(x0, x1, y0, y1) nm of the rectangle."""
        c = self.corners()
        return float(c[:, 0].min()), float(c[:, 0].max()), float(c[:, 1].min()), float(c[:, 1].max())

    def _x_interval(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rectangle's x extent on each horizontal line ``y``: (lo, hi) nm, lo > hi where it misses."""
        dy = y - self.cy
        lo, hi = np.full(dy.shape, -np.inf), np.full(dy.shape, np.inf)
        # |p dx + q dy| <= h for (p, q) = (cos, sin) and (-sin, cos): the rectangle's two slabs.
        for p, q, h in ((self.cos, self.sin, self.half_u), (-self.sin, self.cos, self.half_v)):
            if abs(p) < 1e-12:  # the slab runs along x: all of the line or none of it
                lo = np.where(np.abs(q * dy) <= h, lo, np.inf)
                continue
            a, b = (-h - q * dy) / p, (h - q * dy) / p
            lo, hi = np.maximum(lo, np.minimum(a, b)), np.minimum(hi, np.maximum(a, b))
        return self.cx + lo, self.cx + hi

    def row_spans(self, y_edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """X ranges per band between consecutive ``y_edges``: where the field touches it, where it spans it.

        For each band: the x range the rectangle touches, and the x range
        over which it spans the whole band (touch_lo, touch_hi, whole_lo, whole_hi; empty where lo >= hi).
        """
        lo, hi = self._x_interval(y_edges)
        hit = lo <= hi
        touch_lo = np.fmin(np.where(hit[:-1], lo[:-1], np.nan), np.where(hit[1:], lo[1:], np.nan))
        touch_hi = np.fmax(np.where(hit[:-1], hi[:-1], np.nan), np.where(hit[1:], hi[1:], np.nan))
        for x, y in self.corners():  # a corner inside the band widens it (convexity: nothing else does)
            band = (y_edges[:-1] <= y) & (y <= y_edges[1:])
            touch_lo = np.where(band, np.fmin(touch_lo, x), touch_lo)
            touch_hi = np.where(band, np.fmax(touch_hi, x), touch_hi)
        both = hit[:-1] & hit[1:]  # convex: the band is covered between its edges' common x range
        whole_lo = np.where(both, np.maximum(lo[:-1], lo[1:]), np.inf)
        whole_hi = np.where(both, np.minimum(hi[:-1], hi[1:]), -np.inf)
        missing = np.isnan(touch_lo)
        return np.where(missing, np.inf, touch_lo), np.where(missing, -np.inf, touch_hi), whole_lo, whole_hi

    def coverage(self, x0: np.ndarray, y0: np.ndarray, cell_nm: float) -> np.ndarray:
        """Share of each cell with lower corner (``x0``, ``y0``) and side ``cell_nm`` that the rectangle covers."""
        across = _SAMPLES_ACROSS_FIELD * cell_nm / max(2 * min(self.half_u, self.half_v), 1e-9)
        k = int(np.clip(np.ceil(across), _MIN_SAMPLES_PER_SIDE, _MAX_SAMPLES_PER_SIDE))
        offsets = (np.arange(k) + 0.5) / k * cell_nm
        xs = x0[:, None, None] + offsets[None, None, :]
        ys = y0[:, None, None] + offsets[None, :, None]
        return self._inside(xs, ys).mean(axis=(1, 2))
