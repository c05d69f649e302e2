"""The manifest beside every bundled model: what it is, how it was made, how well it does.

Loading a model goes through its manifest, which pins the ONNX file by sha256:
a corrupt, truncated or swapped file is refused before onnxruntime sees it.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

_STRICT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ModelError(ValueError):
    """A model file or manifest is missing, malformed or does not match."""


class ClassInfo(BaseModel):
    """One output class."""

    model_config = _STRICT
    name: str
    defect: bool


class Normalisation(BaseModel):
    """Input normalisation: ``(x - P_low) / (P_high - P_low)`` after resampling."""

    model_config = _STRICT
    method: Literal["percentile"] = "percentile"
    low_pct: float = Field(1.0, ge=0.0, lt=50.0)
    high_pct: float = Field(99.5, gt=50.0, le=100.0)


class Calibration(BaseModel):
    """In-distribution statistics of the frame-mean mutual information (for the OOD score)."""

    model_config = _STRICT
    frame_mutual_info_mean: float = Field(ge=0.0)
    frame_mutual_info_std: float = Field(gt=0.0)
    frames: int = Field(ge=1)


class TrainingRecord(BaseModel):
    """How the model was made."""

    model_config = _STRICT
    command: str
    member_seeds: list[int]
    data_seed: int
    config: dict[str, object]


class ModelManifest(BaseModel):
    """Manifest of a segmentation ensemble exported as one ONNX graph."""

    model_config = _STRICT
    schema_version: Literal[1] = 1
    name: str
    onnx_file: str = Field(pattern=r"^[^/\\]+\.onnx$", description="A file name beside the manifest, no path.")
    onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    classes: list[ClassInfo] = Field(min_length=2, description="Background first, then at least one class.")
    native_pixel_size_nm: float = Field(gt=0.0)
    normalisation: Normalisation = Normalisation()
    input_multiple: int = Field(ge=1, le=256)
    tile_size_px: int = Field(ge=16, le=8192)
    tile_overlap_px: int = Field(ge=0)
    members: int = Field(ge=1)
    outputs: list[str]
    training: TrainingRecord
    calibration: Calibration | None = None
    decision_bias: list[float] | None = Field(
        None, description="Per non-background class factor on summed probabilities (fitted at export)."
    )
    validation: dict[str, float] = {}

    @model_validator(mode="after")
    def _classes_and_their_bias(self) -> ModelManifest:
        """Class names are distinct, and the decision bias has a positive factor per non-background class."""
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"classes {names} name one class twice")
        bias = self.decision_bias
        if bias is not None and (len(bias) != len(names) - 1 or min(bias) <= 0.0):
            raise ValueError(
                f"decision_bias {bias} must hold one positive factor per class after the background "
                f"({len(names) - 1}: {', '.join(names[1:])})"
            )
        return self

    @model_validator(mode="after")
    def _tiles_step_forward(self) -> ModelManifest:
        """Tiles (rounded down to the input multiple) must be wider than their overlap by a multiple at least."""
        tile = self.tile_size_px // self.input_multiple * self.input_multiple
        if tile - self.tile_overlap_px < self.input_multiple:
            raise ValueError(
                f"tile_size_px {self.tile_size_px} leaves no room past the {self.tile_overlap_px} px overlap"
                f" (tiles step by multiples of {self.input_multiple} px): use at least"
                f" {self.tile_overlap_px + 2 * self.input_multiple}"
            )
        return self


def invoked_command() -> str:
    """The command line of the running process as ``autoscope ...`` (never the path to the executable)."""
    return " ".join(shlex.quote(a) for a in ["autoscope", *sys.argv[1:]])


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_path_for(model_path: Path) -> Path:
    """The manifest beside ``model.onnx``: ``model.json``."""
    return model_path.with_suffix(".json")


def load_manifest(path: Path) -> tuple[ModelManifest, Path]:
    """Read and check a manifest (or the manifest beside an .onnx); return it and the ONNX path.

    Raises
    ------
    ModelError
        If a file is missing, the manifest is malformed, or the ONNX file's sha256 differs.
    """
    path = Path(path)
    if path.suffix == ".onnx":
        path = manifest_path_for(path)
    if not path.is_file():
        raise ModelError(f"model manifest not found: {path}")
    try:
        manifest = ModelManifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError, RecursionError) as exc:
        raise ModelError(f"malformed model manifest {path}: {exc}") from None
    onnx_path = path.parent / manifest.onnx_file
    if not onnx_path.is_file():
        raise ModelError(f"model file named by {path} not found: {onnx_path}")
    actual = sha256_file(onnx_path)
    if actual != manifest.onnx_sha256:
        raise ModelError(
            f"{onnx_path} does not match its manifest (sha256 {actual[:12]}..., "
            f"expected {manifest.onnx_sha256[:12]}...): the file is corrupt or was replaced"
        )
    return manifest, onnx_path
