"""The wire under conditions a session meets: stops during scans, mismatched heartbeats, bursts, bad input."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from drivers.base import Ack, DriverTimeout, Frame, ScanCommand, StopCommand, UnblankCommand
from drivers.memory import DEFAULT_CAPABILITIES, InMemoryDriver
from drivers.remote import RemoteDriver
from drivers.server import InstrumentServer


class SlowScanDriver:
    """Like a vendor driver: ``send(scan)`` starts an acquisition of ``scan_s``; ``stop`` aborts it at once."""

    def __init__(self, scan_s: float = 4.0, deliver_stopped: bool = False) -> None:
        self.scan_s, self.deliver_stopped = scan_s, deliver_stopped
        self.log: list[tuple[float, str]] = []
        self.t0 = time.monotonic()
        self._done = threading.Event()
        self._scan: ScanCommand | None = None

    def capabilities(self):
        return DEFAULT_CAPABILITIES

    def send(self, command, timeout_s: float = 5.0) -> Ack:
        self.log.append((time.monotonic() - self.t0, command.kind))
        if isinstance(command, ScanCommand):
            self._done.clear()
            self._scan = command
            threading.Timer(self.scan_s, self._done.set).start()
        elif command.kind == "stop" and not self.deliver_stopped:
            self._scan = None  # aborted: no frame
        return Ack.accept(command)

    def next_frame(self, timeout_s: float) -> Frame:
        if not self._done.wait(timeout_s) or self._scan is None:
            time.sleep(min(timeout_s, 0.05))
            raise DriverTimeout("no frame")
        self._done.clear()
        scan = self._scan
        return Frame.of(np.zeros((scan.rows, scan.cols), np.float32), 0.1, command_id=scan.id)

    def close(self) -> None:
        pass


def _scan(**changes) -> ScanCommand:
    return ScanCommand(
        **({"x_nm": 0.0, "y_nm": 0.0, "fov_nm": 10.0, "rows": 64, "cols": 64, "dwell_us": 1.0} | changes)
    )


def test_a_stop_during_a_long_scan_reaches_the_driver_at_once_not_after_the_frame():
    driver = SlowScanDriver(scan_s=4.0)
    with InstrumentServer(driver, "tcp://127.0.0.1:0") as server, RemoteDriver(server.endpoint) as remote:
        remote.send(UnblankCommand())
        remote.send(_scan())
        time.sleep(0.5)
        t0 = time.monotonic()
        remote.send(StopCommand(), timeout_s=10.0)
        assert time.monotonic() - t0 < 1.0
        with pytest.raises(Exception, match="stopped"):  # the stopped scan says why no frame comes
            remote.next_frame(5.0)
    kinds = [kind for _, kind in driver.log]
    assert kinds[:3] == ["unblank", "scan", "stop"]
    stop_at = dict((k, t) for t, k in driver.log)["stop"]
    assert stop_at < 2.0  # during the 4 s scan


class LateDriver:
    """Delivers each scan's frame after its own delay, into one queue (the first one after it was given up)."""

    def __init__(self, delays_s: list[float]) -> None:
        import queue

        self.delays_s = list(delays_s)
        self.frames: queue.Queue[Frame] = queue.Queue()

    def capabilities(self):
        return DEFAULT_CAPABILITIES

    def send(self, command, timeout_s: float = 5.0) -> Ack:
        if isinstance(command, ScanCommand):
            frame = Frame.of(np.zeros((command.rows, command.cols), np.float32), 0.1, command_id=command.id)
            threading.Timer(self.delays_s.pop(0), self.frames.put, (frame,)).start()
        return Ack.accept(command)

    def next_frame(self, timeout_s: float) -> Frame:
        import queue

        try:
            return self.frames.get(timeout=timeout_s)
        except queue.Empty:
            raise DriverTimeout("no frame") from None

    def close(self) -> None:
        pass


