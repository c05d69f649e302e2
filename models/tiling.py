"""Tiled inference with overlap and a blending window, so large frames show no seams.

Tiles of ``tile`` pixels step by ``tile - overlap``; each tile's outputs are
weighted by a separable window that falls linearly to a small floor over the
overlap, and the weighted sum is divided by the summed weights.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Runner = Callable[[np.ndarray], dict[str, np.ndarray]]


def pad_to_multiple(image: np.ndarray, multiple: int, minimum: int = 0) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad (H, W) at the bottom/right to multiples of ``multiple`` (and at least ``minimum``)."""
    h, w = image.shape
    th = max(-(-h // multiple) * multiple, minimum)
    tw = max(-(-w // multiple) * multiple, minimum)
    mode = "reflect" if min(h, w) > 1 and th - h < h and tw - w < w else "edge"
    padded = np.pad(image, ((0, th - h), (0, tw - w)), mode=mode)  # type: ignore[call-overload]
    return padded, (h, w)


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def _window(tile: int, overlap: int) -> np.ndarray:
    ramp = np.ones(tile, dtype=np.float32)
    if overlap > 0:
        edge = np.linspace(0.05, 1.0, overlap, dtype=np.float32)
        ramp[:overlap] = edge
        ramp[-overlap:] = edge[::-1]
    return ramp


def run_tiled(image: np.ndarray, run: Runner, tile: int, overlap: int, multiple: int) -> dict[str, np.ndarray]:
    """Run ``run`` over (H, W) ``image`` tile by tile and blend the (1, C, h, w) outputs.

    Returns
    -------
    dict
        Each output as (C, H, W) float32, cropped to the input's size.
    """
    padded, (h, w) = pad_to_multiple(image, multiple, minimum=0)
    ph, pw = padded.shape
    if ph <= tile and pw <= tile:
        out = run(padded[None, None])
        return {k: v[0, :, :h, :w] for k, v in out.items()}
    tile = max(tile // multiple * multiple, multiple)
    padded, _ = pad_to_multiple(padded, multiple, minimum=tile)
    ph, pw = padded.shape
    step = max(tile - overlap, multiple)
    sums: dict[str, np.ndarray] = {}
    weight = np.zeros((ph, pw), dtype=np.float32)
    win = np.outer(_window(tile, overlap), _window(tile, overlap))
    for r in _starts(ph, tile, step):
        for c in _starts(pw, tile, step):
            out = run(np.ascontiguousarray(padded[None, None, r : r + tile, c : c + tile]))
            for k, v in out.items():
                acc = sums.setdefault(k, np.zeros((v.shape[1], ph, pw), dtype=np.float32))
                acc[:, r : r + tile, c : c + tile] += v[0] * win
            weight[r : r + tile, c : c + tile] += win
    return {k: (v / weight)[:, :h, :w] for k, v in sums.items()}
