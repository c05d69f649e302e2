"""Two or more segmentation models on the same simulator frames, with paired bootstrap intervals.

The first model is the baseline.  For each model: its detection figures on the pooled frames and a
95 % interval from resampling frames (within each lattice, as the frames were drawn); for every other
model, the interval of its difference from the baseline with one resample of frames shared by both
(:mod:`models.training.bootstrap`).  Each figure
says which way is better (``better``: ``higher``, or ``lower`` for the localisation error).  A candidate
replaces the bundled model only where the interval of the difference it is meant to improve lies on the
better side of zero, no other figure's interval lies wholly on the worse side, and it does no worse on
the abTEM frames (``benchmarks/abtem_doses.py``).

The default frames (416 frames of 256 x 256 from seed stream 7200001, all four lattices in turn, the
sampling, dose and probe ranges of ``benchmarks/quality.py``) are neither the 52 frames whose figures
the manifests record nor the 416 frames (seed 7100001) on which the README reports quality, so a model
is not chosen on the frames that then report its quality.

    python benchmarks/compare_models.py models/weights/stem_ensemble.json runs/cand/cand.onnx [--frames 416]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from report import emit

from models.training.evaluate import INTERVAL_KEYS

#: Figures reported (the interval of every figure is computed; these are the ones printed): the main ones
#: the manifest gives intervals for, then the defect kinds where recall is lost.
KEYS = (
    *INTERVAL_KEYS,
    "kind_carbon_vacancy_recall",
    "kind_oxygen_vacancy_recall",
    "kind_chalcogen_single_vacancy_recall",
    "kind_dopant_light_recall",
    "kind_dopant_heavy_recall",
)


def rounded_figures(figures: dict[str, float], intervals: dict[str, tuple[float, float]]) -> dict[str, object]:
    return {
        k: {
            "value": round(figures[k], 6),
            "ci95": [round(v, 6) for v in intervals[k]],
            "better": "lower" if k == "columns_rmse_over_nn" else "higher",
        }
        for k in KEYS
        if k in intervals
    }


def main() -> None:
    from models.segmenter import Segmenter
    from models.training.bootstrap import bootstrap_intervals
    from models.training.evaluate import FrameResult, detection_metrics, eval_frames, evaluate_frame

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "models", type=Path, nargs="+", help="manifests (.json) or models (.onnx); the first is the baseline"
    )
    parser.add_argument("--frames", type=int, default=416)
    parser.add_argument("--seed", type=int, default=7_200_001, help="seed of the frame stream (default: 7200001)")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    frames = list(eval_frames(args.frames, shifted=False, seed=args.seed))
    results: list[list[FrameResult]] = []
    models: list[dict[str, object]] = []
    for path in args.models:
        segmenter = Segmenter(path, "cpu")
        start = time.perf_counter()
        results.append([evaluate_frame(segmenter, f) for f in frames])
        models.append({"model": str(path), "name": segmenter.manifest.name, "sha256": segmenter.manifest.onnx_sha256})
        models[-1]["seconds"] = round(time.perf_counter() - start, 1)
    strata = [f.lattice for f in frames]  # the frames hold the lattices in fixed numbers: resample within each
    for entry, res in zip(models, results, strict=True):
        intervals = bootstrap_intervals(res, resamples=args.resamples, strata=strata)
        entry["figures"] = rounded_figures(detection_metrics(res), intervals)
    base = detection_metrics(results[0])
    for entry, res in zip(models[1:], results[1:], strict=True):
        paired = bootstrap_intervals(res, baseline=results[0], resamples=args.resamples, strata=strata)
        point = {k: v - base[k] for k, v in detection_metrics(res).items() if k in paired}
        entry["minus_baseline"] = rounded_figures(point, paired)
    emit({"benchmark": "compare_models", "frames": args.frames, "seed": args.seed, "models": models}, args.out)


if __name__ == "__main__":
    main()
