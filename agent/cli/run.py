"""``autoscope run``: an automated experiment against a simulated or remote instrument."""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from agent.cli.options import add_client_key_args, client_keys

EXIT_INTERRUPTED = 130
EXIT_HELD = 4  # safe hold: the beam is blanked; an operator checks the instrument before a new run


def register(sub: Any) -> None:
    """Add ``run`` to ``sub``."""
    p = sub.add_parser("run", help="run an automated experiment (simulated or remote instrument)")
    p.add_argument("--instrument", help="'sim' (in-process simulator) or tcp://HOST:PORT (default: sim)")
    p.add_argument(
        "--instrument-is-replay",
        action="store_true",
        default=None,
        help="the tcp:// instrument is a strict replay (autoscope instrument --replay DIR --replay-mode strict); "
        "never for a microscope",
    )
    p.add_argument("--policy", help="raster, random, uncertainty, defects, bayes or dkl (default: bayes)")
    p.add_argument("--steps", type=int, help="frames to acquire and analyse (default: 20)")
    p.add_argument("--seed", type=int, help="seed of the policy and of the simulator's noise")
    p.add_argument("--specimen-seed", type=int, help="seed of the simulated specimen")
    p.add_argument("--record", type=Path, help="record the session into this new directory")
    p.add_argument("--config", type=Path, help="TOML configuration (flags override it)")
    p.add_argument("--json", type=Path, help="write SUMMARY.json here")
    p.add_argument("--model", type=Path, help="segmentation model manifest (default: the bundled one)")
    p.add_argument("--providers", help="onnxruntime providers: auto, cpu, cuda, tensorrt")
    p.add_argument("--acquisition", choices=("ucb", "ei", "thompson"), help="acquisition of bayes and dkl")
    p.add_argument("--reward", help="reward expression of bayes and dkl (e.g. 'n_vacancy + 2 * n_dopant')")
    p.add_argument("--quiet", action="store_true", help="no live view")
    add_client_key_args(p, "a tcp:// instrument that requires CURVE")
    p.set_defaults(handler=_run)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "instrument": args.instrument,
        "instrument_is_replay": args.instrument_is_replay,
        "policy": args.policy,
        "steps": args.steps,
        "seed": args.seed,
        "simulator.specimen_seed": args.specimen_seed,
        "record": None if args.record is None else str(args.record),
        "json": None if args.json is None else str(args.json),
        "model": None if args.model is None else str(args.model),
        "providers": args.providers,
        "policies.acquisition": args.acquisition,
        "policies.reward": args.reward,
    }


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`~agent.run_state.Interrupted` in the loop, which then stops safely.

    Only the first signal does: a second one (an impatient Ctrl-C) must not break off the shutdown that
    blanks the beam and writes the stop record; it is reported and ignored.
    """
    from agent.run_state import Interrupted

    fired: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if fired:
            print(f"{name} again: already stopping (blanking the beam, writing the stop record)", file=sys.stderr)
            return
        fired.append(signum)
        raise Interrupted(f"stopped by {name}")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON at ``path``, making its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _run(args: argparse.Namespace) -> int:
    from agent.cli.options import check_output_file
    from agent.config import load_config
    from agent.experiment import Experiment
    from agent.recorder import chain_logs

    config = load_config(args.config, _overrides(args))
    json_path = config.json_summary
    # before the run: a run is not repeated for want of a file name, nor its record overwritten by its summary
    check_output_file(json_path, "--json", keep=chain_logs(config.record) if config.record else [])
    curve = client_keys(args)
    # Every instrument kind: the in-process simulator renders faster, and a remote instrument's frames
    # (a libzmq buffer each) arrive faster, when freed buffers are reused (README, Performance).
    from simulators.allocator import tune_allocator

    tune_allocator()
    with Experiment(config, live=not args.quiet, curve=curve) as experiment, signals_interrupt():
        state = experiment.run()
    summary = experiment.summary
    record = experiment.record_dir
    if experiment.previous_session is not None:
        print(f"{config.record} held an unclosed session (marked UNCLOSED.json); this one follows it", file=sys.stderr)
    if record:  # the session's own copy first: it must not depend on --json being writable
        _write_json(Path(record) / "SUMMARY.json", summary)
    if json_path is not None:
        _write_json(json_path, summary)
    found = f", {summary['true_defects_found']} of them planted" if "true_defects_found" in summary else ""
    latency = summary["latency_ms"].get("total") or summary["latency_ms"].get("perceive", {})
    print(
        f"{config.policy}: {state.status} after {state.steps_done} frames ({state.reason}); "
        f"{summary['defects_found']} distinct defects{found}; {summary['refusals']} refusals; "
        f"travel {summary['travel_nm']:.0f} nm; latency p50 {latency.get('p50', float('nan')):.0f} ms",
        file=sys.stderr,
    )
    if state.beam_blank not in ("acknowledged", "unsupported"):
        print(f"the beam was NOT confirmed blanked ({state.beam_blank}): check the instrument", file=sys.stderr)
    if record:
        print(f"session recorded in {record} (autoscope report {record})", file=sys.stderr)
    return {"completed": 0, "exhausted": 0, "interrupted": EXIT_INTERRUPTED, "held": EXIT_HELD}.get(state.status, 1)


def versions() -> dict[str, str]:
    """Versions of the interpreter and the packages a session depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("autoscope", "numpy", "onnxruntime", "onnxruntime-gpu", "pyzmq", "pydantic", "scikit-image"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out
