"""``autoscope watch``: analyse the frames a person acquires, suggest where to look next, send nothing.

It reads an instrument server's frame stream (``autoscope instrument ... --pub ENDPOINT``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from agent.cli.options import add_client_key_args, client_keys, option_value
from agent.cli.run import EXIT_INTERRUPTED


def register(sub: Any) -> None:
    """Add ``watch`` to ``sub``."""
    p = sub.add_parser("watch", help="analyse a server's frame stream and suggest fields; sends nothing")
    p.add_argument("--frames", required=True, help="the instrument server's frame stream (its --pub endpoint)")
    p.add_argument("--duration-s", type=float, required=True, help="how long to watch")
    p.add_argument("--policy", choices=("none", "uncertainty", "defects", "bayes"), default="defects",
                   help="what suggests the next field (default: defects)")  # fmt: skip
    p.add_argument("--region-nm", type=float, nargs=4, metavar=("X0", "X1", "Y0", "Y1"), default=(-100, 100, -100, 100),
                   help="where suggestions may lie (default: -100 100 -100 100)")  # fmt: skip
    p.add_argument("--fov-nm", type=float, default=10.24, help="field of view of the suggested fields")
    p.add_argument("--pixels", type=int, default=512, help="pixels per side of the suggested fields")
    p.add_argument("--max-frame-age-s", type=float, default=10.0, help="older frames are skipped")
    p.add_argument("--record", type=Path, help="record observations and suggestions into this new directory")
    p.add_argument("--model", type=Path, help="segmentation model manifest (default: the bundled one)")
    p.add_argument("--providers", default="auto", help="onnxruntime providers: auto, cpu, cuda, tensorrt")
    p.add_argument("--keep-featureless", action="store_true", help="locate columns in featureless frames too")
    add_client_key_args(p, "a frame stream that requires CURVE")
    p.set_defaults(handler=_run)


def _check_numbers(args: argparse.Namespace) -> None:
    """Refuse a duration, field of view, pixel count or frame age that is not finite and positive."""
    for flag in ("--duration-s", "--fov-nm", "--pixels", "--max-frame-age-s"):
        value = option_value(args, flag)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag} must be a finite positive number (got {value!r})")


def _start_fields(args: argparse.Namespace, perception: Any, region: Any) -> dict[str, Any]:
    """What the start record of a watch session says beyond the stream: configuration, model, versions."""
    from agent.cli.run import versions

    m = perception.segmenter.manifest
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "handler"}
    return {
        "config": config,
        "model": {"name": m.name, "sha256": m.onnx_sha256, "providers": perception.segmenter.providers},
        "versions": versions(),
        "region_nm": [region.x_min_nm, region.x_max_nm, region.y_min_nm, region.y_max_nm],
        "class_names": list(perception.class_names),
    }


def _show(watcher: Any) -> None:
    """The live line: frames analysed of received, and the latest suggestion."""
    s, d = watcher.state, watcher.state.last_suggestion
    next_field = f"; next: ({d.x_nm:.1f}, {d.y_nm:.1f}) nm" if d is not None else ""
    print(f"\r{s.frames_analysed} analysed of {s.frames_received}{next_field}   ", end="", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from agent.perception import Perception
    from agent.policies import FieldTemplate, PolicyContext, Region, make_policy
    from agent.recorder import SessionRecorder
    from agent.watch import Watcher
    from drivers.observer import FrameSubscriber
    from models.segmenter import Segmenter

    _check_numbers(args)
    curve = client_keys(args)
    region = Region(*args.region_nm)
    context = PolicyContext(region, FieldTemplate(args.fov_nm, args.pixels, 10.0), seed=0)
    policy = None if args.policy == "none" else make_policy(args.policy, context)
    perception = Perception(Segmenter(args.model, args.providers, keep_featureless=args.keep_featureless))
    status = 0
    with FrameSubscriber(args.frames, curve=curve) as frames:  # a bad endpoint fails here, before any recording
        recorder = SessionRecorder(args.record)
        watcher = Watcher(frames, perception, policy, recorder, args.max_frame_age_s, on_frame=_show)
        try:
            watcher.run(args.duration_s, start=_start_fields(args, perception, region))
        except KeyboardInterrupt:  # Ctrl-C ends watching: the session is closed and the counts still printed
            print("\ninterrupted", end="", file=sys.stderr)
            status = EXIT_INTERRUPTED
        finally:
            recorder.close()
        lost = int(frames.stats["frames_lost"])
        problem = frames.link_problem() if not watcher.state.frames_received else None
    state = watcher.state
    print(file=sys.stderr)
    if problem is not None:
        print(f"no frame received from {args.frames}: {problem}", file=sys.stderr)
    summary = {"received": state.frames_received, "analysed": state.frames_analysed, "featureless": state.featureless,
               "skipped": state.frames_skipped, "stream_lost": lost, "suggestions": state.suggestions}  # fmt: skip
    print(json.dumps(summary))
    return status
