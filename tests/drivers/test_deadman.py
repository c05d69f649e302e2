"""The instrument server's dead-man timer: an agent that falls silent gets the beam blanked.

Real sockets on loopback; the in-memory instrument records when each blank took effect, so the
bound is checked on the instrument's side, independently of what the server says it did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zmq

from drivers.base import BlankCommand, ScanCommand, UnblankCommand
from drivers.codec import encode_command, envelope
from drivers.memory import InMemoryDriver
from drivers.remote import RemoteDriver
from drivers.server import SERVER_ID_PREFIX, InstrumentServer

SCAN = {"x_nm": 0.0, "y_nm": 0.0, "fov_nm": 4.0, "rows": 16, "cols": 16, "dwell_us": 1.0}


class _Silent:
    """A raw DEALER that commands and then says nothing more (no heartbeats): a frozen agent."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.sock.send_multipart([envelope("hello")])
        self.last_sent_unix_s = time.time()

    def command(self, command: object) -> None:
        self.sock.send_multipart(encode_command(command))  # type: ignore[arg-type]
        self.last_sent_unix_s = time.time()

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def _wait_for_blank(driver: InMemoryDriver, timeout_s: float) -> float | None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if driver.state.blank_times_unix_s:
            return driver.state.blank_times_unix_s[-1]
        time.sleep(0.01)
    return None


@pytest.mark.parametrize("deadman_s", [0.5, 2.0])
def test_a_silent_commander_gets_the_beam_blanked_within_the_bound(deadman_s):
    driver = InMemoryDriver()
    with InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.2, deadman_s=deadman_s) as server:
        agent = _Silent(server.endpoint)
        try:
            agent.command(UnblankCommand())
            agent.command(ScanCommand(**SCAN))
            blanked_at = _wait_for_blank(driver, deadman_s + 3.0)
        finally:
            agent.close()
        assert blanked_at is not None, "the beam was never blanked"
        assert deadman_s <= blanked_at - agent.last_sent_unix_s <= deadman_s + 0.5
        assert driver.state.blanked
        assert server.stats["deadman_blanks"] == 1
        assert driver.commands[-1].id.startswith(f"{SERVER_ID_PREFIX}deadman:")  # no client sent it


def test_a_live_agent_keeps_the_beam_on_and_a_blanked_beam_needs_no_deadman():
    driver = InMemoryDriver()
    with InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.2, deadman_s=0.5) as server:
        with RemoteDriver(server.endpoint, heartbeat_s=0.2) as remote:  # heartbeats every 0.2 s
            remote.send(UnblankCommand())
            time.sleep(1.5)
            assert not driver.state.blank_times_unix_s
            remote.send(BlankCommand())
        agent = _Silent(server.endpoint)
        try:
            agent.command(BlankCommand())  # leaves the beam off, then falls silent
            time.sleep(1.2)
        finally:
            agent.close()
        assert server.stats["deadman_blanks"] == 0
        assert len(driver.state.blank_times_unix_s) == 2  # the two blanks the clients sent


def test_an_idle_agent_heartbeats_often_enough_for_a_dead_man_shorter_than_its_heartbeat():
    """The welcome names the dead-man time: the driver sends every quarter of it, whatever its own heartbeat."""
    driver = InMemoryDriver()
    with InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=1.0, deadman_s=0.6) as server:
        with RemoteDriver(server.endpoint, heartbeat_s=1.0) as remote:
            remote.send(UnblankCommand())
            time.sleep(2.5)  # idle: only heartbeats keep the beam on
            assert server.stats["deadman_blanks"] == 0 and not driver.state.blank_times_unix_s
            assert server.stats["heartbeats_in"] >= 2.5 / (0.6 / 2)  # on average under half the dead-man apart
            remote.send(BlankCommand())


def test_the_servers_own_blank_on_stopping_says_so_and_a_bad_dead_man_time_is_refused():
    driver = InMemoryDriver()
    with InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.2):
        pass
    assert driver.commands[-1].kind == "blank" and driver.commands[-1].id.startswith(f"{SERVER_ID_PREFIX}stop:")
    for bad in ({"deadman_s": -1.0}, {"deadman_s": float("nan")}, {"heartbeat_s": 0.0}):
        with pytest.raises(ValueError, match="positive number of seconds"):
            InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", **bad)


