"""Bad parameters are refused with the parameter's name and its valid range."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from simulators import ImagingParams, ScanRequest, Specimen, SpecimenConfig, render_frame
from simulators.errors import ParameterError, checked


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("fov_nm", -1.0, "fov_nm must be > 0 and <= 4096 nm"),
        ("fov_nm", 0.0, "fov_nm must be > 0"),
        ("rows", 0, "rows must be >= 1 and <= 8192"),
        ("cols", 0, "cols must be >= 1"),
        ("dwell_us", -5.0, "dwell_us must be > 0"),
        ("fov_nm", math.nan, "fov_nm must be"),
        ("x_nm", math.inf, "x_nm must be a finite value"),
    ],
)
def test_scan_parameters_are_checked(field, value, fragment):
    with pytest.raises(ParameterError, match=fragment):
        checked(ScanRequest, **{field: value})
    with pytest.raises(ValidationError, match=field):
        ScanRequest(**{field: value})


@pytest.mark.parametrize("dose", [0.0, -3.0, math.inf, math.nan])
def test_dose_must_be_positive(dose):
    with pytest.raises(ParameterError, match=r"dose_e_per_a2 must be > 0"):
        ImagingParams().with_dose(dose, ScanRequest())


def test_dose_sets_the_probe_current():
    scan = ScanRequest(fov_nm=10.24, rows=512, cols=512, dwell_us=10.0)
    imaging = ImagingParams().with_dose(1.0e4, scan)
    assert imaging.dose_e_per_a2(scan) == pytest.approx(1.0e4)


@pytest.mark.parametrize(("x", "y", "name"), [(500.0, 0.0, "x_nm"), (0.0, -41.0, "y_nm"), (math.nan, 0.0, "x_nm")])
def test_position_outside_the_specimen_is_refused(x, y, name):
    specimen = Specimen(SpecimenConfig(width_nm=80, height_nm=80))
    with pytest.raises(ValueError, match=rf"{name} must lie on the specimen, in \[-40, 40\] nm"):
        render_frame(
            specimen,
            ScanRequest.model_construct(x_nm=x, y_nm=y, fov_nm=2.0, rows=16, cols=16, dwell_us=1.0, rotation_deg=0.0),
        )


def test_unknown_lattice_lists_the_valid_ones():
    with pytest.raises(ParameterError, match=r"lattice.*MoS2"):
        checked(SpecimenConfig, lattice="NaCl")


def test_unknown_fields_are_refused():
    with pytest.raises(ParameterError, match="fov is not a parameter of ScanRequest"):
        checked(ScanRequest, fov=3.0)


def test_probability_ranges_are_checked():
    with pytest.raises(ParameterError, match="feature_correlation must be >= 0 and <= 1"):
        checked(SpecimenConfig, feature_correlation=1.5)
    with pytest.raises(ParameterError, match="hole_radius_nm"):
        checked(SpecimenConfig, hole_radius_nm=(5.0, 2.0))


def test_render_with_a_valid_edge_position_works():
    specimen = Specimen(SpecimenConfig(width_nm=80, height_nm=80))
    frame = render_frame(
        specimen, ScanRequest(x_nm=40.0, y_nm=-40.0, fov_nm=4.0, rows=64, cols=64), rng=np.random.default_rng(0)
    )
    # Three quarters of the field lie off the specimen: vacuum, marked as hole.
    assert 0.6 < (frame.truth.region_mask == 1).mean() < 0.9


@pytest.mark.parametrize(
    ("field", "value"), [("line_jitter_nm", 1000.0), ("drift_nm_per_s", 1000.0), ("flyback_amplitude_nm", 500.0)]
)
def test_scan_distortions_too_large_to_render_are_refused_at_once(field, value):
    """They used to run for 17 s and end in a MemoryError (the field's slack grows with them)."""
    with pytest.raises(ParameterError, match=field):
        checked(ImagingParams, **{field: value})


def test_a_pixel_far_below_the_probe_and_a_distortion_of_another_length_are_refused():
    from simulators.scan import ScanDistortion

    specimen = Specimen(SpecimenConfig(seed=1, width_nm=40, height_nm=40))
    with pytest.raises(
        ParameterError, match=r"pixel size 3\.91e-05 nm .* is fov_nm in nm"
    ):  # was 1.4 GiB, then a crash
        render_frame(specimen, ScanRequest(fov_nm=0.02, rows=512, cols=512))
    with pytest.raises(ParameterError, match="the distortion is for 32 lines, the scan has 64"):
        render_frame(specimen, ScanRequest(fov_nm=2.0, rows=64, cols=64), distortion=ScanDistortion.none(32))
