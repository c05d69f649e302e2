"""HAADF-STEM image formation of a field of view of a :class:`Specimen`.

Expected counts of a pixel::

    lambda = N_e * eta * (b(r, c) + kappa * S(x, y))

with ``N_e = I * t_dwell / e`` beam electrons, ``eta`` the detector efficiency,
``b`` a smooth background (a fraction of the beam with a linear slope),
``kappa`` the cross-section per unit ``Z**1.7`` and ``S`` the scattering
density (weight per nm^2).  At atomic resolution ``S = sum_i w_i P(r - r_i)``
with ``P`` the probe (a Gaussian whose variance adds the pixel width, px^2/12,
for the beam's motion during the dwell); at low magnification (pixel larger
than ``atomic_max_pixel_fraction`` times the nearest-neighbour spacing) ``S``
is the continuum average: lattice weight density times thickness off the
holes, plus amorphous contamination.  The image is ``Poisson(lambda)`` plus
Gaussian read noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from simulators.config import ImagingParams, ScanRequest
from simulators.defects import ColumnClass, DefectKind, Region
from simulators.errors import ParameterError
from simulators.raster import disc_slices, smooth_field, splat_columns
from simulators.scan import ScanDistortion, ScanGeometry
from simulators.specimen import Specimen
from simulators.truth import ColumnTruth, FrameTruth, SimulatedFrame

_CONTAMINATION_THRESHOLD = 0.3
#: Mask class of each DefectKind code.
_CLASS_OF_KIND = np.array([int(DefectKind(k).column_class) for k in range(len(DefectKind))], dtype=np.uint8)


#: Smallest pixel the renderer draws (a column's patch spans its probe in pixels: 1e-3 nm is ~100 px).
MIN_PIXEL_NM = 1e-3


@dataclass(frozen=True)
class _Regions:
    hole: np.ndarray  # (rows, cols) bool: in a hole or off the specimen
    cover: np.ndarray  # (rows, cols) float64 contamination cover in [0, 1]


def _stride(length_nm: float, px: float, per: float = 3.0) -> int:
    """Sampling stride for a field that varies over ``length_nm``: ``per`` knots per length."""
    return int(np.clip(length_nm / px / per, 1, 32))


def _effective_sigma_nm(imaging: ImagingParams, px: float) -> float:
    """Probe sigma widened by the beam's travel during one dwell (a box of one pixel: px^2 / 12)."""
    return float(np.sqrt(imaging.probe_sigma_nm**2 + px**2 / 12.0))


def _off_specimen(specimen: Specimen, geometry: ScanGeometry) -> np.ndarray:
    scan = geometry.scan
    x0, x1, y0, y1 = specimen.bounds_nm
    bx0, bx1, by0, by1 = geometry.footprint_box(margin_nm=0.0)
    if bx0 >= x0 and bx1 <= x1 and by0 >= y0 and by1 <= y1:
        return np.zeros((scan.rows, scan.cols), dtype=bool)
    x, y = geometry.positions_at(np.arange(scan.rows), np.arange(scan.cols))
    return (x < x0) | (x > x1) | (y < y0) | (y > y1)


def _distortion_pad_px(geometry: ScanGeometry) -> int:
    """Pixels by which line jitter and flyback can move a feature's footprint (drift is inverted exactly)."""
    d = geometry.distortion
    slack_nm = float(np.abs(d.line_offsets_nm).max(initial=0.0)) + d.flyback_amplitude_nm
    return int(np.ceil(slack_nm / geometry.px)) + 2


def _regions(specimen: Specimen, geometry: ScanGeometry) -> _Regions:
    """Holes and contamination at every pixel, evaluated only near each feature.

    A feature many pixels wide is evaluated on a coarser grid: its relative
    distance is smooth, so bilinear interpolation places the boundary well
    within a pixel.
    """
    scan, px = geometry.scan, geometry.px
    holes, patches = specimen.layout.holes, specimen.layout.contamination
    box = geometry.footprint_box(margin_nm=0.0)
    pad = _distortion_pad_px(geometry)
    smallest = min(specimen.config.hole_radius_nm[0], specimen.config.contamination_radius_nm[0])
    stride = _stride(smallest, px, per=12.0)
    rel = np.full((scan.rows, scan.cols), np.inf)
    for j, rs, cs in disc_slices(holes, holes.near(*box), geometry, 1.0, pad):
        d = smooth_field(partial(holes.relative_distance, j), geometry, stride, rs, cs)
        np.minimum(rel[rs, cs], d, out=rel[rs, cs])
    cover = np.zeros((scan.rows, scan.cols))
    for j, rs, cs in disc_slices(patches, patches.near(*box, reach=1.6), geometry, 1.6, pad):
        d = smooth_field(partial(patches.relative_distance, j), geometry, stride, rs, cs)
        cover[rs, cs] += np.exp(-(d**4))
    hole = (rel < 1.0) | _off_specimen(specimen, geometry)
    cover = np.minimum(cover, 1.0)
    cover[hole] = 0.0
    return _Regions(hole, cover)


