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
