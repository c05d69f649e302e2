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

    python benchmarks/segment.py [--model models/weights/stem_ensemble.json] [--threads 2] [--runs 40]
        [--providers cpu|cuda|tensorrt]

With a GPU provider the eager members run on the GPU as well (outputs copied back to numpy,
as a predictor returning arrays would), so the ratio compares like with like.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from report import emit

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "weights" / "stem_ensemble.json"


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    return {
        "p50_ms": float(np.median(ms)),
        "p99_ms": float(np.percentile(ms, 99)),
        "min_ms": float(ms.min()),
        "n": len(ms),
    }


def _timed(fn, runs: int) -> list[float]:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
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


def _members(model: Path, device: str = "cpu") -> list:  # type: ignore[type-arg]
    import torch

    from models.training.unet import UNet

    bundle = torch.load(model.with_suffix(".members.pt"), weights_only=False)
    members = []
    for state in bundle["members"]:
        net = UNet(bundle["n_classes"], bundle["width"], bundle["depth"], widths=bundle.get("widths", ()))
        net.load_state_dict(state)
        members.append(net.eval().to(device))
    return members


def compare(model: Path, threads: int, runs: int, providers: str = "cpu") -> dict[str, object]:
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

    onnx = _stats(_timed(lambda: segmenter.model.run(x), runs))
    torch_eager = _stats(_timed(eager, runs))
    seg = segmenter.segment(image, px)
    frame = _stats(_timed(lambda: segmenter.atoms(segmenter.segment(image, px)), runs))
    locate = _stats(_timed(lambda: segmenter.atoms(seg), runs))
    # A 512 x 512 map at the native sampling: a 512 x 512 frame at 0.03 nm/px.
    seg512 = segmenter.segment(resample(image, (512, 512)), segmenter.manifest.native_pixel_size_nm)
    locate512 = _stats(_timed(lambda: segmenter.atoms(seg512), runs))
    return {
        "native_input": [h, w],
        "onnx_one_graph": onnx,
        "torch_eager_sequential": torch_eager,
        "speedup_onnx_vs_eager_p50": torch_eager["p50_ms"] / onnx["p50_ms"],
        "frame_512_at_0.02nm_end_to_end": frame,
        "localize_only": locate,
        "localize_512x512_map": locate512,
        "providers": segmenter.providers,
    }


def peak_memory(model: Path, threads: int, providers: str = "cpu") -> float:
    """Peak RSS (MB) of a fresh process that segments one 512 x 512 frame (no torch loaded)."""
    code = (
        f"import resource, sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'benchmarks')!r}];"
        "from benchmarks.segment import _frame; from models.segmenter import Segmenter;"
        f"s = Segmenter({str(model)!r}, {providers!r}, threads={threads});"
        "img, px = _frame(); s.atoms(s.segment(img, px));"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--providers", default="cpu", choices=["cpu", "cuda", "tensorrt"])
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from simulators.allocator import tune_allocator

    tune_allocator()  # as autoscope run and autoscope segment do
    result: dict[str, object] = {
        "benchmark": "segment",
        "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "providers_requested": args.providers,
            "python": platform.python_version(),
        },
        "targets": {"speedup_onnx_vs_eager": ">= 3", "frame_p50_ms": "< 260", "localize_ms": "< 10"},
    }
    result.update(compare(args.model, args.threads, args.runs, args.providers))
    result["peak_rss_mb_segment_process"] = peak_memory(args.model, args.threads, args.providers)
    result["benchmark_process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    emit(result, args.out)


if __name__ == "__main__":
    main()
