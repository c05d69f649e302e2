"""What the agent knows about one frame: the ``Observation`` built by perception, consumed by policies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drivers.base import FrameHeader

#: The input statistics of a segmented frame (:mod:`models.input_check`), as reward variables:
#: ``peak_snr`` (atomic-scale contrast over noise), ``peak_threshold`` (what it must exceed: 11 to 17 with
#: the frame's size and sampling), ``featureless`` (1 when nothing stands out) and ``saturated_fraction``
#: (share of pixels piled up at the maximum).  All 0 for an unsegmented survey.
INPUT_VARIABLES = ("peak_snr", "peak_threshold", "featureless", "saturated_fraction")


@dataclass(frozen=True)
class AtomTable:
    """Located atom columns of one frame (all shape (n,)).

    Attributes
    ----------
    row, col : float64, sub-pixel position in the frame's pixels.
    x_nm, y_nm : float64, stage position (nominal scan geometry, see the README's conventions).
    class_id : int64, index into the model's classes.
    defect : bool, a defect class detected with confidence (see :class:`~agent.perception.Perception`).
    confidence : float32, mean probability of the class over the column.
    uncertainty : float32, mean mutual information over the column (nats).
    presence_entropy : float32, mean binary entropy of the foreground probability over the column
        (nats; see :class:`models.localize.Atoms`).
    """

    row: np.ndarray
    col: np.ndarray
    x_nm: np.ndarray
    y_nm: np.ndarray
    class_id: np.ndarray
    defect: np.ndarray
    confidence: np.ndarray
    uncertainty: np.ndarray
    presence_entropy: np.ndarray

    def __len__(self) -> int:
        return len(self.row)

    @classmethod
    def empty(cls) -> AtomTable:
        """No atoms (a survey frame, or a frame of vacuum)."""
        f, i = np.empty(0), np.empty(0, dtype=np.int64)
        f32 = f.astype(np.float32)
        return cls(f, f, f, f, i, np.empty(0, dtype=bool), f32, f32, f32)


@dataclass(frozen=True)
class Observation:
    """One analysed frame.

    Attributes
    ----------
    step : index of the loop step that produced it.
    header : the frame's header.
    rotation_deg : scan rotation of the field.
    atoms : located columns (empty when atoms are not resolved at this sampling).
    class_names : names of the model's classes (index = ``class_id``).
    defect_counts : defects in this frame per defect class name.
    new_defects : distinct defects seen here for the first time in the session.
    uncertainty : ``mean_mutual_info``, ``p95_mutual_info``, ``mean_entropy`` (nats, over the frame),
        ``atom_uncertainty`` (mean over atoms) and ``uncertain_defects`` (columns of a defect class too
        uncertain to count as defects).
    ood_score : frame epistemic uncertainty in calibration standard deviations (NaN if uncalibrated).
    atoms_resolved : False for frames too coarsely sampled to segment (surveys).
    timings_ms : perception time per stage.
    image : the frame's image (a reference, not a copy), which policies such as ``dkl`` read from a survey;
        a survey fine enough to be segmented is still a survey (the loop keeps only the latest observation).
    input_check : :data:`INPUT_VARIABLES` of the frame (a featureless frame has no atoms).
    """

    step: int
    header: FrameHeader
    rotation_deg: float
    atoms: AtomTable
    class_names: tuple[str, ...]
    defect_counts: dict[str, int]
    new_defects: int
    uncertainty: dict[str, float]
    ood_score: float
    atoms_resolved: bool
    timings_ms: dict[str, float] = field(default_factory=dict)
    image: np.ndarray | None = None
    input_check: dict[str, float] = field(default_factory=lambda: dict.fromkeys(INPUT_VARIABLES, 0.0))

    @classmethod
    def without_atoms(
        cls,
        header: FrameHeader,
        new_defects: int = 0,
        ood_score: float = 0.0,
        image: np.ndarray | None = None,
        class_names: tuple[str, ...] = ("background", "atom", "vacancy", "dopant"),
    ) -> Observation:
        """An observation that carries counts but no atom table (policy benchmarks, summaries of old sessions).

        With ``image`` it is an unresolved frame (a survey) holding its image.
        """
        unc = dict.fromkeys(("mean_mutual_info", "p95_mutual_info", "mean_entropy", "atom_uncertainty"), 0.0)
        counts = {name: 0 for name in class_names[2:]}
        if counts:
            counts[next(iter(counts))] = new_defects
        resolved = image is None
        return cls(
            0, header, 0.0, AtomTable.empty(), class_names, counts, new_defects, unc, ood_score, resolved, {}, image
        )

    @property
    def n_atoms(self) -> int:
        """Number of located columns."""
        return len(self.atoms)

    @property
    def n_defects(self) -> int:
        """Number of defect columns in this frame."""
        return int(self.atoms.defect.sum())

    @property
    def featureless(self) -> bool:
        """The input check found nothing above the frame's noise (its columns were not located)."""
        return self.input_check.get("featureless", 0.0) == 1.0

    def variables(self) -> dict[str, float]:
        """The scalar quantities a reward expression may use (see :mod:`agent.reward`)."""
        out = {
            "n_atoms": float(self.n_atoms),
            "n_defects": float(self.n_defects),
            "new_defects": float(self.new_defects),
            "ood_score": _finite(self.ood_score),
            **{k: _finite(v) for k, v in self.uncertainty.items()},
            **{k: _finite(v) for k, v in self.input_check.items()},
        }
        out.update({f"n_{name}": float(n) for name, n in self.defect_counts.items()})
        return out

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (recorded once per frame)."""
        return {
            "step": self.step,
            "command_id": self.header.command_id,
            "sequence": self.header.sequence,
            "x_nm": self.header.x_nm,
            "y_nm": self.header.y_nm,
            "fov_nm": self.header.fov_nm,
            "n_atoms": self.n_atoms,
            "n_defects": self.n_defects,
            "new_defects": self.new_defects,
            "defect_counts": self.defect_counts,
            "uncertainty": {k: _finite(v) for k, v in self.uncertainty.items()},
            "ood_score": float(self.ood_score) if np.isfinite(self.ood_score) else None,
            "atoms_resolved": self.atoms_resolved,
            "input_check": {k: _finite(v) for k, v in self.input_check.items()},
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "atoms": {
                "row": np.round(self.atoms.row, 2).tolist(),
                "col": np.round(self.atoms.col, 2).tolist(),
                "class_id": self.atoms.class_id.tolist(),
                "defect": self.atoms.defect.tolist(),
                "uncertainty": np.round(self.atoms.uncertainty.astype(float), 4).tolist(),
                "presence_entropy": np.round(self.atoms.presence_entropy.astype(float), 4).tolist(),
            },
        }


def _finite(value: float) -> float:
    """JSON has no NaN: a missing figure is written as 0 (and the field's meaning says so)."""
    return float(value) if np.isfinite(value) else 0.0
