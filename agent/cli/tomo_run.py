"""``autoscope tomo run``: acquire a tilt series (simulator, server or recording), reconstruct and score it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.cli.options import add_client_key_args, client_keys, position_nm

#: What a run takes unless told otherwise; a strict replay takes the recorded session's instead (None: the
#: instrument's, or the guard's, or the field given).
DEFAULTS: dict[str, Any] = {
    "policy": "dose-symmetric", "tilts": 20, "range_deg": (-70.0, 70.0), "dose_budget_e_per_a2": None,
    "probe_current_pa": None, "at": None, "fov_nm": None, "pixels": None, "dwell_us": 1.0,
    "readback_tolerance_nm": 0.5, "tilt_tolerance_deg": 0.5,
}  # fmt: skip


def register(actions: Any) -> None:
    """Add ``run`` to the ``tomo`` actions."""
    run = actions.add_parser("run", help="acquire a tilt series with a tilt scheme and reconstruct it")
    run.add_argument(
        "--instrument", default="sim",
        help="'sim', tcp://HOST:PORT (an instrument --sim --tomo), or a recorded tomography session directory "
        "(strict replay: its projections in order, every tilt decision compared with the recorded one)",
    )  # fmt: skip
    run.add_argument(
        "--policy", choices=("sequential", "dose-symmetric", "golden-ratio", "adaptive"),
        help=f"tilt scheme (default: {DEFAULTS['policy']}; a replay: the recorded one)",
    )  # fmt: skip
    run.add_argument("--inpaint-model", type=Path, help="inpainting manifest (default: the bundled one)")
    run.add_argument("--tilts", type=int, help=f"tilts (default: {DEFAULTS['tilts']}; a replay: as recorded)")
    run.add_argument(
        "--range-deg", type=float, nargs=2, metavar=("LOW", "HIGH"),
        help="tilt range (default: -70 70; a replay: as recorded)",
    )  # fmt: skip
    run.add_argument(
        "--probe-current-pa", type=float,
        help="the probe current the instrument runs at (needed for a tcp:// instrument: the guard computes each "
        "projection's dose, and so the series' dose budget, from it)",
    )  # fmt: skip
    run.add_argument("--dose-budget-e-per-a2", type=float, help="the series' dose budget (default: the guard's)")
    run.add_argument(
        "--at", metavar="X_NM,Y_NM", type=position_nm,
        help="the projections' field centre, nm (needed for a tcp:// instrument; default 0,0 for the simulator)",
    )  # fmt: skip
    run.add_argument("--fov-nm", type=float, help="projection field of view (default: the instrument's smallest)")
    run.add_argument("--pixels", type=int, help="projection pixels a side (default: the instrument's fewest)")
    run.add_argument("--dwell-us", type=float, help="projection pixel dwell (default 1 us)")
    run.add_argument(
        "--readback-tolerance-nm", type=float,
        help="a projection read back further than this from its commanded field: safe hold (default 0.5)",
    )  # fmt: skip
    run.add_argument(
        "--tilt-tolerance-deg", type=float,
        help="a projection read back further than this from its commanded tilt: safe hold (default 0.5)",
    )  # fmt: skip
    run.add_argument("--phantom-seed", type=int, default=0)
    run.add_argument("--size-px", type=int, default=64, help="simulated phantom edge in voxels (in-process sim)")
    run.add_argument("--record", type=Path, help="record the session into this new directory")
    run.add_argument("--json", type=Path, help="write SUMMARY.json here")
    run.add_argument("--out", type=Path, help="also write the reconstructions (.npy/.mrc/.png) with this stem")
    add_client_key_args(run, "a tcp:// instrument that requires CURVE")
    run.set_defaults(handler=_run)


def _inpainter(args: argparse.Namespace) -> Any:
    """The inpainting ensemble, or None when there is none (then no adaptive policy, no inpaint-wbp)."""
    from models.inpaint import DEFAULT_INPAINT, SinogramInpainter

    if args.inpaint_model is None and not DEFAULT_INPAINT.is_file():
        if args.policy == "adaptive":
            raise ValueError("the adaptive policy needs an inpainting model (--inpaint-model)")
        return None
    return SinogramInpainter(args.inpaint_model, providers="cpu")


def _chooser(args: argparse.Namespace, inpainter: Any, holder: Any = None) -> Any:
    """The tilt chooser; the adaptive one chooses within the holder's range (``holder``: its tilt Range)."""
    from agent.tomo import PlannedTilts

    if args.policy == "adaptive":
        from agent.policies.tilt_adaptive import AdaptiveTilt

        low, high = args.range_deg
        if holder is not None:  # it would otherwise keep proposing an angle the guard refuses
            low, high = max(low, holder.low), min(high, holder.high)
            if not low < high:
                raise ValueError(f"--range-deg {args.range_deg[0]:g} {args.range_deg[1]:g} lies outside the holder's"
                                 f" [{holder.low:g}, {holder.high:g}] deg")  # fmt: skip
        return AdaptiveTilt(low, high, inpainter=inpainter)
    return PlannedTilts(args.policy, args.tilts, tuple(args.range_deg))


