"""``autoscope instrument``: serve a simulated microscope, or check a running server.

``--sim`` puts :class:`drivers.simulated.SimulatedDriver` behind the instrument server
until interrupted, logging each command; ``--replay DIR`` does the same with a recorded session
(:class:`drivers.replay.ReplayDriver`), ``--nion-usim`` with Nion's own simulated STEM driven through
:class:`drivers.nion.NionDriver`.  ``--check ENDPOINT`` (:mod:`agent.cli.instrument_check`) connects and prints the
capabilities; with ``--at X_NM,Y_NM`` it also acquires one small frame there (the position is the
user's to choose: an instrument does not report where it is, and with a stage positioner a scan
moves the stage) and prints its header.  ``--make-keys DIR`` writes
CURVE certificates for a server and one client.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from agent.cli.instrument_check import CHECK_FRAME, check
from agent.cli.options import add_client_key_args, make_keys, option_value, position_nm, server_keys, timeout_s


def register(sub: Any) -> None:
    """Add ``instrument`` to ``sub``."""
    p = sub.add_parser("instrument", help="serve a simulated instrument, or check a running one")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--sim", action="store_true", help="serve a simulated STEM until interrupted")
    mode.add_argument("--replay", metavar="DIR", type=Path, help="serve a recorded session until interrupted")
    mode.add_argument(
        "--nion-usim", action="store_true",
        help="serve Nion's own STEM simulator (nionswift-usim, headless) through the Nion driver",
    )  # fmt: skip
    mode.add_argument(
        "--check", metavar="ENDPOINT", help="connect and print the capabilities (with --at: acquire one frame too)"
    )
    mode.add_argument("--make-keys", metavar="DIR", type=Path, help="write CURVE certificates (server, client)")
    p.add_argument("--bind", default="tcp://127.0.0.1:5555", help="command endpoint (default tcp://127.0.0.1:5555)")
    p.add_argument("--pub", default=None, help="optional endpoint streaming every frame to observers")
    p.add_argument("--specimen-seed", type=int, default=0, help="simulated specimen seed (default 0)")
    p.add_argument("--lattice", default="MoS2", help="simulated lattice (default MoS2)")
    p.add_argument(
        "--replay-mode", choices=("strict", "instrument"), default="strict",
        help="--replay: recorded frames in order (strict), or answer fields from the recorded data (instrument)",
    )  # fmt: skip
    p.add_argument("--speed", default="max", help="--replay: max, realtime or a factor of the recorded pace")
    p.add_argument(
        "--scan-data", choices=("specimen", "usim"), default="specimen",
        help="--nion-usim: what usim scans: our simulated specimen (--specimen-seed, --lattice) or usim's sample",
    )  # fmt: skip
    p.add_argument("--positioner", choices=("scan", "stage"), default="scan", help="--nion-usim: how fields are placed")
    p.add_argument("--tomo", action="store_true", help="--sim: a tomography holder projecting a 3-D phantom")
    p.add_argument("--phantom-seed", type=int, default=0, help="--sim --tomo: phantom seed")
    p.add_argument("--size-px", type=int, default=64, help="--sim --tomo: phantom edge in voxels")
    p.add_argument("--heartbeat-s", type=float, default=1.0, help="heartbeat interval (default 1 s, 0.05 to 30 s)")
    p.add_argument(
        "--deadman-s", type=float, default=2.0,
        help="blank the beam when the commanding agent is silent this long (default 2 s; 0 disables)",
    )  # fmt: skip
    p.add_argument("--server-key", type=Path, default=None, help="server CURVE secret certificate (zmq.auth format)")
    p.add_argument("--allow-clients", type=Path, default=None, help="directory of allowed client public certificates")
    add_client_key_args(p, "--check")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without CURVE")
    p.add_argument(
        "--timeout-s", type=timeout_s, default=10.0, help="--check: connection and frame timeout (up to a day)"
    )
    p.add_argument(
        "--at", metavar="X_NM,Y_NM", type=position_nm, default=None,
        help="--check: acquire one frame centred here (specimen coordinates, nm; within the reported stage range)",
    )  # fmt: skip
    for flag, kind, default, unit, what, _ in CHECK_FRAME:
        p.add_argument(flag, type=kind, default=None, help=f"--check --at: {what} (default {default:g} {unit})")
    p.set_defaults(handler=_run)


def _serve(args: argparse.Namespace) -> int:
    from simulators.allocator import tune_allocator

    curve = server_keys(args)  # bad keys are refused before anything is opened
    logging.getLogger("drivers").setLevel(logging.INFO)
    tune_allocator()  # our own process: a new multi-megabyte image per frame is cheaper from a warm heap
    driver, what = _driver(args)
    try:
        server = _server(args, driver, curve).start()
    except BaseException:
        driver.close()
        raise
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(
        f"{what} on {server.endpoint}" + (f", frames on {server.pub_endpoint}" if args.pub else ""),
        flush=True,
    )
    try:
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
        driver.close()
        print(json.dumps(dict(server.stats)), flush=True)
    return 0


def _server(args: argparse.Namespace, driver: Any, curve: Any) -> Any:
    """The instrument server on ``--bind`` (and ``--pub``), not yet started.

    Raises
    ------
    ValueError
        An endpoint that cannot be bound (in use, malformed), named; or a public one without CURVE keys.
    """
    import zmq

    from drivers.server import InstrumentServer

    try:
        return InstrumentServer(
            driver, args.bind, args.pub, heartbeat_s=args.heartbeat_s, curve=curve, insecure=args.insecure,
            deadman_s=args.deadman_s or None,
        )  # fmt: skip
    except zmq.ZMQError as exc:
        endpoints = f"--bind {args.bind}" + (f" or --pub {args.pub}" if args.pub else "")
        raise ValueError(f"cannot serve on {endpoints}: {exc}") from None


def _driver(args: argparse.Namespace) -> tuple[Any, str]:
    if args.replay is not None:
        from agent.cli.replay import parse_speed
        from drivers.replay import ReplayDriver

        driver = ReplayDriver(args.replay, mode=args.replay_mode, speed=parse_speed(args.speed))
        if not driver.frames:  # (as autoscope replay refuses it: a server with nothing to serve)
            damage = f" (the log is damaged: {driver.problem})" if driver.problem else ""
            raise ValueError(f"{args.replay} holds no recorded frames to serve{damage}")
        return driver, f"replay of {args.replay} ({args.replay_mode}, {len(driver.frames)} frames)"
    if args.nion_usim:
        return _nion_usim(args)
    if args.tomo:
        from drivers.simulated_tomo import SimulatedTiltDriver

        holder = SimulatedTiltDriver(phantom_seed=args.phantom_seed, size_px=args.size_px)
        return holder, "simulated tomography holder"
    from drivers.simulated import SimulatedDriver

    return SimulatedDriver(specimen_seed=args.specimen_seed, lattice=args.lattice), "simulated instrument"


def _nion_usim(args: argparse.Namespace) -> tuple[Any, str]:
    """Nion's simulator behind the Nion driver; closing the driver also stops the simulator."""
    from drivers.nion import NionDriver
    from drivers.nion_usim import SpecimenScanData, UsimHost

    scan_data = None
    if args.scan_data == "specimen":
        from simulators import ImagingParams, Specimen, SpecimenConfig

        specimen = Specimen(SpecimenConfig(seed=args.specimen_seed, lattice=args.lattice))
        scan_data = SpecimenScanData(specimen, ImagingParams(), seed=args.specimen_seed)
    host = UsimHost(scan_data)
    stem, scan = host.start()
    driver = NionDriver(stem, scan, positioner=args.positioner, on_close=host.stop)
    return driver, f"Nion usim ({args.scan_data} scan data, {args.positioner} positioner)"


def _run(args: argparse.Namespace) -> int:
    if args.make_keys is not None:
        return make_keys(args.make_keys)
    serving = args.sim or args.nion_usim or args.replay is not None
    _refuse_keys_of_the_other_side(args, serving)
    return _serve(args) if serving else check(args)


def _refuse_keys_of_the_other_side(args: argparse.Namespace, serving: bool) -> None:
    """Server keys are for serving, client keys and ``--at`` for ``--check``: one given to the other is refused."""
    flags = ("--client-key", "--server-public") if serving else ("--server-key", "--allow-clients")
    given = [f for f in flags if option_value(args, f) is not None]
    if given:
        mode = "--check" if serving else "serving (--sim, --replay, --nion-usim)"
        raise ValueError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} only for {mode}")
    frame = [f for f, *_ in CHECK_FRAME if option_value(args, f) is not None]
    if (serving and args.at is not None) or (frame and args.at is None):
        raise ValueError(f"{' and '.join(frame) or '--at'} only for --check --at X_NM,Y_NM (the frame it acquires)")
