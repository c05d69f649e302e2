"""F5: ``autoscope run`` SIGKILLed at random points while recording.

Per kill: the server's dead-man timer blanks the beam within ``deadman_s`` + 0.5 s; the session log reads
back as a valid prefix holding a command record for every command the instrument executed (recorded
before sent); a new run asked to record into the same directory marks the old session unclosed and
records a new one linked to it, reading the instrument's state before any move.  Each agent of a chain
resumes the session its killed predecessor left, so every trial checks both halves.  Agents are forked
from a pre-imported zygote (``zygote.py``) so that 100 kills fit in the default run (dead-man 0.5 s,
heartbeat 0.1 s, three chains side by side; the blank came at most 0.55 s after a kill in a trial run
of the 100); 1000 kills with the default dead-man (2 s), two chains, are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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
    "probe_current_pa = 20.0\n"
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
    return ["run", "--instrument", endpoint, "--policy", "random", "--steps", str(steps), "--config", str(config),
            "--record", str(record), "--quiet"]  # fmt: skip


class Zygote:
    """``tests/reliability/zygote.py``: forks pre-imported agent processes (see its docstring)."""

    def __enter__(self) -> Zygote:
        script = Path(__file__).with_name("zygote.py")
        self.proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        return self

    def spawn(self, arguments: list[str]) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(arguments) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _session_dir(record: Path, trial: int) -> Path:
    return record if trial == 0 else record.with_name(f"{record.name}.{trial + 1}")


def _kill_trials(tmp_path: Path, trials: int, seed: int, deadman_s: float, heartbeat_s: float, lanes: int) -> None:
    """``trials`` kills spread over ``lanes`` independent instruments and agent chains run side by side."""
    with ThreadPoolExecutor(lanes) as pool:
        shares = [trials // lanes + (k < trials % lanes) for k in range(lanes)]
        runs = [
            pool.submit(_lane, tmp_path / f"lane{k}", n, seed + k, deadman_s, heartbeat_s) for k, n in enumerate(shares)
        ]
        for run in runs:
            run.result()


def _lane(tmp_path: Path, trials: int, seed: int, deadman_s: float, heartbeat_s: float) -> None:
    """A chain of agents: each resumes the session its predecessor left unclosed, then is killed."""
    tmp_path.mkdir()
    rng = np.random.default_rng(seed)
    config = tmp_path / "agent.toml"
    config.write_text(f"heartbeat_s = {heartbeat_s}\n" + CONFIG)
    instrument = _Witness()
    record = tmp_path / "session"
    server = InstrumentServer(instrument, "tcp://127.0.0.1:0", heartbeat_s=heartbeat_s, deadman_s=deadman_s)
    with server, Zygote() as zygote:
        for trial in range(trials):
            first = len(instrument.executed)
            pid = zygote.spawn(_agent(server.endpoint, config, record, 10**5))
            started = _wait_for(lambda: any(c.kind == "scan" for c in instrument.executed[first:]), 30.0)  # noqa: B023
            assert started, f"trial {trial}: the agent never scanned"
            time.sleep(float(rng.uniform(0.0, 0.6)))  # a random point of the run
            os.kill(pid, signal.SIGKILL)
            killed_at = time.time()
            blanks_before = len(instrument.state.blank_times_unix_s)
            _wait_for(lambda: len(instrument.state.blank_times_unix_s) > blanks_before, deadman_s + 3.0)  # noqa: B023
            blanks = instrument.state.blank_times_unix_s[blanks_before:]
            assert blanks and blanks[0] - killed_at <= deadman_s + 0.5, (trial, blanks, killed_at)
            _check_killed_session(record, trial, instrument.executed[first:])
        closing = subprocess.run([sys.executable, "-m", "agent.cli", *_agent(server.endpoint, config, record, 1)],
                                 cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert closing.returncode == 0, closing.stderr[-2000:]
    follow = read_session(_session_dir(record, trials))
    assert follow.records[0]["previous_session"]["path"] == str(_session_dir(record, trials - 1))
    assert follow.records[-1]["type"] in ("stop", "summary") and any(r["type"] == "stop" for r in follow.records)


def _check_killed_session(record: Path, trial: int, executed: list[Command]) -> None:
    directory = _session_dir(record, trial)
    session = read_session(directory)
    assert not any(r["type"] == "stop" for r in session.records)  # killed: no stop record
    recorded = {r["command"]["id"] for r in session.records if r["type"] == "command"}
    by_agent = [c for c in executed if c.kind != "blank"]  # the only blank after a kill is the dead-man's
    assert all(c.id in recorded for c in by_agent), trial  # every executed command was recorded first
    start = session.records[0]
    assert start["type"] == "start" and start["capabilities"]["instrument"]  # the state, read on connecting
    if trial > 0:
        before = _session_dir(record, trial - 1)
        assert start["previous_session"]["path"] == str(before)
        assert json.loads((before / "UNCLOSED.json").read_text())["closed"] is False
        assert by_agent[0].kind == "unblank"  # the dead-man blanked it; read back, unblanked, then moved


def test_the_agent_killed_at_a_hundred_random_points(tmp_path):
    _kill_trials(tmp_path, trials=100, seed=0, deadman_s=0.5, heartbeat_s=0.1, lanes=3)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_agent_killed_at_a_thousand_random_points_with_the_default_dead_man(tmp_path):
    trials = int(os.environ.get("AUTOSCOPE_F5_KILLS", "1000"))
    _kill_trials(tmp_path, trials=trials, seed=1, deadman_s=2.0, heartbeat_s=1.0, lanes=2)
