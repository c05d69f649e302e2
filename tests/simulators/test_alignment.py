"""Planted columns sit where the image has them, with rotation and scan distortion."""

from __future__ import annotations

import numpy as np
import pytest

from simulators import (
    ColumnClass,
    DefectKind,
    ImagingParams,
    ScanDistortion,
    ScanGeometry,
    ScanRequest,
    Specimen,
    SpecimenConfig,
    render_frame,
)


def _heavy_isolated(frame, species: str, margin: int = 8):
    cols = frame.truth.columns
    r, c = cols.row, cols.col
    sel = (cols.species == species) & (r > margin) & (r < frame.scan.rows - margin)
    sel &= (c > margin) & (c < frame.scan.cols - margin)
    return cols.select(sel)


def _local_peak(image: np.ndarray, r: float, c: float, half: int = 2) -> tuple[float, float]:
    """Integer maximum near (r, c), refined by a 3-point parabola per axis."""
    r0, c0 = round(r), round(c)
    win = image[r0 - half : r0 + half + 1, c0 - half : c0 + half + 1]
    dr, dc = np.unravel_index(np.argmax(win), win.shape)
    pr, pc = r0 - half + dr, c0 - half + dc

    def vertex(a, b, cc):
        den = a - 2 * b + cc
        return 0.0 if den == 0 else 0.5 * (a - cc) / den

    return (
        pr + vertex(image[pr - 1, pc], image[pr, pc], image[pr + 1, pc]),
        pc + vertex(image[pr, pc - 1], image[pr, pc], image[pr, pc + 1]),
    )


def _noise_free(track: bool = False) -> ImagingParams:
    return ImagingParams(shot_noise=False, read_noise_counts=0.0, background_fraction=0.0, track_dose=track)


def test_planted_metal_columns_are_intensity_maxima():
    specimen = Specimen(SpecimenConfig(seed=4, width_nm=60, height_nm=60, contamination_density_per_um2=0))
    scan = ScanRequest(x_nm=3, y_nm=4, fov_nm=6.4, rows=320, cols=320)
    frame = render_frame(specimen, scan, _noise_free(), distortion=ScanDistortion.none(scan.rows))
    metals = _heavy_isolated(frame, "Mo")
    assert len(metals) > 100
    peaks = np.array([_local_peak(frame.expected, r, c) for r, c in zip(metals.row, metals.col, strict=True)])
    err = np.hypot(peaks[:, 0] - metals.row, peaks[:, 1] - metals.col)
    assert np.median(err) < 0.05
    assert err.max() < 0.25


@pytest.mark.parametrize("rotation_deg", [0.0, 37.0, -115.0])
def test_rotation_and_distortion_keep_truth_aligned(rotation_deg):
    specimen = Specimen(
        SpecimenConfig(
            seed=8, lattice="SrTiO3", width_nm=60, height_nm=60, hole_density_per_um2=0, contamination_density_per_um2=0
        )
    )
    scan = ScanRequest(x_nm=-4, y_nm=2, fov_nm=6.0, rows=300, cols=300, rotation_deg=rotation_deg, dwell_us=20)
    imaging = ImagingParams(
        shot_noise=False,
        read_noise_counts=0.0,
        background_fraction=0.0,
        track_dose=False,
        line_jitter_nm=0.01,
        drift_nm_per_s=0.3,
        flyback_amplitude_nm=0.05,
    )
    rng = np.random.default_rng(21)
    frame = render_frame(specimen, scan, imaging, rng)
    distorted = frame.truth.columns
    ideal = ScanGeometry(scan, ScanDistortion.none(scan.rows), imaging.flyback_time_us)
    ideal_row, ideal_col = ideal.to_pixels(distorted.x_nm, distorted.y_nm)
    # The distortion really moved the columns in the frame ...
    shift = np.hypot(distorted.row - ideal_row, distorted.col - ideal_col)
    assert np.median(shift) > 0.5
    # ... and the truth follows: centroids of the image agree with it.
    heavy = _heavy_isolated(frame, "Sr", margin=10)
    assert len(heavy) > 40
    err = []
    for r, c in zip(heavy.row, heavy.col, strict=True):
        r0, c0 = round(r), round(c)
        win = frame.expected[r0 - 4 : r0 + 5, c0 - 4 : c0 + 5].astype(np.float64)
        win = np.clip(win - np.median(win), 0, None)
        rr, cc = np.mgrid[r0 - 4 : r0 + 5, c0 - 4 : c0 + 5]
        err.append(np.hypot((rr * win).sum() / win.sum() - r, (cc * win).sum() / win.sum() - c))
    assert np.median(err) < 0.2
    assert np.percentile(err, 95) < 0.5


def test_class_mask_marks_every_planted_column(mos2, small_scan, quiet, rng):
    frame = render_frame(mos2, small_scan, quiet, rng)
    cols = frame.truth.columns
    r, c = np.rint(cols.row).astype(int), np.rint(cols.col).astype(int)
    ok = (r >= 0) & (r < small_scan.rows) & (c >= 0) & (c < small_scan.cols)
    assert (frame.truth.class_mask[r[ok], c[ok]] == cols.class_id[ok]).mean() > 0.97
    assert set(np.unique(cols.class_id)) <= {ColumnClass.ATOM, ColumnClass.VACANCY, ColumnClass.DOPANT}
    for kind, cls in ((DefectKind.METAL_VACANCY, ColumnClass.VACANCY), (DefectKind.DOPANT_HEAVY, ColumnClass.DOPANT)):
        assert np.all(cols.class_id[cols.kind == kind] == cls)
    # Background pixels far from any column stay background.
    assert (frame.truth.class_mask == ColumnClass.BACKGROUND).mean() > 0.5
