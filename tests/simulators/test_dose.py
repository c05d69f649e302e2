"""Dose accumulates on the specimen and knock-on damage creates vacancies where it landed."""

from __future__ import annotations

import numpy as np

from simulators import DefectKind, ImagingParams, ScanRequest, Specimen, SpecimenConfig, render_frame


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
