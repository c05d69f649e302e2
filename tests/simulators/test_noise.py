"""Shot noise is Poisson: at a fixed expected dose, mean equals variance."""

from __future__ import annotations

import numpy as np
import pytest

from simulators import ImagingParams, ScanDistortion, render_frame


def _binned_moments(image: np.ndarray, expected: np.ndarray, edges: np.ndarray):
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (expected >= lo) & (expected < hi)
        if sel.sum() > 2000:
            out.append((expected[sel].mean(), image[sel].mean(), image[sel].var()))
    return np.array(out)


@pytest.mark.parametrize("current_pa", [5.0, 50.0])
def test_mean_equals_variance_at_fixed_dose(mos2, small_scan, rng, current_pa):
    imaging = ImagingParams(probe_current_pa=current_pa, read_noise_counts=0.0, track_dose=False)
    images, expecteds = [], []
    for _ in range(6):
        frame = render_frame(mos2, small_scan, imaging, rng, distortion=ScanDistortion.none(small_scan.rows))
        images.append(frame.image)
        expecteds.append(frame.expected)
    image, expected = np.concatenate(images).ravel(), np.concatenate(expecteds).ravel()
    edges = np.quantile(expected, np.linspace(0, 1, 9))
    moments = _binned_moments(image, expected, edges)
    assert len(moments) >= 5
    lam, mean, var = moments.T
    np.testing.assert_allclose(mean, lam, rtol=0.03, atol=0.05)
    np.testing.assert_allclose(var, lam, rtol=0.12, atol=0.1)


def test_read_noise_adds_its_variance(mos2, small_scan, rng):
    sigma = 2.0
    imaging = ImagingParams(read_noise_counts=sigma, track_dose=False)
    frame = render_frame(mos2, small_scan, imaging, rng)
    residual = (frame.image - frame.expected).astype(np.float64)
    z = residual / np.sqrt(frame.expected + sigma**2)
    assert abs(z.mean()) < 0.02
    assert abs(z.var() - 1.0) < 0.05


def test_noise_free_image_equals_expectation(mos2, small_scan, rng):
    imaging = ImagingParams(shot_noise=False, read_noise_counts=0.0, track_dose=False)
    frame = render_frame(mos2, small_scan, imaging, rng)
    np.testing.assert_array_equal(frame.image, frame.expected)


def test_counts_scale_with_dose(mos2, small_scan):
    low, high = ImagingParams(track_dose=False), ImagingParams(probe_current_pa=80.0, track_dose=False)
    a = render_frame(mos2, small_scan, low, np.random.default_rng(0))
    b = render_frame(mos2, small_scan, high, np.random.default_rng(0))
    np.testing.assert_allclose(b.expected, 4.0 * a.expected, rtol=1e-5)
    assert b.dose_e_per_a2 == pytest.approx(4.0 * a.dose_e_per_a2)