def _guard_config(args: argparse.Namespace) -> Any:
    """The guard of a tilt series: the tilts within ``--range-deg``, the dose at the instrument's current.

    Raises
    ------
    ValueError
        A tcp:// (or ipc://) instrument without ``--probe-current-pa``, or a current or budget that is not a
        positive number.
    """
    import math

    from agent.guard import GuardConfig
    from drivers.base import Range

    options: dict[str, Any] = {
        "allow_revisits": True,
        "tilt_deg": Range(low=min(args.range_deg), high=max(args.range_deg)),
    }
    for flag, key in (("--probe-current-pa", "probe_current_pa"), ("--dose-budget-e-per-a2", "dose_budget_e_per_a2")):
        value = getattr(args, key)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag} must be a positive number (got {value!r})")
        if value is not None:
            options[key] = value
    if str(args.instrument).startswith(("tcp://", "ipc://")) and args.probe_current_pa is None:
        raise ValueError(
            f"driving {args.instrument} needs --probe-current-pa: the guard computes each projection's dose from it"
        )
    return GuardConfig(**options)


def _projection_field(args: argparse.Namespace) -> Any:
    """The projections' :class:`~agent.tomo.ProjectionField` from ``--at``, ``--fov-nm``, ``--pixels``, ``--dwell-us``.

    Raises
    ------
    ValueError
        A tcp:// (or ipc://) instrument without ``--at`` (it does not report where it is, and with a stage
        positioner a scan moves the stage: only the user picks the place).
    """
    from agent.tomo import ProjectionField

    if str(args.instrument).startswith(("tcp://", "ipc://")) and args.at is None:
        raise ValueError(f"driving {args.instrument} needs --at X_NM,Y_NM: the field every projection is scanned at")
    x_nm, y_nm = args.at if args.at is not None else (0.0, 0.0)
    return ProjectionField(x_nm, y_nm, args.fov_nm, args.pixels, args.dwell_us)


def _readback(args: argparse.Namespace) -> Any:
    """The read-back tolerances ``--readback-tolerance-nm`` and ``--tilt-tolerance-deg`` give."""
    import math

    from agent.tomo import Readback

    for flag, value in (("--readback-tolerance-nm", args.readback_tolerance_nm),
                        ("--tilt-tolerance-deg", args.tilt_tolerance_deg)):  # fmt: skip
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag} must be a positive number (got {value:g})")
    replayed = _replayed(args) is not None  # (in process: its frames are trusted)
    return Readback(args.readback_tolerance_nm, args.tilt_tolerance_deg, replay_trusted=replayed)


def _replayed(args: argparse.Namespace) -> Path | None:
    """The recorded session ``--instrument`` names (a directory), or None for the simulator or a server."""
    return Path(args.instrument) if args.instrument != "sim" and Path(args.instrument).is_dir() else None


