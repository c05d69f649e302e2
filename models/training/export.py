"""Export a trained ensemble as one ONNX graph with mean probabilities and uncertainty maps.

The graph takes ``image`` (1, 1, H, W) float32 with dynamic H and W (multiples
of ``2**depth``) and returns ``mean_probs``, ``entropy``, ``mutual_info`` and
``variance``.  The manifest beside it records the classes, the native pixel
size, the normalisation, the training command and seeds, the sha256 of the
file and the in-distribution calibration of the frame OOD score.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.manifest import (
    Calibration,
    ClassInfo,
    ModelManifest,
    TrainingRecord,
    invoked_command,
    manifest_path_for,
    sha256_file,
)
from models.training.data import SampleSpec, make_dataset, sample_spec_from_json
from models.training.ensemble import OUTPUT_NAMES, EnsembleWithUncertainty
from models.training.train import load_members
from models.training.unet import UNet
from simulators import CLASS_NAMES, ColumnClass

logger = logging.getLogger(__name__)

#: Seed of the calibration frames: never used for training.
CALIBRATION_SEED = 10_007


def export_onnx(ensemble: EnsembleWithUncertainty, path: Path, multiple: int) -> None:
    """Write ``ensemble`` as one ONNX graph with dynamic height and width."""
    example = torch.zeros(1, 1, 8 * multiple, 8 * multiple)
    h = torch.export.Dim("h", min=1, max=1024)
    w = torch.export.Dim("w", min=1, max=1024)
    torch.onnx.export(
        ensemble,
        (example,),
        str(path),
        dynamo=True,
        input_names=["image"],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes={"x": {2: multiple * h, 3: multiple * w}},
        external_data=False,
        optimize=True,
    )
    strip_stack_traces(path)


def strip_stack_traces(path: Path) -> None:
    """Drop the exporter's per-node Python stack traces, which name files on the exporting machine."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(model, str(path))


def calibrate(onnx_path: Path, spec: SampleSpec, frames: int = 48) -> Calibration:
    """Mean and spread of the frame-mean mutual information on unseen in-distribution frames."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    images, _ = make_dataset(frames, CALIBRATION_SEED, spec)
    values = []
    for image in images:
        out = session.run(["mutual_info"], {"image": image[None, None]})[0]
        values.append(float(out.mean()))
    return Calibration(
        frame_mutual_info_mean=float(np.mean(values)),
        frame_mutual_info_std=max(float(np.std(values)), 1e-6),
        frames=frames,
    )


def recorded_commands(run_dir: Path) -> str:
    """The train command recorded in the run directory, then this export command."""
    recorded = run_dir / "command.txt"
    train = recorded.read_text().strip() if recorded.exists() else "(not recorded)"
    return f"{train} && {invoked_command()}"


def export_run(
    run_dir: Path,
    out: Path,
    name: str | None = None,
    tile_size_px: int = 512,
    calibration_frames: int = 48,
    evaluation_frames: int = 0,
    bias_frames: int = 0,
) -> ModelManifest:
    """Export the ensemble trained in ``run_dir`` to ``out`` (.onnx) and its manifest (.json).

    With ``bias_frames`` > 0 the class decision rule is fitted on that many validation
    frames (:mod:`models.training.calibrate`).  With ``evaluation_frames`` > 0 the
    exported model is then evaluated on that many
    unseen simulated frames (and as many shifted ones), and the figures are stored
    in the manifest's ``validation``.

    Everything is written to a staging folder beside ``out`` and moved into place at the end,
    the manifest last: an export that fails or is interrupted leaves a previous model at ``out``
    as it was, never a model beside a manifest of another.

    Raises
    ------
    ValueError
        An unfinished or unreadable run, or an ``out`` whose manifest would overwrite the run's
        own ``config.json``.
    """
    if manifest_path_for(out).resolve() == (run_dir / "config.json").resolve():
        raise ValueError(f"--out {out} would write its manifest over the run's config.json: choose another name")
    members, config = load_members(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.stem}.export-", dir=out.parent))
    try:
        staged = staging / out.name
        manifest = _export_staged(run_dir, staged, members, config, name or out.stem, tile_size_px, calibration_frames)
        manifest = _fit_and_evaluate(staged, manifest, bias_frames, evaluation_frames)
        for path in (staged, staged.with_suffix(".members.pt"), manifest_path_for(staged)):  # manifest last
            os.replace(path, out.parent / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _export_staged(
    run_dir: Path,
    out: Path,
    members: list[UNet],
    config: dict[str, Any],
    name: str,
    tile_size_px: int,
    calibration_frames: int,
) -> ModelManifest:
    """The ONNX graph, the members' weights and a first manifest (with the OOD calibration) at ``out``."""
    depth = members[0].depth
    multiple = 2**depth
    ensemble = EnsembleWithUncertainty(members).eval()
    export_onnx(ensemble, out, multiple)
    # The members' weights alone (no optimiser state), for re-export and the eager-torch benchmark.
    torch.save(
        {
            "members": [m.state_dict() for m in members],
            "n_classes": len(config["class_weights"]),
            "width": int(config["width"]),
            "depth": depth,
            "widths": [int(w) for w in config.get("widths") or ()],
        },
        out.with_suffix(".members.pt"),
    )
    spec = sample_spec_from_json(config["sample"])
    # A run may over-sample some lattices (--lattice-weights); the OOD calibration uses them equally often.
    calibration = calibrate(out, spec.unweighted(), calibration_frames) if calibration_frames else None
    defects = {ColumnClass.VACANCY, ColumnClass.DOPANT}
    manifest = ModelManifest(
        name=name,
        onnx_file=out.name,
        onnx_sha256=sha256_file(out),
        classes=[ClassInfo(name=n, defect=ColumnClass(i) in defects) for i, n in enumerate(CLASS_NAMES)],
        native_pixel_size_nm=spec.native_pixel_nm,
        input_multiple=multiple,
        tile_size_px=tile_size_px,
        tile_overlap_px=32,
        members=len(members),
        outputs=list(OUTPUT_NAMES),
        training=TrainingRecord(
            command=recorded_commands(run_dir),
            member_seeds=[int(config["seed"]) * 1000 + m for m in range(len(members))],
            data_seed=int(config["data_seed"]),
            config=config,
        ),
        calibration=calibration,
    )
    manifest_path_for(out).write_text(json.dumps(manifest.model_dump(), indent=2))
    return manifest


def _fit_and_evaluate(out: Path, manifest: ModelManifest, bias_frames: int, evaluation_frames: int) -> ModelManifest:
    """The manifest at ``out`` with the fitted decision rule and the validation figures (when asked for)."""
    from models.segmenter import Segmenter

    if bias_frames > 0:
        from models.training.calibrate import fit_decision_bias

        bias = fit_decision_bias(Segmenter(manifest_path_for(out), "cpu"), frames=bias_frames)
        manifest = manifest.model_copy(update={"decision_bias": bias})
        manifest_path_for(out).write_text(json.dumps(manifest.model_dump(), indent=2))
    if evaluation_frames > 0:
        from models.training.evaluate import evaluate

        figures = evaluate(Segmenter(manifest_path_for(out), "cpu"), frames=evaluation_frames)
        manifest = manifest.model_copy(update={"validation": {k: v for k, v in figures.items() if np.isfinite(v)}})
        manifest_path_for(out).write_text(json.dumps(manifest.model_dump(), indent=2))
    return manifest
