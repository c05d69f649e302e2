"""``autoscope sessions inspect DIR [--json]``: what a recorded session holds."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add ``sessions`` to ``sub``."""
    p = sub.add_parser("sessions", help="inspect recorded sessions")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    inspect = actions.add_parser("inspect", help="summarise a session directory")
    inspect.add_argument("directory", type=Path)
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(handler=_inspect)
    imp = actions.add_parser("import", help="build a session from images recorded elsewhere")
    imp.add_argument("images", nargs="+", type=Path, help="images in any format autoscope segment reads")
    imp.add_argument("--positions", type=Path, required=True, help="CSV: image,x_nm,y_nm[,pixel_size_nm,...]")
    imp.add_argument("--out", type=Path, required=True, help="the new session directory")
    imp.set_defaults(handler=_import)


def _import(args: argparse.Namespace) -> int:
    from agent.importer import import_session

    n = import_session(args.images, args.positions, args.out)
    print(f"imported {n} frames into {args.out}")
    return 0


def summarise(directory: Path) -> dict[str, Any]:
    """Counts of records by type, the start and stop records, frames, and any damage."""
    from drivers.recording import read_session

    result = read_session(directory)
    types = Counter(str(r.get("type")) for r in result.records)
    start = next((r for r in result.records if r.get("type") == "start"), None)
    stop = next((r for r in reversed(result.records) if r.get("type") == "stop"), None)
    return {
        "directory": str(directory),
        "records": len(result.records),
        "by_type": dict(sorted(types.items())),
        "frames": len(result.frames),
        "frame_shapes": sorted({tuple(f.header.shape) for f in result.frames}),
        "start": start,
        "stop": stop,
        "counters": stop.get("counters") if stop else None,
        "complete": result.complete,
        "valid_bytes": result.valid_bytes,
        "file_bytes": result.file_bytes,
        "problem": result.problem,
    }


def _flat(values: Any) -> str:
    """``a 1, b.c 2``: nested counters on one line."""
    if not isinstance(values, dict):
        return str(values)
    parts = []
    for key, value in values.items():
        if isinstance(value, dict):
            parts += [f"{key}.{k} {v}" for k, v in value.items()] or [f"{key} -"]
        else:
            parts.append(f"{key} {value}")
    return ", ".join(parts) or "-"


def _inspect(args: argparse.Namespace) -> int:
    summary = summarise(args.directory)
    if args.json:
        print(json.dumps(summary, indent=2, default=list))
        return 0
    print(f"{summary['directory']}: {summary['records']} records, {summary['frames']} frames")
    for kind, n in summary["by_type"].items():
        print(f"  {kind:<12} {n}")
    stop = summary["stop"]
    if stop is None:
        print("  stop: none (session cut short)")
    else:
        blank = f"; beam blank {stop['beam_blank']}" if "beam_blank" in stop else ""  # (older sessions: none)
        print(f"  stop: status {stop.get('status')}, {stop.get('reason')}{blank}")
    for group, values in (summary["counters"] or {}).items():
        print(f"  {group}: {_flat(values)}")
    if summary["problem"]:
        print(f"  damaged: {summary['problem']}; the first {summary['valid_bytes']} bytes are valid")
    return 0
