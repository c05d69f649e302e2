"""Bad input over real loopback sockets: each gets a specific error or is dropped, nothing else changes."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
import zmq

from drivers.base import PROTOCOL_VERSION, BlankCommand, DriverTimeout, ScanCommand, UnblankCommand
from drivers.codec import encode_command
from drivers.memory import InMemoryDriver
from drivers.remote import RemoteDriver
from drivers.server import SERVER_ID_PREFIX, InstrumentServer


@pytest.fixture
def served():
    driver = InMemoryDriver()
    server = InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.2, max_message_bytes=4096).start()
    ctx = _Sockets()
    yield driver, server, ctx
    ctx.close()
    server.stop()


class _Sockets:
    """A context that closes every socket it made."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.made: list[zmq.Socket] = []

    def socket(self, kind: int) -> zmq.Socket:
        self.made.append(self.ctx.socket(kind))
        return self.made[-1]

    def close(self) -> None:
        for sock in self.made:
            sock.close(linger=0)
        self.ctx.term()


def _raw(ctx, server, hello: bool = True) -> zmq.Socket:
    """A raw DEALER on the server; ``hello``: introduced and welcomed first, as every client must be."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 3000)
    sock.connect(server.endpoint)
    if hello:
        sock.send_multipart([_msg(type="hello")])
        assert _reply(sock)["type"] == "welcome"
    return sock


def _reply(sock) -> dict:
    while True:
        parts = sock.recv_multipart()
        obj = json.loads(parts[0])
        if obj["type"] != "heartbeat":
            return obj


def _scan_dict(**kw) -> dict:
    return ScanCommand(x_nm=0, y_nm=0, fov_nm=4, rows=32, cols=32, dwell_us=1, **kw).model_dump(mode="json")


def _msg(**fields) -> bytes:
    return json.dumps({"v": PROTOCOL_VERSION, **fields}).encode()


CASES = [
    ([b"{not json"], "json"),
    ([b"\xff\xfe"], "json"),
    ([b"[1, 2, 3]"], "envelope"),
    ([json.dumps({"type": "hello"}).encode()], "envelope"),
    ([json.dumps({"v": 99, "type": "hello"}).encode()], "version"),
    ([_msg(type="teleport")], "type"),
    ([_msg(type="ack", ack={})], "type"),
    ([_msg(type="hello"), b"extra", b"parts"], "parts"),
    ([_msg(type="command", command=_scan_dict()), b"extra"], "parts"),
    ([_msg(type="command", command={**_scan_dict(), "kind": "explode"})], "invalid"),
    ([_msg(type="command", command={**_scan_dict(), "fov_nm": -1.0})], "invalid"),
    ([_msg(type="command", command={**_scan_dict(), "rows": 10**9})], "invalid"),
    ([_msg(type="command", command={**_scan_dict(), "surprise": 1})], "invalid"),
    ([_msg(type="command", command=_scan_dict()).replace(b'"x_nm": 0.0', b'"x_nm": NaN')], "json"),
    ([_msg(type="command", command=_scan_dict()).replace(b'"y_nm": 0.0', b'"y_nm": -Infinity')], "json"),
    ([_msg(type="command", command={**_scan_dict(), "id": "bad id with spaces"})], "invalid"),
    ([_msg(type="command")], "invalid"),
    ([_msg(type="hello", accepts="ack_in_frame")], "invalid"),  # options come as a list
    # Strict types, as the published schema says: nothing is coerced.
    ([json.dumps({"v": True, "type": "hello"}).encode()], "version"),
    ([json.dumps({"v": 1.0, "type": "hello"}).encode()], "version"),
    ([_msg(type="command", command={**_scan_dict(), "x_nm": "12.5"})], "invalid"),
    ([_msg(type="command", command={**_scan_dict(), "rows": True})], "invalid"),
    ([_msg(type="command", command={**_scan_dict(), "rows": 32.5})], "invalid"),
    ([_msg(type="command", command={**_scan_dict(), "fov_nm": " 10 "})], "invalid"),
    # Every command carries its id and deadline on the wire.
    ([_msg(type="command", command={k: v for k, v in _scan_dict().items() if k != "id"})], "invalid"),
    ([_msg(type="command", command={k: v for k, v in _scan_dict().items() if k != "deadline_unix_s"})], "invalid"),
]


assert b"NaN" in CASES[13][0][0] and b"Infinity" in CASES[14][0][0]


@pytest.mark.parametrize(("parts", "code"), CASES)
def test_malformed_messages_get_a_specific_error(served, parts, code):
    driver, server, ctx = served
    sock = _raw(ctx, server)
    sock.send_multipart(parts)
    reply = _reply(sock)
    assert reply["type"] == "error" and reply["code"] == code, reply
    assert server.stats[f"error_{code}"] == 1
    assert driver.commands == []  # no state changed
    # The same connection still works afterwards.
    sock.send_multipart([_msg(type="hello")])
    assert _reply(sock)["type"] == "welcome"


def test_error_names_the_command_it_rejects(served):
    _, server, ctx = served
    sock = _raw(ctx, server)
    bad = {**_scan_dict(), "dwell_us": -3.0}
    sock.send_multipart([_msg(type="command", command=bad)])
    reply = _reply(sock)
    assert reply["code"] == "invalid" and reply["command_id"] == bad["id"] and "dwell_us" in reply["reason"]


def test_duplicates_and_expired_commands_are_dropped_and_said_so(served):
    driver, server, ctx = served
    sock = _raw(ctx, server)
    cmd = ScanCommand(x_nm=0, y_nm=0, fov_nm=4, rows=32, cols=32, dwell_us=1)
    sock.send_multipart(encode_command(cmd))
    assert _reply(sock)["ack"]["accepted"] is True
    assert json.loads(sock.recv_multipart()[0])["type"] in ("frame", "heartbeat")
    sock.send_multipart(encode_command(cmd))
    ack = _reply(sock)
    while ack["type"] == "frame":
        ack = _reply(sock)
    assert ack["ack"]["code"] == "duplicate" and not ack["ack"]["accepted"]
    late = ScanCommand(x_nm=0, y_nm=0, fov_nm=4, rows=32, cols=32, dwell_us=1, deadline_unix_s=time.time() - 5)
    sock.send_multipart(encode_command(late))
    ack = _reply(sock)
    assert ack["ack"]["code"] == "expired" and "deadline" in ack["ack"]["reason"]
    assert [c.id for c in driver.commands] == [cmd.id]  # executed exactly once


def test_oversized_message_is_dropped_and_others_are_still_served(served):
    driver, server, ctx = served
    big = _raw(ctx, server)
    big.send_multipart([_msg(type="hello", padding="x" * 10_000)])
    with RemoteDriver(server.endpoint, heartbeat_s=0.2) as other:
        other.send(ScanCommand(x_nm=0, y_nm=0, fov_nm=4, rows=32, cols=32, dwell_us=1))
        assert other.next_frame(5.0).header.shape == (32, 32)
    big.setsockopt(zmq.RCVTIMEO, 300)
    with pytest.raises(zmq.Again):
        big.recv_multipart()  # no welcome for the oversized hello
    assert [c.kind for c in driver.commands if c.kind != "blank"] == ["scan"]  # (the dead-man blanks after bye)


class _SlowDriver(InMemoryDriver):
    def send(self, command, timeout_s=5.0):
        time.sleep(0.3)  # a slow acquisition: the client leaves meanwhile
        return super().send(command, timeout_s)


def test_client_vanishing_mid_request_does_not_hurt_the_server():
    driver = _SlowDriver()
    ctx = _Sockets()
    server = InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.2).start()
    try:
        _vanish_and_check(driver, server, ctx)
    finally:
        ctx.close()
        server.stop()


def _vanish_and_check(driver, server, ctx):
    ghost = _raw(ctx, server)
    ghost.send_multipart(encode_command(ScanCommand(x_nm=0, y_nm=0, fov_nm=4, rows=512, cols=512, dwell_us=1)))
    deadline = time.time() + 5
    while server.stats["commands"] == 0 and time.time() < deadline:
        time.sleep(0.01)
    ghost.close(linger=0)
    deadline = time.time() + 5
    while server.stats["undeliverable"] == 0 and time.time() < deadline:
        time.sleep(0.02)
    assert server.stats["undeliverable"] >= 1
    with RemoteDriver(server.endpoint, heartbeat_s=0.2) as other:
        assert other.capabilities().instrument == driver.capabilities().instrument


def test_silent_clients_are_forgotten_after_three_heartbeats_and_must_say_hello_again(served):
    driver, server, ctx = served
    sock = _raw(ctx, server)
    assert server.clients == 1
    time.sleep(0.2 * 3 + 0.4)  # the raw client never sends heartbeats
    assert server.clients == 0 and server.stats["clients_lost"] == 1
    scan = ScanCommand(x_nm=0, y_nm=0, fov_nm=4, rows=16, cols=16, dwell_us=1)
    sock.send_multipart(encode_command(scan))
    reply = _reply(sock)
    assert reply["code"] == "hello_first" and reply["command_id"] == scan.id
    assert driver.commands == []


def test_a_command_before_hello_is_refused(served):
    driver, server, ctx = served
    sock = _raw(ctx, server, hello=False)
    sock.send_multipart(encode_command(BlankCommand()))
    assert _reply(sock)["code"] == "hello_first" and server.stats["error_hello_first"] == 1
    sock.send_multipart([_msg(type="hello")])
    assert _reply(sock)["type"] == "welcome"
    sock.send_multipart(encode_command(BlankCommand()))
    assert _reply(sock)["ack"]["accepted"] and [c.kind for c in driver.commands] == ["blank"]


def test_a_client_may_not_use_the_ids_reserved_to_the_server(served):
    driver, server, ctx = served
    sock = _raw(ctx, server)
    sock.send_multipart(encode_command(BlankCommand(id=f"{SERVER_ID_PREFIX}deadman:1")))
    assert _reply(sock)["code"] == "reserved_id" and driver.commands == []


class _NoFrameDriver(InMemoryDriver):
    def next_frame(self, timeout_s):
        from drivers.base import DriverTimeout

        raise DriverTimeout("the detector did not deliver")


class _FailingDetector(InMemoryDriver):
    """Fails an accepted scan at once: the server has the ack and the error together (as a frame would be)."""

    def next_frame(self, timeout_s):
        from drivers.base import Disconnected

        raise Disconnected("detector offline")


@pytest.mark.parametrize("driver", [_NoFrameDriver, _FailingDetector], ids=["no_frame_in_time", "fails_at_once"])
def test_accepted_scan_without_a_frame_is_reported_to_next_frame(driver):
    """RemoteDriver accepts ack_in_frame: an error that comes with the ack must not be taken for a frame."""
    from drivers.base import ProtocolError

    server = InstrumentServer(driver(), "tcp://127.0.0.1:0", heartbeat_s=0.2, frame_timeout_s=0.1).start()
    try:
        with RemoteDriver(server.endpoint, heartbeat_s=0.2) as remote:
            ack = remote.send(ScanCommand(x_nm=0, y_nm=0, fov_nm=4, rows=16, cols=16, dwell_us=1))
            assert ack.accepted  # acknowledged before the acquisition ended
            with pytest.raises(ProtocolError, match="accepted but no frame"):
                remote.next_frame(5.0)
        assert server.stats["frames_missing"] == 1
    finally:
        server.stop()


class _UnencodableFirstFrame(InMemoryDriver):
    """Its first frame's free-form metadata holds a numpy integer, which JSON cannot carry."""

    def _acquire(self, command):
        frame = super()._acquire(command)
        if frame.header.sequence > 0:
            return frame
        import numpy as np

        header = frame.header.model_copy(update={"metadata": {"counts": np.int64(3)}})
        return type(frame)(header, frame.image)


