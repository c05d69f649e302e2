"""Which uncertainty map flags wrong or missed atoms?  AUROCs of four maps, two ways of scoring.

Maps: mutual information (epistemic: the members disagree; what ``Atoms.uncertainty`` reports),
predictive entropy over the classes (total), the binary entropy of the foreground probability
(is there a column here at all; what ``Atoms.presence_entropy`` reports), and the members'
standard deviation of that probability (epistemic, on the foreground decision alone).  Scoring:

* ``evaluation``: as ``models.training.evaluate`` scores the bundled model (a detected atom gets the
  map's mean over its region, a missed column the map's largest value within 2 native pixels).  For
  mutual information and the foreground binary entropy these are ``match_frame``'s own per-atom values
  (``pred_uncertainty`` / ``pred_presence``, ``truth_mi`` / ``truth_presence``); the other two maps are
  averaged over the localiser's regions (its labelling and minimum area) in the same way;
* ``same_disc``: every detected atom and every missed column gets the map's mean over the same small
  disc (radius 2 native pixels) at its position, so neither kind is favoured by the statistic.

Prints JSON.  Quality figures, not speed: run on any machine.

    python benchmarks/uncertainty_scores.py [--frames 24] [--model PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from report import emit
from scipy import ndimage

from models.segmenter import Segmentation, Segmenter
from models.training import evaluate as ev
from models.uncertainty import binary_entropy


def _maps(seg: Segmentation) -> dict[str, np.ndarray]:
    foreground = 1.0 - seg.mean_probs[0]
    return {
        "mutual_information": seg.mutual_info,
        "predictive_entropy": seg.entropy,
        "foreground_binary_entropy": binary_entropy(foreground),
        "foreground_member_std": np.sqrt(seg.variance[0]),
    }


def _disc(radius_px: int = 2) -> np.ndarray:
    yy, xx = np.mgrid[-radius_px : radius_px + 1, -radius_px : radius_px + 1]
    disc = (yy**2 + xx**2 <= radius_px**2 + 0.5).astype(float)
    return disc / disc.sum()


#: Maps whose "evaluation" scores match_frame already holds: map -> (detected atoms, missed columns).
_FROM_MATCH = {
    "mutual_information": ("pred_uncertainty", "truth_mi"),
    "foreground_binary_entropy": ("pred_presence", "truth_presence"),
}


def _region_means(seg: Segmentation, field: np.ndarray, n_atoms: int, min_area_px: int = 2) -> np.ndarray:
    """(n_atoms,) mean of ``field`` over each located atom's region, as :func:`models.localize.localize` labels them."""
    labels, n = ndimage.label(1.0 - seg.mean_probs[0] > 0.5)
    index = np.arange(1, n + 1)
    if n == 0:
        return np.zeros(0)
    area = ndimage.sum_labels(np.ones(labels.shape), labels, index)
    means = ndimage.mean(field, labels, index)[area >= min_area_px]
    if len(means) != n_atoms:
        raise RuntimeError("these regions are not the localiser's: its labelling has changed")
    return means


def score_frames(segmenter: Segmenter, frames: int, shifted: bool, margin_px: int = 4) -> dict[str, float]:
    """AUROC of each map under each scoring, over ``frames`` evaluation frames."""
    scores: dict[str, list[np.ndarray]] = {}
    wrong: list[np.ndarray] = []
    disc = _disc()
    for frame in ev.eval_frames(frames, shifted=shifted):
        seg = segmenter.segment(frame.image, frame.pixel_size_nm)
        atoms = segmenter.atoms(seg)
        result = ev.match_frame(frame, seg, atoms, margin_px)
        missed = result.truth_match < 0
        truth = frame.truth.columns
        pred_rc = ev.native_pixel(seg, atoms.row[result.pred_index], atoms.col[result.pred_index])
        missed_index = result.truth_index[missed]
        miss_rc = ev.native_pixel(seg, truth.row[missed_index], truth.col[missed_index])
        for name, field in _maps(seg).items():
            if name in _FROM_MATCH:
                pred_field, truth_field = _FROM_MATCH[name]
                at_pred, at_miss = getattr(result, pred_field), getattr(result, truth_field)[missed]
            else:
                at_pred = _region_means(seg, field, len(atoms))[result.pred_index]
                at_miss = ndimage.maximum_filter(field, size=5)[miss_rc]
            scores.setdefault(f"{name}/evaluation", []).append(np.concatenate([at_pred, at_miss]))
            smooth = ndimage.convolve(field.astype(np.float64), disc, mode="nearest")
            scores.setdefault(f"{name}/same_disc", []).append(np.concatenate([smooth[pred_rc], smooth[miss_rc]]))
        wrong.append(np.concatenate([ev.wrong_predictions(result), np.ones(int(missed.sum()), dtype=bool)]))
    positive = np.concatenate(wrong)
    out = {"atoms_and_missed": float(len(positive)), "wrong_or_missed": float(positive.sum())}
    out.update({key: round(ev.auroc(np.concatenate(v), positive), 3) for key, v in scores.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24, help="frames per set (clean and shifted)")
    parser.add_argument("--model", type=Path, default=None, help="manifest (default: the bundled model)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    segmenter = Segmenter(args.model, "cpu")
    emit(
        {
            "benchmark": "uncertainty_scores",
            "frames_per_set": args.frames,
            "shifted": score_frames(segmenter, args.frames, shifted=True),
            "clean": score_frames(segmenter, args.frames, shifted=False),
            "target": "shifted set, per-atom uncertainty AUROC >= 0.8 (issue 3)",
        },
        args.out,
    )


if __name__ == "__main__":
    main()
