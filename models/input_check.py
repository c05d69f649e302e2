"""What a frame holds before the model sees it: is there atomic-scale contrast, is the detector saturated.

The ensemble's out-of-distribution score is its epistemic uncertainty, and a network is confidently
wrong on inputs unlike anything it was trained on: on pure detector noise (a blanked beam, a frame over
vacuum) the bundled ensemble finds hundreds of "columns" with an OOD score no higher than that of real
frames.  These checks look at the input instead of the model.

**Atomic-scale contrast.**  A crystal's columns put power into a few spatial frequencies; noise spreads
its power over all of them.  The frame is cut into tiles of at most ``TILE_PX`` square, each clipped at
its ``CLIP_PERCENTILES`` (hot pixels, cosmic-ray hits: a spike is white and would lift the whole noise
floor; a pointwise clip keeps white noise white), and each tile's periodogram (Hann window) is searched
for its strongest bin among spatial periods of ``BAND_PERIOD_NM`` (atomic spacings and their harmonics),
away from the spectrum's axes (``AXIS_BINS``: scan-line offsets put their power there; a lattice has
peaks off them too).  The bin is counted in units of the local noise floor: the median of the
``FLOOR_BINS`` band bins nearest in spatial frequency, over ln 2 (the mean of white noise's exponentially
distributed periodogram; a median is robust to the few bins a lattice occupies, and a floor that follows
the spectrum's radial envelope lets noise blurred by up to about a pixel be judged as noise too).  Over
``n`` bins of white noise the largest exceeds ``t`` floors with probability about ``n exp(-t)``, so a
frame whose strongest bin over all its tiles stays under ``ln n + ln(1 / FALSE_ALARM)`` is *featureless*:
as likely noise as anything else.
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
#: Band bins per noise-floor estimate (grouped by spatial frequency); a band of fewer has one floor.
FLOOR_BINS = 2048
#: Bins this close to the spectrum's axes are not searched (scan-line offsets put their power there).
AXIS_BINS = 1
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
        its local noise floor (NaN when the bands hold too few bins to judge; 0 for a constant frame).
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
    order, groups = _band(tile.shape, pixel_size_nm)
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
    band = power.ravel()[order]  # the band's bins by spatial frequency
    floors = _group_medians(band, groups) / math.log(2.0)
    floors = np.maximum(floors, float(band.mean()) / order.size)  # (more than half a group exactly zero)
    return float((band / floors).max()), int(order.size)


def _group_medians(values: np.ndarray, groups: int) -> np.ndarray:
    """Each value's group median, for ``groups`` consecutive groups of equal size (the remainder: the last's)."""
    size = values.size // groups
    medians = np.median(values[: groups * size].reshape(groups, size), axis=1)
    return np.concatenate([np.repeat(medians, size), np.full(values.size - groups * size, medians[-1])])


@functools.lru_cache(maxsize=32)
def _window(shape: tuple[int, int]) -> np.ndarray:
    """A 2-D Hann window (cached: frames of a session share a few shapes; read only)."""
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1])).astype(np.float32)


@functools.lru_cache(maxsize=32)
def _band(shape: tuple[int, int], pixel_size_nm: float) -> tuple[np.ndarray, int]:
    """The band's rfft2 bins (flat indices) of a ``shape`` tile by spatial frequency, and their group count.

    The bins are those of periods in ``BAND_PERIOD_NM`` more than ``AXIS_BINS`` off the axes; the groups
    hold at least ``FLOOR_BINS`` each (cached; read only).
    """
    freq = np.hypot(np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :])
    period_nm = pixel_size_nm / np.maximum(freq, 1e-12)
    searched = (period_nm >= BAND_PERIOD_NM[0]) & (period_nm <= BAND_PERIOD_NM[1])
    searched &= np.abs(np.fft.fftfreq(shape[0]) * shape[0])[:, None] > AXIS_BINS  # (row index off the axis)
    searched &= (np.arange(freq.shape[1]) > AXIS_BINS)[None, :]
    inside = np.flatnonzero(searched)
    order = inside[np.argsort(freq.ravel()[inside], kind="stable")]
    return order, max(order.size // FLOOR_BINS, 1)


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
