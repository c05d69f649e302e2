"""A tiny trained and exported ensemble, made once per test session (a few seconds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from models.training.data import SampleSpec
from models.training.export import export_run
from models.training.train import TrainConfig, train_ensemble


@dataclass(frozen=True)
class TinyModel:
    run_dir: Path
    onnx: Path
    manifest: Path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> TinyModel:
    run_dir = tmp_path_factory.mktemp("tiny-run")
    config = TrainConfig(
        members=2, steps=12, batch=4, width=4, depth=2, samples=16, checkpoint_every=5, sample=SampleSpec(patch_px=64)
    )
    train_ensemble(run_dir, config, threads=1)
    onnx = run_dir / "tiny.onnx"
    export_run(run_dir, onnx, name="tiny", tile_size_px=64, calibration_frames=4)
    return TinyModel(run_dir, onnx, onnx.with_suffix(".json"))