def _atomic(
    specimen: Specimen, geometry: ScanGeometry, imaging: ImagingParams
) -> tuple[np.ndarray, np.ndarray, ColumnTruth]:
    """Scattering density, class mask and column truth of an atomic-resolution frame."""
    scan, px = geometry.scan, geometry.px
    sigma = _effective_sigma_nm(imaging, px)
    mask_r = imaging.mask_radius_fraction * specimen.lattice.nn_spacing_nm
    k = int(np.ceil(max(3.0 * sigma, mask_r) / px))
    box = geometry.footprint_box(margin_nm=k * px)
    cols_ = specimen.columns_in_box(box)
    row_f, col_f = geometry.to_pixels(cols_.x_nm, cols_.y_nm)
    near = (row_f > -k) & (row_f < scan.rows - 1 + k) & (col_f > -k) & (col_f < scan.cols - 1 + k)
    ax, ay, aw = specimen.amorphous_in_box(box)
    arow, acol = geometry.to_pixels(ax, ay)
    class_mask = np.zeros((scan.rows, scan.cols), dtype=np.uint8)
    # Amorphous columns carry label 0: they add signal but no class.
    signal = splat_columns(
        geometry,
        np.r_[cols_.x_nm[near], ax],
        np.r_[cols_.y_nm[near], ay],
        np.r_[row_f[near], arow],
        np.r_[col_f[near], acol],
        np.r_[cols_.weight[near], aw],
        sigma,
        k,
        mask=class_mask,
        labels=np.r_[_CLASS_OF_KIND[cols_.kind[near]], np.zeros(len(ax), np.uint8)],
        mask_radius_nm=mask_r,
    )
    inside = (row_f >= -0.5) & (row_f < scan.rows - 0.5) & (col_f >= -0.5) & (col_f < scan.cols - 0.5)
    truth = ColumnTruth(
        row_f[inside],
        col_f[inside],
        cols_.x_nm[inside],
        cols_.y_nm[inside],
        cols_.species[inside],
        _CLASS_OF_KIND[cols_.kind[inside]],
        cols_.kind[inside],
        cols_.weight[inside],
        cols_.damaged[inside],
    )
    return signal, class_mask, truth


def _continuum(specimen: Specimen, geometry: ScanGeometry, regions: _Regions) -> np.ndarray:
    """Scattering density of a low-magnification frame (atoms not resolved)."""
    cfg = specimen.config
    thickness = smooth_field(specimen.thickness, geometry, _stride(cfg.thickness_length_nm / 4, geometry.px))
    film = specimen.lattice.weight_density_per_nm2 * thickness * ~regions.hole
    amorphous = regions.cover * cfg.contamination_columns_per_nm2 * specimen.amorphous_weight
    return film + amorphous


def _background(rng: np.random.Generator, imaging: ImagingParams, rows: int, cols: int) -> np.ndarray:
    """Background fraction of the beam: a constant with a linear slope in a random direction."""
    phi = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(phi) * (np.arange(cols) / max(cols - 1, 1) - 0.5)[None, :]
    ramp = ramp + np.sin(phi) * (np.arange(rows) / max(rows - 1, 1) - 0.5)[:, None]
    return imaging.background_fraction * np.maximum(1.0 + 2.0 * imaging.background_gradient * ramp, 0.0)


def _noisy(expected: np.ndarray, imaging: ImagingParams, rng: np.random.Generator) -> np.ndarray:
    """Detected counts: Poisson shot noise plus Gaussian read noise, float32."""
    image = rng.poisson(expected).astype(np.float32) if imaging.shot_noise else expected.astype(np.float32)
    if imaging.read_noise_counts > 0:
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(imaging.read_noise_counts)
    return image


