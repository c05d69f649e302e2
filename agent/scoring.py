"""Scoring a run against the simulator's planted defects (never used for deciding)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from agent.observation import Observation
from drivers.base import Frame


class TruthScorer:
    """Distinct planted defects that the run detected.

    The ground truth comes from a simulated instrument, in each frame's metadata (``metadata["truth"]``).

    A planted defect is detected when a column classified as a defect lies within half the
    nearest-neighbour spacing of it, in the frame's own pixels.  Planted defects are identified across
    frames by stage position (to 1 pm), so one seen in two overlapping fields counts once.
    """

    def __init__(self) -> None:
        self.available = False
        self.found: set[tuple[int, int]] = set()
        self.in_fields: set[tuple[int, int]] = set()
        self.found_by_kind: dict[str, int] = {}

    def add(self, frame: Frame, observation: Observation) -> int:
        """Score one frame; returns the planted defects newly detected in it."""
        truth: Any = frame.header.metadata.get("truth")
        if not isinstance(truth, dict) or not observation.atoms_resolved:
            return 0
        self.available = True
        planted = truth["defects"]
        if not planted["row"]:
            return 0
        keys = [(round(x * 1000), round(y * 1000)) for x, y in zip(planted["x_nm"], planted["y_nm"], strict=True)]
        self.in_fields.update(keys)
        atoms = observation.atoms
        if not atoms.defect.any():
            return 0
        radius_px = 0.5 * float(truth["nn_spacing_nm"]) / frame.header.pixel_size_nm
        tree = cKDTree(np.column_stack([atoms.row[atoms.defect], atoms.col[atoms.defect]]))
        hit, _ = tree.query(np.column_stack([planted["row"], planted["col"]]), distance_upper_bound=radius_px)
        new = 0
        for key, distance, kind in zip(keys, hit, planted["kind"], strict=True):
            if np.isfinite(distance) and key not in self.found:
                self.found.add(key)
                self.found_by_kind[kind] = self.found_by_kind.get(kind, 0) + 1
                new += 1
        return new

    def summary(self) -> dict[str, Any]:
        """``true_defects_found``, the planted defects inside the visited fields, and the split by kind."""
        return {
            "true_defects_found": len(self.found),
            "true_defects_in_fields": len(self.in_fields),
            "true_defects_found_by_kind": dict(sorted(self.found_by_kind.items())),
        }