def test_a_frame_that_cannot_be_encoded_is_counted_and_its_ack_still_goes(caplog):
    caplog.set_level(logging.CRITICAL, logger="drivers.server")
    scan = {"x_nm": 0, "y_nm": 0, "fov_nm": 4, "rows": 16, "cols": 16, "dwell_us": 1}
    with (
        InstrumentServer(_UnencodableFirstFrame(), "tcp://127.0.0.1:0", heartbeat_s=0.2) as server,
        RemoteDriver(server.endpoint, heartbeat_s=0.2) as remote,
    ):
        remote.send(UnblankCommand())
        assert remote.send(ScanCommand(**scan)).accepted  # its ack came on its own
        assert remote.send(ScanCommand(**scan)).accepted
        frame = remote.next_frame(3.0)
        assert frame.header.sequence == 1 and remote.stats["frames_lost"] == 1  # the first shows as a gap
        assert server.stats["frames_unencodable"] == 1 and server.stats["internal_errors"] == 0


class _LongScan(InMemoryDriver):
    """An instrument whose every scan keeps the server's worker inside ``next_frame`` for ``scan_s``."""

    scan_s = 1.5
    _ready_at = 0.0

    def send(self, command, timeout_s=5.0):
        ack = super().send(command, timeout_s)
        if command.kind == "scan":
            self._ready_at = time.monotonic() + self.scan_s
        return ack

    def next_frame(self, timeout_s):
        wait_s = self._ready_at - time.monotonic()
        if wait_s > timeout_s:  # (the server waits in slices, looking for a stop in between)
            time.sleep(timeout_s)
            raise DriverTimeout("still scanning")
        time.sleep(max(wait_s, 0.0))
        return super().next_frame(timeout_s)