def _take_settings(args: argparse.Namespace) -> None:
    """Fill the settings not given (:data:`DEFAULTS`): a strict replay's from its recording, else the defaults.

    So a replay asks for what the recorded run asked for (the tilts, and the field, dose and budget the
    guard judged them by) and ends where it ended.

    Raises
    ------
    ValueError
        ``--instrument`` names a recorded scan session.
    """
    recorded: dict[str, Any] = {}
    if (replayed := _replayed(args)) is not None:
        from agent.policies import POLICY_NAMES
        from drivers.recording import read_session

        start = next((r for r in read_session(replayed).records if r.get("type") == "start"), None) or {}
        config = start.get("config")
        recorded = config if isinstance(config, dict) else {}
        kind = start.get("kind")  # (tilt sessions recorded before it existed, and imported ones, have none)
        if (kind is not None and kind != "tomography") or recorded.get("policy") in POLICY_NAMES:
            raise ValueError(f"{args.instrument} is a scan session: replay it with autoscope replay {args.instrument}")
    for name, default in DEFAULTS.items():
        if getattr(args, name) is None:
            value = recorded.get(name, default)
            setattr(args, name, tuple(value) if name in ("range_deg", "at") and value is not None else value)


def _open_driver(args: argparse.Namespace, curve: Any) -> Any:
    """The tilt instrument ``--instrument`` names: the simulator, a recorded session, or a server."""
    from drivers.replay import ReplayDriver

    replayed = _replayed(args)
    if curve is not None and (replayed is not None or args.instrument == "sim"):
        raise ValueError("--client-key and --server-public are for a tcp:// instrument, not a simulator or a recording")
    if replayed is not None:
        return ReplayDriver(replayed)
    if args.instrument == "sim":
        from drivers.simulated_tomo import SimulatedTiltDriver

        return SimulatedTiltDriver(phantom_seed=args.phantom_seed, size_px=args.size_px)
    from drivers.remote import RemoteDriver

    return RemoteDriver(args.instrument, curve=curve)


def _run(args: argparse.Namespace) -> int:
    from agent.cli.options import check_output_file
    from agent.cli.run import EXIT_HELD, EXIT_INTERRUPTED, signals_interrupt
    from agent.recorder import SessionRecorder, chain_logs
    from agent.run_state import Interrupted
    from agent.timings import StageTimings
    from agent.tomo import acquire_series
    from drivers.recording import log_path
    from drivers.replay import ReplayDriver

    _take_settings(args)
    replayed = _replayed(args)
    kept = [*(chain_logs(args.record) if args.record else []), *([log_path(replayed)] if replayed else [])]
    check_output_file(args.json, "--json", keep=kept)  # (neither this session's record nor the one replayed)
    guard_config = _guard_config(args)  # (before anything is opened)
    where = _projection_field(args)
    readback = _readback(args)
    curve = client_keys(args)
    inpainter = _inpainter(args)  # (before anything is opened: it may refuse the policy)
    driver = _open_driver(args, curve)
    try:
        recorder = SessionRecorder(args.record, keep_decisions=True)
    except BaseException:  # (a --record that holds a session already): the driver is not left open
        driver.close()
        raise
    timings = StageTimings()
    try:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "handler"}
        capabilities = driver.capabilities()
        recorder.write("start", kind="tomography", config=config, capabilities=capabilities.model_dump(mode="json"))
        chooser = _chooser(args, inpainter, capabilities.tilt_deg)
        try:
            with signals_interrupt():  # the series blanks the beam however it ends
                series = acquire_series(driver, chooser, args.tilts, recorder, timings, guard_config, where, readback)
        except (KeyboardInterrupt, Interrupted) as exc:
            stopped = str(exc) or "stopped by SIGINT"
            recorder.write("stop", status="interrupted", reason=stopped)
            print(f"{args.policy}: interrupted ({stopped}); the session's stop record says so", file=sys.stderr)
            return EXIT_INTERRUPTED
        if series.held is None:
            recorder.write("stop", status="completed", reason=f"{len(series.angles_deg)} tilts acquired")
        else:
            recorder.write("stop", status="held", reason=f"safe hold: {series.held}")
    finally:
        recorder.close()
        driver.close()
    if len(series.projections) < 2 and series.held is None:
        why = "; ".join(sorted(set(series.refusals))) or "none was asked for"
        raise ValueError(f"{len(series.projections)} projection(s) acquired, at least 2 are needed (refused: {why})")
    decision = timings.summary().get("decide", {})
    summary: dict[str, Any] = {
        "policy": args.policy,
        "angles_deg": [round(a, 4) for a in series.angles_deg],
        "decision_ms": {"p50": decision.get("p50"), "p99": decision.get("p99")},
        "refusals": series.refusals,
        "held": series.held,
        "ended_early": series.ended,
        "beam_blank": series.beam_blank,
    }
    if len(series.projections) >= 2:
        _reconstruct_series(args, series, inpainter, summary)
    status = 0 if series.held is None else EXIT_HELD
    if isinstance(driver, ReplayDriver):
        status = _compare_with_recording(driver, recorder.decisions, summary) or status
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{args.policy}: {len(series.angles_deg)} tilts; PSNR {summary.get('psnr_db', 'n/a')} dB", file=sys.stderr)
    if series.refusals:
        said = "; ".join(sorted(set(series.refusals)))
        print(f"  {len(series.refusals)} refused (recorded; see refusals in --json): {said}", file=sys.stderr)
    if series.ended is not None and series.held is None:
        print(
            f"  the series ended after {len(series.angles_deg)} of {args.tilts} tilts: {series.ended}", file=sys.stderr
        )
    if series.held is not None:
        print(f"safe hold ({_beam_said(series.beam_blank)}; check the instrument): {series.held}", file=sys.stderr)
    return status


