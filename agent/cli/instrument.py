"""``autoscope instrument``: serve a simulated microscope, or check a running server.

``--sim`` puts :class:`drivers.simulated.SimulatedDriver` behind the instrument server
until interrupted, logging each command; ``--replay DIR`` does the same with a recorded session
(:class:`drivers.replay.ReplayDriver`), ``--nion-usim`` with Nion's own simulated STEM driven through
:class:`drivers.nion.NionDriver`.  ``--check ENDPOINT`` connects, prints the
capabilities, acquires one frame and prints its header.  ``--make-keys DIR`` writes
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
    mode.add_argument("--check", metavar="ENDPOINT", help="connect, print capabilities, acquire one frame")
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
    p.add_argument("--heartbeat-s", type=float, default=1.0, help="heartbeat interval (default 1 s)")
    p.add_argument(
        "--deadman-s", type=float, default=2.0,
        help="blank the beam when the commanding agent is silent this long (default 2 s; 0 disables)",
    )  # fmt: skip
    p.add_argument("--server-key", type=Path, default=None, help="server CURVE secret certificate (zmq.auth format)")
    p.add_argument("--allow-clients", type=Path, default=None, help="directory of allowed client public certificates")
    p.add_argument("--client-key", type=Path, default=None, help="--check: client CURVE secret certificate")
    p.add_argument("--server-public", type=Path, default=None, help="--check: server public certificate")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without CURVE")
    p.add_argument("--timeout-s", type=float, default=10.0, help="--check: connection and frame timeout")
    p.set_defaults(handler=_run)


def _server_keys(args: argparse.Namespace) -> Any:
    if args.server_key is None:
        return None
    from drivers.security import load_server_keys

    return load_server_keys(args.server_key, args.allow_clients)


def _client_keys(args: argparse.Namespace) -> Any:
    if args.client_key is None:
        return None
    import zmq.auth

    from drivers.security import CurveClientKeys

    if args.server_public is None:
        raise ValueError("--client-key needs --server-public")
    public, secret = zmq.auth.load_certificate(str(args.client_key))
    server_public, _ = zmq.auth.load_certificate(str(args.server_public))
    if secret is None:
        raise ValueError(f"{args.client_key} holds no secret key")
    return CurveClientKeys(public, secret, server_public)


def _serve(args: argparse.Namespace) -> int:
    from drivers.server import InstrumentServer
    from simulators.allocator import tune_allocator

    logging.getLogger("drivers").setLevel(logging.INFO)
    tune_allocator()  # our own process: a new multi-megabyte image per frame is cheaper from a warm heap
    driver, what = _driver(args)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = InstrumentServer(
        driver, args.bind, args.pub, heartbeat_s=args.heartbeat_s, curve=_server_keys(args), insecure=args.insecure,
        deadman_s=args.deadman_s or None,
    ).start()  # fmt: skip
    print(
        f"{what} on {server.endpoint}" + (f", frames on {server.pub_endpoint}" if args.pub else ""),
        flush=True,
    )
    try:
        stop.wait()
    finally:
        server.stop()
        driver.close()
        print(json.dumps(dict(server.stats)), flush=True)
    return 0


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


def _check(args: argparse.Namespace) -> int:
    from drivers.base import ScanCommand
    from drivers.remote import RemoteDriver

    with RemoteDriver(args.check, connect_timeout_s=args.timeout_s, curve=_client_keys(args)) as remote:
        cap = remote.capabilities()
        print(json.dumps({"capabilities": cap.model_dump(mode="json")}, indent=2))
        x = 0.5 * (cap.stage_x_nm.low + cap.stage_x_nm.high)
        y = 0.5 * (cap.stage_y_nm.low + cap.stage_y_nm.high)
        fov = min(max(cap.fov_nm.low, 10.0), cap.fov_nm.high)
        side = int(min(max(cap.pixels.low, 256), cap.pixels.high))
        dwell = min(max(cap.dwell_us.low, 1.0), cap.dwell_us.high)
        remote.send(ScanCommand(x_nm=x, y_nm=y, fov_nm=fov, rows=side, cols=side, dwell_us=dwell))
        frame = remote.next_frame(args.timeout_s + side * side * dwell * 1e-6)
        print(json.dumps({"frame_header": frame.header.model_dump(mode="json")}, indent=2))
    return 0


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
    return _serve(args) if args.sim or args.nion_usim or args.replay is not None else _check(args)
