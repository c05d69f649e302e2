"""Detection and uncertainty figures of matched frames (:class:`FrameResult`, made in :mod:`models.training.evaluate`).

Counts per frame (:func:`frame_counts`, which the bootstrap resamples), precision, recall, F1 and the
localisation RMSE over them (:func:`detection_metrics`), and AUROCs of per-atom uncertainties for
wrong-or-missed detections (:func:`uncertainty_auroc`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from simulators import ColumnClass, DefectKind

#: Where each per-atom uncertainty lives in a FrameResult: (detected atoms, planted columns).
_MEASURES = {"mutual_info": ("pred_uncertainty", "truth_mi"), "presence": ("pred_presence", "truth_presence")}


@dataclass(frozen=True)
class FrameResult:
    """Matched predictions of one frame."""

    lattice: str
    pixel_size_nm: float
    truth_class: np.ndarray  # (n_truth,) ColumnClass of each planted column
    truth_kind: np.ndarray  # (n_truth,) DefectKind
    truth_match: np.ndarray  # (n_truth,) index of the matched prediction or -1
    truth_mi: np.ndarray  # (n_truth,) largest mutual information within 2 native pixels of the planted column
    truth_presence: np.ndarray  # (n_truth,) the same for the presence entropy
    pred_class: np.ndarray  # (n_pred,)
    pred_match: np.ndarray  # (n_pred,) index of the matched truth or -1
    pred_uncertainty: np.ndarray  # (n_pred,)
    pred_presence: np.ndarray  # (n_pred,)
    distance_nn: np.ndarray  # (n_matched,) match distances / NN spacing
    ood_score: float
    truth_index: np.ndarray  # (n_truth,) index of each counted planted column in the frame's truth columns
    pred_index: np.ndarray  # (n_pred,) index of each counted prediction in the located atoms


def wrong_predictions(result: FrameResult) -> np.ndarray:
    """Which located atoms are false detections or carry the wrong class."""
    return np.asarray(result.pred_class != lookup(result.truth_class, result.pred_match))


def lookup(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[index]`` where ``index >= 0``, else -1 (for unmatched entries)."""
    out = np.full(len(index), -1, dtype=np.int64)
    ok = index >= 0
    out[ok] = values[index[ok]]
    return out


def prf(n_match: int, n_truth: int, n_pred: int) -> dict[str, float]:
    """Precision, recall, F1 and the truth count from match counts (NaN where undefined)."""
    recall = n_match / n_truth if n_truth else float("nan")
    precision = n_match / n_pred if n_pred else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if n_truth and n_pred and precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "n_truth": float(n_truth)}


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for ``positive`` (ties count half)."""
    pos, neg = score[positive], score[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


_DEFECT_CLASSES = (ColumnClass.VACANCY, ColumnClass.DOPANT)
_KINDS = tuple(k for k in DefectKind if k is not DefectKind.NONE)


def frame_counts(results: Sequence[FrameResult]) -> dict[str, np.ndarray]:
    """Per-frame counts behind the detection figures: name -> (n_frames,) float64.

    ``columns_truth/pred/match``, ``distance_sq`` (summed squared match distance over the NN spacing),
    ``<class>_truth/pred/hit`` for vacancy and dopant, ``kind_<label>_truth/hit`` for every defect kind.
    """
    names = ["columns_truth", "columns_pred", "columns_match", "distance_sq"]
    names += [f"{c.name.lower()}_{n}" for c in _DEFECT_CLASSES for n in ("truth", "pred", "hit")]
    names += [f"kind_{k.label}_{n}" for k in _KINDS for n in ("truth", "hit")]
    counts = np.zeros((len(results), len(names)))
    for row, r in zip(counts, results, strict=True):
        predicted_at_truth = lookup(r.pred_class, r.truth_match)
        values = [len(r.truth_class), len(r.pred_class), (r.truth_match >= 0).sum(), (r.distance_nn**2).sum()]
        for cls in _DEFECT_CLASSES:
            planted = r.truth_class == cls
            values += [planted.sum(), (r.pred_class == cls).sum(), (planted & (predicted_at_truth == cls)).sum()]
        for kind in _KINDS:
            planted = r.truth_kind == kind
            values += [planted.sum(), (planted & (predicted_at_truth == kind.column_class)).sum()]
        row[:] = values
    return {name: counts[:, i] for i, name in enumerate(names)}


def detection_metrics(results: list[FrameResult]) -> dict[str, float]:
    """Column F1 and RMSE, defect recall/precision per class and per kind (from :func:`frame_counts`)."""
    sums = {k: float(v.sum()) for k, v in frame_counts(results).items()}

    def count(name: str) -> int:
        return int(sums[name])

    out: dict[str, float] = {}
    for k, v in prf(count("columns_match"), count("columns_truth"), count("columns_pred")).items():
        out[f"columns_{k}"] = v
    matched = count("columns_match")
    out["columns_rmse_over_nn"] = float(np.sqrt(sums["distance_sq"] / matched)) if matched else float("nan")
    for cls in _DEFECT_CLASSES:
        name = cls.name.lower()
        for k, v in prf(count(f"{name}_hit"), count(f"{name}_truth"), count(f"{name}_pred")).items():
            out[f"{name}_{k}"] = v
    for kind in _KINDS:
        truth_n = count(f"kind_{kind.label}_truth")
        if truth_n:
            out[f"kind_{kind.label}_recall"] = count(f"kind_{kind.label}_hit") / truth_n
            out[f"kind_{kind.label}_n"] = float(truth_n)
    return out


def uncertainty_auroc(results: list[FrameResult], measure: str = "mutual_info") -> float:
    """AUROC of a per-atom uncertainty for wrong (false, misclassified) or missed detections.

    ``measure``: ``mutual_info`` (``Atoms.uncertainty``) or ``presence`` (``Atoms.presence_entropy``).
    """
    if measure not in _MEASURES:
        raise ValueError(f"unknown measure {measure!r}: mutual_info or presence")
    pred_field, truth_field = _MEASURES[measure]
    scores, wrong = [], []
    for r in results:
        scores.append(getattr(r, pred_field))
        wrong.append(wrong_predictions(r))
        missed = r.truth_match < 0
        scores.append(getattr(r, truth_field)[missed])
        wrong.append(np.ones(int(missed.sum()), dtype=bool))
    return auroc(np.concatenate(scores), np.concatenate(wrong))


#: Figures that :func:`evaluate` also gives a 95 % bootstrap interval (``<name>_ci95_low`` / ``_high``).
INTERVAL_KEYS = (
    "columns_f1",
    "columns_rmse_over_nn",
    "vacancy_precision",
    "vacancy_recall",
    "dopant_precision",
    "dopant_recall",
)