def test_a_frame_of_a_given_up_scan_is_not_passed_off_as_the_next_scans():
    driver = LateDriver([1.3, 0.6])  # the first frame comes after the server gave up on it (1 s)
    server = InstrumentServer(driver, "tcp://127.0.0.1:0", frame_timeout_s=1.0).start()
    try:
        with RemoteDriver(server.endpoint) as remote:
            remote.send(UnblankCommand())
            first, second = _scan(), _scan()
            remote.send(first)
            with pytest.raises(Exception, match="no frame came"):
                remote.next_frame(3.0)
            remote.send(second)  # the first scan's frame arrives while the server waits for this one's
            assert remote.next_frame(5.0).header.command_id == second.id
        assert server.stats["stale_frames"] == 1
    finally:
        server.stop()


def _wait_until(condition, timeout_s: float = 5.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_a_client_beating_slower_than_the_server_is_not_forgotten():
    from drivers.memory import InMemoryDriver

    with (
        InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", heartbeat_s=0.2, deadman_s=None) as server,
        RemoteDriver(server.endpoint, heartbeat_s=1.0) as remote,
    ):
        time.sleep(1.5)  # idle: three of the server's beats pass between two of the client's own
        for _ in range(5):
            remote.send(UnblankCommand())
        assert server.stats["clients_lost"] == 0


def test_a_server_beating_slower_than_the_client_is_not_declared_dead():
    from drivers.memory import InMemoryDriver

    with (
        InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", heartbeat_s=2.0, deadman_s=10.0) as server,
        RemoteDriver(server.endpoint, heartbeat_s=0.3) as remote,
    ):
        remote.send(UnblankCommand())
        time.sleep(2.5)
        remote.send(UnblankCommand())
        assert remote.stats["disconnects"] == 0 and server.stats["deadman_blanks"] == 0


def test_a_client_the_server_forgot_says_hello_again():
    from drivers.base import ProtocolError
    from drivers.memory import InMemoryDriver

    with (
        InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", deadman_s=None) as server,
        RemoteDriver(server.endpoint) as remote,
    ):
        remote.send(UnblankCommand())
        with server._lock:  # as after a long stall of the client's process
            for identity in list(server._clients):
                server._forget(identity)
        with pytest.raises(ProtocolError, match="hello_first"):
            remote.send(UnblankCommand())
        assert _wait_until(lambda: remote.connected and remote.stats["reconnects"] >= 1)
        assert remote.send(UnblankCommand()).accepted


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"endpoint": "tcp://127.0.0.1"}, "cannot connect"),
        ({"heartbeat_s": float("nan")}, "heartbeat_s"),
        ({"heartbeat_s": 0.0}, "heartbeat_s"),
        ({"connect_timeout_s": float("inf")}, "connect_timeout_s"),
    ],
)
def test_bad_client_settings_are_refused_at_once(options, message):
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=message):
        RemoteDriver(**({"endpoint": "tcp://127.0.0.1:1"} | options))
    assert time.monotonic() - t0 < 1.0


def _raw_server(reply):
    """A ROUTER on loopback answering each hello with the messages ``reply()`` makes; returns (endpoint, close)."""
    import json

    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:0")
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if sock.poll(20):
                identity, body = sock.recv_multipart()
                if json.loads(body)["type"] == "hello":
                    for message in reply():
                        sock.send_multipart([identity, message])
        sock.close(linger=0)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join(2.0)
        ctx.term()

    return sock.getsockopt_string(zmq.LAST_ENDPOINT), close


def test_a_server_of_another_protocol_version_is_named_at_once():
    import json

    from drivers.base import ProtocolError
    from drivers.codec import encode_welcome

    def welcome_v2():
        message = json.loads(encode_welcome(DEFAULT_CAPABILITIES, 1.0, time.time())[0])
        return [json.dumps(message | {"v": 2}).encode()]

    endpoint, close = _raw_server(welcome_v2)
    try:
        t0 = time.monotonic()
        with pytest.raises(ProtocolError, match="version"):
            RemoteDriver(endpoint, connect_timeout_s=5.0)
        assert time.monotonic() - t0 < 2.0
    finally:
        close()