class _Slow(InMemoryDriver):
    def send(self, command, timeout_s=5.0):
        time.sleep(0.2)
        return super().send(command, timeout_s)


def _queue_four_seconds_of_work(agent: _Silent) -> None:
    """Unblank and 20 scans of 0.2 s each on a slow instrument, sent at once."""
    agent.command(UnblankCommand())
    for _ in range(20):
        agent.command(ScanCommand(**SCAN))


def test_queued_commands_of_a_silent_commander_are_dropped_not_executed():
    driver = _Slow()
    with InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.2, deadman_s=0.5) as server:
        agent = _Silent(server.endpoint)
        try:
            _queue_four_seconds_of_work(agent)
            _wait_for_blank(driver, 5.0)
            time.sleep(0.5)
        finally:
            agent.close()
        scans = [c for c in driver.commands if c.kind == "scan"]
        assert server.stats["dropped_by_deadman"] > 0
        assert len(scans) + server.stats["dropped_by_deadman"] == 20
        assert driver.commands[-1].kind == "blank"  # nothing ran after the dead-man's blank


@pytest.mark.parametrize("then_blank", [False, True])
def test_a_client_forgotten_for_silence_has_its_queued_moves_dropped_and_its_blank_kept(then_blank):
    """Without a blank its queued scans are dropped when it is forgotten; a blank it sent after them runs
    before them (they are refused as superseded, at the next scan) and the beam ends blanked."""
    driver = _Slow()  # no dead-man: the server's own heartbeat bookkeeping must do it
    with InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.2, deadman_s=None) as server:
        agent = _Silent(server.endpoint)
        try:
            _queue_four_seconds_of_work(agent)  # the client is gone after 0.6 s
            if then_blank:
                agent.command(BlankCommand())
            deadline = time.time() + 6.0
            while server.stats["clients_lost"] == 0 and time.time() < deadline:
                time.sleep(0.02)
            time.sleep(0.5)  # the job in hand, then the kept blank
        finally:
            agent.close()
        scans = [c for c in driver.commands if c.kind == "scan"]
        dropped, superseded = server.stats["dropped_client_gone"], server.stats["superseded_by_stop"]
        assert len(scans) + dropped + superseded == 20
        if then_blank:
            assert superseded > 0 and len(scans) <= 1  # the scan under way at most
            assert driver.commands[-1].kind == "blank" and driver.state.blanked
        else:
            assert dropped > 0


class _Failing(InMemoryDriver):
    """A vendor API that raises something unforeseen on the first scan."""

    def send(self, command, timeout_s=5.0):
        if command.kind == "scan":
            raise RuntimeError("SetVal: the vendor's COM server went away")
        return super().send(command, timeout_s)


class _Stuck(InMemoryDriver):
    """A vendor call that hangs for ``stuck_s`` on the first scan (a stage move that never reports)."""

    def __init__(self, stuck_s: float) -> None:
        super().__init__()
        self.stuck_s, self.scans = stuck_s, 0

    def send(self, command, timeout_s=5.0):
        if command.kind == "scan":
            self.scans += 1
            if self.scans == 1:
                time.sleep(self.stuck_s)
        return super().send(command, timeout_s)


def test_a_driver_raising_the_unforeseen_neither_kills_the_server_nor_stops_the_dead_man():
    driver = _Failing()
    with InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.2, deadman_s=0.5) as server:
        agent = _Silent(server.endpoint)
        try:
            agent.command(UnblankCommand())
            agent.command(ScanCommand(**SCAN))
            blanked_at = _wait_for_blank(driver, 3.0)
        finally:
            agent.close()
        assert blanked_at is not None and blanked_at - agent.last_sent_unix_s <= 0.5 + 0.5
        assert server.stats["driver_exceptions"] == 1 and driver.state.blanked


def test_the_dead_man_blank_follows_a_hung_call_at_once_and_the_queued_work_is_dropped():
    driver = _Stuck(stuck_s=2.0)
    with InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.2, deadman_s=0.5) as server:
        agent = _Silent(server.endpoint)
        try:
            agent.command(UnblankCommand())
            agent.command(ScanCommand(**SCAN))  # the instrument hangs 2 s on it
            agent.command(ScanCommand(**SCAN))  # queued behind it
            blanked_at = _wait_for_blank(driver, 5.0)
        finally:
            agent.close()
        assert blanked_at is not None
        assert [c.kind for c in driver.commands] == ["unblank", "scan", "blank"]  # the queued scan never ran
        assert server.stats["dropped_by_deadman"] == 1 and server.stats["expired"] == 0