def _beam_said(outcome: str | None) -> str:
    """The beam's state after the series, in words (``outcome``: how its blank ended)."""
    if outcome == "acknowledged":
        return "the beam is blanked"
    if outcome == "unsupported":
        return "the instrument has no blank"
    return f"the beam was NOT confirmed blanked: {outcome}"


def _reconstruct_series(args: argparse.Namespace, series: Any, inpainter: Any, summary: dict[str, Any]) -> None:
    """Reconstruct with every method, score against the phantom when it is known, write ``--out``."""
    from agent.tomo import reconstruct_all, score

    volumes = reconstruct_all(series, inpainter)
    seed = series.metadata.get("phantom_seed")
    if series.metadata.get("simulated") and isinstance(seed, int):
        from simulators.phantom import PhantomConfig, make_phantom

        truth = make_phantom(PhantomConfig(seed=seed, size_px=series.projections[0].shape[1])).volume
        for method, scores in score(volumes, truth).items():
            summary.setdefault("psnr_db", {})[method] = scores["psnr_db"]
            summary.setdefault("ssim", {})[method] = scores["ssim"]
    if args.out:
        from models.tilt_io import save_central_slices, write_volume

        for method, vol in volumes.items():
            stem = args.out.with_name(f"{args.out.stem}-{method}")
            write_volume(vol, stem, None)
            save_central_slices(
                vol, stem.with_suffix(".png"), f"{args.policy}, {len(series.angles_deg)} tilts, {method}"
            )


def _compare_with_recording(driver: Any, decisions: list[dict[str, Any]], summary: dict[str, Any]) -> int:
    """A strict replay's decisions against the recorded ones, printed and put in ``summary``; 3 if any diverged."""
    from agent.replay import compare_decisions

    recorded = [r for r in driver.records if r.get("type") == "decision"]
    summary["divergences"] = compare_decisions(recorded, decisions)
    summary["replay"] = driver.report
    for d in summary["divergences"][:20]:
        print(f"  step {d['step']}: recorded {d['recorded']} new {d['new']}: {d['why']}", file=sys.stderr)
    print(f"  {len(summary['divergences'])} of {len(recorded)} tilt decisions diverged", file=sys.stderr)
    return 3 if summary["divergences"] else 0