def _truth(
    specimen: Specimen,
    geometry: ScanGeometry,
    regions: _Regions,
    class_mask: np.ndarray,
    columns: ColumnTruth,
    atomic: bool,
) -> FrameTruth:
    region = np.where(regions.hole, Region.HOLE, Region.FILM).astype(np.uint8)
    region[(regions.cover > _CONTAMINATION_THRESHOLD) & ~regions.hole] = Region.CONTAMINATION
    class_mask[regions.hole] = ColumnClass.BACKGROUND
    stride = _stride(float(specimen.layout.hotspots.sigmas_nm.min(initial=10.0)), geometry.px)
    density = smooth_field(specimen.defect_probability, geometry, stride) * specimen.site_density_per_nm2
    density[regions.hole] = 0.0
    return FrameTruth(columns, class_mask, region, density.astype(np.float32), atomic)


def render_frame(
    specimen: Specimen,
    scan: ScanRequest,
    imaging: ImagingParams | None = None,
    rng: np.random.Generator | None = None,
    distortion: ScanDistortion | None = None,
) -> SimulatedFrame:
    """Render one frame of ``specimen`` and its ground truth.

    Parameters
    ----------
    specimen
        The specimen; its dose map is updated when ``imaging.track_dose``.
    scan
        Field of view, pixels, dwell and rotation.
    imaging
        Image-formation parameters (defaults when None).
    rng
        Source of all randomness of this frame (jitter, drift direction,
        background slope, noise); ``np.random.default_rng(0)`` when None.
    distortion
        Override the drawn scan distortion (``ScanDistortion.none(rows)`` for an ideal scan).

    Returns
    -------
    SimulatedFrame

    Raises
    ------
    ValueError
        If the field centre lies outside the specimen.
    ParameterError
        A pixel size below ``MIN_PIXEL_NM``, or a ``distortion`` for another number of lines.
    """
    imaging = imaging or ImagingParams()
    rng = rng if rng is not None else np.random.default_rng(0)
    specimen.check_position(scan.x_nm, scan.y_nm)
    if scan.pixel_size_nm < MIN_PIXEL_NM:  # each column's patch grows as (probe / pixel)**2: gigabytes below this
        raise ParameterError(
            f"pixel size {scan.pixel_size_nm:.3g} nm (fov_nm={scan.fov_nm:g} over {scan.cols} columns) is below"
            f" {MIN_PIXEL_NM:g} nm: is fov_nm in nm?"
        )
    if distortion is not None and len(distortion.line_offsets_nm) != scan.rows:
        raise ParameterError(f"the distortion is for {len(distortion.line_offsets_nm)} lines, the scan has {scan.rows}")
    dist = distortion if distortion is not None else ScanDistortion.draw(rng, scan, imaging)
    sigma_rows = _effective_sigma_nm(imaging, scan.pixel_size_nm) / scan.pixel_size_nm
    geometry = ScanGeometry(scan, dist, imaging.flyback_time_us, truth_smoothing_rows=sigma_rows)
    if (fold := geometry.fold_problem()) is not None:  # no single place per column: the truth would be wrong
        raise ParameterError(fold)
    regions = _regions(specimen, geometry)
    atomic = scan.pixel_size_nm <= imaging.atomic_max_pixel_fraction * specimen.lattice.nn_spacing_nm
    if atomic:
        signal, class_mask, columns = _atomic(specimen, geometry, imaging)
    else:
        signal = _continuum(specimen, geometry, regions)
        class_mask, columns = np.zeros((scan.rows, scan.cols), np.uint8), ColumnTruth.empty()
    n_e = imaging.electrons_per_pixel(scan.dwell_us) * imaging.detector_efficiency
    expected = n_e * (_background(rng, imaging, scan.rows, scan.cols) + imaging.cross_section_nm2_per_z17 * signal)
    image = _noisy(expected, imaging, rng)
    truth = _truth(specimen, geometry, regions, class_mask, columns, atomic)
    dose = imaging.dose_e_per_a2(scan)
    if imaging.track_dose:
        specimen.dose.expose((scan.x_nm, scan.y_nm), (scan.fov_nm, scan.fov_rows_nm), scan.rotation_deg, dose)
    return SimulatedFrame(
        image, expected.astype(np.float32), truth, scan, imaging, specimen.lattice.name, specimen.config.seed, dose
    )
