"""``autoscope train`` and ``autoscope export``: build the segmentation ensemble.

``train`` simulates a dataset and trains a deep ensemble with progress bars,
checkpoints and resume; ``export`` writes all members as one ONNX graph with
its manifest.  Both import torch (lazily, inside the handlers).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from agent.cli.options import option_value

#: ``export``'s options that shape a new manifest, with their defaults (``--bias-frames``: as
#: models.training.calibrate.VALIDATION_FRAMES, which importing here would load the models at start-up).
_EXPORT_OPTIONS: dict[str, Any] = {
    "--name": None,
    "--calibration-frames": 48,
    "--tile-size": 512,
    "--bias-frames": 96,
    "--evaluation-frames": 52,
}


def register(sub: Any) -> None:
    """Add ``train`` and ``export`` to ``sub``."""
    t = sub.add_parser("train", help="train the segmentation ensemble on simulated frames")
    t.add_argument("--members", type=_positive_int, default=5, help="ensemble members (default 5)")
    t.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, dataset, config)")
    t.add_argument("--steps", type=_positive_int, default=1500, help="optimisation steps per member (default 1500)")
    t.add_argument("--samples", type=_positive_int, default=3000, help="simulated training frames (default 3000)")
    t.add_argument("--batch", type=_positive_int, default=16, help="batch size (default 16)")
    t.add_argument("--width", type=_positive_int, default=None, help="U-Net channels at full resolution (default 8)")
    t.add_argument("--depth", type=_positive_int, default=None, help="U-Net down-sampling stages (default 3)")
    t.add_argument(
        "--widths",
        type=_channel_list,
        default=(),
        help="channels per U-Net level, full resolution first, e.g. 8,16,48,96 (overrides --width and --depth)",
    )
    t.add_argument(
        "--global-context", action="store_true",
        help="condition the lowest-resolution U-Net features on their mean over the whole input",
    )  # fmt: skip
    t.add_argument("--seed", type=int, default=0, help="member seeds are derived from it (default 0)")
    t.add_argument("--data-seed", type=int, default=0, help="seed of the simulated dataset (default 0)")
    t.add_argument(
        "--learning-rate", type=_positive_float, default=2e-3, help="peak of the one-cycle schedule (default 2e-3)"
    )
    t.add_argument(
        "--lattice-weights",
        type=_lattice_weights,
        default=(),
        help="relative frequency of lattices in the data, e.g. graphene=3,SrTiO3=3 (unnamed ones: 1)",
    )
    t.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="a finished run whose members start this one (fine-tuning; its architecture is kept)",
    )
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    t.set_defaults(handler=_run_train)

    d = _EXPORT_OPTIONS
    e = sub.add_parser("export", help="export a trained ensemble as one ONNX graph with its manifest")
    e.add_argument("checkpoint_dir", type=Path, nargs="?", help="run directory written by autoscope train")
    e.add_argument("--out", type=Path, default=None, help="output .onnx (the manifest .json goes beside it)")
    e.add_argument(
        "--refresh-graph",
        type=Path,
        default=None,
        metavar="MANIFEST",
        help="instead: export an exported model's graph again from its .members.pt as export writes it now"
        " (in place; refused unless the outputs agree to 1e-5)",
    )
    e.add_argument("--name", default=d["--name"], help="model name in the manifest (default: file stem)")
    e.add_argument(
        "--calibration-frames", type=int, default=d["--calibration-frames"], help="frames for the OOD calibration"
    )
    e.add_argument(
        "--tile-size",
        type=int,
        default=d["--tile-size"],
        help="tile edge in native pixels; larger frames are tiled with overlap (default 512)",
    )
    e.add_argument(
        "--bias-frames",
        type=int,
        default=d["--bias-frames"],
        help="validation frames for fitting the class decision rule (0: plain argmax)",
    )
    e.add_argument(
        "--evaluation-frames",
        type=int,
        default=d["--evaluation-frames"],
        help="unseen simulated frames to evaluate on; figures go into the manifest (0: skip)",
    )
    e.set_defaults(handler=_run_export)


def _channel_list(text: str) -> tuple[int, ...]:
    """``8,16,48,96`` -> (8, 16, 48, 96): at least two positive channel counts."""
    try:
        widths = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--widths takes comma-separated integers, got {text!r}") from None
    if len(widths) < 2 or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"--widths needs at least two positive channel counts, got {text!r}")
    return widths


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _lattice_weights(text: str) -> tuple[float, ...]:
    """``graphene=3,SrTiO3=3`` -> one weight per lattice in sorted order (unnamed lattices weigh 1)."""
    from models.training.data import SampleSpec
    from simulators import LATTICES

    names = sorted(LATTICES)
    weights = dict.fromkeys(names, 1.0)
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name.strip() not in weights:
            raise argparse.ArgumentTypeError(f"--lattice-weights: unknown lattice {name.strip()!r}; known: {names}")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--lattice-weights: {item!r} is not NAME=WEIGHT") from None
    values = tuple(weights[n] for n in names)
    try:
        SampleSpec(lattices=tuple(names), lattice_weights=values)  # the spec's own check of the weights
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if len(set(values)) == 1:
        return ()  # all equal: the default mix, and the same run as leaving the option out
    return values


def _architecture(args: argparse.Namespace) -> tuple[int, int, tuple[int, ...], bool]:
    """(width, depth, widths, global_context) from the options, or from the parent run when fine-tuning.

    A fine-tune that is resumed takes them from its own configuration, so it no longer needs the parent.
    """
    if args.init_from is None:
        if args.widths:
            return args.widths[0], len(args.widths) - 1, args.widths, args.global_context
        width, depth = (8 if args.width is None else args.width), (3 if args.depth is None else args.depth)
        return width, depth, (), args.global_context
    from models.training.run_files import read_run_config

    if args.widths or args.width is not None or args.depth is not None or args.global_context:
        raise ValueError(
            "--init-from keeps the parent's architecture: leave out --width, --depth, --widths and --global-context"
        )
    own = args.out / "config.json"
    config_path = own if args.resume and own.exists() else args.init_from / "config.json"
    if not config_path.exists():
        raise ValueError(f"--init-from {args.init_from}: not a training run (no config.json)")
    config = read_run_config(config_path)
    widths = tuple(int(w) for w in config.get("widths") or ())
    return int(config["width"]), int(config["depth"]), widths, bool(config.get("global_context", False))


def _recorded_command(args: argparse.Namespace) -> str:
    """The command being run, after the parent run's recorded command(s) when fine-tuning."""
    from models.manifest import invoked_command

    own = invoked_command()
    if args.init_from is None:
        return own
    parent = args.init_from / "command.txt"
    if parent.exists():
        return f"{parent.read_text().strip()} && {own}"
    return f"(the train command of {args.init_from} was not recorded) && {own}"


