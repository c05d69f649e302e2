"""Perception: Frame -> segmentation ensemble -> located atoms -> :class:`Observation`."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from agent.catalog import DefectCatalog
from agent.observation import INPUT_VARIABLES, AtomTable, Observation
from drivers.base import Frame
from models.localize import Atoms
from models.segmenter import Segmentation, Segmenter


def pixels_to_stage(
    row: np.ndarray, col: np.ndarray, frame: Frame, rotation_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Nominal stage position of frame pixels (row, col): the README's scan geometry, without distortions.

    ``u = (col - (cols-1)/2) * px``, ``v = (row - (rows-1)/2) * px``, rotated by ``rotation_deg`` about the
    field centre ``(x_nm, y_nm)``: ``x = x0 + cos(t) u - sin(t) v``, ``y = y0 + sin(t) u + cos(t) v``.
    """
    h = frame.header
    rows, cols = h.shape
    u = (np.asarray(col, dtype=np.float64) - (cols - 1) / 2.0) * h.pixel_size_nm
    v = (np.asarray(row, dtype=np.float64) - (rows - 1) / 2.0) * h.pixel_size_nm
    t = math.radians(rotation_deg)
    return h.x_nm + math.cos(t) * u - math.sin(t) * v, h.y_nm + math.sin(t) * u + math.cos(t) * v


def _input_variables(seg: Segmentation) -> dict[str, float]:
    """The frame's :data:`~agent.observation.INPUT_VARIABLES` (NaN where the check gave no verdict)."""
    check = seg.input_check
    if check is None:
        return dict.fromkeys(INPUT_VARIABLES, float("nan"))
    return {
        "peak_snr": check.peak_snr,
        "peak_threshold": check.peak_threshold,
        "featureless": float(check.featureless),
        "saturated_fraction": check.saturated_fraction,
    }


class Perception:
    """Turn frames into observations, keeping the session's catalogue of distinct defects.

    Parameters
    ----------
    segmenter
        The segmentation ensemble.
    dedup_radius_nm
        Detections of one class closer than this on the stage are one defect.
    max_pixel_size_nm
        Frames sampled more coarsely than this (surveys) are not segmented: atoms are not resolved.
    edge_margin_nm
        Columns centred this close to the frame's border are dropped: cut by the border, they look like
        vacancies or dopants (nearly all false defects of a field are there).
    max_defect_uncertainty
        A column of a defect class counts as a defect only if its uncertainty (mean mutual information,
        nats) is at most this; above it, it is an *uncertain* defect: kept with its class, counted apart,
        never catalogued.  Amorphous contamination makes the model see heavy dopants where there are
        none, and those detections carry about three times the uncertainty of real defects.
    keep_featureless
        Locate columns in featureless frames too (see :class:`models.segmenter.Segmenter`); None: as the
        segmenter is set (by default a frame with nothing above its noise has no atoms).
    """

    def __init__(
        self,
        segmenter: Segmenter,
        dedup_radius_nm: float = 0.1,
        max_pixel_size_nm: float = 0.06,
        edge_margin_nm: float = 0.1,
        max_defect_uncertainty: float = 0.06,
        keep_featureless: bool | None = None,
    ) -> None:
        self.segmenter = segmenter
        self.class_names = tuple(c.name for c in segmenter.manifest.classes)
        self._is_defect = np.array([c.defect for c in segmenter.manifest.classes], dtype=bool)
        self.catalog = DefectCatalog(dedup_radius_nm)
        self.max_pixel_size_nm = max_pixel_size_nm
        self.edge_margin_nm = edge_margin_nm
        self.max_defect_uncertainty = max_defect_uncertainty
        self.keep_featureless = keep_featureless

    def variable_names(self) -> set[str]:
        """The names :meth:`Observation.variables` provides for this model (what a reward may use)."""
        fixed = {"n_atoms", "n_defects", "new_defects", "ood_score"}
        fixed |= {"mean_mutual_info", "p95_mutual_info", "mean_entropy", "atom_uncertainty", "uncertain_defects"}
        fixed |= set(INPUT_VARIABLES)
        return fixed | {f"n_{n}" for n, d in zip(self.class_names, self._is_defect, strict=True) if d}

    def observe(self, frame: Frame, step: int, rotation_deg: float = 0.0) -> Observation:
        """Analyse one frame.

        Raises
        ------
        models.preprocess.ImageError
            The image cannot be analysed (non-finite pixels, too small, wrong shape).
        """
        if frame.header.pixel_size_nm > self.max_pixel_size_nm:
            return self._unresolved(frame, step, rotation_deg)
        t0 = time.perf_counter()
        seg = self.segmenter.segment(frame.image, frame.header.pixel_size_nm)
        t1 = time.perf_counter()
        found = self._inside(self.segmenter.atoms(seg, keep_featureless=self.keep_featureless), frame)
        x, y = pixels_to_stage(found.row, found.col, frame, rotation_deg)
        defect_class = self._is_defect[found.class_id] if len(found) else np.zeros(0, dtype=bool)
        defect = defect_class & (found.uncertainty <= self.max_defect_uncertainty)
        atoms = AtomTable(
            found.row,
            found.col,
            x,
            y,
            found.class_id,
            defect,
            found.confidence,
            found.uncertainty,
            found.presence_entropy,
        )
        new = self.catalog.add(x[defect], y[defect], found.class_id[defect], step)
        t2 = time.perf_counter()
        counts = {
            name: int(np.count_nonzero(defect & (found.class_id == i)))
            for i, name in enumerate(self.class_names)
            if self._is_defect[i]
        }
        mi = seg.mutual_info
        uncertainty = {
            "mean_mutual_info": float(mi.mean()),
            "p95_mutual_info": float(np.percentile(mi, 95)),
            "mean_entropy": float(seg.entropy.mean()),
            "atom_uncertainty": float(found.uncertainty.mean()) if len(found) else 0.0,
            "uncertain_defects": float(np.count_nonzero(defect_class & ~defect)),
        }
        timings = {**seg.timings_ms, "localize": 1e3 * (t2 - t1)}
        timings["segment"] = 1e3 * (t1 - t0)
        return Observation(
            step,
            frame.header,
            rotation_deg,
            atoms,
            self.class_names,
            counts,
            new,
            uncertainty,
            seg.ood_score,
            True,
            timings,
            frame.image,
            _input_variables(seg),
        )

    def _inside(self, found: Atoms, frame: Frame) -> Atoms:
        margin = self.edge_margin_nm / frame.header.pixel_size_nm
        rows, cols = frame.header.shape
        keep = (found.row >= margin - 0.5) & (found.row <= rows - 0.5 - margin)
        keep &= (found.col >= margin - 0.5) & (found.col <= cols - 0.5 - margin)
        return Atoms(*(getattr(found, f.name)[keep] for f in dataclasses.fields(found)))

    def _unresolved(self, frame: Frame, step: int, rotation_deg: float) -> Observation:
        counts = {name: 0 for name, d in zip(self.class_names, self._is_defect, strict=True) if d}
        names = ("mean_mutual_info", "p95_mutual_info", "mean_entropy", "atom_uncertainty", "uncertain_defects")
        zeros = dict.fromkeys(names, 0.0)
        return Observation(
            step,
            frame.header,
            rotation_deg,
            AtomTable.empty(),
            self.class_names,
            counts,
            0,
            zeros,
            float("nan"),
            False,
            {},
            frame.image,
        )
