"""Scanned fields binned on a grid, so the guard's checks cost the same after 10 or 10 million fields."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldRecord:
    """One accepted scan: centre, half-width of the square any rotation of it fits in, field of view, dose."""

    x_nm: float
    y_nm: float
    half_nm: float
    fov_nm: float
    dose_e_per_a2: float


class FieldIndex:
    """Fields binned by the grid cells their bounding squares touch.

    A field larger than ``max_cells`` cells a side (a survey) is kept apart in a short list checked
    directly; everything else is found through the cells a query box touches.

    Parameters
    ----------
    cell_nm
        Cell edge: about the size of a typical field.
    """

    def __init__(self, cell_nm: float = 16.0, max_cells: int = 16) -> None:
        self.cell_nm, self.max_cells = cell_nm, max_cells
        self._cells: dict[tuple[int, int], list[FieldRecord]] = {}
        self._large: list[FieldRecord] = []
        self.count = 0

    def _span(self, x: float, y: float, half: float) -> tuple[range, range]:
        c = self.cell_nm
        return (range(math.floor((x - half) / c), math.floor((x + half) / c) + 1),
                range(math.floor((y - half) / c), math.floor((y + half) / c) + 1))  # fmt: skip

    def add(self, record: FieldRecord) -> None:
        """Index one field."""
        xs, ys = self._span(record.x_nm, record.y_nm, record.half_nm)
        self.count += 1
        if len(xs) > self.max_cells or len(ys) > self.max_cells:
            self._large.append(record)
            return
        for i in xs:
            for j in ys:
                self._cells.setdefault((i, j), []).append(record)

    def overlapping(self, x: float, y: float, half: float) -> list[FieldRecord]:
        """Every indexed field whose bounding square overlaps the square of half-width ``half`` at (x, y)."""
        xs, ys = self._span(x, y, half)
        found: dict[int, FieldRecord] = {}
        if len(xs) > self.max_cells or len(ys) > self.max_cells:  # a survey-sized query: scan every cell once
            candidates = [r for records in self._cells.values() for r in records]
        else:
            candidates = [r for i in xs for j in ys for r in self._cells.get((i, j), ())]
        for r in candidates + self._large:
            if abs(r.x_nm - x) < r.half_nm + half and abs(r.y_nm - y) < r.half_nm + half:
                found[id(r)] = r
        return list(found.values())
