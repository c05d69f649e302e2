"""What a frame holds before the model sees it: is there atomic-scale contrast, is the detector saturated.

The ensemble's out-of-distribution score is its epistemic uncertainty, and a network is confidently
wrong on inputs unlike anything it was trained on: on pure detector noise (a blanked beam, a frame over
vacuum) the bundled ensemble finds hundreds of "columns" with an OOD score no higher than that of real
frames.  These checks look at the input instead of the model.

**Atomic-scale contrast.**  A crystal's columns put power into a few spatial frequencies; noise spreads
its power over all of them.  The frame is cut into tiles of at most ``TILE_PX`` square, each clipped at
its ``CLIP_PERCENTILES`` (hot pixels, cosmic-ray hits: a spike is white and would lift the whole noise
floor; a pointwise clip keeps white noise white), and each tile's periodogram (Hann window) is searched
for its strongest bin among spatial periods of ``BAND_PERIOD_NM`` (atomic spacings and their harmonics).
The bin is counted in units of its noise floor: the median of its group of ``FLOOR_BINS`` band bins of
like spatial frequency, over ln 2 (the mean of white noise's exponentially distributed periodogram; a
median is robust to the few bins a lattice occupies, and a floor that follows the spectrum's radial
envelope lets noise blurred by up to about a pixel be judged as noise too).  The bins on the spectrum's
axes (``AXIS_BINS``) are judged against floors of their own: scan-line offsets put their power there,
and a lattice aligned with the scan its peaks too.  Over ``n`` bins of white noise the largest exceeds
``t`` floors with probability about ``n exp(-t)``, so a frame whose strongest bin over all its tiles
stays under ``ln n + ln(1 / FALSE_ALARM)`` is *featureless*: as likely noise as anything else.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import fft

#: Spatial periods searched for atomic contrast, nm: from harmonics of the finest spacings to a few cells.
BAND_PERIOD_NM = (0.08, 1.0)
#: The largest tile side, pixels: the frame is covered by tiles of at most this square, each judged.
TILE_PX = 512
#: Each tile is clipped at these percentiles before its spectrum is taken (outliers lift the floor).
CLIP_PERCENTILES = (0.1, 99.9)
#: Band bins per noise-floor estimate (consecutive groups by spatial frequency; a band of fewer has one).
FLOOR_BINS = 2048
#: Each line of bins this close to the spectrum's axes has floors of its own (scan-line offsets put their
#: power there, and so does a lattice aligned with the scan), from groups of ``AXIS_FLOOR_BINS`` of its bins.
AXIS_BINS = 1
AXIS_FLOOR_BINS = 128
#: Chance that pure white noise passes as structured (its largest bin above the threshold).
FALSE_ALARM = 1e-3
#: Fewer bins in the band than this (a tiny crop, a pixel size far from atomic scales): no verdict.
MIN_BAND_BINS = 64
#: A saturated detector piles pixels up at its ceiling: at least this share of the frame at the maximum...
SATURATED_MIN_FRACTION = 0.001
#: ... and this many times as many pixels as at the next lower value (a natural histogram falls off).
SATURATED_PILE_UP = 2.0


@dataclass(frozen=True)
class InputCheck:
    """Input statistics of one frame.

    Attributes
    ----------
    peak_snr : the strongest periodogram bin among periods ``BAND_PERIOD_NM`` over all tiles, in units of
        its noise floor (see the module's notes; NaN when the bands hold too few bins to judge, 0 for a
        constant frame).
    peak_threshold : what ``peak_snr`` must exceed for the frame to hold atomic-scale contrast.
    featureless : ``peak_snr`` is at or below ``peak_threshold``: nothing in the frame stands out of its noise.
    saturated_fraction : share of pixels piled up at the frame's maximum (0 when there is no pile-up).
    """

    peak_snr: float
    peak_threshold: float
    featureless: bool
    saturated_fraction: float

    @property
    def flags(self) -> tuple[str, ...]:
        """``featureless`` and ``saturated``, as they apply."""
        return tuple(name for name, on in (("featureless", self.featureless), ("saturated", self.saturated)) if on)

    @property
    def saturated(self) -> bool:
        """Some pixels hit the detector's ceiling (see ``SATURATED_MIN_FRACTION``)."""
        return self.saturated_fraction > 0.0

    def summary(self) -> dict[str, object]:
        """JSON-able figures (a NaN peak is written as None)."""
        snr = round(self.peak_snr, 2) if math.isfinite(self.peak_snr) else None
        return {
            "peak_snr": snr,
            "peak_threshold": round(self.peak_threshold, 2),
            "featureless": self.featureless,
            "saturated_fraction": round(self.saturated_fraction, 4),
            "flags": list(self.flags),
        }


