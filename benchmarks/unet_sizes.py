"""U-Net width and depth: accuracy against speed, measured side by side in one run.

Trains one member of each size on the same simulated data and steps, exports each as a
one-member ONNX graph, and reports column F1, vacancy and dopant F1 on unseen frames
together with the onnxruntime latency of one member on a 512 x 512 frame at 0.02 nm/px
(341 x 341 native pixels).  Prints JSON.

    python benchmarks/unet_sizes.py [--steps 600] [--frames 24] [--sizes 4x2,8x3,12x3,16x3]
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


def measure(width: int, depth: int, steps: int, frames: int, data_seed: int, work: Path) -> dict[str, float]:
    from models.training.evaluate import detection_metrics, eval_frames, evaluate_frame
    from models.training.export import export_run
    from models.training.train import TrainConfig, train_ensemble

    run = work / f"w{width}d{depth}"
    config = TrainConfig(members=1, steps=steps, width=width, depth=depth, samples=1500, data_seed=data_seed)
    t0 = time.perf_counter()
    train_ensemble(run, config, threads=os.cpu_count())
    train_s = time.perf_counter() - t0
    export_run(run, run / "m.onnx", calibration_frames=0)
    segmenter = Segmenter(run / "m.json", "cpu", threads=2)
    figures = detection_metrics([evaluate_frame(segmenter, f) for f in eval_frames(frames, shifted=False)])
    return {
        "width": width,
        "depth": depth,
        "train_s": train_s,
        "member_latency_ms_512": _latency(segmenter),
        "columns_f1": figures["columns_f1"],
        "vacancy_f1": figures["vacancy_f1"],
        "dopant_f1": figures["dopant_f1"],
        "onnx_mb": (run / "m.onnx").stat().st_size / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--sizes", default="4x2,8x3,12x3,16x3")
    parser.add_argument("--data-seed", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # One dataset for every size: simulate once, then share the file.
        from models.training.train import TrainConfig, load_or_make_data

        first = work / "data"
        first.mkdir()
        load_or_make_data(first, TrainConfig(samples=1500, data_seed=args.data_seed), progress=False)
        rows = []
        for width, depth in sizes:
            run = work / f"w{width}d{depth}"
            run.mkdir()
            os.link(first / "data.npz", run / "data.npz")
            rows.append(measure(width, depth, args.steps, args.frames, args.data_seed, work))
    result = {
        "benchmark": "unet_sizes",
        "steps": args.steps,
        "eval_frames": args.frames,
        "sizes": rows,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
