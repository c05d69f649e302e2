"""Training samples streamed from the simulator, with wide randomisation.

Each sample is a fresh small specimen (random lattice, rotation, defect rates,
holes, contamination, thickness) imaged with random sampling (0.008 to 0.03 nm
per pixel), dose, probe width, noise, scan distortion and background, then put
through the same resampling and normalisation as inference.  The target is the
class mask repainted at the native sampling from the planted columns.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from models.preprocess import normalize, resample, resampled_shape
from simulators import (
    LATTICES,
    ColumnTruth,
    ImagingParams,
    ScanRequest,
    Specimen,
    SpecimenConfig,
    get_lattice,
    render_frame,
)
from simulators.scan import flyback_backstep_nm


@dataclass(frozen=True)
class SampleSpec:
    """Ranges of the randomisation; all (low, high) pairs are drawn uniformly unless noted."""

    native_pixel_nm: float = 0.03
    patch_px: int = 128
    pixel_nm: tuple[float, float] = (0.008, 0.03)
    current_pa: tuple[float, float] = (3.0, 150.0)  # log-uniform
    dwell_us: tuple[float, float] = (2.0, 30.0)  # log-uniform
    probe_fwhm_nm: tuple[float, float] = (0.06, 0.14)
    jitter_nm: tuple[float, float] = (0.0, 0.02)
    drift_nm_per_s: tuple[float, float] = (0.0, 0.1)
    flyback_nm: tuple[float, float] = (0.0, 0.08)
    background: tuple[float, float] = (0.0, 2e-3)
    read_noise: tuple[float, float] = (0.0, 2.0)
    defect_rate: tuple[float, float] = (0.01, 0.12)
    lattices: tuple[str, ...] = tuple(sorted(LATTICES))
    # Relative frequency of each entry of ``lattices``; empty: all equally often.
    lattice_weights: tuple[float, ...] = ()
    mask_radius_fraction: float = 0.25

    def __post_init__(self) -> None:
        unknown = sorted(set(self.lattices) - set(LATTICES))
        if unknown or not self.lattices:
            raise ValueError(f"lattices must be a non-empty subset of {sorted(LATTICES)}, got {list(self.lattices)}")
        w = self.lattice_weights
        if w and (len(w) != len(self.lattices) or min(w) < 0 or sum(w) <= 0 or not np.all(np.isfinite(w))):
            raise ValueError(
                f"lattice_weights needs one finite weight >= 0 per lattice {list(self.lattices)}"
                f" with a positive sum, got {list(w)}"
            )

    def unweighted(self) -> SampleSpec:
        """The same ranges with every lattice equally often: the mix a model is calibrated and judged on."""
        return replace(self, lattice_weights=())

    def draw_lattice(self, rng: np.random.Generator) -> str:
        """One lattice name, by ``lattice_weights`` (uniform when empty: the draw older runs made)."""
        if not self.lattice_weights:
            return str(rng.choice(self.lattices))
        p = np.asarray(self.lattice_weights, dtype=float)
        return str(rng.choice(self.lattices, p=p / p.sum()))


def sample_spec_from_json(data: dict[str, Any]) -> SampleSpec:
    """Rebuild a :class:`SampleSpec` from its JSON form (lists back to tuples)."""
    fixed: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return SampleSpec(**fixed)


def _log_uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(lo_hi[0]), np.log(lo_hi[1]))))


def _specimen(rng: np.random.Generator, spec: SampleSpec) -> Specimen:
    config = SpecimenConfig(
        seed=int(rng.integers(2**31)),
        lattice=spec.draw_lattice(rng),
        width_nm=64.0,
        height_nm=64.0,
        base_defect_rate=rng.uniform(*spec.defect_rate),
        hotspot_density_per_um2=0.0,
        hole_density_per_um2=float(rng.choice([0.0, 400.0, 1500.0])),
        contamination_density_per_um2=float(rng.choice([0.0, 500.0, 2000.0])),
        contamination_atoms_per_column=rng.uniform(5.0, 30.0),
        thickness_variation=rng.uniform(0.0, 0.4),
        thickness_length_nm=rng.uniform(5.0, 60.0),
        tile_nm=4.0,
    )
    return Specimen(config)


def _imaging(rng: np.random.Generator, spec: SampleSpec) -> ImagingParams:
    return ImagingParams(
        probe_current_pa=_log_uniform(rng, spec.current_pa),
        probe_fwhm_nm=rng.uniform(*spec.probe_fwhm_nm),
        background_fraction=rng.uniform(*spec.background),
        background_gradient=rng.uniform(0.0, 0.8),
        read_noise_counts=rng.uniform(*spec.read_noise),
        line_jitter_nm=rng.uniform(*spec.jitter_nm),
        drift_nm_per_s=rng.uniform(*spec.drift_nm_per_s),
        flyback_amplitude_nm=rng.uniform(*spec.flyback_nm),
        track_dose=False,
    )


def _unfolded(imaging: ImagingParams, scan: ScanRequest) -> ImagingParams:
    """``imaging`` with a flyback too small to move the beam backwards at this dwell and pixel size.

    Otherwise some columns are crossed twice, and the simulator refuses the frame (about 0.75 % of the
    sampled settings: long dwells at fine sampling).
    """
    limit_nm = 0.9 * scan.pixel_size_nm
    backstep = flyback_backstep_nm(imaging.flyback_amplitude_nm, scan.dwell_us, imaging.flyback_settle_us)
    if backstep < limit_nm:
        return imaging
    return imaging.model_copy(update={"flyback_amplitude_nm": imaging.flyback_amplitude_nm * limit_nm / backstep})


def paint_targets(
    columns: ColumnTruth, shape: tuple[int, int], scale: tuple[float, float], radius_px: float
) -> np.ndarray:
    """Class mask at the native sampling: discs of ``radius_px`` around each column.

    Parameters
    ----------
    columns
        Planted columns, positions in the rendered frame's pixels.
    shape
        (rows, cols) of the native-sampling image.
    scale
        (row, col) factors from rendered to native pixels.
    radius_px
        Disc radius in native pixels.

    Returns
    -------
    ndarray
        (rows, cols) int64 class ids; a higher class wins where discs meet.
    """
    mask = np.zeros(shape, dtype=np.int64)
    rows = (columns.row + 0.5) * scale[0] - 0.5
    cols = (columns.col + 0.5) * scale[1] - 0.5
    k = int(np.ceil(radius_px))
    off = np.arange(-k, k + 1)
    for r, c, cls in zip(rows, cols, columns.class_id, strict=True):
        rr = np.rint(r).astype(int) + off
        cc = np.rint(c).astype(int) + off
        rr, cc = rr[(rr >= 0) & (rr < shape[0])], cc[(cc >= 0) & (cc < shape[1])]
        if rr.size == 0 or cc.size == 0:
            continue
        disc = (rr[:, None] - r) ** 2 + (cc[None, :] - c) ** 2 <= radius_px**2
        block = mask[np.ix_(rr, cc)]
        mask[np.ix_(rr, cc)] = np.where(disc, np.maximum(block, int(cls)), block)
    return mask


def make_sample(rng: np.random.Generator, spec: SampleSpec = SampleSpec()) -> tuple[np.ndarray, np.ndarray]:
    """One randomised (image, target) pair at the native sampling.

    Returns
    -------
    image : (P, P) float32, normalised.  target : (P, P) int64 class ids.
    """
    specimen = _specimen(rng, spec)
    px = rng.uniform(*spec.pixel_nm)
    n = int(np.ceil(spec.patch_px * spec.native_pixel_nm / px)) + 2
    scan = ScanRequest(
        x_nm=rng.uniform(-20, 20),
        y_nm=rng.uniform(-20, 20),
        fov_nm=n * px,
        rows=n,
        cols=n,
        dwell_us=_log_uniform(rng, spec.dwell_us),
        rotation_deg=rng.uniform(-180, 180),
    )
    frame = render_frame(specimen, scan, _unfolded(_imaging(rng, spec), scan), rng)
    shape = resampled_shape(frame.image.shape, px, spec.native_pixel_nm)
    image = normalize(resample(frame.image, shape))
    scale = (shape[0] / n, shape[1] / n)
    nn_px = get_lattice(specimen.config.lattice).nn_spacing_nm / spec.native_pixel_nm
    target = paint_targets(frame.truth.columns, shape, scale, spec.mask_radius_fraction * nn_px)
    p = spec.patch_px
    return image[:p, :p], target[:p, :p]


def make_dataset(
    count: int, seed: int, spec: SampleSpec = SampleSpec(), progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` samples from ``seed``: images (N, P, P) float32 and targets (N, P, P) uint8."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    images = np.empty((count, spec.patch_px, spec.patch_px), np.float32)
    targets = np.empty((count, spec.patch_px, spec.patch_px), np.uint8)
    for i in tqdm(range(count), desc="simulating", disable=not progress, unit="frame"):
        images[i], targets[i] = make_sample(rng, spec)
    return images, targets