def _run_train(args: argparse.Namespace) -> int:
    from models.training.train import TrainConfig, train_ensemble
    from simulators.allocator import tune_allocator

    tune_allocator()
    if (args.out / "config.json").exists() and not args.resume:
        raise ValueError(f"{args.out} already holds a run: pass --resume to continue it, or choose another --out")
    if args.resume and not (args.out / "config.json").exists():
        print(f"autoscope train: --resume: no run in {args.out} yet, starting a new one", file=sys.stderr)
    from models.training.data import SampleSpec

    width, depth, widths, global_context = _architecture(args)
    config = TrainConfig(
        members=args.members,
        steps=args.steps,
        batch=args.batch,
        width=width,
        depth=depth,
        widths=widths,
        global_context=global_context,
        learning_rate=args.learning_rate,
        samples=args.samples,
        seed=args.seed,
        data_seed=args.data_seed,
        sample=SampleSpec(lattice_weights=args.lattice_weights),
        init_from=str(args.init_from or ""),
    )
    command = _recorded_command(args)
    paths = train_ensemble(args.out, config, progress=True, threads=args.threads, command=command)
    print("\n".join(str(p) for p in paths))
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from models.training.export import export_run

    if args.refresh_graph is not None:
        return _run_refresh_graph(args)
    if args.checkpoint_dir is None or args.out is None:
        raise ValueError("export needs a CHECKPOINT_DIR and --out (or --refresh-graph MANIFEST alone)")
    if not (args.checkpoint_dir / "config.json").exists():
        raise ValueError(f"{args.checkpoint_dir} is not a training run (no config.json)")
    if args.out.suffix != ".onnx":
        raise ValueError(f"--out must end in .onnx (got {args.out})")
    manifest = export_run(
        args.checkpoint_dir,
        args.out,
        args.name,
        tile_size_px=args.tile_size,
        calibration_frames=args.calibration_frames,
        evaluation_frames=args.evaluation_frames,
        bias_frames=args.bias_frames,
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.2f} MB, sha256 {manifest.onnx_sha256[:12]}...)")
    for key, value in manifest.validation.items():
        print(f"  {key}: {value:.4g}")
    return 0


def _run_refresh_graph(args: argparse.Namespace) -> int:
    from models.training.export import refresh_graph

    if args.checkpoint_dir is not None or args.out is not None:
        raise ValueError("--refresh-graph rewrites the model its manifest names, in place: no CHECKPOINT_DIR or --out")
    given = [flag for flag, default in _EXPORT_OPTIONS.items() if option_value(args, flag) != default]
    if given:
        raise ValueError(f"--refresh-graph keeps the manifest as it is: {', '.join(given)} would be ignored")
    manifest, worst = refresh_graph(args.refresh_graph)
    print(f"exported the graph again: sha256 {manifest.onnx_sha256[:12]}..., outputs agree to {worst:.2g}")
    return 0