def test_a_client_key_the_server_does_not_allow_is_named_at_once():
    from drivers.base import Disconnected
    from drivers.memory import InMemoryDriver
    from drivers.security import CurveClientKeys, CurveServerKeys, new_keypair

    (server_public, server_secret), (allowed, _), (other_public, other_secret) = (new_keypair() for _ in range(3))
    keys = CurveServerKeys(server_public, server_secret, frozenset({allowed}))
    with InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", curve=keys) as server:
        t0 = time.monotonic()
        with pytest.raises(Disconnected, match="refused this client's CURVE keys"):
            RemoteDriver(
                server.endpoint, connect_timeout_s=5.0, curve=CurveClientKeys(other_public, other_secret, server_public)
            )
        assert time.monotonic() - t0 < 2.0


def test_a_burst_of_submitted_commands_all_go_out_and_a_close_fails_what_is_left():
    from drivers.base import Disconnected, SetTiltCommand
    from drivers.memory import InMemoryDriver

    with InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0") as server:
        remote = RemoteDriver(server.endpoint)
        pending = [remote.submit(SetTiltCommand(tilt_deg=1.0)) for _ in range(500)]  # the send queue holds 16
        assert all(f.result(timeout=20.0).accepted for f in pending)
        again = SetTiltCommand(tilt_deg=2.0)
        remote.submit(again)
        with pytest.raises(ValueError, match="already waiting"):
            remote.submit(again)  # the same id while its ack is awaited
        with pytest.raises(ValueError, match="finite"):
            remote.next_frame(float("nan"))
        slow = [remote.submit(SetTiltCommand(tilt_deg=3.0)) for _ in range(50)]
        remote.close()
        for future in slow:  # every one resolved: acked before the close, or failed by it
            assert future.exception(timeout=1.0) is None or isinstance(future.exception(), Disconnected)


def test_a_frame_over_the_clients_limit_is_reported_at_once_and_the_connection_kept():
    from drivers.base import ProtocolError
    from drivers.memory import InMemoryDriver

    with (
        InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0") as server,
        RemoteDriver(server.endpoint, max_frame_bytes=2**20) as remote,
    ):
        remote.send(UnblankCommand())
        remote.send(_scan(rows=600, cols=600))  # 1.4 MB of float32
        t0 = time.monotonic()
        with pytest.raises(ProtocolError, match="too_large"):
            remote.next_frame(10.0)
        assert time.monotonic() - t0 < 2.0
        remote.send(_scan(rows=64, cols=64))
        assert remote.next_frame(5.0).image.shape == (64, 64)
        assert remote.stats["disconnects"] == 0 and server.stats["deadman_blanks"] == 0


def test_an_observer_waits_its_whole_timeout_past_bad_messages_and_counts_frames_over_its_limit():
    import zmq

    from drivers.codec import encode_frame
    from drivers.observer import FrameSubscriber

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:0")
    with FrameSubscriber(pub.getsockopt_string(zmq.LAST_ENDPOINT), max_frame_bytes=2**20) as subscriber:
        time.sleep(0.3)  # the subscription reaches the publisher
        big = Frame.of(np.zeros((600, 600), np.float32), 0.1)
        small = Frame.of(np.zeros((16, 16), np.float32), 0.1)

        def publish() -> None:
            time.sleep(0.2)
            pub.send_multipart([b"frame", b"not json", b"x"])
            pub.send_multipart([b"frame", *encode_frame(big, 0)])  # 1.4 MB: over the subscriber's limit
            time.sleep(0.4)
            pub.send_multipart([b"frame", *encode_frame(small, 1)])

        threading.Thread(target=publish, daemon=True).start()
        frame = subscriber.next_frame(5.0)
        assert frame.header.shape == (16, 16)
        assert subscriber.stats["error_too_large"] == 1 and subscriber.stats["error_json"] == 1
        with pytest.raises(ValueError, match="finite"):
            subscriber.next_frame(float("nan"))
    pub.close(linger=0)
    ctx.term()
    with pytest.raises(ValueError, match="cannot connect"):
        FrameSubscriber("127.0.0.1:5556")


