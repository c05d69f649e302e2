"""Dose accumulates on the specimen and knock-on damage creates vacancies where it landed."""

from __future__ import annotations

import numpy as np
import pytest

from simulators import DefectKind, ImagingParams, ScanRequest, Specimen, SpecimenConfig, render_frame
from simulators.dose import DoseMap


def test_dose_accumulates_only_where_the_beam_was():
    specimen = Specimen(SpecimenConfig(seed=1, width_nm=60, height_nm=60))
    scan = ScanRequest(x_nm=10.0, y_nm=10.0, fov_nm=4.0, rows=64, cols=64)
    imaging = ImagingParams()
    for _ in range(3):
        render_frame(specimen, scan, imaging, np.random.default_rng(0))
    dose = imaging.dose_e_per_a2(scan)
    np.testing.assert_allclose(specimen.dose.at(np.array([10.0]), np.array([10.0])), 3 * dose, rtol=1e-5)
    assert specimen.dose.at(np.array([-10.0]), np.array([-10.0]))[0] == 0.0


def test_knock_on_damage_creates_chalcogen_vacancies_in_the_exposed_field():
    config = SpecimenConfig(
        seed=2,
        width_nm=60,
        height_nm=60,
        base_defect_rate=0.0,
        hotspot_density_per_um2=0,
        knockon_cross_section_a2={"chalcogen": 1e-7},
    )
    specimen = Specimen(config)
    scan = ScanRequest(x_nm=0.0, y_nm=0.0, fov_nm=4.0, rows=128, cols=128, dwell_us=50.0)
    imaging = ImagingParams(probe_current_pa=200.0)
    first = render_frame(specimen, scan, imaging, np.random.default_rng(0))
    assert first.truth.columns.damaged.sum() == 0  # damage follows dose already received
    counts = []
    for i in range(4):
        frame = render_frame(specimen, scan, imaging, np.random.default_rng(i))
        counts.append(int(frame.truth.columns.damaged.sum()))
    assert counts[0] > 0 and counts == sorted(counts) and counts[-1] > counts[0]
    damaged = frame.truth.columns.select(frame.truth.columns.damaged)
    assert set(np.unique(damaged.kind)) <= {DefectKind.CHALCOGEN_SINGLE_VACANCY, DefectKind.CHALCOGEN_DOUBLE_VACANCY}
    # Outside the exposed field nothing happened.
    away = specimen.columns_in_box((15.0, 20.0, 15.0, 20.0))
    assert not away.damaged.any()


@pytest.mark.parametrize(
    ("size_nm", "rotation_deg"),
    [((0.3, 0.3), 0.0), ((0.3, 0.2), 30.0), ((1.7, 0.9), 0.0), ((4.0, 4.0), 17.0), ((25.0, 12.0), 45.0)],
)
def test_the_dose_map_integral_is_the_frames_dose_times_its_area(size_nm, rotation_deg):
    """Cells are charged by the share the field covers: a field smaller than a cell is not lost or inflated."""
    dose_map = DoseMap((-30.0, 30.0, -30.0, 30.0))
    dose_map.expose((1.13, -2.41), size_nm, rotation_deg, 1000.0)
    area_nm2 = size_nm[0] * size_nm[1]
    assert dose_map.total_e_per_a2_nm2 == pytest.approx(1000.0 * area_nm2, rel=0.01)


def test_a_field_inside_one_cell_charges_that_cell_its_share_only():
    dose_map = DoseMap((0.0, 10.0, 0.0, 10.0))  # 0.5 nm cells
    dose_map.expose((2.1, 2.1), (0.2, 0.2), 0.0, 500.0)  # away from the cell's centre (2.25, 2.25)
    assert dose_map.at(np.array([2.1]), np.array([2.1]))[0] == pytest.approx(500.0 * 0.04 / 0.25, rel=0.01)
    assert dose_map.at(np.array([2.6]), np.array([2.1]))[0] == 0.0


def test_cells_wholly_inside_a_rotated_field_get_its_full_dose():
    dose_map = DoseMap((-20.0, 20.0, -20.0, 20.0))
    dose_map.expose((0.0, 0.0), (12.0, 6.0), 30.0, 200.0)
    x, y = np.meshgrid(np.linspace(-3, 3, 13), np.linspace(-1, 1, 5))  # well inside after rotation
    t = np.deg2rad(30.0)
    xs, ys = np.cos(t) * x - np.sin(t) * y, np.sin(t) * x + np.cos(t) * y
    np.testing.assert_allclose(dose_map.at(xs, ys), 200.0, rtol=1e-6)
    assert dose_map.at(np.array([8.0]), np.array([-8.0]))[0] == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_each_cells_dose_is_the_share_of_it_the_field_covers(seed):
    """Against a brute-force count of 64 x 64 points per cell, for random fields (some smaller than a cell)."""
    rng = np.random.default_rng(seed)
    dose_map = DoseMap((0.0, 8.0, 0.0, 6.0))  # 16 x 12 cells of 0.5 nm
    center = (float(rng.uniform(1.0, 7.0)), float(rng.uniform(1.0, 5.0)))
    size = (float(rng.uniform(0.1, 5.0)), float(rng.uniform(0.1, 5.0)))
    rotation = float(rng.choice([0.0, 90.0, 180.0, rng.uniform(-180.0, 180.0)]))
    dose_map.expose(center, size, rotation, 1.0)
    k = 64
    offsets = (np.arange(k) + 0.5) / k * 0.5
    rows, cols = np.mgrid[0:12, 0:16]
    xs = cols[..., None, None] * 0.5 + offsets[None, None, None, :] - center[0]
    ys = rows[..., None, None] * 0.5 + offsets[None, None, :, None] - center[1]
    t = np.deg2rad(rotation)
    u, v = np.cos(t) * xs + np.sin(t) * ys, -np.sin(t) * xs + np.cos(t) * ys
    expected = ((np.abs(u) <= size[0] / 2) & (np.abs(v) <= size[1] / 2)).mean(axis=(2, 3))
    got = dose_map.at(cols * 0.5 + 0.25, rows * 0.5 + 0.25)
    np.testing.assert_allclose(got, expected, atol=0.05)
