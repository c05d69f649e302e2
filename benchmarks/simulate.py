"""Simulator speed: 512 x 512 frames at atomic resolution and low-magnification surveys.

Prints JSON.  Each configuration runs in a fresh single-threaded child process
(OMP/BLAS threads = 1), once with glibc's default allocator settings and once
with :func:`simulators.allocator.tune_allocator`, so both figures and their
ratio come from the same run on the same machine.

    python benchmarks/simulate.py [--frames 40] [--out [FILE]]

``--out`` alone writes benchmarks/results/simulate.json.  The JSON records the frame count, the date
and the machine.  Peak memory is each child's own high-water mark (``VmHWM``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from report import emit, machine, own_peak_rss_mb

LATTICES = ("MoS2", "WS2", "graphene", "SrTiO3")
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = "benchmarks/results/simulate.json"


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "min_ms": float(ms.min()),
        "n": len(ms),
    }


def _child(frames: int, tuned: bool) -> dict[str, object]:
    from simulators import ScanRequest, Specimen, SpecimenConfig, render_frame
    from simulators.allocator import tune_allocator

    applied = tune_allocator() if tuned else False
    rng = np.random.default_rng(0)
    out: dict[str, object] = {"allocator_tuned": applied}
    for lattice in LATTICES:
        specimen = Specimen(SpecimenConfig(seed=1, lattice=lattice))
        centers = rng.uniform(-100, 100, (frames, 2))
        render_frame(specimen, ScanRequest(x_nm=0, y_nm=0), rng=rng)  # warm imports and caches
        cold, warm = [], []
        for x, y in centers:
            scan = ScanRequest(x_nm=float(x), y_nm=float(y), fov_nm=10.24, rows=512, cols=512)
            t0 = time.perf_counter()
            render_frame(specimen, scan, rng=rng)  # new area: tiles generated
            t1 = time.perf_counter()
            render_frame(specimen, scan, rng=rng)  # same area again: tiles cached
            t2 = time.perf_counter()
            cold.append(t1 - t0)
            warm.append(t2 - t1)
        out[f"atomic_512_{lattice}_new_area"] = _stats(cold)
        out[f"atomic_512_{lattice}_revisit"] = _stats(warm)
        out[f"{lattice}_tile_cache_mb"] = specimen.cached_bytes / 2**20
    specimen = Specimen(SpecimenConfig(seed=1))
    survey = []
    for _ in range(max(frames // 4, 5)):
        t0 = time.perf_counter()
        render_frame(specimen, ScanRequest(fov_nm=200.0, rows=512, cols=512, dwell_us=1.0), rng=rng)
        survey.append(time.perf_counter() - t0)
    out["survey_200nm_512"] = _stats(survey)
    out["peak_rss_mb"], out["peak_rss_source"] = own_peak_rss_mb()
    return out


def _run_child(frames: int, tuned: bool) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--child", "tuned" if tuned else "default", "--frames", str(frames)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _across_rounds(children: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure of the children (one per round) as its median over the rounds."""
    out: dict[str, Any] = {}
    for key, value in children[0].items():
        if isinstance(value, dict):
            out[key] = {k: float(np.median([c[key][k] for c in children])) for k in value}
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(np.median([c[key] for c in children]))
        else:
            out[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3, help="child processes per allocator, alternating")
    parser.add_argument(
        "--out", type=Path, nargs="?", const=RESULTS / "simulate.json", default=None, help=f"(alone: {DEFAULT_OUT})"
    )
    parser.add_argument("--child", choices=("default", "tuned"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.frames, args.child == "tuned")))
        return
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for i in range(args.rounds):  # default and tuned children alternate, the first of each pair swapping
        for tuned_first in (i % 2 == 1, i % 2 == 0):
            runs[tuned_first].append(_run_child(args.frames, tuned_first))
    default, tuned = _across_rounds(runs[False]), _across_rounds(runs[True])
    key = "atomic_512_MoS2_new_area"
    ratios = [d[key]["median_ms"] / t[key]["median_ms"] for d, t in zip(runs[False], runs[True], strict=True)]
    result = {
        "benchmark": "simulate",
        "date": datetime.datetime.now(datetime.UTC).date().isoformat(),
        "frames": args.frames,
        "rounds": args.rounds,
        "timing": "one child process per allocator and round, the two alternating; figures: median over rounds",
        "machine": {**machine(), "threads": 1},
        "target": "512x512 atomic-resolution frame under 50 ms median on one core",
        "default_allocator": default,
        "tuned_allocator": tuned,
        "speedup_tuned_vs_default_MoS2": default[key]["median_ms"] / tuned[key]["median_ms"],
        "speedup_tuned_vs_default_MoS2_per_round": [round(r, 3) for r in ratios],
        "meets_target_tuned": all(v["median_ms"] < 50.0 for k, v in tuned.items() if k.startswith("atomic_512")),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
