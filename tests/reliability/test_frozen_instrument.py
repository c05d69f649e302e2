"""F2/F4: an instrument process frozen (SIGSTOP: a silent peer whose TCP connection stays up).

Detected by heartbeat within 3.5 s (1 s heartbeat, three missed = gone); no call blocks past its
timeout meanwhile; a command sent into the frozen connection is never executed late, however long the
freeze (its deadline passes, the server drops it); after the thaw the driver reconnects with a fresh
handshake.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from drivers.base import CommandRefused, Disconnected, DriverTimeout, ScanCommand, UnblankCommand, deadline_in
from drivers.remote import RemoteDriver

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX signals")


def _serve() -> tuple[str, subprocess.Popen[str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "instrument", "--sim", "--bind", endpoint],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None and "simulated instrument on" in proc.stdout.readline()
    return endpoint, proc


def test_a_frozen_instrument_is_detected_and_a_command_sent_into_it_never_runs_late():
    _freeze(thaw_after_s=1.0)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_instrument_frozen_for_a_minute_gets_nothing_sent_before_the_freeze():
    _freeze(thaw_after_s=60.0)  # F2 (30 s) and F4 (reconnect after 60 s) at their full lengths


def _wait_until_stopped(pid: int, timeout_s: float = 5.0) -> None:
    """Until the kernel reports ``pid`` stopped (state T in /proc), or at once where there is no /proc."""
    stat = f"/proc/{pid}/stat"
    deadline = time.monotonic() + timeout_s
    while os.path.exists(stat) and time.monotonic() < deadline:
        with open(stat) as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.001)
    assert not os.path.exists(stat), f"process {pid} did not stop within {timeout_s} s"


def _freeze(thaw_after_s: float) -> None:
    endpoint, proc = _serve()
    scan = {"x_nm": 0.0, "y_nm": 0.0, "fov_nm": 4.0, "rows": 32, "cols": 32, "dwell_us": 1.0}
    try:
        with RemoteDriver(endpoint, heartbeat_s=1.0) as remote:
            remote.send(UnblankCommand())
            os.kill(proc.pid, signal.SIGSTOP)
            _wait_until_stopped(proc.pid)  # the signal is asynchronous: a busy machine runs the server on a while
            frozen_at = time.monotonic()
            late = ScanCommand(**scan, deadline_unix_s=deadline_in(1.0))
            with pytest.raises((DriverTimeout, Disconnected)):
                remote.send(late, timeout_s=0.5)  # goes into the frozen connection's buffers
            longest_call_s = 0.0
            while remote.connected and time.monotonic() - frozen_at < 10.0:
                t0 = time.monotonic()
                with pytest.raises((DriverTimeout, Disconnected)):
                    remote.next_frame(0.2)
                longest_call_s = max(longest_call_s, time.monotonic() - t0)
            detected_s = time.monotonic() - frozen_at
            assert not remote.connected and detected_s <= 3.5, detected_s
            assert longest_call_s < 1.0
            with pytest.raises(Disconnected):
                remote.send(ScanCommand(**scan))  # nothing is queued for a peer that is gone
            time.sleep(thaw_after_s)
            os.kill(proc.pid, signal.SIGCONT)
            deadline = time.monotonic() + 10.0
            while not remote.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            assert remote.connected and remote.stats["reconnects"] >= 1  # a fresh hello/welcome
            with pytest.raises(DriverTimeout):
                remote.next_frame(0.5)  # the scan sent into the freeze never produced a frame
            fresh = ScanCommand(**scan)
            try:
                remote.send(fresh)
            except CommandRefused as exc:  # the server's dead-man blanked the beam during the freeze
                assert "blank" in str(exc)
                remote.send(UnblankCommand())
                fresh = ScanCommand(**scan)
                remote.send(fresh)
            assert remote.next_frame(5.0).header.command_id == fresh.id
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    stats = json.loads(out.strip().splitlines()[-1])
    # The late scan was refused at the server, never executed: past its deadline, or from a connection the
    # server had forgotten by the time it read it (whichever the thawed server did first).
    assert stats.get("expired", 0) + stats.get("error_hello_first", 0) >= 1, stats
    assert stats.get("frames", 0) == 1, stats  # only the fresh scan's