def test_a_client_far_ahead_of_the_instrument_is_told_busy_and_can_still_stop_it():
    from drivers.base import SetTiltCommand
    from drivers.memory import InMemoryDriver

    class SlowDriver(InMemoryDriver):
        def send(self, command, timeout_s: float = 5.0):
            time.sleep(0.01)
            return super().send(command, timeout_s)

    with (
        InstrumentServer(SlowDriver(), "tcp://127.0.0.1:0", max_jobs_per_client=8, deadman_s=None) as server,
        RemoteDriver(server.endpoint) as remote,
    ):
        pending = [remote.submit(SetTiltCommand(tilt_deg=1.0)) for _ in range(100)]
        codes = [f.result(timeout=20.0).code for f in pending]
        assert "busy" in codes and codes.count("ok") >= 8  # the queue held 8 at a time, never all 100
        assert server.stats["busy"] == codes.count("busy")
        assert remote.send(StopCommand()).accepted  # a stop is never refused as busy


class _SlowKindsDriver:
    """An in-memory instrument that takes ``delay_s`` per command and logs the kinds it ran."""

    def __new__(cls, delay_s: float = 0.05):
        from drivers.memory import InMemoryDriver

        class Slow(InMemoryDriver):
            def __init__(self) -> None:
                super().__init__()
                self.kinds: list[str] = []

            def send(self, command, timeout_s: float = 5.0):
                self.kinds.append(command.kind)
                time.sleep(delay_s)
                return super().send(command, timeout_s)

        return Slow()


def test_a_flood_of_blanks_is_bounded_too_and_the_last_one_runs():
    from drivers.base import BlankCommand, SetTiltCommand

    driver = _SlowKindsDriver()
    with (
        InstrumentServer(driver, "tcp://127.0.0.1:0", max_jobs_per_client=4, deadman_s=None) as server,
        RemoteDriver(server.endpoint) as remote,
    ):
        tilts = [remote.submit(SetTiltCommand(tilt_deg=1.0)) for _ in range(6)]
        blanks = [remote.submit(BlankCommand()) for _ in range(100)]
        stop = remote.submit(StopCommand())  # another kind than the blank waiting: queued after it
        tilt_codes = [f.result(timeout=20.0).code for f in tilts]
        blank_acks = [f.result(timeout=20.0) for f in blanks]
        assert stop.result(timeout=20.0).accepted
        kinds = list(driver.kinds)  # (before closing the server blanks the beam once more)
        replaced = server.stats["replaced_by_a_later_one"]
    assert "busy" in tilt_codes
    refused = [a for a in blank_acks if not a.accepted]
    assert len(refused) >= 90 and all(a.code == "busy" and "takes its place" in a.reason for a in refused)
    assert replaced == len(refused) and blank_acks[-1].accepted  # the newest blank is the one that ran
    assert kinds.count("blank") == 100 - len(refused) and kinds[-2:] == ["blank", "stop"]
    assert kinds.index("blank") > max(i for i, k in enumerate(kinds) if k == "set_tilt")


def test_a_blank_that_expires_while_waiting_is_replaced_by_a_later_one_not_relied_on():
    from drivers.base import BlankCommand, SetTiltCommand

    driver = _SlowKindsDriver(delay_s=0.3)
    with (
        InstrumentServer(driver, "tcp://127.0.0.1:0", max_jobs_per_client=2, deadman_s=None) as server,
        RemoteDriver(server.endpoint) as remote,
    ):
        pending = [remote.submit(SetTiltCommand(tilt_deg=1.0)) for _ in range(3)]
        short = remote.submit(BlankCommand(deadline_unix_s=time.time() + 0.4))
        later = remote.submit(BlankCommand())
        for f in pending:
            f.result(timeout=10.0)
        assert later.result(timeout=10.0).accepted
        assert short.result(timeout=10.0).code == "busy"
        kinds = list(driver.kinds)
    assert kinds[-1] == "blank"


def test_a_blank_is_never_folded_into_one_that_another_clients_command_follows():
    from drivers.base import BlankCommand, SetTiltCommand

    driver = _SlowKindsDriver(delay_s=0.3)
    with (
        InstrumentServer(driver, "tcp://127.0.0.1:0", max_jobs_per_client=2, deadman_s=None) as server,
        RemoteDriver(server.endpoint) as a,
        RemoteDriver(server.endpoint) as b,
    ):
        pending = [a.submit(SetTiltCommand(tilt_deg=1.0)) for _ in range(3)]
        first = a.submit(BlankCommand())
        time.sleep(0.1)
        unblank = b.submit(UnblankCommand())
        time.sleep(0.1)
        second = a.submit(BlankCommand())
        acks = [f.result(timeout=10.0) for f in [*pending, first, unblank, second]]
        kinds = list(driver.kinds)
    assert all(ack.accepted for ack in acks[3:])
    assert kinds[-3:] == ["blank", "unblank", "blank"]  # the beam ends as client a asked last


