"""RemoteDriver against real and fake servers: bad frames, loss, heartbeats, reconnect, observers, CURVE."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import zmq

from drivers.base import (
    PROTOCOL_VERSION,
    Ack,
    BlankCommand,
    Disconnected,
    DriverTimeout,
    Frame,
    ProtocolError,
    ScanCommand,
    UnblankCommand,
)
from drivers.codec import decode_envelope, decode_frame, encode_ack, encode_frame, encode_welcome, envelope
from drivers.memory import DEFAULT_CAPABILITIES, InMemoryDriver
from drivers.remote import RemoteDriver
from drivers.security import CurveClientKeys, CurveServerKeys, check_bind, new_keypair
from drivers.server import InstrumentServer


class FakeServer:
    """A ROUTER that welcomes clients and sends whatever the test scripts, nothing more."""

    def __init__(self, heartbeat: bool = True, announced_heartbeat_s: float = 0.2) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:0")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.heartbeat = heartbeat
        self.announced_heartbeat_s = announced_heartbeat_s
        self.client: bytes | None = None
        self.outgoing: list[list] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        last_beat = 0.0
        while not self.stop.is_set():
            if self.sock.poll(20):
                identity, *parts = self.sock.recv_multipart()
                if json.loads(parts[0])["type"] == "hello":
                    self.client = identity
                    self.sock.send_multipart(
                        [identity, *encode_welcome(DEFAULT_CAPABILITIES, self.announced_heartbeat_s, time.time())]
                    )
            with self.lock:
                out, self.outgoing = self.outgoing, []
            for parts in out:
                self.sock.send_multipart([self.client, *parts])
            if self.heartbeat and self.client and time.monotonic() - last_beat > 0.2:
                self.sock.send_multipart([self.client, envelope("heartbeat", t=time.time())])
                last_beat = time.monotonic()

    def send(self, parts: list) -> None:
        with self.lock:
            self.outgoing.append(parts)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close(linger=0)
        self.ctx.term()


def _frame(rows=16, cols=16, dtype="float32") -> Frame:
    return Frame.of(np.zeros((rows, cols), dtype=dtype), 1.0 / cols)


@pytest.fixture
def fake():
    server = FakeServer()
    yield server
    server.close()


def test_bad_frames_are_dropped_and_counted(fake):
    with RemoteDriver(fake.endpoint, heartbeat_s=0.2, max_frame_bytes=4096) as remote:
        good = encode_frame(_frame(), 0)
        fake.send([good[0], bytes(good[1])[:-4]])  # buffer shorter than the header says
        head = json.loads(good[0])
        head["header"]["dtype"] = "complex128"
        fake.send([json.dumps(head).encode(), bytes(good[1])])  # dtype outside the schema
        big = encode_frame(_frame(64, 64), 1)
        fake.send([big[0], bytes(big[1])])  # 16 KiB frame over the 4 KiB limit
        fake.send([good[0]])  # frame message without its buffer
        fake.send(encode_frame(_frame(), 2))
        with pytest.raises(ProtocolError, match="too_large"):  # a frame over the limit is reported in its place
            remote.next_frame(3.0)
        frame = remote.next_frame(3.0)
        assert frame.header.shape == (16, 16)
        with pytest.raises(DriverTimeout):
            remote.next_frame(0.3)
        s = remote.stats
        assert s["error_shape_mismatch"] == 1 and s["error_invalid"] == 1 and s["error_too_large"] == 1
        assert s["error_parts"] == 1 and s["frames"] == 1


def test_lost_frames_are_detected_and_counted(fake):
    with RemoteDriver(fake.endpoint, heartbeat_s=0.2) as remote:
        for seq in (0, 1, 4, 5, 9):
            fake.send(encode_frame(_frame(), seq))
        for _ in range(5):
            remote.next_frame(3.0)
        assert remote.stats["frames_lost"] == 5  # 2, 3, 6, 7, 8


def test_silent_server_is_declared_gone_within_three_heartbeats():
    fake = FakeServer(heartbeat=False)
    try:
        remote = RemoteDriver(fake.endpoint, heartbeat_s=0.2, reconnect=False)
        t0 = time.monotonic()
        while remote.connected and time.monotonic() - t0 < 3:
            time.sleep(0.01)
        assert not remote.connected
        assert time.monotonic() - t0 < 0.2 * 3 + 0.4
        with pytest.raises(Disconnected):
            remote.send(BlankCommand())
        remote.close()
    finally:
        fake.close()


def test_a_server_announcing_a_very_slow_heartbeat_is_still_declared_gone_in_bounded_time(monkeypatch, caplog):
    import drivers.codec

    monkeypatch.setattr(drivers.codec, "MAX_SERVER_HEARTBEAT_S", 0.3)  # the bound, shortened for the test
    fake = FakeServer(heartbeat=False, announced_heartbeat_s=1e6)  # "wait eleven days for my next beat"
    try:
        with caplog.at_level("WARNING", logger="drivers.remote"):
            remote = RemoteDriver(fake.endpoint, heartbeat_s=0.1, reconnect=False)
        t0 = time.monotonic()
        while remote.connected and time.monotonic() - t0 < 5:
            time.sleep(0.01)
        assert not remote.connected and time.monotonic() - t0 < 3 * 0.3 + 0.5
        assert "heartbeat every 1000000.0 s" in caplog.text
        remote.close()
    finally:
        fake.close()


def test_pending_call_fails_when_the_server_dies():
    fake = FakeServer(heartbeat=True)
    remote = RemoteDriver(fake.endpoint, heartbeat_s=0.2, reconnect=False)
    fake.heartbeat = False  # frozen: accepts the command, never answers
    t0 = time.monotonic()
    with pytest.raises(Disconnected, match="lost"):
        remote.send(BlankCommand(), timeout_s=5.0)
    assert time.monotonic() - t0 < 1.5
    remote.close()
    fake.close()


def test_reconnects_after_the_server_restarts():
    driver = InMemoryDriver()
    server = InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.2).start()
    endpoint = server.endpoint
    remote = RemoteDriver(endpoint, heartbeat_s=0.2)
    try:
        server.stop()
        deadline = time.monotonic() + 3
        while remote.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not remote.connected
        with pytest.raises(Disconnected):
            remote.send(BlankCommand())  # never queued for later delivery
        server = InstrumentServer(driver, endpoint, heartbeat_s=0.2).start()
        deadline = time.monotonic() + 5
        while not remote.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert remote.connected and remote.stats["reconnects"] >= 1
        after = BlankCommand()
        assert remote.send(after).accepted
        # the stopped server's own blank, then the one sent after the reconnect; none sent during the outage
        assert [c.kind for c in driver.commands] == ["blank", "blank"] and driver.commands[-1].id == after.id
    finally:
        remote.close()
        server.stop()


def test_a_command_the_io_thread_had_not_sent_when_the_link_broke_never_goes_out_on_the_next_one(monkeypatch):
    driver = InMemoryDriver()
    server = InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.2).start()
    endpoint = server.endpoint
    remote = RemoteDriver(endpoint, heartbeat_s=0.2)
    try:
        wake = remote._wake
        monkeypatch.setattr(remote, "_wake", lambda: None)  # a busy I/O thread: the command waits in its queue
        early = remote.submit(UnblankCommand())
        server.stop()  # the link breaks with the command still queued
        server = InstrumentServer(driver, endpoint, heartbeat_s=0.2).start()
        deadline = time.monotonic() + 5
        while (remote.stats["disconnects"] == 0 or not remote.connected) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert remote.connected and remote.stats["disconnects"] == 1
        monkeypatch.setattr(remote, "_wake", wake)
        assert remote.send(BlankCommand()).accepted  # its wake-up flushes the queue on the new connection
        with pytest.raises(Disconnected):
            early.result(1.0)
        assert [c.kind for c in driver.commands] == ["blank", "blank"]  # the stop's and ours: no unblank, ever
        assert remote.stats["unsent_connection_lost"] == 1
    finally:
        remote.close()
        server.stop()


def test_observers_receive_every_frame_on_the_pub_socket():
    server = InstrumentServer(
        InMemoryDriver(), "tcp://127.0.0.1:0", pub_endpoint="tcp://127.0.0.1:0", heartbeat_s=0.2
    ).start()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"frame")
    sub.connect(server.pub_endpoint)
    time.sleep(0.3)  # let the subscription propagate
    try:
        with RemoteDriver(server.endpoint, heartbeat_s=0.2) as remote:
            for _ in range(3):
                remote.send(ScanCommand(x_nm=0, y_nm=0, fov_nm=2, rows=20, cols=30, dwell_us=1))
                remote.next_frame(5.0)
        seqs = []
        for _ in range(3):
            assert sub.poll(3000)
            topic, head, buf = sub.recv_multipart()
            frame, seq = decode_frame(decode_envelope([head, buf]), buf, 1 << 20)
            assert topic == b"frame" and frame.image.shape == (20, 30)
            seqs.append(seq)
        assert seqs == [0, 1, 2]
    finally:
        sub.close(linger=0)
        ctx.term()
        server.stop()


def test_an_observer_that_stops_reading_costs_the_server_a_bounded_number_of_frames():
    """The PUB socket holds at most ``max_queued_per_observer`` frames for a stalled observer, then drops its share."""
    server = InstrumentServer(
        InMemoryDriver(), "tcp://127.0.0.1:0", pub_endpoint="tcp://127.0.0.1:0", max_queued_per_observer=4
    ).start()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)  # its own queue and the kernel's hold little of the backlog
    for opt, value in ((zmq.LINGER, 0), (zmq.RCVHWM, 1), (zmq.RCVBUF, 65536), (zmq.SUBSCRIBE, b"frame")):
        sub.setsockopt(opt, value)
    sub.connect(server.pub_endpoint)
    time.sleep(0.3)  # let the subscription propagate
    scans = 40
    try:
        # the default heartbeat: 40 MiB through a busy 2-core machine can hold a reply up past 0.6 s,
        # and this test is about the observer's queue, not about noticing a lost server
        with RemoteDriver(server.endpoint) as remote:
            remote.send(UnblankCommand())
            scan = ScanCommand(x_nm=0, y_nm=0, fov_nm=4, rows=512, cols=512, dwell_us=1)  # 1 MiB frames
            for _ in range(scans):  # the observer reads none of them meanwhile
                remote.send(scan.model_copy(update={"id": f"scan-{_}"}))
                remote.next_frame(5.0)
            held = []
            while sub.poll(1000):  # what was held for the observer, until the line is quiet
                held.append(decode_envelope(sub.recv_multipart()[1:])["delivery_seq"])
            remote.send(scan.model_copy(update={"id": "scan-after"}))
            remote.next_frame(5.0)
            assert sub.poll(3000)
            after = decode_envelope(sub.recv_multipart()[1:])["delivery_seq"]
    finally:
        sub.close(linger=0)
        ctx.term()
        server.stop()
    assert 0 < len(held) <= 4 + 8, f"{len(held)} of {scans} frames were held for the observer"
    assert held == sorted(held) and after == scans  # the drops show as a gap in the stream's sequence


def test_curve_admits_only_allowed_client_keys():
    server_pub, server_sec = new_keypair()
    good_pub, good_sec = new_keypair()
    bad_pub, bad_sec = new_keypair()
    keys = CurveServerKeys(server_pub, server_sec, frozenset({good_pub}))
    server = InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", heartbeat_s=0.2, curve=keys).start()
    try:
        with RemoteDriver(
            server.endpoint, heartbeat_s=0.2, curve=CurveClientKeys(good_pub, good_sec, server_pub)
        ) as remote:
            assert remote.send(BlankCommand()).accepted
        with pytest.raises(Disconnected):
            RemoteDriver(
                server.endpoint,
                heartbeat_s=0.2,
                connect_timeout_s=1.0,
                curve=CurveClientKeys(bad_pub, bad_sec, server_pub),
            )
        with pytest.raises(Disconnected):  # no keys at all
            RemoteDriver(server.endpoint, heartbeat_s=0.2, connect_timeout_s=1.0)
    finally:
        server.stop()


def test_a_restarted_server_that_no_longer_allows_the_client_is_reported_not_retried_in_silence(caplog):
    server_pub, server_sec = new_keypair()
    client_pub, client_sec = new_keypair()
    other_pub, _ = new_keypair()
    allowed = CurveServerKeys(server_pub, server_sec, frozenset({client_pub}))
    server = InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", heartbeat_s=0.2, curve=allowed).start()
    endpoint = server.endpoint
    remote = RemoteDriver(endpoint, heartbeat_s=0.2, curve=CurveClientKeys(client_pub, client_sec, server_pub))
    try:
        server.stop()
        changed = CurveServerKeys(server_pub, server_sec, frozenset({other_pub}))  # the allow-list lost this client
        server = InstrumentServer(InMemoryDriver(), endpoint, heartbeat_s=0.2, curve=changed)
        with caplog.at_level("WARNING", logger="drivers.remote"):
            server.start()
            deadline = time.monotonic() + 10
            while remote.stats["auth_refused"] < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert remote.stats["auth_refused"] >= 2 and not remote.connected
        assert caplog.text.count("refuses this client's CURVE keys on reconnection") == 1  # said once, counted on
    finally:
        remote.close()
        server.stop()


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:5555", "tcp://192.0.2.7:5555", "tcp://*:5555"])
def test_non_loopback_bind_needs_keys_or_insecure(endpoint):
    with pytest.raises(ValueError, match="refusing to bind"):
        check_bind(endpoint, None, insecure=False)
    check_bind(endpoint, None, insecure=True)
    check_bind("tcp://127.0.0.1:5555", None, insecure=False)
    assert PROTOCOL_VERSION == 1


def test_submitted_scans_stay_in_flight_and_arrive_in_order():
    driver = InMemoryDriver()
    server = InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.2).start()
    try:
        with RemoteDriver(server.endpoint, heartbeat_s=0.2) as remote:
            scans = [ScanCommand(x_nm=i, y_nm=0, fov_nm=2, rows=16, cols=16, dwell_us=1) for i in range(4)]
            pending = [remote.submit(s) for s in scans]  # nothing waits for an ack before the next is sent
            frames = [remote.next_frame(5.0) for _ in scans]
            assert [p.result(5.0).command_id for p in pending] == [s.id for s in scans]
            assert [f.header.command_id for f in frames] == [s.id for s in scans]
            refused = remote.submit(ScanCommand(x_nm=1e6, y_nm=0, fov_nm=2, rows=16, cols=16, dwell_us=1))
            ack = refused.result(5.0)
            assert not ack.accepted and "x_nm" in ack.reason
    finally:
        server.stop()


def test_submit_fails_at_once_when_not_connected():
    driver = InMemoryDriver()
    server = InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.2).start()
    remote = RemoteDriver(server.endpoint, heartbeat_s=0.2, reconnect=False)
    server.stop()
    deadline = time.monotonic() + 3
    while remote.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    refused = BlankCommand()
    with pytest.raises(Disconnected):
        remote.submit(refused)
    remote.close()
    assert refused.id not in [c.id for c in driver.commands]  # only the stopped server's own blank ran


def test_heartbeat_round_trip_is_measured_from_the_servers_echo():
    server = InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", heartbeat_s=0.05).start()
    try:
        with RemoteDriver(server.endpoint, heartbeat_s=0.05) as remote:
            t0 = time.monotonic()
            while (remote.heartbeat_rtt_ms() or {"n": 0})["n"] < 5 and time.monotonic() - t0 < 5.0:
                time.sleep(0.02)
            rtt = remote.heartbeat_rtt_ms()
    finally:
        server.stop()
    assert rtt is not None and rtt["n"] >= 5
    assert 0.0 <= rtt["p50"] <= rtt["p99"] <= rtt["max"] < 1000.0


def test_echoes_that_make_no_sense_are_left_out_of_the_round_trip(fake):
    with RemoteDriver(fake.endpoint, heartbeat_s=0.2) as remote:
        assert remote.heartbeat_rtt_ms() is None  # the fake server never echoes
        now = time.time()
        fake.send([envelope("heartbeat", t=now, echo_t=now - 0.010, held_s=0.004)])  # 6 ms
        for echo_t, held_s in ((now, 120.0), (now - 3600.0, 0.0), ("soon", 0.0), (now, True)):  # < 0, > 60 s, types
            fake.send([envelope("heartbeat", t=now, echo_t=echo_t, held_s=held_s)])
        time.sleep(0.3)
        rtt = remote.heartbeat_rtt_ms()
        assert remote.connected
    assert rtt is not None and rtt["n"] == 1 and 6.0 <= rtt["p50"] < 300.0


def test_a_late_ack_and_an_ack_for_no_command_are_ignored_and_counted(fake):
    """F3's 'stale acks ignored and counted': an ack whose caller gave up never answers a later call."""
    with RemoteDriver(fake.endpoint, heartbeat_s=0.2) as remote:
        late = BlankCommand()
        with pytest.raises(DriverTimeout):
            remote.send(late, timeout_s=0.3)  # the fake server never acks on its own
        fake.send(encode_ack(Ack(command_id=late.id, kind="blank", accepted=True)))
        fake.send(encode_ack(Ack(command_id="nobody-asked", kind="scan", accepted=True)))
        deadline = time.monotonic() + 3.0
        while remote.stats["stale_acks"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert remote.stats["stale_acks"] == 2
        current = UnblankCommand()
        pending = remote.submit(current)
        fake.send(encode_ack(Ack(command_id=current.id, kind="unblank", accepted=True)))
        assert pending.result(3.0).command_id == current.id and remote.stats["stale_acks"] == 2


def _next_reply(sock: zmq.Socket, timeout_ms: int = 3000) -> list[bytes] | None:
    """The next message other than a heartbeat, or None if none comes within ``timeout_ms``."""
    deadline = time.monotonic() + timeout_ms / 1e3
    while (left_ms := int(1e3 * (deadline - time.monotonic()))) > 0:
        if not sock.poll(left_ms):
            return None
        parts = sock.recv_multipart()
        if decode_envelope(parts[:2])["type"] != "heartbeat":
            return parts
    return None


@pytest.mark.parametrize("accepts", [["ack_in_frame"], []])
def test_a_scan_ready_at_once_brings_its_ack_inside_the_frame_only_to_clients_that_accept_it(accepts):
    server = InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", heartbeat_s=0.2).start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(server.endpoint)
        sock.send(envelope("hello", client="test", accepts=accepts))
        assert decode_envelope(_next_reply(sock))["type"] == "welcome"
        for command in (UnblankCommand(), ScanCommand(x_nm=0, y_nm=0, fov_nm=4, rows=32, cols=32, dwell_us=1)):
            sock.send(envelope("command", command=command.model_dump(mode="json")))
        assert decode_envelope(_next_reply(sock))["ack"]["kind"] == "unblank"
        replies = [_next_reply(sock), _next_reply(sock, timeout_ms=500)]
    finally:
        sock.close(linger=0)
        ctx.term()
        server.stop()
    first = decode_envelope(replies[0][:2])
    if accepts:  # one message: the frame, carrying the scan's ack; nothing after it
        assert first["type"] == "frame" and first["ack"]["accepted"] and first["ack"]["kind"] == "scan"
        assert first["ack"]["command_id"] == first["header"]["command_id"] and replies[1] is None
    else:  # the ack, then the frame without one
        second = decode_envelope(replies[1][:2])
        assert first["type"] == "ack" and first["ack"]["kind"] == "scan"
        assert second["type"] == "frame" and "ack" not in second


def test_an_ack_inside_a_frame_answers_its_scan_even_when_the_frame_is_dropped(fake):
    scan = {"x_nm": 0.0, "y_nm": 0.0, "fov_nm": 1.0, "rows": 16, "cols": 16, "dwell_us": 1.0}
    with RemoteDriver(fake.endpoint, heartbeat_s=0.2, max_frame_bytes=4096) as remote:
        dropped, delivered = ScanCommand(**scan), ScanCommand(**scan)
        pending = [remote.submit(dropped), remote.submit(delivered)]
        fake.send(encode_frame(_frame(64, 64), 0, ack=Ack.accept(dropped)))  # 16 KiB: over the 4 KiB limit
        fake.send(encode_frame(_frame(), 1, ack=Ack.accept(delivered)))
        with pytest.raises(ProtocolError, match="too_large"):
            remote.next_frame(3.0)
        frame = remote.next_frame(3.0)
        acks = [p.result(3.0) for p in pending]
        assert [a.command_id for a in acks] == [dropped.id, delivered.id] and all(a.accepted for a in acks)
        assert frame.header.shape == (16, 16)
        assert remote.stats["error_too_large"] == 1 and remote.stats["frames"] == 1


def test_a_burst_of_wake_ups_the_io_thread_has_not_read_never_raises():
    with InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", heartbeat_s=0.2) as server:
        with RemoteDriver(server.endpoint) as remote:
            held = threading.Event()
            pending = remote.submit(UnblankCommand())
            pending.add_done_callback(lambda _f: held.wait(2.0))  # (runs on the I/O thread: it reads nothing)
            pending.result(timeout=5.0)
            for _ in range(5000):  # beyond the wake socket's high-water mark
                remote._wake()
            held.set()
            assert remote.send(BlankCommand(), timeout_s=5.0).accepted


@pytest.mark.parametrize("timeout_s", [0.0, -1.0])
def test_a_send_that_would_not_wait_is_refused_before_anything_is_sent(timeout_s):
    driver = InMemoryDriver()
    with InstrumentServer(driver, "tcp://127.0.0.1:0") as server, RemoteDriver(server.endpoint) as remote:
        with pytest.raises(ValueError, match="positive"):
            remote.send(UnblankCommand(), timeout_s=timeout_s)
        time.sleep(0.2)
    assert not [c for c in driver.commands if c.kind == "unblank"]


def test_a_client_the_server_forgot_during_a_stall_notices_and_its_dropped_command_fails():
    from drivers.base import SetTiltCommand

    class SlowTilt(InMemoryDriver):
        def send(self, command, timeout_s: float = 5.0):
            if command.kind == "set_tilt" and command.tilt_deg == 5.0:
                time.sleep(2.0)
            return super().send(command, timeout_s)

    with InstrumentServer(SlowTilt(), "tcp://127.0.0.1:0", heartbeat_s=0.2) as server:
        with RemoteDriver(server.endpoint) as remote:  # (its own heartbeat 1 s: the server's 0.2 s rules)
            remote.submit(SetTiltCommand(tilt_deg=5.0))  # 2 s in the driver
            behind = remote.submit(SetTiltCommand(tilt_deg=6.0))  # waits behind it on the server
            late = remote.submit(SetTiltCommand(tilt_deg=7.0, deadline_unix_s=time.time() - 1))  # answered at once
            late.add_done_callback(lambda _f: time.sleep(1.2))  # the client's I/O thread stalls: forgotten
            with pytest.raises(Disconnected):
                behind.result(timeout=6.0)
            assert server.stats["clients_lost"] >= 1 and remote.stats["disconnects"] >= 1
            deadline = time.monotonic() + 5.0
            while not remote.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            assert remote.send(SetTiltCommand(tilt_deg=8.0), timeout_s=5.0).accepted  # a fresh session


def test_a_server_of_another_version_met_on_reconnection_is_reported_not_waited_for():
    driver = InMemoryDriver()
    server = InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.2).start()
    endpoint = server.endpoint
    remote = RemoteDriver(endpoint, heartbeat_s=0.2)
    try:
        server.stop()
        ctx = zmq.Context()
        newer = ctx.socket(zmq.ROUTER)
        newer.setsockopt(zmq.LINGER, 0)
        newer.bind(endpoint)  # a server speaking another protocol version comes up on the port
        refusal = {"v": PROTOCOL_VERSION + 1, "type": "error", "code": "version", "reason": "v2 only"}
        deadline = time.monotonic() + 5.0
        while remote._fatal is None and time.monotonic() < deadline:
            if newer.poll(50):
                identity, *_ = newer.recv_multipart()
                newer.send_multipart([identity, json.dumps(refusal).encode()])
        newer.close()
        ctx.term()
        with pytest.raises(Disconnected, match="will not be reconnected to: version"):
            remote.next_frame(1.0)
        with pytest.raises(Disconnected, match="version"):
            remote.send(BlankCommand(), timeout_s=1.0)
    finally:
        remote.close()
