"""What a frame holds before the model sees it: is there atomic-scale contrast, is the detector saturated.

The ensemble's out-of-distribution score is its epistemic uncertainty, and a network is confidently
wrong on inputs unlike anything it was trained on: on pure detector noise (a blanked beam, a frame over
vacuum) the bundled ensemble finds hundreds of "columns" with an OOD score below that of real frames.
These checks look at the input instead of the model.

**Atomic-scale contrast.**  A crystal's columns put power into a few spatial frequencies; noise spreads
its power over all of them.  The frame's periodogram (Hann-windowed, central crop) is searched for its
strongest bin among spatial periods of ``BAND_PERIOD_NM`` (atomic spacings and their harmonics), in
units of the band's noise floor, estimated as median / ln 2 (the mean of exponentially distributed
periodogram values of white noise, robust to the few bins a lattice occupies).  Over ``n`` bins of
white noise the largest exceeds ``t`` with probability about ``n exp(-t)``, so a frame whose peak stays
under ``ln n + ln(1 / FALSE_ALARM)`` is *featureless*: as likely noise as anything else.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import fft

#: Spatial periods searched for atomic contrast, nm: from harmonics of the finest spacings to a few cells.
BAND_PERIOD_NM = (0.08, 1.0)
#: The largest square, pixels, cut from the frame's centre for the spectrum (a bounded cost per frame).
CROP_PX = 512
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
    peak_snr : the strongest periodogram bin among periods ``BAND_PERIOD_NM``, in units of the band's
        noise floor (NaN when the band holds too few bins to judge; 0 for a constant frame).
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
    snr, bins = spectral_peak(image, pixel_size_nm)
    threshold = math.log(max(bins, 1)) + math.log(1.0 / FALSE_ALARM)
    judged = bins >= MIN_BAND_BINS and math.isfinite(snr)
    return InputCheck(
        snr if judged else float("nan"),
        threshold,
        judged and snr <= threshold,
        saturated_fraction(image),
    )


def spectral_peak(image: np.ndarray, pixel_size_nm: float) -> tuple[float, int]:
    """The strongest periodogram bin in the atomic band over the band's noise floor, and the band's bin count."""
    rows, cols = image.shape
    r0, c0 = max((rows - CROP_PX) // 2, 0), max((cols - CROP_PX) // 2, 0)
    crop = np.asarray(image[r0 : r0 + CROP_PX, c0 : c0 + CROP_PX], dtype=np.float64)
    crop = (crop - crop.mean()).astype(np.float32)
    power = np.abs(fft.rfft2(crop * _window(crop.shape))) ** 2
    band = power[_band(crop.shape, pixel_size_nm)]
    if band.size == 0:
        return float("nan"), 0
    floor = float(np.median(band)) / math.log(2.0)
    if floor <= 0.0:  # at least half the band is exactly zero: a constant frame or nearly so
        return 0.0 if float(band.max()) == 0.0 else float("inf"), int(band.size)
    return float(band.max()) / floor, int(band.size)


@functools.lru_cache(maxsize=8)
def _window(shape: tuple[int, int]) -> np.ndarray:
    """A 2-D Hann window (cached: frames of a session share a few shapes; read only)."""
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1])).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _band(shape: tuple[int, int], pixel_size_nm: float) -> np.ndarray:
    """The rfft2 bins of a ``shape`` crop whose spatial period lies in ``BAND_PERIOD_NM`` (cached; read only)."""
    freq = np.hypot(np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :])
    period_nm = pixel_size_nm / np.maximum(freq, 1e-12)
    return (period_nm >= BAND_PERIOD_NM[0]) & (period_nm <= BAND_PERIOD_NM[1])


def saturated_fraction(image: np.ndarray) -> float:
    """Share of pixels piled up at the frame's maximum, or 0 when the top of its histogram falls off.

    A constant frame is not saturated by this test (it is featureless).
    """
    top = image.max()
    at_top = int(np.count_nonzero(image == top))
    below = image[image < top]
    if below.size == 0:
        return 0.0
    at_next = int(np.count_nonzero(below == below.max()))
    fraction = at_top / image.size
    return fraction if fraction >= SATURATED_MIN_FRACTION and at_top > SATURATED_PILE_UP * at_next else 0.0
