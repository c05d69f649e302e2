"""What the graph rewrites of ``models.training.graph`` buy: the bundled members exported both ways, timed side by side.

Both graphs are exported now from ``models/weights/stem_ensemble.members.pt``: once as ``torch.onnx``
writes it, once with the rewrites ``autoscope export`` applies (``Softmax`` over the class axis
written out as reductions).  They run on the same native-size input (a 512 x 512 frame at 0.02 nm/px
resamples to 344 x 344) in one process, alternating which goes first; the ratio is the median of the
per-iteration ratios.  Also reported: the largest difference between their outputs, and the share of
the unrewritten graph's kernel time spent in ``Softmax`` (onnxruntime's profiler, a separate run).

    python benchmarks/graph_rewrite.py [--threads 2] [--runs 60] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
from report import emit, machine, provenance

from models.segmenter import DEFAULT_MODEL
from models.training.ensemble import EnsembleWithUncertainty
from models.training.export import export_onnx, members_from_bundle

NATIVE = (344, 344)


def _session(path: Path, threads: int, profile: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = str(path.with_suffix(""))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _kernel_shares(path: Path, threads: int, x: np.ndarray, runs: int = 5) -> dict[str, float]:
    """Share of the graph's kernel time per operator type, from onnxruntime's profiler."""
    session = _session(path, threads, profile=True)
    for _ in range(runs):
        session.run(None, {"image": x})
    events = json.loads(Path(session.end_profiling()).read_text())
    spent: Counter[str] = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            spent[event["args"]["op_name"]] += event["dur"]
    total = sum(spent.values())
    return {op: round(us / total, 4) for op, us in spent.most_common(6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    members = members_from_bundle(DEFAULT_MODEL.with_suffix(".members.pt"))
    ensemble = EnsembleWithUncertainty(members).eval()
    multiple = 2 ** members[0].depth
    x = np.random.default_rng(0).random((1, 1, *NATIVE), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"as_exported": Path(tmp) / "plain.onnx", "rewritten": Path(tmp) / "rewritten.onnx"}
        export_onnx(ensemble, paths["as_exported"], multiple, rewrite=False)
        export_onnx(ensemble, paths["rewritten"], multiple)
        sessions = {k: _session(p, args.threads) for k, p in paths.items()}
        outputs = {k: s.run(None, {"image": x}) for k, s in sessions.items()}
        worst = max(float(np.abs(a - b).max()) for a, b in zip(*outputs.values(), strict=True))
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for i in range(args.runs + 3):
            for k in list(sessions)[:: 1 if i % 2 else -1]:
                t0 = time.perf_counter()
                sessions[k].run(None, {"image": x})
                if i >= 3:  # three warm-up rounds
                    times[k].append(1e3 * (time.perf_counter() - t0))
        shares = _kernel_shares(paths["as_exported"], args.threads, x)
    ratios = np.array(times["as_exported"]) / np.array(times["rewritten"])
    emit(
        {
            "benchmark": "graph_rewrite",
            **provenance(),
            "machine": machine(),
            "native_input": list(NATIVE),
            "threads": args.threads,
            "runs": args.runs,
            "p50_ms": {k: round(float(np.median(v)), 2) for k, v in times.items()},
            "speedup_median_of_paired_ratios": round(float(np.median(ratios)), 3),
            "largest_output_difference": worst,
            "kernel_time_share_as_exported": shares,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
