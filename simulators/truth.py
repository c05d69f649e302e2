"""Ground truth of a simulated frame, and the frame itself, with .npz round-trips."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from simulators.config import ImagingParams, ScanRequest
from simulators.defects import DefectKind


@dataclass(frozen=True)
class ColumnTruth:
    """Atom columns inside a frame (all shape (n,)).

    Attributes
    ----------
    row, col : float64, sub-pixel position in the frame's own (distorted) pixels.
    x_nm, y_nm : float64, stage position.
    species : str, column content label ("Mo", "S2", "S", "vacancy", ...).
    class_id : uint8, :class:`~simulators.defects.ColumnClass`.
    kind : uint8, :class:`~simulators.defects.DefectKind`.
    weight : float64, Z-contrast weight (times local thickness).
    damaged : bool, created by knock-on damage during this session.
    """

    row: np.ndarray
    col: np.ndarray
    x_nm: np.ndarray
    y_nm: np.ndarray
    species: np.ndarray
    class_id: np.ndarray
    kind: np.ndarray
    weight: np.ndarray
    damaged: np.ndarray

    def __len__(self) -> int:
        return len(self.row)

    def select(self, keep: np.ndarray) -> ColumnTruth:
        """The subset ``keep`` (a boolean mask or index array)."""
        return ColumnTruth(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})

    def defects(self) -> ColumnTruth:
        """Only the defective columns."""
        return self.select(self.kind != DefectKind.NONE)

    def defect_counts(self) -> dict[str, int]:
        """Number of defects per kind label (kinds with none omitted)."""
        kinds, counts = np.unique(self.kind[self.kind != DefectKind.NONE], return_counts=True)
        return {DefectKind(int(k)).label: int(c) for k, c in zip(kinds, counts, strict=True)}

    @classmethod
    def empty(cls) -> ColumnTruth:
        """A table with no columns."""
        f = np.empty(0)
        return cls(f, f, f, f, np.empty(0, dtype="<U8"), f.astype(np.uint8), f.astype(np.uint8), f, f.astype(bool))


@dataclass(frozen=True)
class FrameTruth:
    """Everything planted in one frame.

    Attributes
    ----------
    columns
        Atom columns inside the frame (empty when atoms are not resolved).
    class_mask
        (rows, cols) uint8, :class:`~simulators.defects.ColumnClass` per pixel.
    region_mask
        (rows, cols) uint8, :class:`~simulators.defects.Region` per pixel.
    defect_density_per_nm2
        (rows, cols) float32: expected defects per nm^2 at each pixel (0 in holes).
    atoms_resolved
        False for low-magnification frames rendered from the continuum.
    """

    columns: ColumnTruth
    class_mask: np.ndarray
    region_mask: np.ndarray
    defect_density_per_nm2: np.ndarray
    atoms_resolved: bool


@dataclass(frozen=True)
class SimulatedFrame:
    """A rendered frame: the image in detected counts, its expectation and its truth.

    Attributes
    ----------
    image : (rows, cols) float32 counts with noise.  expected : the same without noise.
    truth : :class:`FrameTruth`.  scan, imaging : the parameters used.
    lattice : lattice name.  specimen_seed : the specimen's seed.
    dose_e_per_a2 : dose delivered by this frame.
    """

    image: np.ndarray
    expected: np.ndarray
    truth: FrameTruth
    scan: ScanRequest
    imaging: ImagingParams
    lattice: str
    specimen_seed: int
    dose_e_per_a2: float

    @property
    def pixel_size_nm(self) -> float:
        """Pixel size, nm."""
        return self.scan.pixel_size_nm

    def save_npz(self, path: str | Path) -> None:
        """Write the frame and its ground truth to a compressed .npz file."""
        c = self.truth.columns
        meta = {
            "scan": self.scan.model_dump(),
            "imaging": self.imaging.model_dump(),
            "lattice": self.lattice,
            "specimen_seed": self.specimen_seed,
            "dose_e_per_a2": self.dose_e_per_a2,
            "atoms_resolved": self.truth.atoms_resolved,
            "pixel_size_nm": self.pixel_size_nm,
            "defect_kinds": [k.label for k in DefectKind],
        }
        np.savez_compressed(
            Path(path),
            image=self.image,
            expected=self.expected,
            class_mask=self.truth.class_mask,
            region_mask=self.truth.region_mask,
            defect_density_per_nm2=self.truth.defect_density_per_nm2,
            meta=np.array(json.dumps(meta)),
            **{f"columns_{f.name}": getattr(c, f.name) for f in fields(c)},
        )

    @classmethod
    def load_npz(cls, path: str | Path) -> SimulatedFrame:
        """Read a frame written by :meth:`save_npz`."""
        with np.load(Path(path), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            cols = ColumnTruth(**{f.name: z[f"columns_{f.name}"] for f in fields(ColumnTruth)})
            truth = FrameTruth(
                cols, z["class_mask"], z["region_mask"], z["defect_density_per_nm2"], bool(meta["atoms_resolved"])
            )
            return cls(
                z["image"],
                z["expected"],
                truth,
                ScanRequest(**meta["scan"]),
                ImagingParams(**meta["imaging"]),
                meta["lattice"],
                int(meta["specimen_seed"]),
                float(meta["dose_e_per_a2"]),
            )