def test_alternating_blanks_and_stops_beyond_the_limit_do_not_grow_the_queue():
    from drivers.base import BlankCommand, SetTiltCommand

    driver = _SlowKindsDriver(delay_s=0.2)
    with (
        InstrumentServer(driver, "tcp://127.0.0.1:0", max_jobs_per_client=4, deadman_s=None) as server,
        RemoteDriver(server.endpoint) as remote,
    ):
        for _ in range(5):
            remote.submit(SetTiltCommand(tilt_deg=1.0))
        flood = [remote.submit(BlankCommand() if i % 2 else StopCommand()) for i in range(200)]
        deadline = time.monotonic() + 10.0
        while server.stats["replaced_by_a_later_one"] < 198 and time.monotonic() < deadline:
            time.sleep(0.02)
        waiting = len(server._queue)
        acks = [f.result(timeout=20.0) for f in flood]
    assert waiting <= 4 + 2
    assert acks[-1].accepted and acks[-2].accepted  # the last stop and the last blank
    assert sum(not a.accepted for a in acks) == 198


def test_a_blank_folded_into_a_waiting_one_runs_however_short_its_deadline():
    from drivers.base import BlankCommand, SetTiltCommand

    driver = _SlowKindsDriver(delay_s=0.3)
    with (
        InstrumentServer(driver, "tcp://127.0.0.1:0", max_jobs_per_client=2, deadman_s=None) as server,
        RemoteDriver(server.endpoint) as remote,
    ):
        remote.send(UnblankCommand())
        pending = [remote.submit(SetTiltCommand(tilt_deg=1.0)) for _ in range(3)]
        patient = remote.submit(BlankCommand(deadline_unix_s=time.time() + 30.0))
        hasty = remote.submit(BlankCommand(deadline_unix_s=time.time() + 0.4))  # (as the agent's shutdown blank)
        for f in pending:
            f.result(timeout=10.0)
        assert patient.result(timeout=10.0).code == "busy"
        assert hasty.result(timeout=10.0).accepted  # a blank never expires: it runs long past its deadline
        kinds = list(driver.kinds)
    assert kinds[-1] == "blank"


class _SlowTiltDriver(InMemoryDriver):
    def send(self, command, timeout_s: float = 5.0):
        if command.kind == "set_tilt":
            time.sleep(3.0)  # a stage tilt that takes a while: nothing leaves the queue meanwhile
        return super().send(command, timeout_s)


def test_blanks_another_clients_commands_kept_apart_fold_when_it_leaves():
    from drivers.base import BlankCommand, SetTiltCommand

    bound = 3
    with (
        InstrumentServer(_SlowTiltDriver(), "tcp://127.0.0.1:0", max_jobs_per_client=bound, deadman_s=None) as server,
        RemoteDriver(server.endpoint) as a,
    ):
        for _ in range(bound + 1):  # the first runs, the others wait: a is at its bound
            a.submit(SetTiltCommand(tilt_deg=1.0))
        time.sleep(0.2)
        for _ in range(4):  # another client comes and goes, its tilts between a's blanks each time
            with RemoteDriver(server.endpoint) as b:
                for _ in range(bound):
                    b.submit(SetTiltCommand(tilt_deg=2.0))
                    time.sleep(0.01)
                    a.submit(BlankCommand())
                    time.sleep(0.01)
                time.sleep(0.05)
            time.sleep(0.05)
        with server._lock:
            waiting = [job[1].kind for job in server._queue if job is not None]
            server._queue.drop(lambda _client, _command: True, "dropped_by_the_test")  # (not to wait for the tilts)
    assert waiting.count("blank") == 1 and waiting[-1] == "blank"  # (12 were sent, each beside another's tilt)
    assert len(waiting) <= bound + 1


