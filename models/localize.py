"""Atom columns from per-pixel class probabilities: labelling, centre of mass, class, uncertainty.

The foreground probability ``f = 1 - p_background`` is thresholded at ``t``; each
connected region is one column.  Its position is the centre of mass of ``f - t``
over the region (sub-pixel; the weight vanishes at the region's edge, so the pixel
grid does not pull it), its class the non-background class with the largest summed
probability, its confidence that class's mean probability over the region, and
its uncertainty the mean mutual information over the region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Atoms:
    """Located atom columns (all shape (n,)).

    Attributes
    ----------
    row, col : float64, sub-pixel position (pixels of the map they were found in).
    class_id : int64, index into the model's classes (never background).
    confidence : float32, mean probability of the assigned class over the column's region.
    uncertainty : float32, mean mutual information over the region (nats).
    """

    row: np.ndarray
    col: np.ndarray
    class_id: np.ndarray
    confidence: np.ndarray
    uncertainty: np.ndarray

    def __len__(self) -> int:
        return len(self.row)


def localize(
    mean_probs: np.ndarray,
    mutual_info: np.ndarray,
    threshold: float = 0.5,
    min_area_px: int = 2,
    class_bias: np.ndarray | None = None,
) -> Atoms:
    """Find atom columns in (C, H, W) mean probabilities (class 0 is background).

    Parameters
    ----------
    mean_probs
        (C, H, W) float32 ensemble-mean class probabilities.
    mutual_info
        (H, W) float32 epistemic uncertainty map.
    threshold
        Foreground probability above which a pixel belongs to a column.
    min_area_px
        Regions smaller than this are dropped as noise.
    class_bias
        (C-1,) factors on each non-background class's summed probability before the
        argmax: the decision rule calibrated at export (the network was trained with
        class weights, which shift its probabilities towards the rare defect classes).
    """
    fg = 1.0 - mean_probs[0]
    core, n = ndimage.label(fg > threshold)
    if n == 0:
        e = np.empty(0)
        return Atoms(e, e, e.astype(np.int64), e.astype(np.float32), e.astype(np.float32))
    inside = np.flatnonzero(core)  # only labelled pixels enter the per-region sums
    label = core.ravel()[inside]

    def per_region(values: np.ndarray) -> np.ndarray:
        return np.bincount(label, weights=values.ravel()[inside], minlength=n + 1)[1:]

    area = np.bincount(label, minlength=n + 1)[1:].astype(np.float64)
    # Weights fall to zero at the threshold, so where the region's edge cuts the
    # pixel grid does not pull the centre (a plain centre of mass of the region would).
    rows, cols = np.divmod(inside, fg.shape[1])
    weight = fg.ravel()[inside] - threshold
    mass = np.bincount(label, weights=weight, minlength=n + 1)[1:]
    row = np.bincount(label, weights=weight * rows, minlength=n + 1)[1:] / mass
    col = np.bincount(label, weights=weight * cols, minlength=n + 1)[1:] / mass
    sums = np.stack([per_region(mean_probs[c]) for c in range(1, mean_probs.shape[0])])
    scored = sums if class_bias is None else sums * np.asarray(class_bias, dtype=np.float64)[:, None]
    best = np.argmax(scored, axis=0)
    confidence = sums[best, np.arange(n)] / area
    uncertainty = per_region(mutual_info) / area
    keep = area >= min_area_px
    return Atoms(
        row[keep],
        col[keep],
        (best + 1)[keep].astype(np.int64),
        confidence[keep].astype(np.float32),
        uncertainty[keep].astype(np.float32),
    )
