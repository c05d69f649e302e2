"""Carbon vacancies in graphene, by frame dose: several models beside the ideal observer.

The graphene frames of ``benchmarks/quality.py``'s stream (every fourth frame; the others are drawn and
skipped, so the frames are the same ones) are read by the ideal observer
(:func:`models.training.ideal.site_posteriors`) and by each model's class shares in a Gaussian disc at
every planted column (as ``benchmarks/site_evidence.py``'s ``network`` observer reads them: the models
are handed the positions, so what is compared is how much vacancy evidence each reads from a column).
Each observer's threshold is its own operating point on the graphene columns (precision 0.9 over all
of them); printed is the recall it gives per dose band, on clean film and under contamination or in
holes separately.

    python benchmarks/graphene_vacancies.py MODEL [MODEL ...] [--frames 416] [--seed S] [--out F]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from report import emit
from site_evidence import MARGIN_PX, network_shares, on_clean_film

from models.segmenter import Segmenter
from models.training.evaluate import EVAL_SEED, away_from_edge, eval_specimen_frames
from models.training.ideal import recall_at_precision, site_posteriors
from simulators import ColumnClass

PRECISION = 0.9
#: Edges of the frame-dose bands, e/A^2 (the last band is open).
DOSE_EDGES_E_PER_A2 = (0.0, 2e4, 4e4, 8e4)


def collect(models: list[Segmenter], frames: int, seed: int) -> dict[str, np.ndarray]:
    """Per planted graphene column away from the edge: truth, dose, clean film, ideal and model vacancy scores."""
    rows: list[dict[str, np.ndarray]] = []
    for specimen, frame in eval_specimen_frames(frames, False, seed=seed):
        if frame.lattice != "graphene":
            continue
        ideal = site_posteriors(specimen, frame, MARGIN_PX)
        truth = frame.truth.columns.select(away_from_edge(frame.truth.columns, frame.image.shape, MARGIN_PX))
        row = {
            "vacancy": ideal.truth_class == ColumnClass.VACANCY,
            "dose": np.full(len(truth), frame.dose_e_per_a2),
            "clear": on_clean_film(frame, truth),
            "ideal": ideal.vacancy,
        }
        for i, model in enumerate(models):
            row[f"model_{i}"] = network_shares(model, frame, truth)[0][:, 1]
        rows.append(row)
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def by_dose(data: dict[str, np.ndarray], score: np.ndarray) -> dict[str, Any]:
    """Recall at the score's own operating point, per film state and dose band."""
    recall, threshold = recall_at_precision(score, data["vacancy"], PRECISION)
    called = score >= threshold
    band = np.searchsorted(DOSE_EDGES_E_PER_A2, data["dose"], side="right") - 1
    out: dict[str, Any] = {"recall_at_precision_0.9": recall}
    for film, where in (("clean_film", data["clear"]), ("contamination_or_hole", ~data["clear"])):
        for b, low in enumerate(DOSE_EDGES_E_PER_A2):
            here = data["vacancy"] & where & (band == b)
            if here.any():
                out.setdefault(film, {})[f"from_{low:g}"] = {"n": int(here.sum()), "recall": float(called[here].mean())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+", help="manifests of the models to read the columns with")
    parser.add_argument("--frames", type=int, default=416, help="frames of the stream (a quarter are graphene)")
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help="seed of the frame stream")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    segmenters = [Segmenter(m, "cpu") for m in args.models]
    data = collect(segmenters, args.frames, args.seed)
    result = {
        "benchmark": "graphene_vacancies",
        "frames": args.frames,
        "seed": args.seed,
        "n_carbon_vacancies": int(data["vacancy"].sum()),
        "dose_band_edges_e_per_a2": list(DOSE_EDGES_E_PER_A2),
        "ideal_observer": by_dose(data, data["ideal"]),
        "models": {
            f"{s.manifest.name} ({path})": by_dose(data, data[f"model_{i}"])
            for i, (s, path) in enumerate(zip(segmenters, args.models, strict=True))
        },
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
