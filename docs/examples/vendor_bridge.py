"""A minimal vendor-side bridge for the autoscope wire protocol, in plain pyzmq.

It imports nothing from autoscope: it is what a vendor writes (in Python here, in any
language with ZeroMQ and JSON elsewhere) to put an instrument behind the protocol of
docs/PROTOCOL.md.  ``FakeVendorScope`` stands in for the vendor's own API.

What a bridge owes the agent, all shown here: commands only from clients that said hello; each
command id executed at most once and never after its deadline (but ``blank`` and ``stop``, which are
carried out however late); heartbeats that echo the client's
latest stamp (for its round-trip figure); clients silent for three heartbeats forgotten; and a
dead-man timer: a client whose command left the beam on (each is watched on its own) falls silent for
``DEADMAN_S`` -> beam blanked.

Its fake acquisitions are instant.  A real one that blocks for longer than a few heartbeats must not
block the heartbeats with it: run it on another thread, or beat from one (docs/PROTOCOL.md, Liveness),
or the agent declares the instrument gone in the middle of a long scan.

    python docs/examples/vendor_bridge.py tcp://127.0.0.1:5556
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time

import numpy as np
import zmq

VERSION = 1
HEARTBEAT_S = 1.0
DEADMAN_S = 2.0
LIMITS = {
    "stage_x_nm": (-500.0, 500.0),
    "stage_y_nm": (-500.0, 500.0),
    "fov_nm": (1.0, 1000.0),
    "pixels": (16, 2048),
    "dwell_us": (0.5, 100.0),
}


class FakeVendorScope:
    """The vendor's API, as a bridge would see it: move, set field, acquire, blank."""

    def __init__(self) -> None:
        self.position = (0.0, 0.0)
        self.blanked = False
        self.frames = 0

    def move_stage(self, x_nm: float, y_nm: float) -> None:
        self.position = (x_nm, y_nm)

    def acquire(self, rows: int, cols: int, dwell_us: float) -> np.ndarray:
        self.frames += 1
        yy, xx = np.mgrid[:rows, :cols]
        return (1000 + 500 * np.sin(xx / 3.0) * np.cos(yy / 3.0)).astype(np.uint16)


def capabilities() -> dict:
    rng = lambda lo_hi: {"low": lo_hi[0], "high": lo_hi[1]}  # noqa: E731
    return {
        "protocol_version": VERSION,
        "instrument": "fake vendor scope (example bridge)",
        "command_kinds": ["scan", "blank", "unblank", "stop"],
        "stage_x_nm": rng(LIMITS["stage_x_nm"]),
        "stage_y_nm": rng(LIMITS["stage_y_nm"]),
        "fov_nm": rng(LIMITS["fov_nm"]),
        "pixels": rng(LIMITS["pixels"]),
        "dwell_us": rng(LIMITS["dwell_us"]),
        "tilt_deg": None,
        "max_dose_e_per_a2": 1e6,
        "detectors": ["HAADF"],
    }


def message(kind: str, **fields) -> bytes:
    return json.dumps({"v": VERSION, "type": kind, **fields}, allow_nan=False).encode()


