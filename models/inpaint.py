"""Sinogram inpainting at inference time (onnxruntime, no torch): fill unmeasured tilts, with uncertainty.

``SinogramInpainter.complete`` puts a tilt series on the 128-angle grid, runs the ensemble on every
slice's sinogram at once, keeps the measured rows as measured (data consistency) and returns the full
series and the ensemble's per-angle uncertainty; ``reconstruct_inpainted`` back-projects it (the
``inpaint-wbp`` method).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.manifest import ModelError, sha256_file
from models.session import OnnxModel
from models.sinogram import GRID_DEG, N_ANGLES, grid_index, pack, unpack
from models.tomo import TomoError, check_series, reconstruct

DEFAULT_INPAINT = Path(__file__).parent / "weights" / "sinogram_inpaint.json"


class InpaintManifest(BaseModel):
    """Manifest of a sinogram-inpainting ensemble (written by ``autoscope tomo export``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    schema_version: Literal[1] = 1
    name: str
    kind: Literal["sinogram_inpainting"]
    onnx_file: str = Field(pattern=r"^[^/\\]+\.onnx$", description="A file name beside the manifest, no path.")
    onnx_sha256: str
    angles_deg: list[float]
    detector_multiple: int = Field(ge=1)
    members: int = Field(ge=1)
    outputs: list[str]


@dataclass(frozen=True)
class Completed:
    """A tilt series completed on the grid.

    Attributes
    ----------
    series : (128, rows, cols) float32, projected density at every grid angle.
    angles_deg : (128,) the grid.
    measured : (128,) bool, grid rows that hold a measurement.
    angle_uncertainty : (128,) float64, the ensemble's spread per angle (projected-density units; 0-ish
        where measured).
    """

    series: np.ndarray
    angles_deg: np.ndarray
    measured: np.ndarray
    angle_uncertainty: np.ndarray


class SinogramInpainter:
    """The inpainting ensemble, loaded by manifest (sha256 checked).

    Raises
    ------
    models.manifest.ModelError
        A missing, malformed or mismatched manifest or model file.
    """

    def __init__(self, manifest: Path | None = None, providers: str = "auto", threads: int = 0) -> None:
        path = Path(manifest) if manifest else DEFAULT_INPAINT
        try:
            self.manifest = InpaintManifest.model_validate(json.loads(path.read_text()))
        except (OSError, ValueError, ValidationError) as exc:
            raise ModelError(f"cannot load the inpainting manifest {path}: {exc}") from None
        onnx = path.parent / self.manifest.onnx_file
        if not onnx.is_file() or sha256_file(onnx) != self.manifest.onnx_sha256:
            raise ModelError(f"{onnx} is missing or does not match the sha256 in {path}")
        if not np.allclose(self.manifest.angles_deg, GRID_DEG):
            raise ModelError(f"{path}: the model's angle grid differs from this version's")
        self.model = OnnxModel(onnx, providers, threads)
        inputs = [i.name for i in self.model.session.get_inputs()]
        missing = sorted(set(self.manifest.outputs) - set(self.model.output_names))
        if inputs != ["sinogram"] or missing:  # checked now, not after a whole acquisition
            raise ModelError(f"{onnx} is not the inpainting graph {path} names (inputs {inputs}, missing {missing})")

    def complete(self, series: np.ndarray, angles_deg: np.ndarray) -> Completed:
        """Fill the unmeasured grid angles of ``series`` ``(n, rows, cols)`` (tilt axis along rows).

        Raises
        ------
        TomoError
            An invalid series (:func:`check_series`), or angles outside [-90, 90] degrees, which the grid
            does not hold (they were piled onto its last row).
        """
        series, angles = check_series(series, angles_deg)
        if np.abs(angles).max() > 90.0 + 1e-6:
            raise TomoError(f"inpainting takes tilts within [-90, 90] deg; got {angles.min():g} to {angles.max():g}")
        n, rows, cols = series.shape
        index = grid_index(angles)
        grid = np.zeros((rows, N_ANGLES, cols), dtype=np.float64)
        hits = np.zeros(N_ANGLES)
        for k in range(n):  # two tilts on one grid row are averaged
            grid[:, index[k]] += series[k]
            hits[index[k]] += 1
        measured = hits > 0
        grid[:, measured] /= hits[measured][None, :, None]
        m = self.manifest.detector_multiple
        pad = (-cols) % m
        padded = np.pad(grid, ((0, 0), (0, 0), (0, pad)))
        x, scale = pack(padded, np.broadcast_to(measured, (rows, N_ANGLES)))
        out = self.model.run(x, input_name="sinogram")
        filled = unpack(out["mean"], scale)[:, :, :cols]
        full = np.where(measured[None, :, None], grid, filled)
        spread = (out["angle_uncertainty"] * scale[:, None]).mean(0)
        return Completed(full.transpose(1, 0, 2).astype(np.float32), GRID_DEG.copy(), measured, spread)


def reconstruct_inpainted(series: np.ndarray, angles_deg: np.ndarray, inpainter: SinogramInpainter) -> np.ndarray:
    """``inpaint-wbp``: complete the series on the grid, then weighted back-projection."""
    done = inpainter.complete(series, angles_deg)
    return reconstruct(done.series, done.angles_deg, "wbp")
