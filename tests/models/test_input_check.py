"""The input's own statistics: atomic-scale contrast against noise, and detector saturation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.input_check import FALSE_ALARM, check_input, saturated_fraction, spectral_peak
from simulators import ImagingParams, ScanRequest, Specimen, SpecimenConfig, render_frame


def _lattice(
    lattice: str, pixel_size_nm: float, probe_current_pa: float = 50.0, pixels: int = 256, rotation_deg: float = 17.0
):
    frame = render_frame(
        Specimen(SpecimenConfig(seed=5, lattice=lattice, width_nm=40, height_nm=40, rotation_deg=0.0)),
        ScanRequest(fov_nm=pixels * pixel_size_nm, rows=pixels, cols=pixels, dwell_us=8.0, rotation_deg=rotation_deg),
        ImagingParams(probe_current_pa=probe_current_pa, track_dose=False),
        np.random.default_rng(7),
    )
    return frame.image


def _noise(kind: str, rng: np.random.Generator, side: int) -> np.ndarray:
    if kind == "gaussian":
        return rng.normal(rng.uniform(-50, 50), rng.uniform(0.1, 10), (side, side))
    return rng.poisson(rng.uniform(0.05, 30), (side, side)).astype(np.uint16)


@pytest.mark.parametrize("kind", ["gaussian", "poisson"])
@pytest.mark.parametrize("pixel_size_nm", [0.008, 0.015, 0.03])
def test_noise_alone_is_featureless_at_every_sampling(kind, pixel_size_nm):
    rng = np.random.default_rng([int(pixel_size_nm * 1e4), len(kind)])
    checks = [check_input(_noise(kind, rng, side), pixel_size_nm) for side in (128, 256, 512) for _ in range(3)]
    assert all(c.featureless for c in checks), [round(c.peak_snr, 1) for c in checks]
    assert all(c.flags == ("featureless",) for c in checks)  # and no pile-up at the top of noise


@pytest.mark.parametrize("lattice", ["MoS2", "WS2", "graphene", "SrTiO3"])
@pytest.mark.parametrize("pixel_size_nm", [0.01, 0.03])
def test_a_simulated_lattice_stands_far_out_of_its_noise(lattice, pixel_size_nm):
    check = check_input(_lattice(lattice, pixel_size_nm), pixel_size_nm)
    assert not check.featureless and check.flags == ()
    assert check.peak_snr > 5 * check.peak_threshold


def _square_columns(noise: float, angle_deg: float, period_px: float = 12.0, width_px: float = 2.5) -> np.ndarray:
    """Gaussian columns on a square grid turned by ``angle_deg``, with white noise: 256 x 256."""
    yy, xx = np.mgrid[0:256, 0:256].astype(float)
    t = np.deg2rad(angle_deg)
    u, v = np.cos(t) * xx + np.sin(t) * yy, -np.sin(t) * xx + np.cos(t) * yy
    du, dv = (u + period_px / 2) % period_px - period_px / 2, (v + period_px / 2) % period_px - period_px / 2
    columns = np.exp(-(du**2 + dv**2) / (2 * width_px**2))
    return columns + np.random.default_rng(8).normal(0, noise, columns.shape)


def test_a_lattice_aligned_with_the_scan_is_seen_through_its_peaks_on_the_axes():
    """Its strongest reflections lie on the spectrum's axes, where scan-line noise also goes: the axes are
    judged against floors of their own, not dropped (dropped, this frame's best bin is 12 floors: featureless).
    """
    aligned = check_input(_square_columns(3.0, 0.0), 0.02)
    assert aligned.peak_snr > 1.5 * aligned.peak_threshold and not aligned.featureless
    assert check_input(_square_columns(3.0, 17.0), 0.02).peak_snr < aligned.peak_snr  # the axes carry it


def test_the_threshold_is_the_false_alarm_rate_over_the_band():
    image = np.random.default_rng(0).normal(size=(256, 256))
    _, bins = spectral_peak(image, 0.02)
    check = check_input(image, 0.02)
    assert check.peak_threshold == pytest.approx(math.log(bins) + math.log(1 / FALSE_ALARM))
    assert check.peak_threshold > 10  # many bins: the largest of noise reaches ln(bins) on its own


@pytest.mark.parametrize("value", [0.0, 7.0, -3.5])
def test_a_constant_frame_is_featureless_and_not_saturated(value):
    check = check_input(np.full((64, 64), value, dtype=np.float32), 0.02)
    assert check.featureless and check.peak_snr == 0.0 and check.saturated_fraction == 0.0


def test_too_few_frequencies_in_the_band_give_no_verdict():
    """16 x 16 pixels of 0.03 nm: a handful of bins between 0.08 and 1 nm, too few to tell noise from contrast."""
    check = check_input(np.random.default_rng(0).normal(size=(16, 16)), 0.03)
    assert math.isnan(check.peak_snr) and not check.featureless
    assert check.summary()["peak_snr"] is None  # JSON has no NaN


def test_clipping_shows_as_saturation_of_the_clipped_share():
    image = _lattice("MoS2", 0.02)
    ceiling = np.percentile(image, 95)
    clipped = np.minimum(image, ceiling)
    assert saturated_fraction(image) == 0.0
    assert saturated_fraction(clipped) == pytest.approx(np.mean(image >= ceiling), abs=1e-4)
    check = check_input(clipped, 0.02)
    assert check.saturated and check.flags == ("saturated",)


def test_low_counts_fall_off_at_the_top_and_are_not_saturation():
    """Poisson counts of 0.2 per pixel: most pixels at 0, few at the maximum count (no pile-up there)."""
    counts = np.random.default_rng(1).poisson(0.2, (256, 256)).astype(np.uint8)
    assert saturated_fraction(counts) == 0.0
    a_binary_mask = (np.random.default_rng(2).random((64, 64)) < 0.3).astype(np.uint8)  # 30 % ones, 70 % zeros
    assert saturated_fraction(a_binary_mask) == 0.0


def test_every_part_of_a_large_frame_is_judged():
    """1024 x 1024: a lattice in one corner tile is found, wherever it lies; noise everywhere is featureless."""
    rng = np.random.default_rng(3)
    image = rng.normal(0.5, 0.3, (1024, 1024)).astype(np.float32)
    assert check_input(image, 0.02).featureless
    image[700:956, 40:296] += _lattice("SrTiO3", 0.02)
    assert not check_input(image, 0.02).featureless


def test_hot_pixels_do_not_hide_a_lattice():
    """A spike is white: unclipped, ten of them lifted the noise floor over the lattice's peaks."""
    image = _lattice("graphene", 0.02)
    rng = np.random.default_rng(4)
    image[rng.integers(0, 256, 10), rng.integers(0, 256, 10)] = 1000 * image.max()
    assert not check_input(image, 0.02).featureless


@pytest.mark.parametrize("kind", ["blurred 0.7 px", "row offsets", "column offsets"])
def test_noise_shaped_by_the_detector_is_noise(kind):
    """The floor follows the spectrum's radial envelope and the axes are not searched: a blanked beam's frame,
    slightly blurred or with scan-line offsets, is noise (the ensemble finds hundreds of columns in it).
    """
    from scipy import ndimage

    rng = np.random.default_rng([ord(c) for c in kind])
    frames = []
    for _ in range(5):
        white = rng.normal(size=(256, 256))
        frames.append(
            {
                "blurred 0.7 px": lambda w: ndimage.gaussian_filter(w, 0.7),
                "row offsets": lambda w: w + rng.normal(0, 1.0, (256, 1)),
                "column offsets": lambda w: w + rng.normal(0, 1.0, (1, 256)),
            }[kind](white)
        )
    assert all(check_input(image, 0.02).featureless for image in frames)


def test_a_pixel_size_given_as_a_numpy_scalar_is_taken():
    image = _lattice("MoS2", 0.02)
    assert check_input(image, np.asarray(0.02)) == check_input(image, 0.02)


def test_the_segmenter_finds_no_columns_in_noise_unless_told_to(segmenter):
    """The ensemble itself places columns in pure noise, confidently; the check keeps them out."""
    from models.segmenter import Segmenter

    noise = np.random.default_rng(4).poisson(2.0, (256, 256)).astype(np.uint16)
    seg = segmenter.segment(noise, 0.02)
    assert seg.featureless and seg.input_check is not None
    assert len(segmenter.atoms(seg)) == 0
    keeping = Segmenter(providers="cpu", threads=1, keep_featureless=True)
    assert len(keeping.atoms(keeping.segment(noise, 0.02))) > 50
    assert seg.ood_score < 1.0  # why the OOD score alone would not do: noise looks familiar to the ensemble


def test_the_segmenter_keeps_the_columns_of_a_real_lattice(segmenter):
    image = _lattice("MoS2", 0.02)
    seg = segmenter.segment(image, 0.02)
    assert not seg.featureless and len(segmenter.atoms(seg)) > 100


def test_none_of_the_manifest_s_evaluation_frames_is_featureless():
    """The 52 in-distribution frames the export evaluates on; one of them (graphene with contamination, F1 0.94)
    was flagged by a floor that mixed the specimen's low-frequency hump into the lattice peaks' neighbourhood.
    """
    from models.training.evaluate import EVAL_SEED, eval_frames

    flagged = [
        i
        for i, f in enumerate(eval_frames(52, False, seed=EVAL_SEED))
        if check_input(f.image, f.pixel_size_nm).featureless
    ]
    assert flagged == []
