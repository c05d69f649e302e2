"""Frame-to-command latency of the loop: 512 x 512 simulated frames on CPU, broken down by stage.

For an adaptive policy the next command waits for the analysis of the current frame: the latency from
a frame's arrival to the next command sent is what the instrument idles.  Goal: under 10 % of the frame
time at 10 us dwell (512 * 512 * 10 us = 2.6 s, so 260 ms).  Prints JSON.

    python benchmarks/loop.py [--steps 30] [--policies defects,bayes] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

from report import emit

from agent.config import load_config
from agent.experiment import Experiment
from models.segmenter import Segmenter

FRAME_TIME_MS = 512 * 512 * 10.0 * 1e-3


def measure(policy: str, steps: int, segmenter: Segmenter) -> dict[str, object]:
    """One run of ``steps`` frames; per-stage latency percentiles (ms)."""
    config = load_config(None, {"policy": policy, "steps": steps, "seed": 1, "simulator.specimen_seed": 1})
    t0 = time.perf_counter()
    with Experiment(config, segmenter=segmenter) as experiment:
        experiment.run()
        latency = experiment.loop.timings.summary()
    wall = time.perf_counter() - t0
    total = latency.get("frame_to_command", {})
    return {
        "frame_to_command_ms": total,
        "fraction_of_frame_time_p50": round(total.get("p50", float("nan")) / FRAME_TIME_MS, 3),
        "stages_ms": latency,
        "wall_s": round(wall, 1),
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--policies", default="defects,bayes")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from simulators.allocator import tune_allocator

    tune_allocator()  # as autoscope run does with the in-process simulator
    segmenter = Segmenter(providers="cpu")
    results = {p: measure(p, args.steps, segmenter) for p in args.policies.split(",")}
    out = {
        "benchmark": "loop",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "setup": "in-process simulated MoS2 instrument, 512 x 512 fields at 0.02 nm/px, bundled 5-member ensemble, "
        "onnxruntime CPU; frame_to_command = frame received -> next scan command sent (perception, policy, guard, "
        "record, send)",
        "policies": results,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "goal": f"frame_to_command p50 < {0.1 * FRAME_TIME_MS:.0f} ms (10 % of a 512 x 512 frame at 10 us dwell)",
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()
