"""F5: ``autoscope run`` SIGKILLed at random points while recording.

Per kill: the server's dead-man timer blanks the beam within ``deadman_s`` + 0.5 s; the session log reads
back as a valid prefix holding a command record for every command the instrument executed (recorded
before sent); a new run asked to record into the same directory marks the old session unclosed and
records a new one linked to it, reading the instrument's state before any move.  3 kills by default,
100 marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from drivers.base import Ack, Command
from drivers.recording import read_session
from drivers.server import InstrumentServer
from drivers.simulated import SimulatedDriver

ROOT = Path(__file__).resolve().parents[2]
CONFIG = (
    "[field]\nfov_nm = 2.56\npixels = 64\ndwell_us = 1.0\n[policies]\nlength_nm = 5.0\n[guard]\n"
    "stage_x_nm = { low = -100.0, high = 100.0 }\nstage_y_nm = { low = -100.0, high = 100.0 }\n"
    "fov_nm = { low = 0.5, high = 20.0 }\npixels = { low = 16, high = 512 }\ndwell_us = { low = 0.1, high = 20.0 }\n"
)


class _Witness(SimulatedDriver):
    def __init__(self) -> None:
        super().__init__(specimen_seed=2)
        self.executed: list[Command] = []

    def send(self, command: Command, timeout_s: float = 5.0) -> Ack:
        ack = super().send(command, timeout_s)
        self.executed.append(command)
        return ack


def _agent(endpoint: str, config: Path, record: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "agent.cli", "run", "--instrument", endpoint, "--policy", "random",
            "--steps", str(steps), "--config", str(config), "--record", str(record), "--quiet"]  # fmt: skip


def _kill_trials(tmp_path: Path, trials: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    config = tmp_path / "agent.toml"
    config.write_text(CONFIG)
    for trial in range(trials):
        instrument = _Witness()
        record = tmp_path / f"session-{trial}"
        with InstrumentServer(instrument, "tcp://127.0.0.1:0", heartbeat_s=1.0, deadman_s=2.0) as server:
            command = _agent(server.endpoint, config, record, 10**5)
            agent = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL, env={**os.environ})
            deadline = time.monotonic() + 60.0
            while not any(c.kind == "scan" for c in instrument.executed) and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(float(rng.uniform(0.0, 2.0)))  # a random point of the run
            agent.send_signal(signal.SIGKILL)
            killed_at = time.time()
            agent.wait(10)
            blanked_before = len([t for t in instrument.state.blank_times_unix_s if t < killed_at])
            deadline = time.monotonic() + 5.0
            while len(instrument.state.blank_times_unix_s) == blanked_before and time.monotonic() < deadline:
                time.sleep(0.01)
            blanks = instrument.state.blank_times_unix_s[blanked_before:]
            assert blanks and blanks[0] - killed_at <= 2.0 + 0.5, (blanks, killed_at)
            session = read_session(record)
            assert not any(r["type"] == "stop" for r in session.records)  # killed: no stop record
            recorded = {r["command"]["id"] for r in session.records if r["type"] == "command"}
            sent_by_agent = [
                c for c in instrument.executed if c.kind != "blank"
            ]  # the dead-man's blank is the server's
            assert all(c.id in recorded for c in sent_by_agent)
            executed_before_restart = len(instrument.executed)
            again = subprocess.run(_agent(server.endpoint, config, record, 1), cwd=ROOT,
                                   capture_output=True, text=True, timeout=120)  # fmt: skip
            assert again.returncode == 0, again.stderr[-2000:]
        mark = json.loads((record / "UNCLOSED.json").read_text())
        assert mark["records"] == len(session.records) and not mark["closed"]
        follow = read_session(record.with_name(record.name + ".2"))
        start = follow.records[0]
        assert start["previous_session"]["path"] == str(record) and start["capabilities"]["instrument"]
        assert instrument.executed[executed_before_restart].kind == "unblank"  # state re-read, then unblanked
        assert any(r["type"] == "stop" for r in follow.records)


def test_the_agent_killed_at_random_points(tmp_path):
    _kill_trials(tmp_path, trials=3, seed=0)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_agent_killed_at_a_hundred_random_points(tmp_path):
    _kill_trials(tmp_path, trials=100, seed=1)
