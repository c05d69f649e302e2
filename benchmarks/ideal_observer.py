"""How much defect recall the evaluation frames hold: the ideal observer beside the model.

For the 52 evaluation frames of ``benchmarks/quality.py`` (the same seeds, the same columns away
from the frame edge), the ideal observer of :mod:`models.training.ideal` knows everything the
simulator knows except each site's state, and ranks every planted column by its posterior
probability of being a vacancy (a dopant).  Its best pooled recall at precision >= 0.9 is the
most any detector of that class can reach on these frames.  Printed beside it: the model's
precision and recall per class and its recall per defect kind, from the same frames, at its
fitted decision rule and at the rule's factor that is best for these frames (the model's
counterpart of the ideal observer's best threshold).

    python benchmarks/ideal_observer.py [--model models/weights/stem_ensemble.json] [--frames 52] [--seed S]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from report import emit

from models.training.evaluate import EVAL_SEED, detection_metrics, eval_specimen_frames
from models.training.ideal import SitePosteriors, recall_at_precision, site_posteriors
from simulators import ColumnClass, DefectKind

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "weights" / "stem_ensemble.json"
PRECISION = 0.9
#: The evaluation frames' mean defect rate (each frame's is drawn uniformly from 0.01 to 0.05): the
#: prior of an ideal observer that is not told the frame's own rate.
MEAN_DEFECT_RATE = 0.03


def _bound(sites: list[tuple[str, float, SitePosteriors]], cls: ColumnClass) -> dict[str, object]:
    """The ideal observer's recall at the required precision, pooled, and where it is lost."""
    name = cls.name.lower()
    truth = np.concatenate([s.truth_class for _, _, s in sites]) == cls
    kind = np.concatenate([s.truth_kind for _, _, s in sites])
    score = np.concatenate([getattr(s, name) for _, _, s in sites])
    lattice = np.concatenate([[lat] * len(s.truth_class) for lat, _, s in sites])
    dose = np.concatenate([[d] * len(s.truth_class) for _, d, s in sites])
    recall, threshold = recall_at_precision(score, truth, PRECISION)
    called = score >= threshold
    out: dict[str, object] = {
        "n_planted": int(truth.sum()),
        f"recall_at_precision_{PRECISION}": recall,
        "precision_there": float((called & truth).sum() / max(called.sum(), 1)),
        "recall_of_bayes_decision": float((truth & (score > 0.5)).sum() / max(truth.sum(), 1)),
    }
    out["recall_by_kind"] = {
        k.label: float(called[kind == k].mean()) for k in DefectKind if k.column_class == cls and (kind == k).any()
    }
    by_lattice = {}
    for lat in np.unique(lattice):
        sel = (lattice == lat) & truth
        if sel.any():
            low = sel & (dose < np.median(np.unique(dose[lattice == lat])))
            by_lattice[str(lat)] = {
                "n": int(sel.sum()),
                "recall": float(called[sel].mean()),
                "recall_below_median_dose": float(called[low].mean()) if low.any() else float("nan"),
                "recall_above_median_dose": float(called[sel & ~low].mean()) if (sel & ~low).any() else float("nan"),
            }
    out["by_lattice"] = by_lattice
    return out


def _flat_prior_recall(sites: list[SitePosteriors]) -> dict[str, float]:
    """Recall at the required precision of the ideal observer with every site's prior at the mean rate."""
    out = {"defect_rate": MEAN_DEFECT_RATE}
    for cls in (ColumnClass.VACANCY, ColumnClass.DOPANT):
        truth = np.concatenate([s.truth_class for s in sites]) == cls
        score = np.concatenate([getattr(s, cls.name.lower()) for s in sites])
        out[f"{cls.name.lower()}_recall_at_precision_{PRECISION}"] = recall_at_precision(score, truth, PRECISION)[0]
    return out


def _model_figures(model: Path, frames: int, seed: int) -> dict[str, float]:
    """The model's figures at its fitted decision rule, and at the factor best for these very frames.

    The second is the model's counterpart of the ideal observer's figure (which also takes the best
    threshold on these frames): the most recall at precision >= 0.9 that any factor on the export's
    grid gives each defect class here.
    """
    import numpy as np

    from models.segmenter import Segmenter
    from models.training.calibrate import GRID, choose_operating_point, sweep_factor
    from models.training.evaluate import eval_frames, match_frame

    segmenter = Segmenter(model, "cpu")
    data = [(f, segmenter.segment(f.image, f.pixel_size_nm)) for f in eval_frames(frames, shifted=False, seed=seed)]
    figures = detection_metrics([match_frame(f, seg, segmenter.atoms(seg)) for f, seg in data])
    keep = ("vacancy_precision", "vacancy_recall", "dopant_precision", "dopant_recall")
    out = {k: v for k, v in figures.items() if k in keep or (k.startswith("kind_") and k.endswith("_recall"))}
    bias = np.array(segmenter.manifest.decision_bias or [1.0] * (len(segmenter.manifest.classes) - 1))
    for k, cls in ((1, ColumnClass.VACANCY), (2, ColumnClass.DOPANT)):
        scores = sweep_factor(segmenter, data, bias, k)
        best = choose_operating_point(scores, PRECISION)
        name = cls.name.lower()
        out[f"{name}_precision_at_best_factor_here"] = float(scores[best, 0])
        out[f"{name}_recall_at_best_factor_here"] = float(scores[best, 1])
        out[f"{name}_best_factor_here"] = float(GRID[best])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--frames", type=int, default=52)
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help="seed of the frame stream")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    frames = eval_specimen_frames(args.frames, False, seed=args.seed)
    sites, flat = [], []
    for specimen, frame in frames:
        sites.append((frame.lattice, frame.dose_e_per_a2, site_posteriors(specimen, frame)))
        flat.append(site_posteriors(specimen, frame, defect_rate=MEAN_DEFECT_RATE))
    result: dict[str, object] = {
        "benchmark": "ideal_observer",
        "frames": args.frames,
        "seed": args.seed,
        "required_precision": PRECISION,
        "ideal_observer": {c.name.lower(): _bound(sites, c) for c in (ColumnClass.VACANCY, ColumnClass.DOPANT)},
        "ideal_observer_not_told_the_frame_defect_rate": _flat_prior_recall(flat),
        "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
        "model_figures": _model_figures(args.model, args.frames, args.seed),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
