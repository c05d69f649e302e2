"""Gaussian refinement of column positions: against planted peaks, and through the bundled model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from models.preprocess import ImageError
from models.refine import fitting_radius_px, refine_gaussian
from models.segmenter import Segmenter

ABTEM_MOS2 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sim" / "abtem" / "mos2_multislice.npz"


def _peaks(rng: np.random.Generator, sigma_px: float = 1.6, amplitude: float = 400.0, size: int = 128):
    """A square lattice of Gaussian columns (10 px apart) at planted sub-pixel positions, shot noise."""
    grid = np.arange(8.0, size - 4, 10.0)
    rows, cols = (a.ravel() for a in np.meshgrid(grid, grid, indexing="ij"))
    rows, cols = rows + rng.uniform(-0.5, 0.5, rows.size), cols + rng.uniform(-0.5, 0.5, cols.size)
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.full((size, size), 20.0)
    for r, c in zip(rows, cols, strict=True):
        image += amplitude * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * sigma_px**2))
    return rng.poisson(image).astype(np.float32), rows, cols


def _rms(row, col, true_row, true_col) -> float:
    return float(np.sqrt(np.mean((row - true_row) ** 2 + (col - true_col) ** 2)))


def test_refinement_recovers_planted_subpixel_centres_from_rough_starts():
    rng = np.random.default_rng(5)
    image, rows, cols = _peaks(rng)
    start_r, start_c = rows + rng.uniform(-0.7, 0.7, rows.size), cols + rng.uniform(-0.7, 0.7, rows.size)
    fit = refine_gaussian(image, start_r, start_c)
    assert fit.radius_px == pytest.approx(5.0, abs=0.5)  # half the 10 px spacing (of rough starts)
    assert fit.sigma_px == pytest.approx(1.6, abs=0.2)  # the columns' width, estimated
    assert fit.refined.mean() > 0.95
    assert _rms(fit.row, fit.col, rows, cols) < 0.1 < 0.25 * _rms(start_r, start_c, rows, cols)


def test_refinement_needs_its_iterations():
    rng = np.random.default_rng(5)
    image, rows, cols = _peaks(rng)
    start_r, start_c = rows + 0.6, cols - 0.6
    assert _rms(*_fit_rc(image, start_r, start_c, 0), rows, cols) > 0.5
    assert _rms(*_fit_rc(image, start_r, start_c, 12), rows, cols) < 0.1


def _fit_rc(image, row, col, iterations):
    fit = refine_gaussian(image, row, col, iterations=iterations)
    return fit.row, fit.col


def test_a_column_cut_by_the_frame_edge_is_still_fitted():
    rng = np.random.default_rng(6)
    image, rows, cols = _peaks(rng)
    edge = np.flatnonzero(rows < 9)[:3]  # the first row of columns sits ~8 px from the top edge
    crop = image[6:]  # now 1-3 px from it, part of their disc outside the image
    fit = refine_gaussian(crop, rows[edge] - 6 + 0.5, cols[edge] - 0.5, radius_px=5.0)
    assert fit.refined.all()
    assert _rms(fit.row, fit.col, rows[edge] - 6, cols[edge]) < 0.2


def test_a_fit_without_a_peak_keeps_its_start_and_says_so():
    rng = np.random.default_rng(7)
    flat = rng.normal(20.0, 3.0, (64, 64))
    row, col = np.array([20.0, 40.5]), np.array([20.0, 30.25])
    fit = refine_gaussian(flat, row, col, radius_px=4.0, sigma_px=1.5)
    assert not fit.refined.any()
    np.testing.assert_array_equal(fit.row, row)
    np.testing.assert_array_equal(fit.col, col)


def test_a_loosely_determined_centre_keeps_its_start():
    """Faint columns in a noisy frame: the fitted centre's standard error is large, so the start stays."""
    rng = np.random.default_rng(8)
    bright, rows, cols = _peaks(rng, amplitude=400.0)
    faint, _, _ = _peaks(np.random.default_rng(8), amplitude=4.0)
    start_r, start_c = rows + 0.3, cols
    strong = refine_gaussian(bright, start_r, start_c, sigma_px=1.6)
    weak = refine_gaussian(faint, start_r, start_c, sigma_px=1.6)
    assert np.nanmedian(weak.error_px) > 5 * np.nanmedian(strong.error_px)
    assert weak.refined.mean() < 0.2 < 0.95 < strong.refined.mean()
    kept = ~weak.refined
    np.testing.assert_array_equal(weak.row[kept], start_r[kept])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="2-D"):
        refine_gaussian(np.zeros((4, 8, 8)), np.array([2.0]), np.array([2.0]))
    with pytest.raises(ValueError, match="radius"):
        refine_gaussian(np.zeros((8, 8)), np.array([2.0]), np.array([2.0]), radius_px=-1.0)
    with pytest.raises(ValueError, match="width"):
        refine_gaussian(np.zeros((8, 8)), np.array([2.0]), np.array([2.0]), radius_px=3.0, sigma_px=4.0)
    empty = refine_gaussian(np.zeros((8, 8)), np.empty(0), np.empty(0))
    assert len(empty.row) == 0 and fitting_radius_px(np.array([1.0]), np.array([1.0])) == 3.0


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter(None, "cpu")


@pytest.mark.skipif(not ABTEM_MOS2.exists(), reason="shared abTEM frames not present")
def test_refinement_sharpens_the_bundled_models_columns_on_an_independent_simulation(segmenter):
    """abTEM multislice MoS2 (noise-free): the fit on the image lands far closer to the exact columns."""
    with np.load(ABTEM_MOS2, allow_pickle=False) as z:
        image, px_nm, truth = z["image"], float(z["pixel_size_A"]) / 10, z["col_rc_px"].astype(float)
    seg = segmenter.segment(image, px_nm)
    atoms = segmenter.atoms(seg)
    refined = segmenter.refine(seg, image, atoms)
    assert len(refined) == len(atoms)
    np.testing.assert_array_equal(refined.class_id, atoms.class_id)
    vacancy = atoms.class_id == [c.name for c in segmenter.manifest.classes].index("vacancy")
    np.testing.assert_array_equal(refined.row[vacancy], atoms.row[vacancy])  # sites without a column stay

    def error_px(a) -> float:
        dist, _ = cKDTree(np.column_stack([a.row, a.col])).query(truth, distance_upper_bound=4.0)
        return float(np.sqrt(np.mean(dist[np.isfinite(dist)] ** 2)))

    assert error_px(refined) < 0.3 * error_px(atoms)


def test_refinement_refuses_an_image_of_another_shape(segmenter):
    rng = np.random.default_rng(9)
    image, _, _ = _peaks(rng)
    seg = segmenter.segment(image, 0.02)
    atoms = segmenter.atoms(seg)
    with pytest.raises(ValueError, match="shape"):
        segmenter.refine(seg, image[:100], atoms)
    bad = image.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ImageError):
        segmenter.refine(seg, bad, atoms)
