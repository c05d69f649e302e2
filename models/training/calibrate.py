"""Fitting the class decision rule of an exported ensemble on validation frames.

Training weights the rare defect classes up, so the network's probabilities lean
towards them: taken at face value, vacancies are found at high recall but low
precision.  For each defect class we choose a factor on its summed probability
(the localiser's argmax rule) that maximises that class's F1 on validation frames
from a seed stream used neither in training nor in evaluation.
"""

from __future__ import annotations

import numpy as np

from models.segmenter import Segmenter
from models.training.evaluate import detection_metrics, eval_frames, match_frame
from simulators import CLASS_NAMES

#: Seed stream of validation frames (not training, not evaluation).
VALIDATION_SEED = 3_000_017
_GRID = np.geomspace(0.05, 2.0, 24)


def fit_decision_bias(segmenter: Segmenter, frames: int = 24, pixels: int = 256) -> list[float]:
    """Per non-background class factors maximising each defect class's F1 on validation frames."""
    data = [
        (f, segmenter.segment(f.image, f.pixel_size_nm))
        for f in eval_frames(frames, shifted=False, pixels=pixels, seed=VALIDATION_SEED)
    ]
    n = len(segmenter.manifest.classes) - 1
    bias = np.ones(n)

    def f1(b: np.ndarray, name: str) -> float:
        results = [match_frame(f, seg, segmenter.atoms(seg, b.tolist())) for f, seg in data]
        value = detection_metrics(results).get(f"{name}_f1", 0.0)
        return value if np.isfinite(value) else 0.0

    for k in range(1, n):  # class index k+1; the atom class (k = 0) keeps factor 1
        name = CLASS_NAMES[k + 1]
        scores = []
        for g in _GRID:
            trial = bias.copy()
            trial[k] = g
            scores.append(f1(trial, name))
        bias[k] = float(_GRID[int(np.argmax(scores))])
    return bias.tolist()
