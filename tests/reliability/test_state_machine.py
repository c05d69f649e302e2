"""P1: a Hypothesis state machine over connect, disconnect, frame, bad message, pause, resume, abort,
disk full and model failure, checking the five invariants of issue 8 after every step.

Real parts throughout: the loop, the guard, the recorder writing to disk (and the kernel's /dev/full
for a full disk), the bundled ensemble through onnxruntime on 64 x 64 frames, a simulated instrument.
Faults come from :mod:`tests.reliability.harness`.  A machine runs sessions one after another: each
``connect`` starts a new session on the same instrument once the previous one has ended.
"""

from __future__ import annotations

import copy
import math
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agent.guard import Guard, GuardConfig
from agent.loop import Loop, LoopConfig
from agent.perception import Perception
from agent.policies import FieldTemplate, PolicyContext, Region, make_policy
from agent.recorder import SessionRecorder
from drivers.base import Range
from drivers.recording import read_session
from drivers.simulated import SimulatedDriver
from tests.reliability.harness import (
    CORRUPTIONS,
    ChaosInstrument,
    FailingModel,
    Observed,
    Shadow,
    fill_disk,
    frame_problems,
    recorded_command_ids,
    session_problems,
)

FIELD = FieldTemplate(fov_nm=1.6, pixels=64, dwell_us=1.0)
REGION = Region(-20.0, 20.0, -20.0, 20.0)
GUARD = GuardConfig(
    stage_x_nm=Range(low=-25.0, high=25.0), stage_y_nm=Range(low=-25.0, high=25.0),
    fov_nm=Range(low=1.0, high=4.0), pixels=Range(low=32, high=128), dwell_us=Range(low=0.5, high=20.0),
)  # fmt: skip
#: The instrument's own copy of the limits (the configuration's, which lie inside the instrument's).
LIMITS = {"x_nm": (-25.0, 25.0), "y_nm": (-25.0, 25.0), "fov_nm": (1.0, 4.0), "rows": (32, 128),
          "cols": (32, 128), "dwell_us": (0.5, 20.0)}  # fmt: skip
MAX_FRAME_AGE_S = 5.0
CONFIG = LoopConfig(
    25, frame_timeout_s=0.1, command_timeout_s=1.0, max_failures=6, reconnect_grace_s=0.4,
    stop_timeout_s=0.2, max_frame_age_s=MAX_FRAME_AGE_S, perception_timeout_s=30.0,
)  # fmt: skip


class Session:
    """One run: its loop, recorder, shadow of what was written, and wrappers."""

    def __init__(self, machine: LoopMachine, policy_name: str) -> None:
        self.directory = machine.root / f"session{len(machine.sessions)}"
        self.recorder = SessionRecorder(self.directory)
        self.shadow = Shadow(self.recorder)
        self.model = FailingModel(machine.segmenter.model)
        segmenter = copy.copy(machine.segmenter)
        segmenter.model = self.model
        self.observed = Observed(Perception(segmenter), self.model, MAX_FRAME_AGE_S)
        policy = self.observed.watch(make_policy(policy_name, PolicyContext(REGION, FIELD, seed=len(machine.sessions))))
        fallback = make_policy("raster", PolicyContext(REGION, FIELD, seed=99))
        instrument = machine.instrument
        instrument.recorded_ids = lambda: recorded_command_ids(self.directory)
        self.delivered_before = instrument.frames_delivered
        guard = Guard(instrument.capabilities(), GUARD)
        self.loop = Loop(instrument, self.observed, policy, guard, CONFIG, self.recorder, fallback=fallback)  # type: ignore[arg-type]
        self.disk_full = False
        self.unreachable_at_end = False  # the run ended while the instrument was down or frozen
        self.abandoned = False  # the instrument was blanked later by someone else (the next session)
        self.loop.start()


