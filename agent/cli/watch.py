"""``autoscope watch``: analyse the frames a person acquires, suggest where to look next, send nothing.

It reads an instrument server's frame stream (``autoscope instrument ... --pub ENDPOINT``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


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
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from agent.perception import Perception
    from agent.policies import FieldTemplate, PolicyContext, Region, make_policy
    from agent.recorder import SessionRecorder
    from agent.watch import Watcher
    from drivers.observer import FrameSubscriber
    from models.segmenter import Segmenter

    if args.duration_s <= 0:
        raise ValueError("--duration-s must be positive")
    x0, x1, y0, y1 = args.region_nm
    context = PolicyContext(Region(x0, x1, y0, y1), FieldTemplate(args.fov_nm, args.pixels, 10.0), seed=0)
    policy = None if args.policy == "none" else make_policy(args.policy, context)
    perception = Perception(Segmenter(args.model, args.providers))
    recorder = SessionRecorder(args.record)

    def show(watcher: Watcher) -> None:
        s, d = watcher.state, watcher.state.last_suggestion
        next_field = f"; next: ({d.x_nm:.1f}, {d.y_nm:.1f}) nm" if d is not None else ""
        print(f"\r{s.frames_analysed} analysed of {s.frames_received}{next_field}   ", end="", file=sys.stderr)

    with FrameSubscriber(args.frames) as frames:
        watcher = Watcher(frames, perception, policy, recorder, args.max_frame_age_s, on_frame=show)
        try:
            state = watcher.run(args.duration_s)
        finally:
            recorder.close()
        lost = int(frames.stats["frames_lost"])
    print(file=sys.stderr)
    summary = {"received": state.frames_received, "analysed": state.frames_analysed,
               "skipped": state.frames_skipped, "stream_lost": lost, "suggestions": state.suggestions}  # fmt: skip
    print(json.dumps(summary))
    return 0
