"""Distinct defects of a session, deduplicated by stage position across overlapping fields."""

from __future__ import annotations

import math

import numpy as np


class DefectCatalog:
    """Every distinct defect seen so far.

    A detection within ``radius_nm`` of a known one of the same class is the same defect seen again.

    Positions are binned on a grid of cell ``radius_nm`` so a lookup touches nine cells whatever the
    session's length; memory grows with the number of distinct defects only.

    Parameters
    ----------
    radius_nm
        Two detections closer than this are one defect (about half the nearest-neighbour spacing plus
        the stage's repeatability).
    """

    def __init__(self, radius_nm: float = 0.1) -> None:
        if not (math.isfinite(radius_nm) and radius_nm > 0):
            raise ValueError(f"radius_nm must be a positive finite number (got {radius_nm!r})")
        self.radius_nm = radius_nm
        self._cells: dict[tuple[int, int], list[tuple[float, float, int]]] = {}
        self.x_nm: list[float] = []
        self.y_nm: list[float] = []
        self.class_id: list[int] = []
        self.first_step: list[int] = []

    def __len__(self) -> int:
        return len(self.x_nm)

    def add(self, x_nm: np.ndarray, y_nm: np.ndarray, class_id: np.ndarray, step: int) -> int:
        """Add detections (shape (n,) each); returns how many were new."""
        new = 0
        r2 = self.radius_nm**2
        for x, y, c in zip(x_nm.tolist(), y_nm.tolist(), class_id.tolist(), strict=True):
            ci, cj = math.floor(x / self.radius_nm), math.floor(y / self.radius_nm)
            seen = any(
                k == c and (px - x) ** 2 + (py - y) ** 2 <= r2
                for di in (-1, 0, 1)
                for dj in (-1, 0, 1)
                for px, py, k in self._cells.get((ci + di, cj + dj), ())
            )
            if not seen:
                self._cells.setdefault((ci, cj), []).append((x, y, c))
                self.x_nm.append(x)
                self.y_nm.append(y)
                self.class_id.append(c)
                self.first_step.append(step)
                new += 1
        return new
