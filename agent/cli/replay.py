"""``autoscope replay DIR``: strict replay (compare decisions) or what-if replay with another policy."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_DIVERGED = 3
#: Exit status of a strict replay whose run failed (agent.cli.EXIT_FAILURE).
EXIT_REPLAY_FAILED = 1


def register(sub: Any) -> None:
    """Add ``replay`` to ``sub``."""
    p = sub.add_parser("replay", help="replay a recorded session: strictly, or with another policy")
    p.add_argument("directory", type=Path, help="a session directory")
    p.add_argument("--policy", help="another policy: what-if replay, fields answered from the recorded data")
    p.add_argument("--config", type=Path, help="TOML configuration overriding the recorded one")
    p.add_argument("--steps", type=int, help="frames to analyse (default: as many as were recorded)")
    p.add_argument("--seed", type=int, help="policy seed (default: the recorded one)")
    p.add_argument("--speed", default="max", help="max, realtime, or a factor of the recorded pace (e.g. 4)")
    p.add_argument("--allow-divergence", action="store_true", help="exit 0 even when decisions differ")
    p.add_argument("--record", type=Path, help="record the replayed session into this new directory")
    p.add_argument("--json", type=Path, help="write the replay report (summary, divergences) here")
    p.add_argument("--model", type=Path, help="segmentation model (default: the bundled one)")
    p.add_argument(
        "--keep-featureless",
        action="store_true",
        help="locate columns in featureless frames too (a session recorded before the input check replays without it)",
    )
    p.add_argument("--quiet", action="store_true", help="no live view")
    p.set_defaults(handler=_replay)


MIN_SPEED, MAX_SPEED = 1e-3, 1e6  # replay pacing factors: a thousand times slower to a million times faster


def parse_speed(text: str) -> float | None:
    """``max`` -> None, ``realtime`` -> 1.0, else a positive factor.

    Raises
    ------
    ValueError
        For anything else.
    """
    if text == "max":
        return None
    if text == "realtime":
        return 1.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not MIN_SPEED <= value <= MAX_SPEED:  # (a factor of 1e-320 turned a second's wait into an overflow)
        raise ValueError(
            f"--speed must be max, realtime or a factor from {MIN_SPEED:g} to {MAX_SPEED:g} (got {text!r})"
        )
    return value


def _check_steps(steps: int | None, frames: int, strict: bool) -> None:
    """Refuse ``--steps`` under 1, or, replaying strictly, more steps than the recording holds frames."""
    if steps is None:
        return
    if steps < 1:
        raise ValueError(f"--steps must be at least 1 (got {steps})")
    if strict and steps > frames:
        raise ValueError(
            f"--steps {steps}: the recording holds {frames} frames, and a strict replay serves each once "
            "(give at most that many, or --policy for a what-if replay)"
        )


def _replay(args: argparse.Namespace) -> int:
    from agent.cli.options import check_output_file
    from agent.cli.run import EXIT_INTERRUPTED, signals_interrupt
    from agent.config import load_config
    from agent.recorder import chain_logs
    from agent.replay import has_no_recorded_run, recorded_config, replay
    from drivers.recording import log_path, read_session
    from drivers.replay import Mode

    kept = [log_path(args.directory), *(chain_logs(args.record) if args.record else [])]
    check_output_file(args.json, "--json", keep=kept)  # before the replay: its report must have somewhere to go
    speed = parse_speed(args.speed)
    session = read_session(args.directory)
    start = next((r for r in session.records if r.get("type") == "start"), None)
    recorded = (start or {}).get("config", {})
    if not isinstance(recorded, dict):
        raise ValueError(f"{args.directory}: the start record's configuration is not a table: {recorded!r:.60}")
    if (start or {}).get("kind") == "tomography":
        raise ValueError(f"{args.directory} is a tomography session: replay it with "
                         f"autoscope tomo run --instrument {args.directory} --policy ... --tilts ...")  # fmt: skip
    frames = len(session.frames)
    if not frames:
        damage = f" (the log is damaged: {session.problem})" if session.problem else ""
        raise ValueError(f"{args.directory} holds no recorded frames to replay{damage}")
    recorded_policy = recorded.get("policy")
    _check_steps(args.steps, frames, strict=args.policy in (None, recorded_policy))
    overrides = {
        "policy": args.policy,
        "steps": args.steps or frames,
        "seed": args.seed,
        "model": None if args.model is None else str(args.model),
        "keep_featureless": True if args.keep_featureless else None,  # (None: as recorded)
    }
    if has_no_recorded_run(start) and session.frames:  # imported: fields like the recorded frames
        first = session.frames[0].header
        side = min(first.shape)  # square fields that fit inside the (possibly oblong) recorded frames
        overrides.update({"field.fov_nm": first.pixel_size_nm * side, "field.pixels": max(16, min(4096, side))})
        overrides["policy"] = args.policy or "raster"
    config = recorded_config(start, overrides)
    if args.config is not None:
        config = load_config(args.config, {**overrides, "policy": args.policy or config.policy})
    what_if = args.policy is not None and args.policy != recorded_policy
    mode: Mode = "instrument" if what_if else "strict"
    with signals_interrupt():  # SIGINT, SIGTERM: the replay stops as a run does, its report still written
        report = replay(args.directory, config, mode, speed, args.record, live=not args.quiet)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    r = report["replay"]
    print(f"{mode} replay of {args.directory}: {report['status']}, {r['served']} frames served", file=sys.stderr)
    if r["problem"]:
        print(f"  the recording is damaged: {r['problem']} ({r['valid_bytes']} of {r['file_bytes']} bytes valid)",
              file=sys.stderr)  # fmt: skip
    if not r["ended_cleanly"]:
        print("  the recorded session did not end cleanly (no stop record): it was killed or cut", file=sys.stderr)
    if mode == "instrument":
        print(f"  {r['refused_no_data']} requested fields had no recorded data "
              f"(served fraction {r['served_fraction']})", file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED if report["status"] == "interrupted" else 0
    divergences = report["divergences"]
    if not report["model_matches_recording"]:
        print("  note: the model differs from the recorded one", file=sys.stderr)
    for d in divergences[:20]:
        print(f"  step {d['step']}: recorded {d['recorded']} new {d['new']}: {d['why']}", file=sys.stderr)
    print(f"  {len(divergences)} of {report['recorded_decisions']} decisions diverged", file=sys.stderr)
    if report["recorded_decisions_not_replayed"]:
        print(f"  {report['recorded_decisions_not_replayed']} recorded decisions of later steps were not replayed "
              "(fewer --steps, or a log cut before their frames)", file=sys.stderr)  # fmt: skip
    if report["status"] == "failed":  # nothing to compare is no pass
        return EXIT_REPLAY_FAILED
    if report["status"] == "interrupted":  # (compared as far as it went)
        return EXIT_INTERRUPTED
    return 0 if not divergences or args.allow_divergence else EXIT_DIVERGED
