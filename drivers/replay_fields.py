"""Recorded frames as a library of fields: the frame that covers a requested field, and the field taken from it.

What a what-if (``instrument`` mode) :class:`drivers.replay.ReplayDriver` serves: the finest recorded
frame containing the whole requested field, resampled onto the requested pixel grid (the recorded
pixels themselves where the grids align; low-passed first where the new pixels are coarser).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from drivers.base import Frame, ScanCommand


class RecordedFields:
    """The recorded ``frames``, looked up and resampled by requested field."""

    def __init__(self, frames: list[Frame]) -> None:
        self.frames = frames
        self._reach = _frame_reach(frames)  # centre x, y and half-diagonal (nm) of every recorded frame
        self._smoothed: dict[tuple[int, float], np.ndarray] = {}

    def _corners(self, command: ScanCommand) -> tuple[np.ndarray, np.ndarray]:
        px = command.fov_nm / command.cols
        rows = np.array([-0.5, -0.5, command.rows - 0.5, command.rows - 0.5])
        cols = np.array([-0.5, command.cols - 0.5, -0.5, command.cols - 0.5])
        return _to_stage(rows, cols, command.x_nm, command.y_nm, px, (command.rows, command.cols), command.rotation_deg)

    def covering(self, command: ScanCommand) -> int | None:
        """The recorded frame with the finest sampling that contains the whole requested field.

        Only frames whose circumscribed circle holds all four of the field's corners are looked at in
        detail, so a request costs about the same in a session of thousands of frames as in one of forty.
        """
        x, y = self._corners(command)
        cx, cy, reach = self._reach
        farthest = np.hypot(x[None, :] - cx[:, None], y[None, :] - cy[:, None]).max(axis=1)
        near = np.flatnonzero(farthest <= reach * (1 + 1e-3) + 1e-6)
        best: int | None = None
        for i in near.tolist():
            f = self.frames[i]
            h = f.header
            row, col = _to_pixels(x, y, h.x_nm, h.y_nm, h.pixel_size_nm, tuple(h.shape), _rotation(f))
            rows, cols = h.shape
            e = 1e-3  # pixels: the same field recorded and requested may differ by rounding
            inside = (row >= -0.5 - e) & (row <= rows - 0.5 + e) & (col >= -0.5 - e) & (col <= cols - 0.5 + e)
            if inside.all() and (best is None or h.pixel_size_nm < self.frames[best].header.pixel_size_nm):
                best = i
        return best

    def resample(self, index: int, command: ScanCommand) -> np.ndarray:
        """The requested field taken from recorded frame ``index`` (which :meth:`covering` chose), float32."""
        source = self.frames[index]
        h = source.header
        px = command.fov_nm / command.cols
        crop = _aligned_crop(source, command, px)
        if crop is not None:  # the recorded pixels themselves: no interpolation, no cost
            return crop
        ratio = px / h.pixel_size_nm
        image = np.asarray(source.image, dtype=np.float32)
        if ratio > 1.5:  # coarser than recorded: low-pass first so the new pixels average, not alias
            key = (index, round(ratio, 2))
            if key not in self._smoothed:
                self._smoothed = {key: gaussian_filter(image, 0.5 * ratio)}  # keep one: bounded memory
            image = self._smoothed[key]
        if abs(command.rotation_deg - _rotation(source)) < 1e-9:  # axis-aligned: two small matrix products
            rows_at, _ = _to_pixels(*_to_stage(np.arange(command.rows, dtype=np.float64), np.zeros(command.rows),
                                               command.x_nm, command.y_nm, px, (command.rows, command.cols),
                                               command.rotation_deg),
                                    h.x_nm, h.y_nm, h.pixel_size_nm, tuple(h.shape), _rotation(source))  # fmt: skip
            _, cols_at = _to_pixels(*_to_stage(np.zeros(command.cols), np.arange(command.cols, dtype=np.float64),
                                               command.x_nm, command.y_nm, px, (command.rows, command.cols),
                                               command.rotation_deg),
                                    h.x_nm, h.y_nm, h.pixel_size_nm, tuple(h.shape), _rotation(source))  # fmt: skip
            return _separable_resample(image, _linear_weights(rows_at, image.shape[0]),
                                       _linear_weights(cols_at, image.shape[1]))  # fmt: skip
        r, c = np.meshgrid(np.arange(command.rows, dtype=np.float64), np.arange(command.cols, dtype=np.float64),
                           indexing="ij")  # fmt: skip
        x, y = _to_stage(r, c, command.x_nm, command.y_nm, px, (command.rows, command.cols), command.rotation_deg)
        row, col = _to_pixels(x, y, h.x_nm, h.y_nm, h.pixel_size_nm, tuple(h.shape), _rotation(source))
        return map_coordinates(image, [row, col], order=1, mode="nearest").astype(np.float32)


def _aligned_crop(source: Frame, command: ScanCommand, px: float) -> np.ndarray | None:
    """The requested field as a slice of the recorded image, or None.

    Only when both grids coincide: same pixel size and rotation, and a whole-pixel offset.
    """
    h = source.header
    if not math.isclose(px, h.pixel_size_nm, rel_tol=1e-9) or abs(command.rotation_deg - _rotation(source)) > 1e-9:
        return None
    r, c = _to_pixels(
        np.array(command.x_nm), np.array(command.y_nm), h.x_nm, h.y_nm, px, tuple(h.shape), _rotation(source)
    )
    top, left = float(r) - (command.rows - 1) / 2.0, float(c) - (command.cols - 1) / 2.0
    if abs(top - round(top)) > 1e-3 or abs(left - round(left)) > 1e-3:
        return None
    top_i, left_i = round(top), round(left)
    if top_i < 0 or left_i < 0 or top_i + command.rows > h.shape[0] or left_i + command.cols > h.shape[1]:
        return None
    return np.array(source.image[top_i : top_i + command.rows, left_i : left_i + command.cols], dtype=np.float32)


def _separable_resample(image: np.ndarray, row_weights: np.ndarray, col_weights: np.ndarray) -> np.ndarray:
    """``row_weights @ image @ col_weights.T`` over only the rows and columns that carry weight.

    Pixels outside the requested field never enter the product, so a NaN or Inf among them (0 x NaN
    is NaN) cannot spread over the whole served field.
    """
    rows = np.flatnonzero(row_weights.any(axis=0))
    cols = np.flatnonzero(col_weights.any(axis=0))
    return row_weights[:, rows] @ image[np.ix_(rows, cols)] @ col_weights[:, cols].T


def _linear_weights(at: np.ndarray, size: int) -> np.ndarray:
    """(len(at), size) float32 matrix of linear-interpolation weights at positions ``at`` (clamped to the edge)."""
    at = np.clip(at, 0.0, size - 1.0)
    low = np.minimum(np.floor(at).astype(np.int64), size - 2) if size > 1 else np.zeros(len(at), dtype=np.int64)
    frac = at - low
    w = np.zeros((len(at), size), dtype=np.float32)
    idx = np.arange(len(at))
    w[idx, low] = 1.0 - frac
    if size > 1:
        w[idx, low + 1] += frac
    return w


def _frame_reach(frames: list[Frame]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre x, y and half-diagonal, nm, of each frame: a point farther out than that is not inside it."""
    headers = [f.header for f in frames]
    cx = np.array([h.x_nm for h in headers], dtype=np.float64)
    cy = np.array([h.y_nm for h in headers], dtype=np.float64)
    reach = np.array([0.5 * h.pixel_size_nm * math.hypot(*h.shape) for h in headers], dtype=np.float64)
    return cx, cy, reach


