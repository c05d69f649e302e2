"""Models on abTEM frames (an independent multislice simulator) over many noise draws and doses.

Each shared abTEM file holds one clean image and one Poisson draw; judging a model by that single
draw lets one noise realisation decide.  Here every model segments the same fresh draws of each clean
image (``--draws`` per dose, seeded), and the defect and column counts are summed per structure and
dose: defects found / planted, defects predicted (a prediction on a column that is no defect, or of
the wrong kind, counts as predicted but not found), column F1 and localisation RMSE over the
nearest-neighbour spacing.

    python benchmarks/abtem_doses.py models/weights/stem_ensemble.json [OTHER ...] [--doses 1e4,2e4,5e4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from report import ABTEM, emit


def _summed(rows: list[dict[str, float]]) -> dict[str, float]:
    found = sum(r["defects_found"] for r in rows)
    planted = sum(r["defects_planted"] for r in rows)
    predicted = sum(r["defects_predicted"] for r in rows)
    return {
        "draws": len(rows),
        "defects_found": found,
        "defects_planted": planted,
        "defects_predicted": predicted,
        "defect_recall": found / planted if planted else float("nan"),
        "defect_precision": found / predicted if predicted else float("nan"),
        "columns_f1_mean": float(np.mean([r["f1"] for r in rows])),
        "rmse_over_nn_mean": float(np.mean([r["rmse_over_nn"] for r in rows])),
    }


def main() -> None:
    from models.segmenter import Segmenter
    from models.training.reference import draw_at_dose, load_reference, score_reference

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+", help="manifests (.json) or models (.onnx)")
    parser.add_argument("--doses", default="1e4,2e4,5e4", help="electrons per square angstrom, comma-separated")
    parser.add_argument("--draws", type=int, default=16, help="noise draws per structure and dose")
    parser.add_argument("--abtem", type=Path, default=ABTEM)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    doses = [float(d) for d in args.doses.split(",")]
    if not all(np.isfinite(d) and d > 0 for d in doses):
        raise SystemExit(f"--doses must be positive numbers, got {args.doses!r}")
    refs = {p.stem: load_reference(p) for p in sorted(args.abtem.glob("*.npz"))}
    if not refs:
        raise SystemExit(f"no abTEM .npz files in {args.abtem}")
    result: dict[str, object] = {"benchmark": "abtem_doses", "doses_e_per_a2": doses, "draws": args.draws}
    models = []
    for path in args.models:
        segmenter = Segmenter(path, "cpu")
        table: dict[str, dict[str, float]] = {}
        for name, ref in refs.items():
            for i, dose in enumerate(doses):  # draw (seed, i): the same noise for every model
                rows = [
                    score_reference(segmenter, ref, draw_at_dose(ref, dose, np.random.default_rng([seed, i])))
                    for seed in range(args.draws)
                ]
                table[f"{name}@{dose:g}"] = _summed(rows)
        models.append({"model": str(path), "sha256": segmenter.manifest.onnx_sha256, "figures": table})
    result["models"] = models
    emit(result, args.out)


if __name__ == "__main__":
    main()