def is_finite_number(value: object) -> bool:
    """A JSON number (not a bool) that is finite: Python's json accepts NaN and 1e999."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_scan(cmd: dict) -> str | None:
    """Why a scan command is refused, or None."""
    for name, key in (
        ("x_nm", "stage_x_nm"),
        ("y_nm", "stage_y_nm"),
        ("fov_nm", "fov_nm"),
        ("rows", "pixels"),
        ("cols", "pixels"),
        ("dwell_us", "dwell_us"),
    ):
        value = cmd.get(name)
        lo, hi = LIMITS[key]
        if not is_finite_number(value) or not lo <= value <= hi:
            return f"{name}={value!r} is outside [{lo}, {hi}]"
    return None


class Bridge:
    """Serve ``scope`` on ``endpoint`` until :meth:`stop`."""

    def __init__(self, scope: FakeVendorScope, endpoint: str) -> None:
        self.scope = scope
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.seen: set[str] = set()
        self.clients: dict[bytes, int] = {}  # identity -> next delivery_seq (the clients that said hello)
        self.heard: dict[bytes, float] = {}  # identity -> when it last sent anything (monotonic s)
        self.echo: dict[bytes, tuple[float, float]] = {}  # identity -> (its latest heartbeat t, when it came)
        self.watched: set[bytes] = set()  # the clients whose commands left the beam on (each watched on its own)
        self.sequence = 0
        self._stop = threading.Event()

    def ack(self, who: bytes, cmd: dict, accepted: bool, code: str = "ok", reason: str = "") -> None:
        body = {"command_id": cmd["id"], "kind": cmd["kind"], "accepted": accepted, "code": code, "reason": reason}
        self.sock.send_multipart([who, message("ack", ack=body)])

    def scan(self, who: bytes, cmd: dict) -> None:
        start = time.time()
        self.scope.move_stage(cmd["x_nm"], cmd["y_nm"])
        image = self.scope.acquire(cmd["rows"], cmd["cols"], cmd["dwell_us"])
        header = {
            "protocol_version": VERSION,
            "sequence": self.sequence,
            "command_id": cmd["id"],
            "acquisition_start_unix_s": start,
            "acquisition_end_unix_s": time.time(),
            "x_nm": cmd["x_nm"],
            "y_nm": cmd["y_nm"],
            "fov_nm": cmd["fov_nm"],
            "shape": [cmd["rows"], cmd["cols"]],
            "dtype": "uint16",
            "pixel_size_nm": cmd["fov_nm"] / cmd["cols"],
            "dwell_us": cmd["dwell_us"],
            "tilt_deg": 0.0,
            "detector": "HAADF",
            "metadata": {"vendor": "fake"},
        }
        self.sequence += 1
        seq = self.clients.get(who, 0)
        self.clients[who] = seq + 1
        self.sock.send_multipart([who, message("frame", header=header, delivery_seq=seq), image.tobytes()])

    def command(self, who: bytes, cmd: dict) -> None:
        if (
            not isinstance(cmd, dict)
            or not isinstance(cmd.get("id"), str)
            or cmd.get("kind") not in ("scan", "blank", "unblank", "stop")
        ):
            self.sock.send_multipart(
                [who, message("error", code="invalid", reason="unknown or malformed command", command_id=None)]
            )
            return
        if cmd["id"] in self.seen:
            return self.ack(who, cmd, False, "duplicate", "already received")
        self.seen.add(cmd["id"])
        if cmd["kind"] in ("scan", "unblank") and time.time() > cmd.get("deadline_unix_s", 0):
            return self.ack(who, cmd, False, "expired", "deadline passed")  # (a late blank or stop is still safe)
        if cmd["kind"] == "scan":
            reason = check_scan(cmd) or ("the beam is blanked" if self.scope.blanked else None)
            if reason:
                return self.ack(who, cmd, False, "refused", reason)
            self.ack(who, cmd, True)
            self.watched.add(who)  # the beam is on at this client's word: the dead-man watches it
            return self.scan(who, cmd)
        self.scope.blanked = cmd["kind"] in ("blank", "stop")
        if self.scope.blanked:  # (carried out at once here: nothing is left on)
            self.watched.clear()
        else:  # the beam is on at this client's word now: the others' earlier commands no longer matter
            self.watched = {who}
        self.ack(who, cmd, True)

    def handle(self, who: bytes, parts: list[bytes]) -> None:
        self.heard[who] = time.monotonic()
        try:
            msg = json.loads(parts[0])
            assert isinstance(msg, dict) and msg.get("v") == VERSION
        except (ValueError, AssertionError):
            self.sock.send_multipart([who, message("error", code="json", reason="bad envelope", command_id=None)])
            return
        if msg.get("type") == "hello":
            self.clients.setdefault(who, 0)  # heartbeats go to every client that said hello
            welcome = message(
                "welcome", capabilities=capabilities(), heartbeat_s=HEARTBEAT_S, server_time_unix_s=time.time(),
                deadman_s=DEADMAN_S,
            )  # fmt: skip
            self.sock.send_multipart([who, welcome])
        elif msg.get("type") == "command" and who not in self.clients:
            cmd = msg.get("command")
            command_id = cmd.get("id") if isinstance(cmd, dict) and isinstance(cmd.get("id"), str) else None
            error = message("error", code="hello_first", reason="say hello first", command_id=command_id)
            self.sock.send_multipart([who, error])
        elif msg.get("type") == "command":
            self.command(who, msg.get("command"))
        elif msg.get("type") == "heartbeat" and is_finite_number(msg.get("t")):
            self.echo[who] = (msg["t"], time.monotonic())  # (NaN or 1e999 would break our next message)
        elif msg.get("type") == "bye":
            self.forget(who)

    def forget(self, who: bytes) -> None:
        """A client gone (bye, or silent for three heartbeats): it must say hello again to command."""
        self.clients.pop(who, None)
        self.echo.pop(who, None)
        self.heard.pop(who, None)
        if who in self.watched:
            self.deadman()

    def deadman(self) -> None:
        """A client that left the beam on is gone or silent: blank the beam (which ends every watch)."""
        self.watched.clear()
        self.scope.blanked = True

    def beat(self) -> None:
        """Heartbeats to every client, echoing its latest stamp; clients silent for three heartbeats forgotten."""
        now = time.monotonic()
        for who in list(self.clients):
            if now - self.heard.get(who, now) > 3 * HEARTBEAT_S:
                self.forget(who)
                continue
            fields = {"t": time.time()}
            if who in self.echo:
                t, arrived = self.echo.pop(who)
                fields.update(echo_t=t, held_s=now - arrived)
            self.sock.send_multipart([who, message("heartbeat", **fields)])
        for who in [w for w, t in self.heard.items() if w not in self.clients and now - t > 3 * HEARTBEAT_S]:
            del self.heard[who]  # strangers that never said hello

    def serve(self) -> None:
        last_beat = 0.0
        while not self._stop.is_set():
            if self.sock.poll(50):
                who, *parts = self.sock.recv_multipart()
                self.handle(who, parts)
            if any(time.monotonic() - self.heard.get(who, 0.0) > DEADMAN_S for who in self.watched):
                self.deadman()
            if time.monotonic() - last_beat > HEARTBEAT_S:
                self.beat()
                last_beat = time.monotonic()

    def stop(self) -> None:
        self._stop.set()


if __name__ == "__main__":
    bridge = Bridge(FakeVendorScope(), sys.argv[1] if len(sys.argv) > 1 else "tcp://127.0.0.1:5556")
    print(f"fake vendor bridge on {bridge.endpoint}")
    try:
        bridge.serve()
    except KeyboardInterrupt:
        pass
    finally:
        bridge.sock.close(linger=0)
        bridge.ctx.term()
