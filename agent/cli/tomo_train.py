"""``autoscope tomo train`` and ``autoscope tomo export``: the sinogram-inpainting ensemble."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(actions: Any) -> None:
    """Add ``train`` and ``export`` to the ``tomo`` actions."""
    tr = actions.add_parser("train", help="train the sinogram-inpainting ensemble on simulated phantoms")
    tr.add_argument("--out", type=Path, required=True)
    tr.add_argument("--members", type=int, default=3)
    tr.add_argument("--steps", type=int, default=800)
    tr.add_argument("--phantoms", type=int, default=48)
    tr.add_argument("--width", type=int, default=8)
    tr.add_argument("--size-px", type=int, default=64)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=2)
    tr.set_defaults(handler=_train)
    ex = actions.add_parser("export", help="export a trained inpainting ensemble as one ONNX graph + manifest")
    ex.add_argument("run_dir", type=Path)
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--name", default="sinogram_inpaint")
    ex.set_defaults(handler=_export)


def _train(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from models.training.inpaint import InpaintConfig, train

    try:
        config = InpaintConfig(members=args.members, steps=args.steps, phantoms=args.phantoms, width=args.width,
                               size_px=args.size_px, seed=args.seed)  # fmt: skip
    except ValidationError as exc:  # one line naming the flags, not pydantic's report
        flags = ["--" + "-".join(str(p) for p in e["loc"]).replace("_", "-") for e in exc.errors()]
        problems = [
            f"{flag}: {e['msg']}" if flag != "--" else e["msg"] for flag, e in zip(flags, exc.errors(), strict=True)
        ]
        raise ValueError("; ".join(problems)) from None
    train(args.out, config, threads=args.threads)
    print(f"trained {args.members} members into {args.out}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from models.training.inpaint import export

    manifest = export(args.run_dir, args.out, args.name)
    print(f"exported {args.out} and {manifest}", file=sys.stderr)
    return 0