def test_messages_are_answered_while_the_worker_is_inside_a_long_acquisition():
    """The worker reads commands only between driver calls; the timekeeper must read for it meanwhile."""
    driver = _LongScan()
    with InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=1.0, deadman_s=None) as server:
        ctx = _Sockets()
        try:
            busy, other = _raw(ctx, server), _raw(ctx, server)
            busy.send_multipart(encode_command(UnblankCommand()))
            assert _reply(busy)["ack"]["accepted"]
            busy.send_multipart([_msg(type="command", command=_scan_dict())])
            assert _reply(busy)["ack"]["accepted"]  # the worker now waits for the frame, inside the driver
            time.sleep(0.2)
            t0 = time.monotonic()
            other.send_multipart([b"{not json"])
            assert _reply(other)["code"] == "json"
            answered_s = time.monotonic() - t0
            assert _reply(busy)["type"] == "frame"
        finally:
            ctx.close()
    assert answered_s < 0.5 * driver.scan_s  # answered during the acquisition, not after it
    assert server.stats["error_json"] == 1


def test_bad_messages_from_one_client_are_all_counted_but_only_the_first_few_logged(served, caplog):
    """A flood of bad messages costs a handful of warnings per window, not one per message."""
    _, server, ctx = served
    caplog.set_level(logging.WARNING, logger="drivers.server")
    noisy, quiet = _raw(ctx, server), _raw(ctx, server)
    for _ in range(40):
        noisy.send_multipart([b"{not json"])
    for _ in range(40):
        assert _reply(noisy)["code"] == "json"  # every one is still answered
    quiet.send_multipart([b"[1, 2, 3]"])
    assert _reply(quiet)["code"] == "envelope"
    assert server.stats["error_json"] == 40
    bad = [r.getMessage() for r in caplog.records if r.name == "drivers.server" and "bad message" in r.getMessage()]
    noisy_id = [m for m in bad if "json" in m]
    assert 1 <= len(noisy_id) <= 10, f"{len(noisy_id)} warnings for 40 bad messages from one client"
    assert any("envelope" in m for m in bad)  # another client's first bad message is still logged


