"""The scan geometry's inverse map undoes its forward map (property-based)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators import ImagingParams, ScanDistortion, ScanGeometry, ScanRequest


@settings(max_examples=60, deadline=None)
@given(
    rotation=st.floats(-180, 180),
    jitter=st.floats(0.0, 0.02),
    flyback=st.floats(0.0, 0.08),
    drift=st.floats(0.0, 5.0),
    seed=st.integers(0, 2**16),
)
def test_to_pixels_inverts_positions(rotation, jitter, flyback, drift, seed):
    scan = ScanRequest(x_nm=3.0, y_nm=-1.0, fov_nm=5.0, rows=96, cols=80, rotation_deg=rotation, dwell_us=5.0)
    imaging = ImagingParams(line_jitter_nm=jitter, flyback_amplitude_nm=flyback, drift_nm_per_s=drift)
    rng = np.random.default_rng(seed)
    geometry = ScanGeometry(scan, ScanDistortion.draw(rng, scan, imaging), imaging.flyback_time_us)
    rows = rng.integers(0, scan.rows, 50)
    cols = rng.integers(0, scan.cols, 50)
    x, y = geometry.positions_at(rows, cols)
    r, c = geometry.to_pixels(np.diag(x), np.diag(y))
    np.testing.assert_allclose(r, rows, atol=2e-3)
    np.testing.assert_allclose(c, cols, atol=2e-3)


@settings(max_examples=30, deadline=None)
@given(rotation=st.floats(-180, 180), per_line_px=st.floats(0.0, 0.49), seed=st.integers(0, 2**16))
def test_to_pixels_inverts_strong_drift_exactly(rotation, per_line_px, seed):
    """Drift up to half a pixel per line moves a 256-line frame by 125 pixels: the inverse must not iterate."""
    scan = ScanRequest(fov_nm=5.12, rows=256, cols=256, rotation_deg=rotation, dwell_us=20.0)
    line_us = scan.cols * scan.dwell_us + ImagingParams().flyback_time_us
    drift = per_line_px * scan.pixel_size_nm / line_us * 1e6
    imaging = ImagingParams(line_jitter_nm=0.01, flyback_amplitude_nm=0.04, drift_nm_per_s=drift)
    rng = np.random.default_rng(seed)
    geometry = ScanGeometry(scan, ScanDistortion.draw(rng, scan, imaging), imaging.flyback_time_us)
    assert geometry.fold_problem() is None
    rows, cols = rng.integers(0, scan.rows, 50), rng.integers(0, scan.cols, 50)
    x, y = geometry.positions_at(rows, cols)
    r, c = geometry.to_pixels(np.diag(x), np.diag(y))
    np.testing.assert_allclose(r, rows, atol=2e-3)
    np.testing.assert_allclose(c, cols, atol=2e-3)


def test_scans_that_fold_or_smear_the_image_are_refused_by_name():
    import pytest

    from simulators import Specimen, SpecimenConfig, render_frame
    from simulators.errors import ParameterError

    specimen = Specimen(SpecimenConfig(seed=0, width_nm=40, height_nm=40))
    fine = ScanRequest(fov_nm=1.28, rows=64, cols=64, dwell_us=30.0)  # 0.02 nm pixels
    backwards = ImagingParams(flyback_amplitude_nm=1.0)  # 1 nm * 30 us / 150 us = 0.2 nm back per pixel
    with pytest.raises(ParameterError, match=r"flyback .* the image folds"):
        render_frame(specimen, fine, backwards, np.random.default_rng(0))
    smeared = ImagingParams(drift_nm_per_s=20.0)  # 20 nm/s * 2420 us = 0.048 nm per line
    with pytest.raises(ParameterError, match=r"more than half the 0\.02 nm pixel"):
        render_frame(specimen, fine, smeared, np.random.default_rng(0))


def test_training_samples_keep_their_flyback_below_a_fold():
    from models.training.data import _unfolded

    scan = ScanRequest(fov_nm=3.2, rows=400, cols=400, dwell_us=30.0)  # 0.008 nm pixels
    imaging = _unfolded(ImagingParams(flyback_amplitude_nm=0.08), scan)  # 0.016 nm back per pixel: would fold
    assert imaging.flyback_amplitude_nm * scan.dwell_us / imaging.flyback_settle_us < scan.pixel_size_nm
    assert _unfolded(ImagingParams(flyback_amplitude_nm=0.01), scan).flyback_amplitude_nm == 0.01
