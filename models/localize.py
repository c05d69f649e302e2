"""Atom columns from per-pixel class probabilities: labelling, centre of mass, class, uncertainty.

The foreground probability ``1 - p_background`` is thresholded; each connected
region is one column.  Its position is the foreground-weighted centre of mass
over the region grown by a small rim (sub-pixel), its class the non-background class with the largest summed
probability, its confidence that class's mean probability over the region, and
its uncertainty the mean mutual information over the region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.segmentation import expand_labels


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
    rim_px: int = 2,
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
    rim_px
        Pixels added around each region for the centre of mass.
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
    index = np.arange(1, n + 1)
    area = ndimage.sum_labels(np.ones_like(fg), core, index)
    # Grow each region by a rim (without merging neighbours) so the centre of mass
    # sees the whole peak: a thresholded disc alone is biased by pixelation.
    labels = expand_labels(core, distance=rim_px)
    centres = np.array(ndimage.center_of_mass(fg, labels, index)).reshape(-1, 2)
    sums = np.stack([ndimage.sum_labels(mean_probs[c], core, index) for c in range(1, mean_probs.shape[0])])
    scored = sums if class_bias is None else sums * np.asarray(class_bias, dtype=np.float64)[:, None]
    best = np.argmax(scored, axis=0)
    confidence = sums[best, np.arange(n)] / area
    uncertainty = ndimage.mean(mutual_info, core, index)
    keep = area >= min_area_px
    return Atoms(
        centres[keep, 0],
        centres[keep, 1],
        (best + 1)[keep].astype(np.int64),
        confidence[keep].astype(np.float32),
        np.asarray(uncertainty)[keep].astype(np.float32),
    )