def test_a_client_that_reads_nothing_cannot_freeze_the_server(caplog):
    """Replies to a client whose queue is full are dropped and counted; the server serves the others."""
    caplog.set_level(logging.ERROR, logger="drivers.server")  # (tens of thousands of warnings)
    driver = InMemoryDriver()
    with InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.5, deadman_s=None) as server:
        ctx = _Sockets()
        try:
            flood = ctx.socket(zmq.DEALER)
            for opt, value in ((zmq.LINGER, 0), (zmq.RCVHWM, 1), (zmq.RCVBUF, 4096), (zmq.SNDHWM, 100_000)):
                flood.setsockopt(opt, value)
            flood.connect(server.endpoint)
            deadline = time.monotonic() + 60.0
            sent = 0
            while server.stats["dropped_client_not_reading"] == 0 and time.monotonic() < deadline:
                try:
                    for _ in range(2000):  # each earns an error reply that the flooder never reads
                        flood.send(b"{not json", zmq.NOBLOCK)
                        sent += 1
                except zmq.Again:  # 100 000 unread by the server: it has stopped reading
                    break
                time.sleep(0.05)
            assert server.stats["dropped_client_not_reading"] > 0, f"no reply dropped after {sent} messages"
            while server.stats["error_json"] < sent and time.monotonic() < deadline:
                time.sleep(0.05)  # (a send blocked on the full queue would stop the reading here)
            assert server.stats["error_json"] == sent
            with RemoteDriver(server.endpoint, connect_timeout_s=5.0) as good:
                assert good.send(BlankCommand(), timeout_s=5.0).accepted
        finally:
            ctx.close()


