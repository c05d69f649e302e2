"""B2: whatever a policy proposes (NaN, Inf, huge, negative, wrong units), no command outside the limits
reaches the instrument.  The instrument checks every command it receives against its own copy of the
limits, independently of the guard's code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.guard import Decision, Guard, GuardConfig, Refusal
from agent.loop import Loop, LoopConfig
from agent.perception import Perception
from agent.recorder import SessionRecorder
from drivers.base import Ack, Command, Frame, Range, ScanCommand
from drivers.memory import InMemoryDriver

LIMITS = {"x_nm": (-200.0, 300.0), "y_nm": (-150.0, 150.0), "fov_nm": (1.0, 50.0), "dwell_us": (1.0, 50.0),
          "rows": (16, 256), "cols": (16, 256), "tilt_deg": (-60.0, 60.0)}  # fmt: skip
CONFIG = GuardConfig(
    stage_x_nm=Range(low=-200.0, high=300.0),
    stage_y_nm=Range(low=-150.0, high=150.0),
    fov_nm=Range(low=1.0, high=50.0),
    dwell_us=Range(low=1.0, high=50.0),
    tilt_deg=Range(low=-60.0, high=60.0),
    pixels=Range(low=16, high=256),
    max_step_nm=150.0,
    allow_revisits=True,
)


class AssertingInstrument(InMemoryDriver):
    """An in-memory instrument that checks each command it is sent against the limits above."""

    def __init__(self) -> None:
        super().__init__()
        self.violations: list[str] = []
        self.received = 0

    def send(self, command: Command, timeout_s: float = 5.0) -> Ack:
        self.received += 1
        for name, (low, high) in LIMITS.items():
            value = getattr(command, name, None)
            if value is None:
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
                self.violations.append(f"{command.kind} {name}={value!r}")
        return super().send(command, timeout_s)

    def _acquire(self, command: ScanCommand) -> Frame:
        image = self._rng.random((command.rows, command.cols), dtype=np.float32)  # noise: limits are the point
        return Frame(self.state.scan_header(command, 0.0, {}), image)


finite = st.floats(-1e4, 1e4)
hostile = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 0.0, -0.0, 5e-324]),
    st.integers(-(10**12), 10**12),
    finite,
    finite.map(lambda v: v * 1e3),  # picometres where nanometres were meant
    finite.map(lambda v: v * 1e-9),  # metres
    finite.map(lambda v: -abs(v)),
)
decisions = st.builds(
    Decision,
    kind=st.sampled_from(["scan", "scan", "scan", "set_tilt", "blank", "teleport"]),
    x_nm=hostile, y_nm=hostile, fov_nm=hostile, rows=hostile, cols=hostile,
    dwell_us=hostile, rotation_deg=hostile, tilt_deg=hostile,
)  # fmt: skip


def _through_the_guard(sequence: list[Decision]) -> None:
    instrument = AssertingInstrument()
    guard = Guard(instrument.capabilities(), CONFIG)
    for decision in sequence:
        checked = guard.check(decision)
        if isinstance(checked, Refusal):
            continue
        try:
            instrument.send(checked)
        except Exception:  # the instrument may refuse (a blanked beam): that is its right, not a violation
            continue
        guard.commit(checked)
    assert instrument.violations == []


@settings(max_examples=500, deadline=None)
@given(st.lists(decisions, min_size=1, max_size=12))
def test_no_decision_sequence_puts_an_out_of_limits_command_on_the_instrument(sequence):
    _through_the_guard(sequence)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None)
@given(st.lists(decisions, min_size=1, max_size=12))
def test_ten_thousand_decision_sequences(sequence):
    _through_the_guard(sequence)


class ScriptedPolicy:
    """Proposes the given decisions in order, then nothing."""

    name = "scripted"
    commits_ahead = False

    def __init__(self, decisions: list[Decision]) -> None:
        self.queue = list(decisions)

    def suggest(self, n: int = 1) -> list[Decision]:
        return [self.queue.pop(0)] if self.queue else []

    def ingest(self, observation: object) -> None:
        pass

    def reject(self, decision: Decision, reason: str) -> None:
        pass


@settings(max_examples=40, deadline=None)
@given(st.lists(decisions, min_size=1, max_size=8))
def test_the_whole_loop_never_sends_an_out_of_limits_command(segmenter, tmp_path_factory, sequence):
    instrument = AssertingInstrument()
    guard = Guard(instrument.capabilities(), CONFIG)
    recorder = SessionRecorder(tmp_path_factory.mktemp("session"))
    loop = Loop(instrument, Perception(segmenter), ScriptedPolicy(sequence), guard, LoopConfig(len(sequence)), recorder)
    state = loop.run()
    recorder.close()
    assert instrument.violations == []
    assert state.status in ("completed", "exhausted", "failed")
