"""Shared output of the benchmark scripts: JSON on stdout, and optionally in a file."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_MODEL = ROOT / "models" / "weights" / "stem_ensemble.json"
#: The shared data beside the checkout (real images, abTEM frames); never copied into the repository.
SHARED_DATA = ROOT.parent / "shared" / "data"
#: The abTEM multislice frames with planted truth.
ABTEM = SHARED_DATA / "sim" / "abtem"


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN or infinite float, at any depth of dicts, lists and tuples, made None.

    JSON has no NaN or Infinity: ``json.dumps`` would write them as bare tokens that strict parsers refuse.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        return finite_or_none(value.item())  # numpy scalars
    return value


def emit(result: dict[str, Any], out: str | Path | None) -> None:
    """Print ``result`` as indented JSON and, when ``out`` is given, write the same text there.

    Non-finite numbers are written as ``null`` (valid JSON; see :func:`finite_or_none`).
    """
    text = json.dumps(finite_or_none(result), indent=2, allow_nan=False)
    if out:
        Path(out).write_text(text)
    print(text)


def provenance(model: Path = BUNDLED_MODEL) -> dict[str, str]:
    """When the measurement was made and of which model: the UTC date, the manifest and its ONNX sha256."""
    model = Path(model).resolve()
    manifest = json.loads(model.read_text())
    shown = model.relative_to(ROOT) if model.is_relative_to(ROOT) else model
    return {
        "date": datetime.datetime.now(datetime.UTC).date().isoformat(),
        "model": str(shown),
        "model_onnx_sha256": str(manifest["onnx_sha256"]),
    }


def own_peak_rss_mb() -> tuple[float, str]:
    """This process's peak resident memory (MB) and where it was read.

    ``VmHWM`` from /proc/self/status: the high-water mark of this process's own address space, which
    starts afresh at exec.  Where /proc is absent, ``ru_maxrss`` (on Linux it carries the peak of the
    process that forked this one, so it can overstate a child's).
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, "VmHWM"
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (2**20 if sys.platform == "darwin" else 1024), "ru_maxrss"


def machine() -> dict[str, Any]:
    """What a timing ran on: platform, cores, Python, and the CPU's model and vector extensions (Linux)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # (what it may use)
    out: dict[str, Any] = {"platform": platform.platform(), "cpus": cpus, "python": platform.python_version()}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        text = cpuinfo.read_text()
        names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
        flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
        out["cpu"] = names[0] if names else platform.processor()
        wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
        out["vector_extensions"] = [f for f in wanted if f in flags]
    return out