def check_input(image: np.ndarray, pixel_size_nm: float) -> InputCheck:
    """Atomic-scale contrast and saturation of a finite 2-D frame (see the module's notes)."""
    snr, bins = spectral_peak(image, float(pixel_size_nm))
    threshold = math.log(max(bins, 1)) + math.log(1.0 / FALSE_ALARM)
    judged = bins >= MIN_BAND_BINS
    return InputCheck(
        snr if judged else float("nan"),
        threshold,
        judged and snr <= threshold,
        saturated_fraction(image),
    )


def spectral_peak(image: np.ndarray, pixel_size_nm: float) -> tuple[float, int]:
    """The strongest band bin over its noise floor, over all tiles of the frame, and the bins searched."""
    peak, bins = 0.0, 0
    for rows in _spans(image.shape[0]):
        for cols in _spans(image.shape[1]):
            tile_peak, tile_bins = _tile_peak(image[rows, cols], float(pixel_size_nm))
            peak, bins = max(peak, tile_peak), bins + tile_bins
    return peak, bins


def _spans(length: int) -> list[slice]:
    """Equal consecutive spans of at most ``TILE_PX`` covering ``length`` pixels."""
    edges = np.linspace(0, length, -(-length // TILE_PX) + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def _tile_peak(tile: np.ndarray, pixel_size_nm: float) -> tuple[float, int]:
    """One tile's strongest band bin over its local floor (0 for a flat tile), and its band's bin count."""
    order, groups, partners = _band(tile.shape, pixel_size_nm)
    if order.size == 0:
        return 0.0, 0
    x = np.asarray(tile, dtype=np.float64)
    low, high = np.percentile(x[::3, ::3], CLIP_PERCENTILES)  # (every ninth pixel: tens of thousands)
    x = np.clip(x, low, high)
    x -= x.mean()
    scale = float(np.abs(x).max())
    if scale == 0.0:  # flat once clipped: nothing but a few outliers
        return 0.0, int(order.size)
    power = np.abs(fft.rfft2((x / scale).astype(np.float32) * _window(tile.shape))) ** 2
    band = power.ravel()[order]  # the band's bins: off the axes, then on them, each by spatial frequency
    floors = _floors(band, groups, partners)
    floors = np.maximum(floors, float(band.mean()) / order.size)  # (more than half a group exactly zero)
    return float((band / floors).max()), int(order.size)


def _floors(band: np.ndarray, groups: np.ndarray, partners: np.ndarray) -> np.ndarray:
    """Each bin's noise floor: its group's median over ln 2.

    The groups of axis bins (the last ``partners.size``) never go below the floor of the off-axis group
    of the same spatial frequency (``partners``): an axis line holds tens of bins, whose median alone
    could fall low enough by chance to let noise through; scan-line noise only ever lifts it.
    """
    medians = np.array([np.median(g) for g in np.split(band, np.cumsum(groups)[:-1])])
    off_axis = medians.size - partners.size
    if partners.size and off_axis:
        medians[off_axis:] = np.maximum(medians[off_axis:], medians[partners])
    return np.repeat(medians, groups) / math.log(2.0)


@functools.lru_cache(maxsize=32)
def _window(shape: tuple[int, int]) -> np.ndarray:
    """A 2-D Hann window (cached: frames of a session share a few shapes; read only)."""
    window = np.outer(np.hanning(shape[0]), np.hanning(shape[1])).astype(np.float32)
    window.flags.writeable = False
    return window


@functools.lru_cache(maxsize=32)
def _band(shape: tuple[int, int], pixel_size_nm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The band's rfft2 bins (flat indices) of a ``shape`` tile, their floor groups' sizes, and partners.

    The bins are those of periods in ``BAND_PERIOD_NM``: first those more than ``AXIS_BINS`` off the
    spectrum's axes, by spatial frequency, in groups of ``FLOOR_BINS`` (the last takes the remainder);
    then those of each line of bins on the axes, by spatial frequency, in groups of ``AXIS_FLOOR_BINS``.
    ``partners``: for each axis group, the off-axis group of its median spatial frequency (cached; read only).
    """
    freq = np.hypot(np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :])
    period_nm = pixel_size_nm / np.maximum(freq, 1e-12)
    in_band = (period_nm >= BAND_PERIOD_NM[0]) & (period_nm <= BAND_PERIOD_NM[1])
    row_index = np.rint(np.fft.fftfreq(shape[0]) * shape[0]).astype(int)[:, None]
    col_index = np.arange(freq.shape[1])[None, :]
    on_cols = [np.broadcast_to(col_index == c, freq.shape) for c in range(AXIS_BINS + 1)]  # a line each
    on_rows = [(row_index == r) & (col_index > AXIS_BINS) for r in range(-AXIS_BINS, AXIS_BINS + 1)]
    off_axes = ~np.logical_or.reduce([*on_cols, *on_rows])
    flat_freq = freq.ravel()
    order, groups = [], []
    parts = [(in_band & off_axes, FLOOR_BINS), *((in_band & line, AXIS_FLOOR_BINS) for line in on_cols + on_rows)]
    for part, size in parts:
        inside = np.flatnonzero(part)
        order.append(inside[np.argsort(flat_freq[inside], kind="stable")])
        groups.append(_group_sizes(inside.size, size))
    bins, sizes = np.concatenate(order), np.concatenate(groups)
    off_groups = groups[0].size
    edges = np.cumsum(sizes)
    starts = edges - sizes
    top_freq = flat_freq[bins[edges[:off_groups] - 1]] if off_groups else np.zeros(0)  # each off-axis group's
    middle_freq = flat_freq[bins[(starts[off_groups:] + edges[off_groups:] - 1) // 2]]
    partners = np.minimum(np.searchsorted(top_freq, middle_freq), max(off_groups - 1, 0)).astype(np.int64)
    for array in (bins, sizes, partners):
        array.flags.writeable = False
    return bins, sizes, partners


def _group_sizes(count: int, size: int) -> np.ndarray:
    """Sizes of consecutive groups of ``size`` covering ``count`` items, the last taking the remainder."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    sizes = np.full(max(count // size, 1), size, dtype=np.int64)
    sizes[-1] = count - size * (sizes.size - 1)
    return sizes


def saturated_fraction(image: np.ndarray) -> float:
    """Share of pixels piled up at the frame's maximum, or 0 when the top of its histogram falls off.

    A constant frame is not saturated by this test (it is featureless).
    """
    top = image.max()
    at_top = int(np.count_nonzero(image == top))
    if at_top == image.size:
        return 0.0
    lowest = np.iinfo(image.dtype).min if np.issubdtype(image.dtype, np.integer) else -np.inf
    next_value = np.max(image, where=image < top, initial=lowest)
    at_next = int(np.count_nonzero(image == next_value))
    fraction = at_top / image.size
    return fraction if fraction >= SATURATED_MIN_FRACTION and at_top > SATURATED_PILE_UP * at_next else 0.0
