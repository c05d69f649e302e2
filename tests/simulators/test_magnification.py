"""Low-magnification surveys render from the continuum and show the mesoscale features."""

from __future__ import annotations

import numpy as np

from simulators import ImagingParams, Region, ScanRequest, Specimen, SpecimenConfig, render_frame


def _survey(specimen: Specimen, fov_nm: float = 200.0, pixels: int = 256):
    scan = ScanRequest(fov_nm=fov_nm, rows=pixels, cols=pixels, dwell_us=2.0)
    imaging = ImagingParams(shot_noise=False, read_noise_counts=0.0, track_dose=False)
    return render_frame(specimen, scan, imaging, np.random.default_rng(0))


def test_survey_shows_holes_dark_and_contamination_bright():
    specimen = Specimen(SpecimenConfig(seed=12))
    frame = _survey(specimen)
    assert not frame.truth.atoms_resolved
    assert len(frame.truth.columns) == 0
    region, image = frame.truth.region_mask, frame.expected
    assert (region == Region.HOLE).mean() > 0.005
    assert (region == Region.CONTAMINATION).mean() > 0.005
    film = image[region == Region.FILM].mean()
    assert image[region == Region.HOLE].mean() < 0.3 * film
    assert image[region == Region.CONTAMINATION].mean() > film


def test_survey_mean_matches_atomic_resolution_mean():
    # The continuum is the average of the atomic picture: same counts per area.
    specimen = Specimen(
        SpecimenConfig(seed=12, hole_density_per_um2=0, contamination_density_per_um2=0, thickness_variation=0.0)
    )
    imaging = ImagingParams(shot_noise=False, read_noise_counts=0.0, background_fraction=0.0, track_dose=False)
    atomic = render_frame(specimen, ScanRequest(fov_nm=8.0, rows=400, cols=400, dwell_us=1.0), imaging)
    coarse = render_frame(specimen, ScanRequest(fov_nm=8.0, rows=16, cols=16, dwell_us=1.0), imaging)
    assert atomic.truth.atoms_resolved and not coarse.truth.atoms_resolved
    per_electron_atomic = atomic.expected.mean() / imaging.electrons_per_pixel(1.0)
    per_electron_coarse = coarse.expected.mean() / imaging.electrons_per_pixel(1.0)
    assert abs(per_electron_coarse / per_electron_atomic - 1.0) < 0.03


def test_defect_density_map_peaks_on_hot_spots():
    specimen = Specimen(SpecimenConfig(seed=12, hole_density_per_um2=0.0, hotspot_density_per_um2=400.0))
    frame = _survey(specimen)
    density = frame.truth.defect_density_per_nm2
    hot = specimen.layout.hotspots
    px = frame.pixel_size_nm
    inside = np.all(np.abs(hot.centers_nm) < 90, axis=1)
    assert inside.sum() >= 3
    base = specimen.config.base_defect_rate * specimen.site_density_per_nm2
    for x, y in hot.centers_nm[inside]:
        r, c = round(y / px + 127.5), round(x / px + 127.5)
        assert density[r, c] > 2 * base
    assert np.median(density) < 1.5 * base


def test_frames_inside_contamination_render_amorphous_columns():
    specimen = Specimen(SpecimenConfig(seed=12, hole_density_per_um2=0.0))
    patches = specimen.layout.contamination
    j = int(np.argmax(patches.radii_nm))
    cx, cy = patches.centers_nm[j]
    for fov_nm in (2.0, 6.0):  # amorphous columns lie well beyond the small field
        scan = ScanRequest(x_nm=float(cx), y_nm=float(cy), fov_nm=fov_nm, rows=96, cols=96)
        frame = render_frame(specimen, scan, ImagingParams(track_dose=False), np.random.default_rng(0))
        assert (frame.truth.region_mask == Region.CONTAMINATION).mean() > 0.9
    clean = Specimen(SpecimenConfig(seed=12, hole_density_per_um2=0.0, contamination_density_per_um2=0.0))
    bare = render_frame(clean, scan, ImagingParams(track_dose=False), np.random.default_rng(0))
    assert frame.expected.mean() > 1.2 * bare.expected.mean()
