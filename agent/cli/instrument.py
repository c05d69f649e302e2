"""``autoscope instrument``: serve a simulated microscope, or check a running server.

``--sim`` puts :class:`drivers.simulated.SimulatedDriver` behind the instrument server
until interrupted, logging each command; ``--replay DIR`` does the same with a recorded session
(:class:`drivers.replay.ReplayDriver`), ``--nion-usim`` with Nion's own simulated STEM driven through
:class:`drivers.nion.NionDriver`.  ``--check ENDPOINT`` connects and prints the
capabilities; with ``--at X_NM,Y_NM`` it also acquires one small frame there (the position is the
user's to choose: an instrument does not report where it is, and with a stage positioner a scan
moves the stage) and prints its header.  ``--make-keys DIR`` writes
CURVE certificates for a server and one client.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import signal
import sys
import threading
from pathlib import Path
from typing import Any

#: ``--check --at``'s frame options, small and short by default: flag, type, default, unit, what it sets, and
#: the :class:`~drivers.base.Capabilities` range it must lie in.
_CHECK_FRAME: tuple[tuple[str, type, float, str, str, str], ...] = (
    ("--fov-nm", float, 10.0, "nm", "field of view", "fov_nm"),
    ("--pixels", int, 256, "px", "pixels a side", "pixels"),
    ("--dwell-us", float, 1.0, "us", "pixel dwell", "dwell_us"),
)


def option_value(args: argparse.Namespace, flag: str) -> Any:
    """The parsed value of the long option ``flag`` (``--client-key`` is ``args.client_key``)."""
    return getattr(args, flag.lstrip("-").replace("-", "_"))


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
    p.add_argument("--timeout-s", type=float, default=10.0, help="--check: connection and frame timeout")
    p.add_argument(
        "--at", metavar="X_NM,Y_NM", type=position_nm, default=None,
        help="--check: acquire one frame centred here (specimen coordinates, nm; within the reported stage range)",
    )  # fmt: skip
    for flag, kind, default, unit, what, _ in _CHECK_FRAME:
        p.add_argument(flag, type=kind, default=None, help=f"--check --at: {what} (default {default:g} {unit})")
    p.set_defaults(handler=_run)


def add_client_key_args(p: argparse.ArgumentParser, where: str) -> None:
    """``--client-key`` and ``--server-public``: CURVE keys for reaching a server that requires them."""
    p.add_argument(
        "--client-key", type=Path, default=None,
        help=f"{where}: this client's CURVE secret certificate (zmq.auth format; needs --server-public)",
    )  # fmt: skip
    p.add_argument(
        "--server-public", type=Path, default=None,
        help=f"{where}: the server's public CURVE certificate (needs --client-key)",
    )  # fmt: skip


def client_keys(args: argparse.Namespace) -> Any:
    """The :class:`~drivers.security.CurveClientKeys` of ``--client-key`` and ``--server-public``, or None.

    Raises
    ------
    ValueError
        One given without the other, or a certificate that is missing or holds no key (named).
    """
    why = "a CURVE client needs its own secret certificate and the server's public one"
    if not _both_or_neither(args, "--client-key", "--server-public", why):
        return None
    from drivers.security import CurveClientKeys

    public, secret = _certificate(args.client_key, "--client-key")
    if secret is None:
        raise ValueError(f"--client-key {args.client_key} holds no secret key (give the .key_secret certificate)")
    server_public, _ = _certificate(args.server_public, "--server-public")
    return CurveClientKeys(public, secret, server_public)


def _server_keys(args: argparse.Namespace) -> Any:
    """The server's CURVE keys and allow-list, or None (then the server runs unauthenticated).

    Raises
    ------
    ValueError
        One of ``--server-key`` and ``--allow-clients`` without the other, or a bad certificate (named).
    """
    why = "a CURVE server needs its secret certificate and a directory of allowed client certificates"
    if not _both_or_neither(args, "--server-key", "--allow-clients", why):
        return None
    from drivers.security import load_server_keys

    _certificate(args.server_key, "--server-key")
    if not args.allow_clients.is_dir():
        raise ValueError(f"--allow-clients {args.allow_clients} is not a directory of client public certificates")
    try:
        return load_server_keys(args.server_key, args.allow_clients)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--server-key {args.server_key}, --allow-clients {args.allow_clients}: {exc}") from None


def _both_or_neither(args: argparse.Namespace, first: str, second: str, why: str) -> bool:
    """True when both options are given, False when neither.

    Raises
    ------
    ValueError
        Only one is given (it is named, with ``why``).
    """
    a, b = (option_value(args, flag) is not None for flag in (first, second))
    if a != b:
        given, missing = (first, second) if a else (second, first)
        raise ValueError(f"{given} needs {missing}: {why}")
    return a


def _certificate(path: Path, flag: str) -> tuple[bytes, bytes | None]:
    """The (public, secret) keys of a zmq.auth certificate file.

    Raises
    ------
    ValueError
        A missing file, a directory, or a file that holds no key (named with its option).
    """
    import zmq.auth

    if not path.is_file():
        raise ValueError(f"{flag} {path}: {'a directory' if path.is_dir() else 'no such file'}, not a certificate")
    try:
        return zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{flag} {path} is not a CURVE certificate: {exc}") from None


def _serve(args: argparse.Namespace) -> int:
    from simulators.allocator import tune_allocator

    curve = _server_keys(args)  # bad keys are refused before anything is opened
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


def position_nm(text: str) -> tuple[float, float]:
    """``X_NM,Y_NM`` as two finite floats (argparse type of ``--at``)."""
    parts = text.split(",")
    try:
        x, y = (float(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not X_NM,Y_NM (two numbers, nm)") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise argparse.ArgumentTypeError(f"{text!r}: the position must be finite")
    return x, y


def check_scan(args: argparse.Namespace, cap: Any) -> Any:
    """The :class:`~drivers.base.ScanCommand` of ``--check --at`` (None without ``--at``).

    Raises
    ------
    ValueError
        The position or a frame parameter given outside what the instrument reports (named, with its
        range); nothing has been sent.  A frame parameter not given takes its default, brought within
        that range.
    """
    from drivers.base import ScanCommand

    if args.at is None:
        return None
    x, y = args.at
    _within("--at x", x, cap.stage_x_nm, "nm", cap.instrument)
    _within("--at y", y, cap.stage_y_nm, "nm", cap.instrument)
    values = []
    for flag, _, default, unit, _, attribute in _CHECK_FRAME:
        allowed, value = getattr(cap, attribute), option_value(args, flag)
        if value is None:  # the default, brought within what the instrument accepts
            value = min(max(default, allowed.low), allowed.high)
        _within(flag, value, allowed, unit, cap.instrument)
        values.append(value)
    fov_nm, pixels, dwell_us = values
    side = int(pixels)
    return ScanCommand(x_nm=x, y_nm=y, fov_nm=fov_nm, rows=side, cols=side, dwell_us=dwell_us)


def _within(flag: str, value: float, allowed: Any, unit: str, instrument: str) -> None:
    """Refuse ``value`` outside ``allowed`` (a :class:`~drivers.base.Range`), naming the flag and the range."""
    if not allowed.low <= value <= allowed.high:  # also refuses NaN
        raise ValueError(
            f"{flag} {value:g} {unit} is outside what {instrument} accepts "
            f"({allowed.low:g} to {allowed.high:g} {unit}); nothing was sent"
        )


def _check(args: argparse.Namespace) -> int:
    """Connect and print the capabilities; with ``--at``: unblank, scan one frame, print its header, blank again."""
    from drivers.base import DriverError, UnblankCommand
    from drivers.remote import RemoteDriver

    with RemoteDriver(args.check, connect_timeout_s=args.timeout_s, curve=client_keys(args)) as remote:
        cap = remote.capabilities()
        print(json.dumps({"capabilities": cap.model_dump(mode="json")}, indent=2))
        scan = check_scan(args, cap)
        if scan is None:
            print("no frame acquired: give --at X_NM,Y_NM to scan one field there", file=sys.stderr)
            return 0
        if "unblank" in cap.command_kinds:  # the server blanks the beam when a client goes: unblank to scan
            remote.send(UnblankCommand())
        try:
            remote.send(scan)
            frame = remote.next_frame(args.timeout_s + scan.rows * scan.cols * scan.dwell_us * 1e-6)
        except BaseException:
            with contextlib.suppress(DriverError):  # the scan's error is the one to report
                _blank(remote)
            raise
        _blank(remote)
        print(json.dumps({"frame_header": frame.header.model_dump(mode="json")}, indent=2))
    return 0


def _blank(remote: Any) -> None:
    """Leave the beam blanked after the check, as the server leaves it when a client goes."""
    from drivers.base import BlankCommand

    if "blank" in remote.capabilities().command_kinds:
        remote.send(BlankCommand())


def _make_keys(directory: Path) -> int:
    import zmq.auth

    (directory / "clients").mkdir(parents=True, exist_ok=True)
    server_public, server_secret = zmq.auth.create_certificates(str(directory), "server")
    client_public, client_secret = zmq.auth.create_certificates(str(directory), "client")
    Path(client_public).replace(directory / "clients" / Path(client_public).name)
    print(
        f"server: {server_secret} (keep private), {server_public}\nclient: {client_secret} (keep private), "
        f"{directory / 'clients' / Path(client_public).name} (allow-list)"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.make_keys is not None:
        return _make_keys(args.make_keys)
    serving = args.sim or args.nion_usim or args.replay is not None
    _refuse_keys_of_the_other_side(args, serving)
    return _serve(args) if serving else _check(args)


def _refuse_keys_of_the_other_side(args: argparse.Namespace, serving: bool) -> None:
    """Server keys are for serving, client keys and ``--at`` for ``--check``: one given to the other is refused."""
    flags = ("--client-key", "--server-public") if serving else ("--server-key", "--allow-clients")
    given = [f for f in flags if option_value(args, f) is not None]
    if given:
        mode = "--check" if serving else "serving (--sim, --replay, --nion-usim)"
        raise ValueError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} only for {mode}")
    frame = [f for f, *_ in _CHECK_FRAME if option_value(args, f) is not None]
    if (serving and args.at is not None) or (frame and args.at is None):
        raise ValueError(f"{' and '.join(frame) or '--at'} only for --check --at X_NM,Y_NM (the frame it acquires)")