def _rotation(frame: Frame) -> float:
    metadata = frame.header.metadata
    value = metadata.get("rotation_deg")
    if value is None and isinstance(metadata.get("nion"), dict):  # a Nion frame keeps it with its scan metadata
        value = metadata["nion"].get("rotation_deg")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def _to_stage(
    row: np.ndarray, col: np.ndarray, x_nm: float, y_nm: float, px: float, shape: tuple[int, ...], rotation_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Nominal scan geometry: pixel (row, col) of a field centred at (x_nm, y_nm) -> stage (x, y)."""
    u, v = (col - (shape[1] - 1) / 2.0) * px, (row - (shape[0] - 1) / 2.0) * px
    t = math.radians(rotation_deg)
    return x_nm + math.cos(t) * u - math.sin(t) * v, y_nm + math.sin(t) * u + math.cos(t) * v


def _to_pixels(
    x: np.ndarray, y: np.ndarray, x_nm: float, y_nm: float, px: float, shape: tuple[int, ...], rotation_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`_to_stage`."""
    t = math.radians(rotation_deg)
    qx, qy = x - x_nm, y - y_nm
    u, v = math.cos(t) * qx + math.sin(t) * qy, -math.sin(t) * qx + math.cos(t) * qy
    return v / px + (shape[0] - 1) / 2.0, u / px + (shape[1] - 1) / 2.0
