"""Tiled inference with overlap and a blending window, so large frames show no seams.

Tiles of ``tile`` pixels step by ``tile - overlap``; each tile's outputs are
weighted by a separable window that is zero on the outer quarter of every
interior overlap (where the tile saw padding) and ramps up linearly over the
rest, and the weighted sum is divided by the summed weights.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Runner = Callable[[np.ndarray], dict[str, np.ndarray]]


def pad_to_multiple(image: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad (H, W) at the bottom/right to multiples of ``multiple``; also returns (H, W)."""
    h, w = image.shape
    th = -(-h // multiple) * multiple
    tw = -(-w // multiple) * multiple
    mode = "reflect" if min(h, w) > 1 and th - h < h and tw - w < w else "edge"
    padded = np.pad(image, ((0, th - h), (0, tw - w)), mode=mode)  # type: ignore[call-overload]
    return padded, (h, w)


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def _window(tile: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    """1-D blending weights of one tile: zero over the outer quarter of an interior overlap, then a ramp.

    A tile's outermost pixels see padding instead of the neighbouring image, so
    they get no weight where another tile covers them; at the image's own
    borders there is no other tile and the weight stays 1.
    """
    w = np.ones(tile, dtype=np.float32)
    if overlap <= 0:
        return w
    dead = overlap // 4
    rising = np.linspace(0.0, 1.0, overlap - dead, dtype=np.float32) if overlap > 1 else np.ones(1, np.float32)
    ramp = np.concatenate([np.zeros(dead, np.float32), rising])  # (a one-pixel overlap: both tiles count)
    if not first:
        w[:overlap] = ramp
    if not last:
        w[-overlap:] = np.minimum(w[-overlap:], ramp[::-1])
    return w


def run_tiled(image: np.ndarray, run: Runner, tile: int, overlap: int, multiple: int) -> dict[str, np.ndarray]:
    """Run ``run`` over (H, W) ``image`` tile by tile and blend the (1, C, h, w) outputs.

    Returns
    -------
    dict
        Each output as (C, H, W) float32, cropped to the input's size.
    """
    padded, (h, w) = pad_to_multiple(image, multiple)
    ph, pw = padded.shape
    if ph <= tile and pw <= tile:
        out = run(padded[None, None])
        return {k: v[0, :, :h, :w] for k, v in out.items()}
    tile = max(tile // multiple * multiple, multiple)
    if not 0 <= overlap <= tile - multiple:
        raise ValueError(f"a tile overlap of {overlap} px needs tiles of at least {overlap + multiple} px (got {tile})")
    # A side shorter than the tile is taken whole (the graph's height and width are dynamic), so a tall
    # or wide frame is never padded out to a square tile with made-up pixels.
    tile_h, tile_w = min(tile, ph), min(tile, pw)
    step = max(tile - overlap, multiple)
    sums: dict[str, np.ndarray] = {}
    weight = np.zeros((ph, pw), dtype=np.float32)
    rows, cols = _starts(ph, tile_h, step), _starts(pw, tile_w, step)
    for i, r in enumerate(rows):
        wr = _window(tile_h, overlap, i == 0, i == len(rows) - 1)
        for j, c in enumerate(cols):
            win = np.outer(wr, _window(tile_w, overlap, j == 0, j == len(cols) - 1))
            out = run(np.ascontiguousarray(padded[None, None, r : r + tile_h, c : c + tile_w]))
            for k, v in out.items():
                acc = sums.setdefault(k, np.zeros((v.shape[1], ph, pw), dtype=np.float32))
                acc[:, r : r + tile_h, c : c + tile_w] += v[0] * win
            weight[r : r + tile_h, c : c + tile_w] += win
    return {k: (v / weight)[:, :h, :w] for k, v in sums.items()}