def test_a_flood_from_one_client_does_not_stop_the_heartbeats_to_the_others():
    """A client sending faster than the server can answer keeps it reading; the others must stay connected.

    Logging stays as configured (warnings on): each bad message is a warning, and a flood must not cost a log
    record per message.
    """
    with InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", heartbeat_s=0.2, deadman_s=None) as server:
        ctx = _Sockets()
        good = RemoteDriver(server.endpoint, heartbeat_s=0.2)  # gone after 0.6 s without a heartbeat
        stop = threading.Event()

        def flood() -> None:  # at line rate: each message earns an error reply, which is never read
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.SNDHWM, 1_000_000)
            sock.connect(server.endpoint)
            while not stop.is_set():
                for _ in range(500):
                    try:
                        sock.send(b"{not json", zmq.NOBLOCK)
                    except zmq.Again:
                        break

        flooder = threading.Thread(target=flood, daemon=True)
        try:
            beats_before = good.stats["heartbeats_in"]
            flooder.start()
            time.sleep(2.5)
            assert server.stats["error_json"] > 1000  # the flood arrived and was being read
            assert good.connected and good.stats["disconnects"] == 0
            assert good.stats["heartbeats_in"] - beats_before >= 5  # ~12 due in 2.5 s
            assert good.send(BlankCommand(), timeout_s=5.0).accepted
        finally:
            stop.set()
            flooder.join(5.0)
            good.close()
            ctx.close()