def test_stopping_the_server_drops_queued_work_and_blanks():
    driver = _Slow()
    server = InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.2, deadman_s=None).start()
    with RemoteDriver(server.endpoint, heartbeat_s=0.2) as remote:
        remote.send(UnblankCommand())
        for _ in range(20):
            remote.submit(ScanCommand(**SCAN))
        time.sleep(0.3)
        server.stop()
    kinds = [c.kind for c in driver.commands]
    assert kinds[-1] == "blank" and kinds.count("scan") <= 3 and driver.state.blanked
    assert server.stats["dropped_at_stop"] >= 1  # what was queued at the stop never ran


_AGENT = textwrap.dedent(
    """
    import sys, time
    from drivers.base import ScanCommand, UnblankCommand
    from drivers.remote import RemoteDriver
    remote = RemoteDriver(sys.argv[1], heartbeat_s=0.5)
    remote.send(UnblankCommand())
    print("ready", flush=True)
    for i in range(100000):
        remote.send(ScanCommand(x_nm=(i % 50) * 4.0, y_nm=0.0, fov_nm=4.0, rows=16, cols=16, dwell_us=1.0))
        remote.next_frame(5.0)
        time.sleep(0.01)
    """
)


def _kill_trials(trials: int, deadman_s: float, seed: int) -> list[float]:
    """SIGKILL an agent process at random points; the delay from the kill to the blank, per trial."""
    rng = np.random.default_rng(seed)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    delays = []
    for _ in range(trials):
        driver = InMemoryDriver()
        with InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.5, deadman_s=deadman_s) as server:
            agent = subprocess.Popen(
                [sys.executable, "-c", _AGENT, server.endpoint], cwd=root, stdout=subprocess.PIPE, text=True
            )
            try:
                assert agent.stdout is not None and agent.stdout.readline().strip() == "ready"
                time.sleep(float(rng.uniform(0.0, 1.5)))
                agent.send_signal(signal.SIGKILL)
                killed_at = time.time()
                agent.wait(5)
            finally:
                agent.kill()
                agent.wait(5)
                agent.stdout.close()  # type: ignore[union-attr]
            blanked_at = _wait_for_blank(driver, deadman_s + 5.0)
            assert blanked_at is not None, json.dumps(dict(server.stats))
            delays.append(blanked_at - killed_at)
    return delays


def test_agent_killed_mid_run_beam_blanked_within_deadman_plus_half_a_second():
    delays = _kill_trials(trials=3, deadman_s=2.0, seed=0)
    assert max(delays) <= 2.0 + 0.5, delays


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_agent_killed_at_100_random_points():
    delays = _kill_trials(trials=100, deadman_s=2.0, seed=1)
    assert max(delays) <= 2.0 + 0.5, (np.percentile(delays, [50, 99]), max(delays))


def test_a_stop_is_carried_out_before_the_scans_queued_ahead_of_it_when_the_driver_scans_inside_send():
    """With a driver that acquires inside send(), all 8 scans queued before a stop ran first (5 s, the beam on)."""
    from drivers.base import StopCommand
    from drivers.simulated import SimulatedDriver

    driver = SimulatedDriver(realtime=True)
    scan = {"x_nm": 0.0, "y_nm": 0.0, "fov_nm": 5.0, "rows": 256, "cols": 256, "dwell_us": 10.0}  # 0.65 s each
    with InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.2) as server:
        with RemoteDriver(server.endpoint, heartbeat_s=0.2) as a, RemoteDriver(server.endpoint, heartbeat_s=0.2) as b:
            a.send(UnblankCommand())
            pending = [a.submit(ScanCommand(deadline_unix_s=time.time() + 60, **scan)) for _ in range(8)]
            time.sleep(0.3)  # the first scan is being acquired
            t0 = time.monotonic()
            b.send(StopCommand(), timeout_s=5.0)
            stopped_after_s = time.monotonic() - t0
            acks = [p.result(timeout=10) for p in pending]
    driver.close()
    assert stopped_after_s < 1.5  # at most the scan under way (0.65 s), not the seven behind it
    refused = [ack for ack in acks if not ack.accepted]
    assert len(refused) >= 6 and all("stop or blank sent after it" in ack.reason for ack in refused)
    assert driver.state.blanked
