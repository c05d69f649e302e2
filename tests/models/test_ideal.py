"""The ideal observer of defects: exact noise likelihood, calibrated posteriors, sensible bounds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm, poisson

from models.training.ideal import SitePosteriors, log_likelihood, recall_at_precision, site_posteriors
from simulators import ColumnClass, ImagingParams, ScanRequest, Specimen, SpecimenConfig, render_frame
from simulators.scan import ScanDistortion


def _brute_force(x: float, lam: float, sigma: float) -> float:
    n = np.arange(0, 400)
    return float(np.log(np.sum(poisson.pmf(n, lam) * norm.pdf(x - n, scale=sigma))))


@pytest.mark.parametrize("sigma", [0.3, 0.5, 2.0])
def test_log_likelihood_ratios_match_the_full_poisson_gaussian_sum(sigma):
    rng = np.random.default_rng(0)
    lam = np.array([0.01, 0.3, 2.0, 9.0, 60.0])
    x = rng.poisson(lam) + rng.normal(0, sigma, lam.shape)
    ours = log_likelihood(x[:, None], np.stack([lam, 1.7 * lam], axis=1), sigma)
    exact = np.array([[_brute_force(xi, li, sigma) for li in (l0, 1.7 * l0)] for xi, l0 in zip(x, lam, strict=True)])
    # Constants in x cancel in every ratio between two expected counts.
    np.testing.assert_allclose(ours[:, 1] - ours[:, 0], exact[:, 1] - exact[:, 0], atol=1e-6)


def test_log_likelihood_without_read_noise_is_poisson():
    x = np.array([0.0, 3.0, 7.0])
    lam = np.array([0.5, 2.0, 9.0])
    expected = poisson.logpmf(x, lam) - poisson.logpmf(x, 1.0)
    np.testing.assert_allclose(log_likelihood(x, lam, 0.0) - log_likelihood(x, np.ones(3), 0.0), expected)


def test_recall_at_precision_cuts_only_between_distinct_scores():
    score = np.array([0.9, 0.8, 0.8, 0.7, 0.1])
    truth = np.array([True, True, False, True, False])
    assert recall_at_precision(score, truth, 0.9) == (1 / 3, 0.9)  # 0.8 takes a positive and a negative together
    assert recall_at_precision(score, truth, 0.75) == (1.0, 0.7)
    assert recall_at_precision(np.array([0.5, 0.4]), np.array([False, True]), 0.9)[0] == pytest.approx(0.0)


def _frames(lattice: str, current_pa: float, read_noise: float, count: int, rate: float = 0.05) -> list[SitePosteriors]:
    out = []
    for seed in range(count):
        specimen = Specimen(
            SpecimenConfig(
                seed=100 + seed,
                lattice=lattice,
                width_nm=32,
                height_nm=32,
                base_defect_rate=rate,
                hotspot_density_per_um2=0.0,
                tile_nm=4.0,
            )
        )
        scan = ScanRequest(x_nm=0, y_nm=0, fov_nm=160 * 0.02, rows=160, cols=160, dwell_us=6.0)
        imaging = ImagingParams(probe_current_pa=current_pa, track_dose=False, read_noise_counts=read_noise)
        frame = render_frame(specimen, scan, imaging, np.random.default_rng(seed), ScanDistortion.none(160))
        out.append(site_posteriors(specimen, frame))
    return out


def test_posteriors_are_calibrated_where_the_evidence_is_weak():
    # Low-dose graphene: a carbon column gives about one count, so many posteriors are far from 0 and 1.
    sites = _frames("graphene", 40.0, 0.5, 4)
    post = np.concatenate([s.vacancy for s in sites])
    planted = np.concatenate([s.truth_class for s in sites]) == ColumnClass.VACANCY
    undecided = (post > 0.05) & (post < 0.95)
    assert undecided.sum() > 20
    assert np.all((post >= 0) & (post <= 1))
    # A Bayes posterior's sum is the expected number of vacancies (a Poisson-only likelihood gets ~30 %).
    assert abs(post.sum() - planted.sum()) < 4 * np.sqrt(planted.sum()) + 5
    assert post[planted].mean() > post[~planted].mean() + 0.3


def test_every_defect_is_found_at_a_high_dose_and_few_at_a_very_low_one():
    bright = _frames("MoS2", 200.0, 0.5, 2, rate=0.15)
    for name, cls in (("vacancy", ColumnClass.VACANCY), ("dopant", ColumnClass.DOPANT)):
        score = np.concatenate([getattr(s, name) for s in bright])
        truth = np.concatenate([s.truth_class for s in bright]) == cls
        assert truth.sum() > 5
        assert recall_at_precision(score, truth)[0] == 1.0
    dark = _frames("graphene", 0.5, 0.5, 2, rate=0.15)
    score = np.concatenate([s.vacancy for s in dark])
    truth = np.concatenate([s.truth_class for s in dark]) == ColumnClass.VACANCY
    assert truth.sum() > 5
    assert recall_at_precision(score, truth)[0] < 0.5


def test_the_evaluation_frames_come_with_the_specimens_they_were_rendered_from():
    from models.training.evaluate import eval_frames, eval_specimen_frames

    pairs = list(eval_specimen_frames(4, shifted=False, pixels=96))
    for (specimen, frame), again in zip(pairs, eval_frames(4, shifted=False, pixels=96), strict=True):
        np.testing.assert_array_equal(frame.image, again.image)
        assert specimen.config.seed == frame.specimen_seed
        # Every planted column's state is one its site allows, so the observer can weigh it.
        sites = site_posteriors(specimen, frame)
        assert len(sites.truth_class) > 0
        assert np.all(sites.peak_counts > 0)


def test_a_defect_rate_given_in_place_of_the_specimens_shifts_every_sites_defect_odds_by_the_prior_odds():
    specimen = Specimen(
        SpecimenConfig(seed=7, lattice="MoS2", width_nm=32, height_nm=32, base_defect_rate=0.05, tile_nm=4.0)
    )
    scan = ScanRequest(x_nm=0, y_nm=0, fov_nm=160 * 0.02, rows=160, cols=160, dwell_us=6.0)
    imaging = ImagingParams(probe_current_pa=2.0, track_dose=False, read_noise_counts=0.5)
    frame = render_frame(specimen, scan, imaging, np.random.default_rng(7), ScanDistortion.none(160))

    def defect_logit(rate: float) -> np.ndarray:
        sites = site_posteriors(specimen, frame, defect_rate=rate)
        p = sites.vacancy + sites.dopant
        with np.errstate(divide="ignore"):
            return np.log(p) - np.log1p(-p)

    low, high = defect_logit(0.01), defect_logit(0.3)
    for rate in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            site_posteriors(specimen, frame, defect_rate=rate)
    usable = np.isfinite(low) & np.isfinite(high) & (np.abs(high) < 20)
    assert usable.sum() > 50
    np.testing.assert_allclose(high[usable] - low[usable], np.log(0.3 / 0.7) - np.log(0.01 / 0.99), atol=1e-6)
