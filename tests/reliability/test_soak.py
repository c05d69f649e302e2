"""The soak: sessions run back to back for an hour (``AUTOSCOPE_SOAK_S``), with a random fault once a
minute (``AUTOSCOPE_SOAK_FAULT_EVERY_S``), and the five invariants checked after every step.

It drives the P1 state machine's rules by the clock instead of by Hypothesis: ordinary frames all the
time, one fault rule (a bad frame, a model failure, a freeze, a short or long disconnect, a pause and
resume, an abort, a full disk) each period, and a new session whenever one has ended.  Marked slow.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter

import numpy as np
import pytest

from tests.reliability.harness import CORRUPTIONS
from tests.reliability.test_state_machine import LoopMachine

FAULTS = ("bad_message", "model_failure", "freeze", "disconnect", "long_disconnect", "pause", "abort", "disk_full")


def _inject(machine: LoopMachine, fault: str, rng: np.random.Generator) -> None:
    if fault == "bad_message":
        machine.bad_message(str(rng.choice(CORRUPTIONS)))
    elif fault == "model_failure":
        machine.model_failure(str(rng.choice(["nan", "shape", "range", "raise"])))
    elif fault == "disconnect":
        machine.disconnect(0.1)
    elif fault == "long_disconnect":
        machine.disconnect(float("inf"))
    elif fault == "pause":
        machine.pause()
        time.sleep(1.0)
        machine.resume()
    else:
        getattr(machine, fault)()


def _check(machine: LoopMachine) -> None:
    machine.commands_are_safe_recorded_and_executed_once()
    machine.every_frame_is_accounted_for()
    machine.the_log_is_exactly_what_was_written()
    machine.no_decision_from_a_bad_output_or_an_old_frame()
    machine.an_ended_session_blanked_the_beam_and_says_why()


def soak(segmenter, duration_s: float, fault_every_s: float, seed: int = 0) -> dict[str, object]:
    """Run the soak; returns its figures (faults by kind, sessions and how they ended, frames)."""
    LoopMachine.segmenter = segmenter
    machine = LoopMachine()
    rng = np.random.default_rng(seed)
    faults: Counter[str] = Counter()
    start = time.monotonic()
    next_fault = start + fault_every_s
    try:
        while time.monotonic() - start < duration_s:
            if not machine._running():
                machine.connect(str(rng.choice(["raster", "defects", "random"])))
            elif time.monotonic() >= next_fault:
                fault = str(rng.choice(FAULTS))
                faults[fault] += 1
                _inject(machine, fault, rng)
                next_fault += fault_every_s
            else:
                machine.frame(1)
            _check(machine)
        ended = Counter(s.loop.state.status for s in machine.sessions)
        states = [s.loop.state for s in machine.sessions]
        return {
            "duration_s": round(time.monotonic() - start, 1),
            "faults": dict(faults),
            "sessions": len(machine.sessions),
            "sessions_by_status": dict(ended),
            "frames_received": sum(s.frames_received for s in states),
            "frames_analysed": sum(s.frames_analysed for s in states),
            "commands_executed": len(machine.instrument.executed),
            "violations": len(machine.instrument.violations),
        }
    finally:
        machine.teardown()


@pytest.mark.slow
@pytest.mark.timeout(4200)
def test_an_hour_of_sessions_with_a_random_fault_every_minute(segmenter):
    duration_s = float(os.environ.get("AUTOSCOPE_SOAK_S", "3600"))
    figures = soak(segmenter, duration_s, float(os.environ.get("AUTOSCOPE_SOAK_FAULT_EVERY_S", "60")))
    print("SOAK", json.dumps(figures))  # the soak report picks this line up
    assert figures["violations"] == 0 and figures["frames_analysed"] > 0
    every_s = float(os.environ.get("AUTOSCOPE_SOAK_FAULT_EVERY_S", "60"))
    assert sum(figures["faults"].values()) >= duration_s // every_s - 1  # the first comes after one period


def test_a_short_soak_with_a_fault_every_second(segmenter):
    figures = soak(segmenter, duration_s=12.0, fault_every_s=1.0, seed=3)
    assert figures["violations"] == 0 and sum(figures["faults"].values()) >= 10
    assert figures["frames_analysed"] > 50 and figures["sessions"] >= 2
