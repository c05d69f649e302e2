"""Segmentation speed: one-graph ONNX ensemble against eager torch members, and frame latency.

Prints JSON.  In one run, on the same native-sampling input:

* ``onnx_one_graph``: the exported ensemble (all members, mean and uncertainty) in one
  onnxruntime call;
* ``torch_eager_sequential``: the same members run one after another in eager torch,
  softmax outputs moved to numpy and reduced there (the way AtomAI's ensemble predictor
  works), with the reference numpy uncertainty;

then the end-to-end latency of a 512 x 512 frame at 0.02 nm/px (resampling, ensemble,
localisation), localisation alone, and the peak memory of a process doing only that.  The
allocator is tuned as in ``autoscope run`` and ``autoscope segment``
(:func:`simulators.allocator.tune_allocator`).

The ONNX graph, the eager members and the end-to-end frame are timed side by side: each iteration
runs all three, in an order that rotates from one iteration to the next, so a slow spell of the
machine falls on all of them; the speed-up is also given as the median of the per-iteration ratios.
The first ``--warmup`` iterations are run but not counted.  ``p99_ms`` is given only from 100
samples on; with fewer, ``max_ms`` is the tail figure (a 99th percentile of 40 samples would be an
interpolation between the two largest).  Peak memory is the child process's own high-water mark
(``VmHWM`` of /proc/self/status): ``ru_maxrss`` of a child started from this process would include
this process's peak, which Linux carries across fork and exec.

    python benchmarks/segment.py [--model models/weights/stem_ensemble.json] [--threads 2] [--runs 40]
        [--warmup 3] [--providers cpu|cuda|tensorrt] [--out FILE]

With a GPU provider the eager members run on the GPU as well (outputs copied back to numpy,
as a predictor returning arrays would), so the ratio compares like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from report import emit, machine, own_peak_rss_mb, provenance

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "weights" / "stem_ensemble.json"


#: Fewest samples from which a 99th percentile is reported; below, the maximum stands in, named so.
P99_MIN_SAMPLES = 100


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    out = {"p50_ms": float(np.median(ms)), "min_ms": float(ms.min()), "max_ms": float(ms.max()), "n": len(ms)}
    if len(ms) >= P99_MIN_SAMPLES:
        out["p99_ms"] = float(np.percentile(ms, 99))
    return out


def _timed(fn: Callable[[], object], runs: int, warmup: int = 1) -> list[float]:
    """``runs`` durations (s) of ``fn`` after ``warmup`` uncounted calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def side_by_side(fns: dict[str, Callable[[], object]], runs: int, warmup: int = 1) -> dict[str, list[float]]:
    """Durations (s) of each of ``fns``, all run once per iteration in an order rotating by one each time.

    The first ``warmup`` iterations are run but not counted.
    """
    names = list(fns)
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(warmup + runs):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            fns[name]()
            if i >= warmup:
                out[name].append(time.perf_counter() - t0)
    return out


def _frame() -> tuple[np.ndarray, float]:
    from simulators import ImagingParams, ScanRequest, Specimen, SpecimenConfig, render_frame

    frame = render_frame(
        Specimen(SpecimenConfig(seed=5)),
        ScanRequest(x_nm=3, y_nm=-4, fov_nm=10.24),
        ImagingParams(track_dose=False),
        np.random.default_rng(0),
    )
    return frame.image, frame.pixel_size_nm


def _members(model: Path, device: str = "cpu") -> list[Any]:
    from models.training.export import members_from_bundle

    return [m.to(device) for m in members_from_bundle(model.with_suffix(".members.pt"))]


