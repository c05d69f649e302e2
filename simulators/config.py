"""Validated parameters of the specimen, the scan and the image formation.

Pydantic models at the boundary: frozen, ``extra="forbid"``, non-finite
floats rejected, every bound explicit so an error names the parameter and its
valid range.  Defaults are documented field by field.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from simulators.errors import ParameterError, checked
from simulators.lattices import LATTICES

_STRICT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class SpecimenConfig(BaseModel):
    """A specimen: one lattice over a large area with holes, contamination and hot spots.

    The specimen spans ``x_nm`` in ``[-width_nm/2, width_nm/2]`` and ``y_nm``
    in ``[-height_nm/2, height_nm/2]``; the stage origin is its centre.
    """

    model_config = _STRICT

    seed: int = Field(0, ge=0, description="Seed of everything about the specimen.")
    lattice: str = Field("MoS2", description=f"One of {sorted(LATTICES)}.")
    rotation_deg: float | None = Field(
        None, ge=-180.0, le=180.0, description="In-plane lattice rotation; None draws it from the seed."
    )
    width_nm: float = Field(256.0, gt=0.0, le=4096.0, description="Extent along x.")
    height_nm: float = Field(256.0, gt=0.0, le=4096.0, description="Extent along y.")
    base_defect_rate: float = Field(
        0.003, ge=0.0, le=0.5, description="Defect probability per site away from hot spots."
    )
    hotspot_density_per_um2: float = Field(
        150.0, ge=0.0, le=10000.0, description="Hot spots per square micrometre (1 um^2 = 1e6 nm^2)."
    )
    hotspot_peak_rate: float = Field(0.12, ge=0.0, le=0.5, description="Extra defect probability at a hot-spot centre.")
    hotspot_radius_nm: tuple[float, float] = Field((3.0, 10.0), description="Range of hot-spot Gaussian sigmas, nm.")
    feature_correlation: Fraction = Field(
        0.7,
        description="Fraction of hot spots anchored on low-magnification features (hole and patch edges, thick areas).",
    )
    hole_density_per_um2: float = Field(200.0, ge=0.0, le=10000.0, description="Holes per square micrometre.")
    hole_radius_nm: tuple[float, float] = Field((3.0, 12.0), description="Range of mean hole radii, nm.")
    contamination_density_per_um2: float = Field(
        300.0, ge=0.0, le=10000.0, description="Contamination patches per um^2."
    )
    contamination_radius_nm: tuple[float, float] = Field((3.0, 10.0), description="Range of patch radii, nm.")
    thickness_variation: float = Field(0.25, ge=0.0, le=0.9, description="Relative amplitude of the thickness map.")
    thickness_length_nm: float = Field(60.0, gt=0.0, description="Typical length scale of the thickness map.")
    contamination_columns_per_nm2: float = Field(
        20.0, ge=0.0, le=200.0, description="Amorphous columns per nm^2 at full cover."
    )
    contamination_atoms_per_column: float = Field(
        20.0, ge=0.0, le=100.0, description="Carbon atoms per amorphous column."
    )
    knockon_cross_section_a2: dict[str, float] = Field(
        default_factory=lambda: {
            "chalcogen": 5e-9,
            "oxygen": 2e-9,
            "carbon": 1e-10,
            "metal": 1e-10,
            "A": 1e-10,
            "B": 0.0,
        },
        description="Knock-on displacement cross-section per site role, A^2 (illustrative, not calibrated).",
    )
    tile_nm: float = Field(8.0, gt=0.5, le=64.0, description="Edge of the lazily generated tiles.")
    cache_tiles: int = Field(1024, ge=1, description="Tiles kept in memory (LRU).")

    @model_validator(mode="after")
    def _check(self) -> SpecimenConfig:
        if self.lattice not in LATTICES:
            raise ValueError(f"lattice must be one of {sorted(LATTICES)} (got {self.lattice!r})")
        for name in ("hotspot_radius_nm", "hole_radius_nm", "contamination_radius_nm"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi:
                raise ValueError(f"{name} must satisfy 0 < low <= high (got {(lo, hi)})")
        return self


class ScanRequest(BaseModel):
    """One field of view to scan: where, how large, how many pixels, how long.

    Pixel (row, col) is sampled at scan offset ``u = (col - (cols-1)/2) * px``,
    ``v = (row - (rows-1)/2) * px``, rotated by ``rotation_deg`` and added to the
    centre; at rotation 0 columns run along +x and rows along +y.
    """

    model_config = _STRICT

    x_nm: float = Field(0.0, description="Field centre, x.")
    y_nm: float = Field(0.0, description="Field centre, y.")
    fov_nm: float = Field(10.24, gt=0.0, le=4096.0, description="Field of view along the columns.")
    rows: int = Field(512, ge=1, le=8192)
    cols: int = Field(512, ge=1, le=8192)
    dwell_us: float = Field(10.0, gt=0.0, le=1e6, description="Pixel dwell time.")
    rotation_deg: float = Field(0.0, ge=-360.0, le=360.0, description="Scan rotation.")

    @property
    def pixel_size_nm(self) -> float:
        """Pixel size, nm (square pixels)."""
        return self.fov_nm / self.cols

    @property
    def fov_rows_nm(self) -> float:
        """Extent along the rows, nm."""
        return self.pixel_size_nm * self.rows


class ImagingParams(BaseModel):
    """Image-formation parameters of the simulated HAADF-STEM.

    Units: probe current in pA, times in us, lengths in nm, counts in detected
    electrons.  The expected signal of a pixel is
    ``N_e * (background + kappa * sum_i w_i * P(r - r_i))`` with
    ``N_e = I * t_dwell / e`` electrons, ``w_i`` the column's Z-contrast weight,
    ``P`` the area-normalised Gaussian probe and ``kappa`` the cross-section per
    unit of ``Z**1.7``.
    """

    model_config = _STRICT

    probe_current_pa: float = Field(20.0, gt=0.0, le=1e4, description="Probe current.")
    probe_fwhm_nm: float = Field(0.10, gt=0.0, le=50.0, description="Probe FWHM (aberration-corrected default).")
    cross_section_nm2_per_z17: float = Field(
        3.9e-7,
        gt=0.0,
        # abTEM multislice at 80 kV puts ~2% of the beam on the HAADF detector at a Mo column.
        description="HAADF cross-section per unit Z**1.7 (a Mo column scatters ~2% at the probe peak).",
    )
    detector_efficiency: Fraction = Field(1.0, description="Fraction of scattered electrons counted.")
    background_fraction: float = Field(2e-4, ge=0.0, le=1.0, description="Flat background as a fraction of the beam.")
    background_gradient: float = Field(0.3, ge=0.0, le=1.0, description="Relative amplitude of the background slope.")
    read_noise_counts: float = Field(0.5, ge=0.0, le=1e4, description="Detector read-noise standard deviation, counts.")
    shot_noise: bool = Field(True, description="Poisson shot noise on the expected counts.")
    line_jitter_nm: float = Field(0.008, ge=0.0, le=2.0, description="Std of the per-line x offset.")
    flyback_amplitude_nm: float = Field(0.04, ge=0.0, le=10.0, description="x offset at the start of each line.")
    flyback_settle_us: float = Field(150.0, gt=0.0, description="Decay time of the flyback offset.")
    flyback_time_us: float = Field(500.0, ge=0.0, description="Dead time between lines.")
    drift_nm_per_s: float = Field(0.02, ge=0.0, le=100.0, description="Drift speed; its direction is drawn.")
    mask_radius_fraction: float = Field(
        0.25, gt=0.0, le=0.5, description="Class-mask disc radius as a fraction of the nearest-neighbour spacing."
    )
    atomic_max_pixel_fraction: float = Field(
        0.5, gt=0.0, le=2.0, description="Atoms are drawn when the pixel is at most this fraction of the NN spacing."
    )
    track_dose: bool = Field(True, description="Accumulate dose on the specimen and apply knock-on damage.")

    @property
    def probe_sigma_nm(self) -> float:
        """Gaussian sigma of the probe, nm."""
        return self.probe_fwhm_nm / 2.354820045

    def electrons_per_pixel(self, dwell_us: float) -> float:
        """Beam electrons per pixel: ``N_e = I * t / e``."""
        return self.probe_current_pa * 1e-12 * dwell_us * 1e-6 / 1.602176634e-19

    def with_dose(self, dose_e_per_a2: float, scan: ScanRequest) -> ImagingParams:
        """Return a copy whose probe current gives ``dose_e_per_a2`` for ``scan``.

        Raises
        ------
        ParameterError
            If the dose is not a positive finite number, or implies a probe
            current beyond ``probe_current_pa``'s range.
        """
        if not (math.isfinite(dose_e_per_a2) and dose_e_per_a2 > 0.0):
            raise ParameterError(f"dose_e_per_a2 must be > 0 and finite, in e/A^2 (got {dose_e_per_a2!r})")
        pixel_area_a2 = (scan.pixel_size_nm * 10.0) ** 2
        electrons = dose_e_per_a2 * pixel_area_a2
        current_pa = electrons * 1.602176634e-19 / (scan.dwell_us * 1e-6) / 1e-12
        return checked(ImagingParams, **{**self.model_dump(), "probe_current_pa": current_pa})

    def dose_e_per_a2(self, scan: ScanRequest) -> float:
        """Electron dose of one frame of ``scan``, electrons per square angstrom."""
        return self.electrons_per_pixel(scan.dwell_us) / (scan.pixel_size_nm * 10.0) ** 2
