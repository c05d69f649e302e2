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
    load_manifest,
    manifest_path_for,
    sha256_file,
)
from models.training.data import SampleSpec, make_dataset, sample_spec_from_json
from models.training.ensemble import OUTPUT_NAMES, EnsembleWithUncertainty
from models.training.graph import rewrite_file
from models.training.train import load_members
from models.training.unet import UNet
from simulators import CLASS_NAMES, ColumnClass

logger = logging.getLogger(__name__)

#: Seed of the calibration frames: never used for training.
CALIBRATION_SEED = 10_007
#: Largest difference of any output a graph exported again may show against the graph it replaces.
REGRAPH_TOLERANCE = 1e-5
#: Largest difference of any output the members' eager forward may show against the graph they were exported
#: to (the parity tolerance of the export: onnxruntime and torch do not round alike).
EAGER_TOLERANCE = 1e-4
#: Input sizes (native pixels) the two graphs are compared on: square, wide and tall.
_REGRAPH_SHAPES = ((64, 64), (96, 160), (224, 32))


def export_onnx(ensemble: EnsembleWithUncertainty, path: Path, multiple: int, rewrite: bool = True) -> None:
    """Write ``ensemble`` as one ONNX graph with dynamic height and width.

    ``rewrite=False`` leaves the graph as ``torch.onnx`` writes it, without the rewrites of
    :mod:`models.training.graph` (for ``benchmarks/graph_rewrite.py``; stack traces are dropped either way).
    """
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
    rewrite_file(str(path), rewrite=rewrite)  # (no stack traces naming this machine's files; faster softmax)


def members_from_bundle(path: Path) -> list[UNet]:
    """The members saved beside an export (``MODEL.members.pt``), in eval mode."""
    bundle = torch.load(path, weights_only=False)
    members = []
    for state in bundle["members"]:
        net = UNet(
            bundle["n_classes"], bundle["width"], bundle["depth"], widths=bundle.get("widths", ()),
            global_context=bool(bundle.get("global_context", False)),
        )  # fmt: skip
        net.load_state_dict(state)
        members.append(net.eval())
    return members


def refresh_graph(manifest_path: Path) -> tuple[ModelManifest, float]:
    """Export an exported model's graph again from its ``.members.pt``, as :func:`export_onnx` writes it now.

    For a model exported before a graph rewrite (:mod:`models.training.graph`) existed, when its run
    directory is gone: the members' weights are those of the export.  Everything the manifest holds
    (classes, calibration, decision rule, validation figures) stays valid only if the new graph computes
    what the old one did: the members' eager outputs are first compared with the old graph's (members of
    another model are refused before the export is spent on them, :data:`EAGER_TOLERANCE`), then both graphs
    run on random inputs of several sizes and the new graph replaces the old only if no output differs by
    more than :data:`REGRAPH_TOLERANCE`; the manifest then gets the new
    sha256 and this command appended to its training record.

    Returns
    -------
    tuple
        The new manifest and the largest difference seen.

    Raises
    ------
    ValueError
        A manifest whose model does not match it (:class:`models.manifest.ModelError`), a model without
        its members, or a new graph that computes something else.
    """
    manifest, onnx_path = load_manifest(manifest_path)
    manifest_file = manifest_path_for(manifest_path) if manifest_path.suffix == ".onnx" else manifest_path
    bundle = onnx_path.with_suffix(".members.pt")
    if not bundle.is_file():
        raise ValueError(f"{bundle} not found: the graph can only be exported again from the members' weights")
    members = members_from_bundle(bundle)
    if len(members) != manifest.members:
        raise ValueError(f"{bundle} holds {len(members)} members, the manifest says {manifest.members}")
    ensemble = EnsembleWithUncertainty(members).eval()
    eager = _eager_difference(ensemble, onnx_path, manifest.input_multiple)
    if not eager <= EAGER_TOLERANCE:  # checked before the export, which takes a while
        raise ValueError(
            f"the members in {bundle} compute outputs {eager:.3g} away from {onnx_path}'s (more than"
            f" {EAGER_TOLERANCE:g}): the members are not those of the export; {onnx_path} is left as it was"
        )
    staging = Path(tempfile.mkdtemp(prefix=f".{onnx_path.stem}.regraph-", dir=onnx_path.parent))
    try:
        staged = staging / onnx_path.name
        export_onnx(ensemble, staged, manifest.input_multiple)
        worst = _largest_difference(onnx_path, staged, manifest.input_multiple)
        if not worst <= REGRAPH_TOLERANCE:
            raise ValueError(
                f"the graph exported again from {bundle} differs from {onnx_path} by {worst:.3g} (more than"
                f" {REGRAPH_TOLERANCE:g}): the members are not those of the export; {onnx_path} is left as it was"
            )
        record = manifest.training.model_copy(update={"command": f"{manifest.training.command} && {invoked_command()}"})
        manifest = manifest.model_copy(update={"onnx_sha256": sha256_file(staged), "training": record})
        staged_manifest = manifest_path_for(staged)
        staged_manifest.write_text(json.dumps(manifest.model_dump(), indent=2))
        os.replace(staged, onnx_path)
        os.replace(staged_manifest, manifest_file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest, worst


def _eager_difference(ensemble: EnsembleWithUncertainty, onnx_path: Path, multiple: int) -> float:
    """The largest absolute difference of any output of ``ensemble`` (torch) and a graph, on one random input."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    h, w = _REGRAPH_SHAPES[0]
    x = np.random.default_rng(0).random((1, 1, -(-h // multiple) * multiple, -(-w // multiple) * multiple), np.float32)
    graph = session.run(list(OUTPUT_NAMES), {session.get_inputs()[0].name: x})
    with torch.inference_mode():
        eager = [e.numpy() for e in ensemble(torch.from_numpy(x))]
    if [e.shape for e in eager] != [g.shape for g in graph]:
        raise ValueError(
            f"the members give outputs of shapes {[e.shape for e in eager]}, {onnx_path} of "
            f"{[g.shape for g in graph]}: the members are not those of the export; {onnx_path} is left as it was"
        )
    return max(float(np.abs(g - e).max()) for g, e in zip(graph, eager, strict=True))


def _largest_difference(old: Path, new: Path, multiple: int) -> float:
    """The largest absolute difference of any output of two graphs on random inputs of several sizes."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (old, new)]
    rng = np.random.default_rng(0)
    worst = 0.0
    for h, w in _REGRAPH_SHAPES:
        x = rng.random((1, 1, -(-h // multiple) * multiple, -(-w // multiple) * multiple), dtype=np.float32)
        a, b = (s.run(list(OUTPUT_NAMES), {s.get_inputs()[0].name: x}) for s in sessions)
        worst = max(worst, *(float(np.abs(p - q).max()) for p, q in zip(a, b, strict=True)))
    return worst


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
    the manifest last: an export that fails leaves a previous model at ``out`` as it was; one
    interrupted between the two moves leaves a model whose manifest refuses it (its sha256
    differs), never one used under another's manifest.

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
            "global_context": bool(config.get("global_context", False)),
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
