"""Shot noise is Poisson: at a fixed expected dose, mean equals variance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from simulators import ImagingParams, ScanDistortion, render_frame


@pytest.mark.parametrize("current_pa", [5.0, 50.0])
def test_mean_equals_variance_at_fixed_dose(mos2, small_scan, rng, current_pa):
    """In every band of expected counts, E[n - lam] = 0 and E[(n - lam)^2] = E[lam]."""
    imaging = ImagingParams(probe_current_pa=current_pa, read_noise_counts=0.0, track_dose=False)
    images, expecteds = [], []
    for _ in range(6):
        frame = render_frame(mos2, small_scan, imaging, rng, distortion=ScanDistortion.none(small_scan.rows))
        images.append(frame.image)
        expecteds.append(frame.expected)
    n = np.concatenate(images).ravel().astype(np.float64)
    lam = np.concatenate(expecteds).ravel().astype(np.float64)
    edges = np.quantile(lam, np.linspace(0, 1, 9))
    for lo, hi in itertools.pairwise(edges):
        sel = (lam >= lo) & (lam < hi)
        mean_lam, residual = lam[sel].mean(), n[sel] - lam[sel]
        assert abs(residual.mean()) < 4 * np.sqrt(mean_lam / sel.sum()) + 1e-3
        assert (residual**2).mean() == pytest.approx(mean_lam, rel=0.08, abs=0.02)
    # Variance really follows the dose: a tenfold current gives a tenfold variance.
    assert n.var() > lam.mean()


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
