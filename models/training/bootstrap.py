"""How sure a quality figure is: bootstrap intervals over evaluation frames.

Defects cluster by frame (a low-dose graphene frame holds many of the hard carbon
vacancies), so the frame, not the column, is the unit that is resampled.  Every
figure of :func:`models.training.evaluate.detection_metrics` that is a ratio of
per-frame counts is recomputed from the counts of each resample, which makes a
thousand resamples of a few hundred frames cost milliseconds.  Two models
evaluated on the same frames are compared *paired*: one resample of frames
serves both, so the interval of the difference excludes the frame-to-frame
spread that both share.  Where the evaluation design fixes the mix of frames (the
evaluation frames hold the four lattices in equal numbers), frames are resampled within
each stratum (``strata``), so every resample keeps that mix and the intervals hold only
the spread the design leaves open.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from models.training.metrics import FrameResult, frame_counts

#: Figures with an interval: name -> (numerator count, denominator count); F1 and RMSE are derived.
_RATIOS = {
    "columns_precision": ("columns_match", "columns_pred"),
    "columns_recall": ("columns_match", "columns_truth"),
    "vacancy_precision": ("vacancy_hit", "vacancy_pred"),
    "vacancy_recall": ("vacancy_hit", "vacancy_truth"),
    "dopant_precision": ("dopant_hit", "dopant_pred"),
    "dopant_recall": ("dopant_hit", "dopant_truth"),
}


def figures_from_sums(sums: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Detection figures from summed counts (arrays of any shape: one entry per resample)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {name: sums[num] / sums[den] for name, (num, den) in _RATIOS.items()}
        for prefix in ("columns", "vacancy", "dopant"):
            p, r = out[f"{prefix}_precision"], out[f"{prefix}_recall"]
            out[f"{prefix}_f1"] = 2 * p * r / (p + r)
        out["columns_rmse_over_nn"] = np.sqrt(sums["distance_sq"] / sums["columns_match"])
        for name in sums:
            if name.startswith("kind_") and name.endswith("_truth"):
                stem = name[: -len("_truth")]
                out[f"{stem}_recall"] = sums[f"{stem}_hit"] / sums[name]
    return out


def resample_weights(
    n: int, resamples: int, rng: np.random.Generator, strata: Sequence[Hashable] | None = None
) -> np.ndarray:
    """(resamples, n) multiplicity of each of ``n`` frames in each bootstrap resample.

    Without ``strata`` the ``n`` frames are drawn with replacement from all of them; with ``strata``
    (one label per frame) each stratum's frames are drawn from that stratum only, as many as it holds,
    so every resample keeps the per-stratum counts.
    """
    if strata is None:
        groups = [np.arange(n)]
    else:
        if len(strata) != n:
            raise ValueError(f"{len(strata)} strata labels for {n} frames: give one label per frame")
        code: dict[Hashable, int] = {}
        codes = np.array([code.setdefault(label, len(code)) for label in strata])
        groups = [np.flatnonzero(codes == c) for c in range(len(code))]
    weights = np.zeros((resamples, n))
    for row in weights:
        for members in groups:
            row += np.bincount(members[rng.integers(0, len(members), len(members))], minlength=n)
    return weights


def bootstrap_intervals(
    results: Sequence[FrameResult],
    baseline: Sequence[FrameResult] | None = None,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    strata: Sequence[Hashable] | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of each detection figure, resampling frames with replacement.

    Parameters
    ----------
    results
        One model's matched frames.
    baseline
        Another model's results on the same frames, in the same order: the intervals are then
        of ``figure(results) - figure(baseline)``, with one resample of frames shared by both.
    resamples, level, seed
        Bootstrap resamples, central coverage of the interval, seed of the resampling.
    strata
        One label per frame (e.g. its lattice): frames are then resampled within each label, keeping
        the number of frames of each (:func:`resample_weights`).  None: from all frames freely.

    Returns
    -------
    dict
        figure name -> (low, high).  A resample in which a figure is undefined (no frame drawn holds that
        defect kind, or no defect of a class was called) is left out of that figure's percentiles, which
        narrows the intervals of rare kinds slightly; figures undefined in every resample are left out.

    Raises
    ------
    ValueError
        With no frames, a baseline or strata of another length, or ``level`` outside (0, 1).
    """
    if not results:
        raise ValueError("bootstrap_intervals needs at least one evaluated frame")
    if baseline is not None and len(baseline) != len(results):
        raise ValueError(f"the baseline has {len(baseline)} frames, the results {len(results)}: pair the same frames")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    weights = resample_weights(len(results), resamples, np.random.default_rng(seed), strata)

    def resampled(frames: Sequence[FrameResult]) -> dict[str, np.ndarray]:
        return figures_from_sums({k: weights @ v for k, v in frame_counts(frames).items()})

    figures = resampled(results)
    if baseline is not None:
        base = resampled(baseline)
        figures = {k: v - base[k] for k, v in figures.items()}
    tail = 100 * (1 - level) / 2
    out = {}
    for name, values in figures.items():
        finite = values[np.isfinite(values)]
        if len(finite):
            low, high = np.percentile(finite, [tail, 100 - tail])
            out[name] = (float(low), float(high))
    return out