@pytest.mark.parametrize("deadman_s", [0.01, 0.1])
def test_a_dead_man_time_no_client_can_keep_up_with_is_refused(deadman_s):
    from drivers.memory import InMemoryDriver

    with pytest.raises(ValueError, match="shorter than a client can keep alive"):
        InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", deadman_s=deadman_s)


def test_a_server_that_cannot_bind_leaves_nothing_open():
    import os

    import zmq

    from drivers.memory import InMemoryDriver

    with InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0") as taken:
        open_fds = len(os.listdir("/proc/self/fd"))
        for _ in range(10):
            with pytest.raises(zmq.ZMQError):
                InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", pub_endpoint=taken.endpoint)
        assert len(os.listdir("/proc/self/fd")) <= open_fds + 2  # (before: 8 more descriptors per failure)


def test_a_stop_during_a_scan_refuses_what_was_queued_before_it_so_the_beam_ends_blanked():
    """Carried out at once, a blank must not let commands queued before it run after it."""
    from drivers.base import BlankCommand

    driver = SlowScanDriver(scan_s=1.0)
    with (
        InstrumentServer(driver, "tcp://127.0.0.1:0", deadman_s=None) as server,
        RemoteDriver(server.endpoint) as remote,
    ):
        sent = [UnblankCommand(), _scan(), BlankCommand(), UnblankCommand(), _scan(), BlankCommand()]
        acks = [f.result(timeout=10.0) for f in [remote.submit(c) for c in sent]]
    kinds = [kind for _, kind in driver.log]
    assert kinds[-1] == "blank" and kinds.count("unblank") == 1  # the second unblank never ran after a blank
    refused = [a for a in acks if not a.accepted]
    assert refused and all("not executed" in a.reason for a in refused)
    assert server.stats["superseded_by_stop"] == len(refused)


def test_a_command_refused_as_busy_can_be_sent_again():
    from drivers.base import CommandRefused, SetTiltCommand

    driver = SlowScanDriver(scan_s=0.5)
    with (
        InstrumentServer(driver, "tcp://127.0.0.1:0", max_jobs_per_client=1, deadman_s=None) as server,
        RemoteDriver(server.endpoint) as remote,
    ):
        remote.send(UnblankCommand())
        remote.submit(_scan())  # the worker waits for its frame
        time.sleep(0.1)
        remote.submit(SetTiltCommand(tilt_deg=1.0))  # queued: the one this client may have waiting
        tilt = SetTiltCommand(tilt_deg=2.0)
        with pytest.raises(CommandRefused, match="busy"):
            remote.send(tilt)
        time.sleep(1.0)
        assert remote.send(tilt).accepted  # the same id, once there is room: not a duplicate


def test_a_connection_closed_during_the_handshake_is_retried_not_taken_for_refused_keys():
    import socket

    from drivers.memory import InMemoryDriver

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    servers = []

    def restarting() -> None:  # accepts one connection and closes it, then the real server binds the port
        connection, _ = listener.accept()
        connection.close()
        listener.close()
        time.sleep(0.1)
        servers.append(InstrumentServer(InMemoryDriver(), f"tcp://127.0.0.1:{port}").start())

    threading.Thread(target=restarting, daemon=True).start()
    try:
        with RemoteDriver(f"tcp://127.0.0.1:{port}", connect_timeout_s=5.0) as remote:
            assert remote.send(UnblankCommand()).accepted
    finally:
        for server in servers:
            server.stop()


def test_a_server_heartbeat_faster_or_slower_than_clients_allow_is_refused_and_an_unstarted_server_blanks_on_stop():
    from drivers.base import BlankCommand
    from drivers.memory import InMemoryDriver

    with pytest.raises(ValueError, match="shorter than clients beat"):
        InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", heartbeat_s=0.01)
    with pytest.raises(ValueError, match="longer than clients wait"):  # they would declare it gone between beats
        InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", heartbeat_s=31.0)
    driver = InMemoryDriver()
    driver.send(UnblankCommand())
    InstrumentServer(driver, "tcp://127.0.0.1:0").stop()  # created, never started
    assert isinstance(driver.commands[-1], BlankCommand)