@pytest.mark.parametrize(
    "bound",
    [{"max_queued_per_client": 8}, {"max_frame_bytes_per_client": 8 * 2**20}],
    ids=["messages", "frame_bytes"],
)
def test_a_client_that_stops_reading_costs_the_server_a_bounded_number_of_frames(caplog, bound):
    """Frames for a client that reads nothing are held up to the per-client bound, then dropped and counted.

    Either bound: 8 messages (the ROUTER's high-water mark), or 8 MiB of frames with libzmq's 1 000 messages.
    """
    caplog.set_level(logging.ERROR, logger="drivers.server")
    scans = 60
    # (heartbeats every 30 s: the raw client sends none, and must neither be forgotten nor see one here)
    with InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", heartbeat_s=30.0, deadman_s=None, **bound) as server:
        ctx = _Sockets()
        try:
            sock = ctx.socket(zmq.DEALER)  # its own queue and the kernel's hold little of the backlog
            for opt, value in ((zmq.LINGER, 0), (zmq.RCVHWM, 1), (zmq.RCVBUF, 65536), (zmq.RCVTIMEO, 3000)):
                sock.setsockopt(opt, value)
            sock.connect(server.endpoint)
            sock.send_multipart([_msg(type="hello", accepts=["ack_in_frame"])])
            assert _reply(sock)["type"] == "welcome"
            sock.send_multipart(encode_command(UnblankCommand()))
            scan = ScanCommand(x_nm=0, y_nm=0, fov_nm=4, rows=512, cols=512, dwell_us=1)  # 1 MiB frames
            for _ in range(scans):  # nothing is read until all have been answered
                sock.send_multipart(encode_command(scan.model_copy(update={"id": f"scan-{_}"})))
            deadline = time.monotonic() + 30
            while server.stats["frames"] < scans and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.stats["frames"] == scans
            dropped = server.stats["dropped_client_not_reading"]
            received: list[dict] = []
            while sock.poll(1000):  # what was held for us, until the line is quiet
                received.append(json.loads(sock.recv_multipart()[0]))
            frames = [m for m in received if m["type"] == "frame"]
            assert dropped > 0 and len(frames) < scans
            assert len(frames) <= 8 + 8, f"{len(frames)} of {scans} frames were held for the client"
            if "max_frame_bytes_per_client" in bound:  # (acks are small: only the message bound drops them)
                acks = [m["ack"] for m in received if m["type"] == "ack"] + [m["ack"] for m in frames]
                assert sorted(a["command_id"] for a in acks if a["kind"] == "scan") == sorted(
                    f"scan-{i}" for i in range(scans)
                ), "a scan whose frame was dropped must still get its ack"
            # The drops show as a gap: the next frame carries the delivery number after all of them.
            sock.send_multipart(encode_command(scan.model_copy(update={"id": "scan-after"})))
            after = json.loads(sock.recv_multipart()[0])
            while after["type"] != "frame":  # (its ack first)
                after = json.loads(sock.recv_multipart()[0])
            assert after["delivery_seq"] == scans
        finally:
            ctx.close()


def test_a_heartbeat_stamp_that_is_no_finite_number_is_answered_without_a_traceback(served, caplog):
    """A 400-digit JSON integer: float() overflowed, each logged a traceback; a string was taken silently."""
    _driver, server, ctx = served
    sock = _raw(ctx, server)
    with caplog.at_level(logging.ERROR, logger="drivers.server"):
        for t in (10**400, "yesterday"):
            sock.send_multipart([_msg(type="heartbeat", t=t)])
            reply = _reply(sock)
            assert reply["type"] == "error" and reply["code"] == "invalid" and "heartbeat t" in reply["reason"]
        sock.send_multipart([_msg(type="command", command=_scan_dict())])
        assert _reply(sock)["type"] == "ack"  # still served
    assert server.stats["internal_errors"] == 0 and not caplog.records


def test_a_remote_driver_outlives_a_heartbeat_echo_too_large_for_a_float():
    """The client's I/O thread died on it: connected forever, every command timing out."""
    from drivers.codec import finite_number

    assert finite_number(10**400) is None and finite_number(-(10**400)) is None and finite_number(3) == 3.0
    driver = InMemoryDriver()
    with InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.2) as server:
        with RemoteDriver(server.endpoint, heartbeat_s=0.2) as remote:
            remote._note_round_trip(10**400, 10**400)  # (what a heartbeat carrying them calls)
            assert remote.send(UnblankCommand(), timeout_s=3.0).accepted


def test_frames_are_numbered_from_zero_after_each_welcome(served):
    """PROTOCOL.md: delivery_seq starts at 0 after each welcome (it went on: 0, 1, then 2 after a second hello)."""
    _driver, server, ctx = served
    sock = _raw(ctx, server)
    sock.send_multipart([_msg(type="command", command=UnblankCommand().model_dump(mode="json"))])
    assert _reply(sock)["type"] == "ack"

    def scan_seq() -> int:
        sock.send_multipart([_msg(type="command", command=_scan_dict())])
        while (reply := _reply(sock))["type"] != "frame":
            pass
        return int(reply["delivery_seq"])

    assert [scan_seq(), scan_seq()] == [0, 1]
    sock.send_multipart([_msg(type="hello")])
    assert _reply(sock)["type"] == "welcome"
    assert scan_seq() == 0
