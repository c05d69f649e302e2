"""U-Net width and depth: accuracy against speed, measured side by side in one run.

Trains one member of each size on the same simulated data and steps, exports each as a
one-member ONNX graph, and reports column F1, vacancy and dopant F1 on unseen frames
together with the onnxruntime latency of one member on a 512 x 512 frame at 0.02 nm/px
(341 x 341 native pixels).  Prints JSON.

    python benchmarks/unet_sizes.py [--steps 600] [--frames 24] [--sizes 4x2,8x3,12x3,16x3]
        [--seeds 0] [--samples 1500] [--bias-frames 0]

A size is ``WIDTHxDEPTH`` (channels doubling per level) or the channels per level joined by
``-``, full resolution first (``8-16-48-96``).  ``--seeds`` trains each size once per member
seed; ``--bias-frames`` fits the class decision rule (recall at precision >= 0.9, as the
bundled model's export does) instead of plain argmax, and adds precision and recall.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from report import emit

from models.segmenter import Segmenter


def _latency(segmenter: Segmenter, runs: int = 15) -> float:
    from simulators import ImagingParams, ScanRequest, Specimen, SpecimenConfig, render_frame

    frame = render_frame(
        Specimen(SpecimenConfig(seed=5)),
        ScanRequest(x_nm=3, y_nm=-4, fov_nm=10.24),
        ImagingParams(track_dose=False),
        np.random.default_rng(0),
    )
    segmenter.segment(frame.image, frame.pixel_size_nm)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        segmenter.segment(frame.image, frame.pixel_size_nm)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def parse_size(text: str) -> tuple[int, ...]:
    """``8x3`` -> (8, 16, 32, 64); ``8-16-48-96`` -> (8, 16, 48, 96): channels per level."""
    if "x" in text:
        width, depth = (int(v) for v in text.split("x"))
        return tuple(width * 2**i for i in range(depth + 1))
    return tuple(int(v) for v in text.split("-"))


def measure(widths: tuple[int, ...], args: argparse.Namespace, seed: int, run: Path) -> dict[str, object]:
    from models.training.evaluate import detection_metrics, eval_frames, evaluate_frame
    from models.training.export import export_run
    from models.training.train import TrainConfig, train_ensemble

    config = TrainConfig(
        members=1,
        steps=args.steps,
        width=widths[0],
        depth=len(widths) - 1,
        widths=widths,
        samples=args.samples,
        data_seed=args.data_seed,
        seed=seed,
    )
    t0 = time.perf_counter()
    train_ensemble(run, config, threads=os.cpu_count())
    train_s = time.perf_counter() - t0
    export_run(run, run / "m.onnx", calibration_frames=0, bias_frames=args.bias_frames)
    segmenter = Segmenter(run / "m.json", "cpu", threads=2)
    figures = detection_metrics([evaluate_frame(segmenter, f) for f in eval_frames(args.frames, shifted=False)])
    keys = ["columns_f1", "columns_rmse_over_nn", "vacancy_f1", "dopant_f1"]
    if args.bias_frames:
        keys += ["vacancy_precision", "vacancy_recall", "dopant_precision", "dopant_recall"]
    return {
        "widths": list(widths),
        "width": widths[0],
        "depth": len(widths) - 1,
        "seed": seed,
        "train_s": train_s,
        "member_latency_ms_512": _latency(segmenter),
        **{k: figures[k] for k in keys},
        "onnx_mb": (run / "m.onnx").stat().st_size / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--sizes", default="4x2,8x3,12x3,16x3")
    parser.add_argument("--data-seed", type=int, default=5)
    parser.add_argument("--seeds", default="0", help="member seeds, comma-separated (one member per size and seed)")
    parser.add_argument("--samples", type=int, default=1500)
    parser.add_argument("--bias-frames", type=int, default=0, help="fit the decision rule (0: plain argmax)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # One dataset for every size: simulate once, then share the file.
        from models.training.train import TrainConfig, load_or_make_data

        first = work / "data"
        first.mkdir()
        load_or_make_data(first, TrainConfig(samples=args.samples, data_seed=args.data_seed), progress=False)
        rows = []
        for widths in sizes:
            for seed in seeds:
                run = work / f"{'-'.join(map(str, widths))}_seed{seed}"
                run.mkdir()
                os.link(first / "data.npz", run / "data.npz")
                rows.append(measure(widths, args, seed, run))
    result = {
        "benchmark": "unet_sizes",
        "steps": args.steps,
        "samples": args.samples,
        "eval_frames": args.frames,
        "decision_rule": f"fitted on {args.bias_frames} frames" if args.bias_frames else "argmax",
        "sizes": rows,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