def compare(model: Path, threads: int, runs: int, providers: str = "cpu", warmup: int = 3) -> dict[str, object]:
    """The timings of the module docstring, ``runs`` counted iterations after ``warmup`` uncounted ones."""
    import torch

    from models.preprocess import normalize, resample, resampled_shape
    from models.segmenter import Segmenter
    from models.uncertainty import ensemble_uncertainty

    torch.set_num_threads(threads)
    segmenter = Segmenter(model, providers, threads=threads)
    device = "cpu" if providers == "cpu" else "cuda"
    image, px = _frame()
    shape = resampled_shape(image.shape, px, segmenter.manifest.native_pixel_size_nm)
    native = normalize(resample(image, shape))
    m = segmenter.manifest.input_multiple
    h, w = (-(-shape[0] // m) * m, -(-shape[1] // m) * m)
    x = np.zeros((1, 1, h, w), np.float32)
    x[0, 0, : shape[0], : shape[1]] = native
    members = _members(model, device)

    def eager() -> None:
        with torch.no_grad():
            image = torch.from_numpy(x).to(device)
            probs = [torch.softmax(net(image), dim=1)[0].cpu().numpy() for net in members]
        ensemble_uncertainty(np.stack(probs))

    seg = segmenter.segment(image, px)
    times = side_by_side(
        {
            "onnx": lambda: segmenter.model.run(x),
            "eager": eager,
            "frame": lambda: segmenter.atoms(segmenter.segment(image, px)),
        },
        runs,
        warmup,
    )
    onnx, torch_eager, frame = _stats(times["onnx"]), _stats(times["eager"]), _stats(times["frame"])
    ratios = np.array(times["eager"]) / np.array(times["onnx"])
    locate = _stats(_timed(lambda: segmenter.atoms(seg), runs, warmup))
    # A 512 x 512 map at the native sampling: a 512 x 512 frame at 0.03 nm/px.
    seg512 = segmenter.segment(resample(image, (512, 512)), segmenter.manifest.native_pixel_size_nm)
    locate512 = _stats(_timed(lambda: segmenter.atoms(seg512), runs, warmup))
    return {
        "native_input": [h, w],
        "onnx_one_graph": onnx,
        "torch_eager_sequential": torch_eager,
        "speedup_onnx_vs_eager_p50": torch_eager["p50_ms"] / onnx["p50_ms"],
        "speedup_onnx_vs_eager_median_of_paired_ratios": float(np.median(ratios)),
        "frame_512_at_0.02nm_end_to_end": frame,
        "localize_only": locate,
        "localize_512x512_map": locate512,
        "providers": segmenter.providers,
    }


def peak_memory(model: Path, threads: int, providers: str = "cpu") -> tuple[float, str]:
    """Peak RSS (MB) of a fresh process that segments one 512 x 512 frame (no torch loaded), and its source.

    The child reads its own high-water mark (:func:`report.own_peak_rss_mb`), not ``ru_maxrss``, which it
    would inherit from this process.
    """
    code = (
        f"import json, sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'benchmarks')!r}];"
        "from benchmarks.segment import _frame; from report import own_peak_rss_mb;"
        "from models.segmenter import Segmenter;"
        f"s = Segmenter({str(model)!r}, {providers!r}, threads={threads});"
        "img, px = _frame(); s.atoms(s.segment(img, px));"
        "print(json.dumps(own_peak_rss_mb()))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    mb, source = json.loads(done.stdout.strip().splitlines()[-1])
    return float(mb), str(source)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3, help="iterations run first and not counted")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--providers", default="cpu", choices=["cpu", "cuda", "tensorrt"])
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from simulators.allocator import tune_allocator

    tune_allocator()  # as autoscope run and autoscope segment do
    result: dict[str, object] = {
        "benchmark": "segment",
        **provenance(args.model),
        "machine": {**machine(), "threads": args.threads, "providers_requested": args.providers},
        "targets": {"speedup_onnx_vs_eager": ">= 3", "frame_p50_ms": "< 260", "localize_ms": "< 10"},
        "timing": f"onnx, eager and end-to-end frame side by side, order rotating per iteration; {args.warmup} "
        f"warm-up iterations not counted; p99_ms only from {P99_MIN_SAMPLES} samples on, else max_ms",
    }
    result.update(compare(args.model, args.threads, args.runs, args.providers, args.warmup))
    child_mb, child_source = peak_memory(args.model, args.threads, args.providers)
    result["peak_rss_mb_segment_process"] = child_mb
    result["peak_rss_source"] = child_source
    result["benchmark_process_peak_rss_mb"] = own_peak_rss_mb()[0]
    emit(result, args.out)


if __name__ == "__main__":
    main()
