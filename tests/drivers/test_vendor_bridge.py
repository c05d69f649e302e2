"""The example vendor bridge (plain pyzmq, no autoscope imports) works with RemoteDriver."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from drivers.base import BlankCommand, CommandRefused, ScanCommand, UnblankCommand
from drivers.codec import encode_command, envelope
from drivers.remote import RemoteDriver

BRIDGE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "vendor_bridge.py"


def _bridge_module():
    spec = importlib.util.spec_from_file_location("vendor_bridge", BRIDGE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bridge():
    module = _bridge_module()
    assert "autoscope" not in BRIDGE.read_text().split('"""', 2)[2].split("import")[0]
    server = module.Bridge(module.FakeVendorScope(), "tcp://127.0.0.1:0")
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    yield server
    server.stop()
    thread.join(2)
    server.sock.close(linger=0)
    server.ctx.term()


def test_bridge_serves_remote_driver(bridge):
    source = BRIDGE.read_text()
    assert "from drivers" not in source and "import models" not in source
    with RemoteDriver(bridge.endpoint, heartbeat_s=1.0) as remote:
        cap = remote.capabilities()
        assert cap.instrument.startswith("fake vendor scope") and cap.tilt_deg is None
        remote.send(ScanCommand(x_nm=10, y_nm=-20, fov_nm=50, rows=64, cols=80, dwell_us=2))
        frame = remote.next_frame(5.0)
        assert frame.image.dtype == np.uint16 and frame.image.shape == (64, 80)
        assert frame.header.x_nm == 10 and bridge.scope.position == (10, -20)
        with pytest.raises(CommandRefused, match="fov_nm"):
            remote.send(ScanCommand(x_nm=0, y_nm=0, fov_nm=5000, rows=64, cols=64, dwell_us=2))
        remote.send(BlankCommand())
        with pytest.raises(CommandRefused, match="blanked"):
            remote.send(ScanCommand(x_nm=0, y_nm=0, fov_nm=50, rows=64, cols=64, dwell_us=2))
        remote.send(UnblankCommand())
        time.sleep(3.5)  # idle longer than three heartbeats: the bridge's heartbeats keep us connected
        assert remote.connected and remote.stats["disconnects"] == 0
        assert bridge.scope.frames == 1


def test_bridge_wants_hello_first_echoes_heartbeats_and_blanks_for_a_silent_commander(bridge):
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.RCVTIMEO, 3000)
    raw.connect(bridge.endpoint)
    try:
        raw.send_multipart(encode_command(UnblankCommand()))
        assert json.loads(raw.recv_multipart()[0])["code"] == "hello_first" and bridge.scope.blanked is False
        raw.send_multipart([envelope("hello")])
        deadman_s = json.loads(raw.recv_multipart()[0])["deadman_s"]
        raw.send_multipart([envelope("heartbeat", t=123.0)])
        raw.send_multipart([b'{"v": 1, "type": "heartbeat", "t": NaN}'])  # ignored: echoing it would break
        raw.send_multipart(encode_command(UnblankCommand()))
        replies = [json.loads(raw.recv_multipart()[0]) for _ in range(3)]  # the ack and heartbeats
        acks = [r["ack"] for r in replies if r["type"] == "ack"]
        echoes = [(r["echo_t"], r["held_s"]) for r in replies if r["type"] == "heartbeat" and "echo_t" in r]
        assert acks[0]["accepted"]
        assert len(echoes) == 1 and echoes[0][0] == 123.0 and echoes[0][1] >= 0  # echoed once
        deadline = time.monotonic() + deadman_s + 2.0
        while not bridge.scope.blanked and time.monotonic() < deadline:  # then silence: the dead-man blanks
            time.sleep(0.05)
        assert bridge.scope.blanked and not bridge.watched
    finally:
        raw.close(linger=0)
        ctx.term()


def test_only_a_command_the_bridge_accepted_puts_its_sender_under_the_dead_mans_watch():
    module = _bridge_module()
    bridge = module.Bridge(module.FakeVendorScope(), "tcp://127.0.0.1:0")  # not serving: acks go nowhere
    try:
        deadline = time.time() + 30
        bridge.command(b"A", {"id": "a1", "kind": "unblank", "deadline_unix_s": deadline})
        bridge.command(b"B", {"id": "b1", "kind": "teleport", "deadline_unix_s": deadline})  # malformed
        bridge.command(b"B", {"id": "a1", "kind": "unblank", "deadline_unix_s": deadline})  # duplicate
        bridge.command(b"B", {"id": "b2", "kind": "unblank", "deadline_unix_s": 1.0})  # expired
        scan = {"id": "b3", "kind": "scan", "x_nm": 1e5, "y_nm": 0, "fov_nm": 10, "rows": 16, "cols": 16}
        bridge.command(b"B", {**scan, "dwell_us": 1, "deadline_unix_s": deadline})  # refused: out of range
        assert bridge.watched == {b"A"} and not bridge.scope.blanked
        bridge.command(b"B", {**scan, "id": "b5", "x_nm": 0, "dwell_us": 1, "deadline_unix_s": deadline})
        assert bridge.watched == {b"A", b"B"}  # another client commanding does not end A's watch
        bridge.forget(b"A")
        assert bridge.scope.blanked and not bridge.watched
        bridge.command(b"B", {"id": "b6", "kind": "unblank", "deadline_unix_s": deadline})
        bridge.command(b"B", {"id": "b4", "kind": "blank", "deadline_unix_s": deadline})
        assert not bridge.watched and bridge.scope.blanked
        bridge.command(b"B", {"id": "b7", "kind": "unblank", "deadline_unix_s": deadline})
        bridge.command(b"B", {"id": "b8", "kind": "blank", "deadline_unix_s": 1.0})  # late: carried out all the same
        assert bridge.scope.blanked and not bridge.watched
    finally:
        bridge.sock.close(linger=0)
        bridge.ctx.term()
