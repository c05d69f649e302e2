"""Shared fixtures: small, seeded simulator objects."""

from __future__ import annotations

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