class LoopMachine(RuleBasedStateMachine):
    """Sessions against a faulty instrument; the five invariants after every rule."""

    segmenter = None  # set by the test from the session-wide fixture

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="p1-"))
        inner = SimulatedDriver(specimen_seed=5)
        self.instrument = ChaosInstrument(inner, LIMITS)
        self.sessions: list[Session] = []
        self.session: Session | None = None

    # -- rules -------------------------------------------------------------------------------------------
    @precondition(lambda self: self.session is None or not self.session.loop.running)
    @rule(policy=st.sampled_from(["raster", "defects"]))
    def connect(self, policy: str) -> None:
        self._close_session()
        if self.session is not None:
            self.session.abandoned = True
        self.instrument.come_back()
        self.session = Session(self, policy)
        self.sessions.append(self.session)

    @precondition(lambda self: self._running())
    @rule(n=st.integers(1, 3))
    def frame(self, n: int) -> None:
        for _ in range(n):
            self._loop().step()

    @precondition(lambda self: self._running())
    @rule(n=st.integers(4, 10))
    def frames(self, n: int) -> None:  # a second frame rule: ordinary frames are most of a session
        self.frame(n)

    @precondition(lambda self: self._running())
    @rule(kind=st.sampled_from(CORRUPTIONS))
    def bad_message(self, kind: str) -> None:
        self.instrument.corrupt_next(kind)
        self._loop().step()

    @precondition(lambda self: self._running())
    @rule(for_s=st.sampled_from([0.1, math.inf]))
    def disconnect(self, for_s: float) -> None:
        self.instrument.go_down(for_s)
        self._loop().step()
        self._note_unreachable()

    @precondition(lambda self: self._running())
    @rule()
    def freeze(self) -> None:
        self.instrument.frozen = True
        try:
            self._loop().step()
            self._note_unreachable()
        finally:
            self.instrument.frozen = False

    @precondition(lambda self: self._running())
    @rule()
    def pause(self) -> None:
        self._loop().pause()
        self._loop().step()  # a paused loop sends nothing

    @precondition(lambda self: self._running())
    @rule()
    def resume(self) -> None:
        self._loop().resume()

    @precondition(lambda self: self._running())
    @rule()
    def abort(self) -> None:
        self._loop().abort("operator stop")
        self._note_unreachable()

    @precondition(lambda self: self._running() and not self.session.disk_full)  # type: ignore[union-attr]
    @rule()
    def disk_full(self) -> None:
        assert self.session is not None
        self.session.disk_full = True
        fill_disk(self.session.recorder)
        self._loop().step()

    @precondition(lambda self: self._running())
    @rule(fault=st.sampled_from(["nan", "shape", "range", "raise"]))
    def model_failure(self, fault: str) -> None:
        assert self.session is not None
        self.session.model.next_fault = fault
        self._loop().step()

    # -- invariants ------------------------------------------------------------------------------------
    @invariant()
    def commands_are_safe_recorded_and_executed_once(self) -> None:  # invariants 1 and 2
        assert self.instrument.violations == []

    @invariant()
    def every_frame_is_accounted_for(self) -> None:  # invariant 3
        s = self.session
        if s is None:
            return
        on_disk = None if s.disk_full else len(read_session(s.directory).frames)
        delivered = self.instrument.frames_delivered - s.delivered_before
        assert frame_problems(s.loop.state, delivered, on_disk) == []

    @invariant()
    def the_log_is_exactly_what_was_written(self) -> None:  # invariant 4
        s = self.session
        if s is not None:
            assert session_problems(s.directory, s.shadow, s.disk_full) == []

    @invariant()
    def no_decision_from_a_bad_output_or_an_old_frame(self) -> None:  # invariant 5
        if self.session is not None:
            assert self.session.observed.violations == []

    @invariant()
    def an_ended_session_blanked_the_beam_and_says_why(self) -> None:
        s = self.session
        if s is None or s.loop.running:
            return
        self._note_unreachable()  # whichever rule ended it (a frame step too) while the instrument was down
        blanked = self.instrument.inner.state.blanked
        assert blanked or s.unreachable_at_end, s.loop.state.reason  # an unreachable one: its dead-man's job
        if not s.disk_full:
            stop = read_session(s.directory).records[-1]
            assert stop["type"] == "stop" and stop["status"] == s.loop.state.status
            assert blanked or not stop["beam_blanked"] or s.abandoned  # never claims a blank that did not happen

    # -- helpers -----------------------------------------------------------------------------------------
    def _note_unreachable(self) -> None:
        s = self.session
        if s is not None and not s.loop.running and (self.instrument.down or self.instrument.frozen):
            s.unreachable_at_end = True

    def _running(self) -> bool:
        return self.session is not None and self.session.loop.running

    def _loop(self) -> Loop:
        assert self.session is not None
        return self.session.loop

    def _close_session(self) -> None:
        if self.session is not None:
            self.session.loop.abort("the test ends the session")
            try:
                self.session.recorder.close()
            except Exception:  # a full disk fails the final flush; the log was checked above
                assert self.session.disk_full

    def teardown(self) -> None:
        self._close_session()
        shutil.rmtree(self.root, ignore_errors=True)


def _run(segmenter, examples: int) -> None:
    LoopMachine.segmenter = segmenter
    machine = LoopMachine.TestCase
    machine.settings = settings(
        max_examples=examples, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )  # fmt: skip
    machine().runTest()


def test_invariants_hold_over_random_fault_sequences(segmenter):
    _run(segmenter, examples=10)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_invariants_hold_over_200_examples_of_30_steps(segmenter):
    _run(segmenter, examples=200)
