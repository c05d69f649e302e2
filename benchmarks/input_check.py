"""The featureless-frame check (models/input_check.py) against planted truth, noise and real images.

Prints JSON.  Every simulator frame is segmented once; its columns are matched to the planted ones
with the check applied (a featureless frame has no columns, the default) and without it, so the two
sets of figures come from the same segmentations.  Pure-noise frames (white, blurred, filtered along the
fast scan, with scan-line offsets; over the simulator's range of pixel sizes and doses) should be
flagged (a fast-scan filter's anisotropic envelope often is not: see the README); the abTEM frames and
the real microscope images under shared/data/real none.

    python benchmarks/input_check.py [--frames 104] [--seed 7100001] [--noise-frames 100] [--out FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from report import ABTEM, SHARED_DATA, emit, provenance

#: Real images of the shared data with their pixel size where the file records none (nm).
REAL_IMAGES = (
    "real/atomap/test_ADF_cropped.hdf5",
    "real/atomap/test_ABF_cropped.hdf5",
    "real/openNCEM/16_STOimage_1.ser",
    "real/TEMUL/Au_NP_Atom_Lattice.hdf5",
)
FALLBACK_PIXEL_NM = 0.02


def simulator(segmenter: Any, frames: int, seed: int, shifted: bool) -> dict[str, Any]:
    """Flag rate, and detection figures with and without the check, on ``frames`` evaluation frames."""
    from models.training.evaluate import detection_metrics, eval_frames, match_frame

    gated, ungated, flagged_f1, snr = [], [], [], []
    for frame in eval_frames(frames, shifted, seed=seed):
        seg = segmenter.segment(frame.image, frame.pixel_size_nm)
        raw = match_frame(frame, seg, segmenter.atoms(seg))  # (the segmenter keeps featureless frames' columns)
        ungated.append(raw)
        gated.append(match_frame(frame, seg, segmenter.atoms(seg, keep_featureless=False)) if seg.featureless else raw)
        snr.append(seg.input_check.peak_snr)
        if seg.featureless:
            flagged_f1.append(detection_metrics([raw])["columns_f1"])
    keys = ("columns_f1", "columns_precision", "columns_recall", "vacancy_precision", "vacancy_recall")
    keys += ("dopant_precision", "dopant_recall")
    with_check, without = detection_metrics(gated), detection_metrics(ungated)
    return {
        "frames": frames,
        "flagged": len(flagged_f1),
        "flagged_columns_f1_without_check": [round(f, 3) for f in flagged_f1],
        "peak_snr_percentiles_5_50_95": [round(float(v), 1) for v in np.nanpercentile(snr, [5, 50, 95])],
        "with_check": {k: with_check[k] for k in keys},
        "without_check": {k: without[k] for k in keys},
    }


def noise(segmenter: Any, count: int, seed: int) -> dict[str, Any]:
    """Frames of noise alone: how many are flagged, and how many columns the ensemble finds in them unchecked.

    White (Gaussian, Poisson), blurred (Gaussian, 0.5 to 1.5 px), filtered along the fast scan (0.5 to
    1.5 px) and with scan-line offsets (0.1 to 1 times the noise): what a blanked beam's frame holds.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for kind in ("gaussian", "poisson", "blurred", "fast_scan", "row_offsets"):
        flagged, columns = 0, []
        for _ in range(count // 5):
            px = float(rng.uniform(0.008, 0.03))
            side = int(rng.choice([256, 512]))
            if kind == "poisson":
                image = rng.poisson(np.exp(rng.uniform(np.log(0.05), np.log(50))), (side, side)).astype(np.uint16)
            else:
                image = rng.normal(rng.uniform(-100, 100), rng.uniform(0.1, 10), (side, side))
            if kind == "blurred":
                image = ndimage.gaussian_filter(image, rng.uniform(0.5, 1.5))
            elif kind == "fast_scan":  # a detector amplifier's response along the fast scan
                image = ndimage.gaussian_filter1d(image, rng.uniform(0.5, 1.5), axis=1)
            elif kind == "row_offsets":  # scan-line jitter
                image = image + rng.normal(0, rng.uniform(0.1, 1.0) * image.std(), (side, 1))
            seg = segmenter.segment(image, px)
            flagged += seg.featureless
            columns.append(len(segmenter.atoms(seg)))
        median = float(np.median(columns))
        out[kind] = {"frames": count // 5, "flagged": flagged, "columns_without_check_median": median}
    return out


def references(segmenter: Any) -> dict[str, Any]:
    """The check's figures on the abTEM frames (noisy and clean) and the real images: none should be flagged."""
    from models.io import read_image
    from models.training.reference import load_reference

    out: dict[str, Any] = {}
    for path in sorted(ABTEM.glob("*.npz")):
        ref = load_reference(str(path))
        for name, image in (("noisy", ref.image_noisy), ("clean", ref.image)):
            out[f"abtem/{path.stem}_{name}"] = segmenter.segment(image, ref.pixel_size_nm).input_check.summary()
    for rel in REAL_IMAGES:
        if (SHARED_DATA / rel).exists():
            loaded = read_image(SHARED_DATA / rel)
            seg = segmenter.segment(loaded.image, loaded.pixel_size_nm or FALLBACK_PIXEL_NM)
            out[rel] = seg.input_check.summary()
    return out


def abtem_draws(seed: int, draws: int = 8, doses: tuple[float, ...] = (2e3, 5e3, 1e4, 2e4)) -> dict[str, Any]:
    """Poisson draws of each abTEM image at doses (e/A^2) down to a fifth of the quality benchmark's lowest:
    how many are flagged, and the lowest peak over its threshold."""
    from models.input_check import check_input
    from models.training.reference import draw_at_dose, load_reference

    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for path in sorted(ABTEM.glob("*.npz")):
        ref = load_reference(str(path))
        for dose in doses:
            checks = [check_input(draw_at_dose(ref, dose, rng), ref.pixel_size_nm) for _ in range(draws)]
            out[f"{path.stem}@{dose:g}"] = {
                "draws": draws,
                "flagged": sum(c.featureless for c in checks),
                "lowest_peak_over_threshold": round(min(c.peak_snr / c.peak_threshold for c in checks), 2),
            }
    return out


def main() -> None:
    from models.segmenter import DEFAULT_MODEL, Segmenter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--frames", type=int, default=104, help="simulator frames per set (in distribution, shifted)")
    parser.add_argument("--seed", type=int, default=7100001, help="seed of the simulator frame stream")
    parser.add_argument("--noise-frames", type=int, default=100, help="in all, split over five kinds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    segmenter = Segmenter(args.model, "cpu", keep_featureless=True)
    result: dict[str, Any] = {"benchmark": "input_check", **provenance(args.model), "seed": args.seed}
    result["simulator"] = simulator(segmenter, args.frames, args.seed, shifted=False)
    result["simulator_shifted"] = simulator(segmenter, args.frames, args.seed, shifted=True)
    result["noise"] = noise(segmenter, args.noise_frames, args.seed)
    result["references"] = references(segmenter)
    if ABTEM.exists():
        result["abtem_draws"] = abtem_draws(args.seed)
    emit(result, args.out)


if __name__ == "__main__":
    main()
