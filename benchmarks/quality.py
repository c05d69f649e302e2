"""Segmentation quality against planted truth: our simulator (unseen seeds) and abTEM frames.

Prints JSON.  The simulator figures are the same as ``autoscope export --evaluation-frames``
stores in the manifest; the abTEM frames (shared/data/sim/abtem, an independent multislice
simulator) are the check that the model does not just fit our own image formation.

    python benchmarks/quality.py [--model models/weights/stem_ensemble.json] [--frames 52] [--seed S]

The main simulator figures come with 95 % intervals from resampling frames within each lattice
(``*_ci95_low/high``; the frames hold the four lattices in equal numbers by design).  Columns and
detections are matched over the whole frame, then counted inside the edge margin
(:func:`models.training.evaluate.match_frame`).
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from report import ABTEM, emit


def main() -> None:
    from models.segmenter import DEFAULT_MODEL, Segmenter
    from models.training.evaluate import (
        EVAL_SEED,
        detection_metrics,
        eval_frames,
        evaluate,
        evaluate_frame,
    )
    from models.training.reference import evaluate_reference

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--frames", type=int, default=52)
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help="seed of the frame stream")
    parser.add_argument("--abtem", type=Path, default=ABTEM)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    segmenter = Segmenter(args.model, "cpu")
    result: dict[str, object] = {
        "benchmark": "quality",
        "model": segmenter.manifest.name,
        "model_onnx_sha256": segmenter.manifest.onnx_sha256,
        "date": datetime.datetime.now(datetime.UTC).date().isoformat(),
        "seed": args.seed,
        "simulator": evaluate(segmenter, frames=args.frames, seed=args.seed),
    }
    refined = [evaluate_frame(segmenter, f, refine=True) for f in eval_frames(args.frames, False, seed=args.seed)]
    result["simulator_refined"] = {
        k: v for k, v in detection_metrics(refined).items() if k.startswith("columns_")
    }  # the same frames, positions by Gaussian refinement (autoscope segment --refine)
    if args.abtem.exists():
        result["abtem"] = {
            f"{p.stem}{suffix}{'_refined' if refine else ''}": evaluate_reference(segmenter, str(p), noisy, refine)
            for p in sorted(args.abtem.glob("*.npz"))
            for suffix, noisy in (("_noisy", True), ("_clean", False))
            for refine in (False, True)
        }
    emit(result, args.out)


if __name__ == "__main__":
    main()
