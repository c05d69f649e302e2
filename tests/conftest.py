"""Shared fixtures: small, seeded simulator objects and a tiny trained ensemble."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from simulators import ImagingParams, ScanRequest, Specimen, SpecimenConfig


@pytest.fixture
def mos2() -> Specimen:
    """A small MoS2 specimen with a fixed lattice rotation."""
    return Specimen(SpecimenConfig(seed=3, lattice="MoS2", width_nm=80, height_nm=80, rotation_deg=12.0))


@pytest.fixture
def small_scan() -> ScanRequest:
    """A 128 x 128 atomic-resolution field (0.04 nm per pixel)."""
    return ScanRequest(x_nm=1.0, y_nm=-2.0, fov_nm=5.12, rows=128, cols=128, dwell_us=10.0)


@pytest.fixture
def quiet() -> ImagingParams:
    """Imaging without dose tracking, so frames do not change the specimen."""
    return ImagingParams(track_dose=False)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator."""
    return np.random.default_rng(1234)


@dataclass(frozen=True)
class TinyModel:
    run_dir: Path
    onnx: Path
    manifest: Path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> TinyModel:
    from models.training.data import SampleSpec
    from models.training.export import export_run
    from models.training.train import TrainConfig, train_ensemble

    run_dir = tmp_path_factory.mktemp("tiny-run")
    config = TrainConfig(
        members=2, steps=12, batch=4, width=4, depth=2, samples=16, checkpoint_every=5, sample=SampleSpec(patch_px=64)
    )
    train_ensemble(run_dir, config, threads=1)
    onnx = run_dir / "tiny.onnx"
    export_run(run_dir, onnx, name="tiny", tile_size_px=64, calibration_frames=4)
    return TinyModel(run_dir, onnx, onnx.with_suffix(".json"))


@pytest.fixture(scope="session")
def segmenter():
    """The bundled ensemble on one CPU thread (shared by every test: loading it costs a second)."""
    from models.segmenter import Segmenter

    return Segmenter(providers="cpu", threads=1)


@pytest.fixture(scope="session")
def usim_scan_data():
    """Nion usim's own sample generator, built once (its samples take about a second to build).

    It draws frames from the instrument's state and the frame parameters alone, so every test's fresh
    usim instrument can share it.
    """
    pytest.importorskip("nion.usim_device", reason="the Nion extra is not installed")
    from nion.usim_device import InstrumentDevice

    return InstrumentDevice.ScanDataGenerator(sample_index=0)
