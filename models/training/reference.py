"""Figures on independently simulated frames with exact columns (the abTEM .npz files in shared/).

The model never saw this simulator's image formation: these frames check that it does not just
fit ours.  A file holds one clean image and one Poisson draw; :func:`draw_at_dose` makes more draws
of the clean image, at any dose, so a comparison of models is not decided by one noise realisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from models.segmenter import Segmenter
from models.training.evaluate import away_from_edge, lookup, match_points, prf
from simulators import ColumnClass


def _reference_class(label: str) -> int:
    low = label.lower()
    if "vacancy" in low:
        return int(ColumnClass.VACANCY)
    if "dopant" in low:
        return int(ColumnClass.DOPANT)
    return int(ColumnClass.ATOM)


@dataclass(frozen=True)
class Reference:
    """An independently simulated frame with exact columns (the abTEM .npz files in shared/)."""

    image: np.ndarray  # clean intensity (fraction of the incident beam)
    image_noisy: np.ndarray  # the file's Poisson counts
    pixel_size_nm: float
    truth_rc: np.ndarray  # (n, 2) planted columns (row, col) in pixels, empty vacancy sites included
    truth_class: np.ndarray  # (n,) ColumnClass of each


def load_reference(path: str | Path) -> Reference:
    """Read a reference frame.

    Keys used: ``image``, ``image_noisy``, ``pixel_size_A``, ``col_rc_px``, ``col_label``, ``label_names``.
    """
    with np.load(path, allow_pickle=False) as z:
        names = [str(n) for n in z["label_names"]]
        return Reference(
            image=z["image"],
            image_noisy=z["image_noisy"],
            pixel_size_nm=float(z["pixel_size_A"]) / 10.0,
            truth_rc=z["col_rc_px"].astype(float),
            truth_class=np.array([_reference_class(names[int(k)]) for k in z["col_label"]]),
        )


def evaluate_reference(segmenter: Segmenter, path: str, noisy: bool = True, refine: bool = False) -> dict[str, float]:
    """Figures on the reference frame in ``path``: its noisy image, or the clean one (see :func:`score_reference`)."""
    ref = load_reference(path)
    return score_reference(segmenter, ref, ref.image_noisy if noisy else ref.image, refine)


def score_reference(segmenter: Segmenter, ref: Reference, image: np.ndarray, refine: bool = False) -> dict[str, float]:
    """Column and defect figures of ``image`` (a rendering of ``ref``: clean, or noise drawn at some dose).

    ``refine``: positions by Gaussian refinement on the image.  ``rmse_over_nn``: localisation error of
    the matched columns over the nearest-neighbour spacing.  Columns within half a spacing of the frame
    edge are neither required nor counted.
    """
    px, truth_rc, truth_class = ref.pixel_size_nm, ref.truth_rc, ref.truth_class
    seg = segmenter.segment(image, px)
    atoms = segmenter.atoms(seg)
    if refine:
        atoms = segmenter.refine(seg, image, atoms)
    # Nearest-neighbour spacing from the planted columns themselves.
    nn_px = float(np.median(cKDTree(truth_rc).query(truth_rc, k=2)[0][:, 1]))
    margin = 0.5 * nn_px  # columns cut by the frame edge are neither required nor counted
    pred_rc = np.column_stack([atoms.row, atoms.col])
    # Match everything, then count inside the margin: a column near it is counted (or not) once, by
    # where its planted position lies, however the prediction's position falls about the margin.
    truth_match, pred_match = match_points(truth_rc, pred_rc, nn_px / 2)
    inner_truth = away_from_edge(truth_rc, image.shape, margin)
    inner_pred = away_from_edge(pred_rc, image.shape, margin)
    counted = np.where(pred_match >= 0, inner_truth[np.maximum(pred_match, 0)], inner_pred)
    hits = inner_truth & (truth_match >= 0)
    out = prf(int(hits.sum()), int(inner_truth.sum()), int(counted.sum()))
    dist = np.hypot(*(truth_rc[hits] - pred_rc[truth_match[hits]]).T)
    out["rmse_over_nn"] = float(np.sqrt(np.mean(dist**2)) / nn_px) if hits.any() else float("nan")
    found = lookup(atoms.class_id, truth_match)
    planted = (truth_class != ColumnClass.ATOM) & inner_truth
    out["defects_found"] = float((planted & (found == truth_class)).sum())
    out["defects_planted"] = float(planted.sum())
    out["defects_predicted"] = float(((atoms.class_id != ColumnClass.ATOM) & counted).sum())
    out["ood_score"] = seg.ood_score
    return out


def draw_at_dose(ref: Reference, dose_e_per_a2: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts of the clean image at ``dose_e_per_a2`` (as the file's ``image_noisy`` was made).

    Raises
    ------
    ValueError
        For a dose that is not a positive finite number.
    """
    if not (np.isfinite(dose_e_per_a2) and dose_e_per_a2 > 0):
        raise ValueError(f"dose_e_per_a2 must be a positive number, got {dose_e_per_a2}")
    electrons_per_px = dose_e_per_a2 * (10.0 * ref.pixel_size_nm) ** 2
    return rng.poisson(np.clip(ref.image, 0.0, None) * electrons_per_px).astype(np.float32)
