"""Frames to model input: validation, resampling to the native pixel size, normalisation.

Shared by inference and training, so the network sees the same transform in both.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.transform import resize

#: Smallest accepted image side, pixels.
MIN_SIDE_PX = 16
#: Smallest side after resampling to the model's pixel size (at 0.03 nm, about two atomic spacings).
MIN_NATIVE_SIDE_PX = 8
#: Largest model input after resampling, pixels: 8192 x 8192 (each class's map is then 256 MB).
MAX_NATIVE_PIXELS = 8192 * 8192
#: float32 keeps 24 bits: data whose magnitude exceeds their span by more than 2**12 would keep
#: fewer than 12 bits of contrast, so they are shifted to start at zero (in float64) first.
_MAX_OFFSET_OVER_SPAN = 2.0**12
#: Spans beyond this are scaled to 1 before the cast (float32 overflows at 3.4e38), and so are spans
#: below _MIN_SPAN (float32's normal numbers end at 1.2e-38).
_MAX_SPAN = 1e30
_MIN_SPAN = 1e-30
#: Normalised values are clipped to +-this: hot pixels, cosmic-ray hits and stuck columns of a real
#: detector sit hundreds to thousands of spans out, and 30 of them in a 512 x 512 frame made the bundled
#: ensemble lose four in five columns of the whole frame.  Simulated frames, training patches included,
#: reach 8.5 at most (416 evaluation frames, 300 training patches; low doses reach furthest), so the clip
#: leaves every frame of the training distribution as it was.
NORMALISED_LIMIT = 16.0


class ImageError(ValueError):
    """The image cannot be segmented as given (shape, dtype, values or pixel size)."""


def validate_image(image: np.ndarray, pixel_size_nm: float | None) -> np.ndarray:
    """Check a frame and return it as float32.

    Raises
    ------
    ImageError
        If the array is not 2-D, smaller than ``MIN_SIDE_PX`` on a side, of a non-numeric
        dtype, contains NaN or Inf, or if the pixel size is missing, non-finite or <= 0.
    """
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ImageError(f"image must be 2-D (rows, cols), got shape {arr.shape}")
    if min(arr.shape) < MIN_SIDE_PX:
        raise ImageError(f"image must be at least {MIN_SIDE_PX} x {MIN_SIDE_PX} pixels, got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ImageError(f"image dtype must be integer or floating point, got {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.isfinite(arr).sum())
        raise ImageError(f"image contains {bad} NaN or Inf pixels")
    if pixel_size_nm is None:
        raise ImageError("pixel size is missing: give pixel_size_nm (or --pixel-size-nm)")
    if not (math.isfinite(pixel_size_nm) and pixel_size_nm > 0):
        raise ImageError(f"pixel_size_nm must be > 0 and finite (got {pixel_size_nm!r})")
    return as_float32(arr)


def as_float32(image: np.ndarray) -> np.ndarray:
    """``image`` as float32, keeping the contrast of wide integer and float64 data.

    A uint32 frame offset by 2**31 with tens of counts of contrast, or float64 values beyond
    float32's range, would lose everything in a plain cast.  Such data are shifted to start at zero
    (and scaled to span 1 where the span itself is too large) in float64 first.  Inference is
    unchanged by this: resampling is linear and normalisation is by percentiles.  Other data are
    cast as they are.
    """
    if image.dtype.itemsize <= 2 or image.dtype == np.float32:
        return image.astype(np.float32, copy=False)
    lo, hi = float(image.min()), float(image.max())
    span = hi - lo
    exact = 2.0**24 if np.issubdtype(image.dtype, np.integer) else 0.0  # integers float32 holds exactly
    scaled = span > _MAX_SPAN or 0.0 < span < _MIN_SPAN
    if max(abs(lo), abs(hi)) <= max(_MAX_OFFSET_OVER_SPAN * span, exact) and not scaled:
        return image.astype(np.float32)
    wide = _from_minimum(image) if np.issubdtype(image.dtype, np.integer) else image.astype(np.float64) - lo
    if scaled:
        wide /= span
    return wide.astype(np.float32)


def _from_minimum(image: np.ndarray) -> np.ndarray:
    """``image - image.min()`` as float64, subtracted in integers: exact however large the offset.

    (In float64, 2**60 plus 40 counts of contrast was one value.)  Signed integers are mapped, order
    kept, onto unsigned ones first, so the difference cannot overflow.
    """
    if image.dtype.kind == "u":
        u = image.astype(np.uint64)
    else:
        u = image.astype(np.int64).view(np.uint64) ^ np.uint64(1 << 63)
    return (u - u.min()).astype(np.float64)


def check_native_shape(shape: tuple[int, int], pixel_size_nm: float, native_nm: float) -> tuple[int, int]:
    """The shape of an image of ``shape`` resampled to ``native_nm``, if the model can take it.

    Raises
    ------
    ImageError
        When the resampled image would be smaller than ``MIN_NATIVE_SIDE_PX`` on a side (a pixel size far
        below the model's) or larger than ``MAX_NATIVE_PIXELS`` (far above it).
    """
    scale = pixel_size_nm / native_nm
    rows, cols = shape[0] * scale, shape[1] * scale  # (floats: an absurd pixel size is never rounded to int)
    # (rounded as the resampling rounds; far beyond the bound, not rounded at all: inf has no int)
    native = resampled_shape(shape, pixel_size_nm, native_nm) if rows * cols <= 2 * MAX_NATIVE_PIXELS else (0, 0)
    if min(native) < MIN_NATIVE_SIDE_PX or native[0] * native[1] > MAX_NATIVE_PIXELS:
        raise ImageError(
            f"at {pixel_size_nm:g} nm per pixel the {shape[0]} x {shape[1]} image becomes {rows:.4g} x {cols:.4g}"
            f" px at the model's {native_nm:g} nm per pixel: outside {MIN_NATIVE_SIDE_PX} px a side to"
            f" {MAX_NATIVE_PIXELS} px in all (is the pixel size in nm?)"
        )
    return native


def resampled_shape(shape: tuple[int, int], pixel_size_nm: float, native_nm: float) -> tuple[int, int]:
    """Shape of an image of ``shape`` at ``pixel_size_nm`` once resampled to ``native_nm``."""
    scale = pixel_size_nm / native_nm
    return max(round(shape[0] * scale), 1), max(round(shape[1] * scale), 1)


def resample(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample to ``shape`` (bilinear; Gaussian anti-aliasing when shrinking), float32."""
    if tuple(image.shape) == tuple(shape):
        return image.astype(np.float32, copy=False)
    shrink = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    out = resize(image, shape, order=1, mode="reflect", anti_aliasing=shrink, preserve_range=True)
    return np.asarray(out, dtype=np.float32)


def normalize(image: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.5) -> np.ndarray:
    """Robust intensity normalisation: ``(x - P_low) / (P_high - P_low)``, clipped to ``NORMALISED_LIMIT``, float32.

    Percentiles are insensitive to a few hot pixels and to the absolute dose, so frames of any detector
    gain and dose map to a similar range; the clip keeps those few pixels themselves from reaching the
    network at values it never saw.
    """
    lo, hi = np.percentile(image, [low_pct, high_pct])
    scale = float(hi - lo) if hi > lo else 1.0
    return np.clip((image - lo) / scale, -NORMALISED_LIMIT, NORMALISED_LIMIT).astype(np.float32)


def to_native_coordinates(row: np.ndarray, col: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Map pixel coordinates of the input image into the resampled image (pixel centres kept)."""
    return (np.asarray(row) + 0.5) * scale - 0.5, (np.asarray(col) + 0.5) * scale - 0.5
