"""Safe hold, frame accounting, frame age and a hung model: the loop's reliability mechanisms.

Real simulated instruments (in-process and behind a real ZeroMQ server); faults are injected by thin
wrappers where an instrument cannot be made to misbehave on demand.
"""

from __future__ import annotations

import threading
import time

import pytest

from agent.loop import LoopConfig
from drivers.base import Ack, CommandRefused, Frame, ScanCommand
from drivers.remote import RemoteDriver
from drivers.server import InstrumentServer
from drivers.simulated import SimulatedDriver
from tests.agent.test_loop import FaultyDriver, make_loop, records


class _Misbehaving(SimulatedDriver):
    """A simulated instrument that refuses, or misplaces, its ``at``-th scan."""

    def __init__(self, fault: str, at: int = 1) -> None:
        super().__init__(specimen_seed=2)
        self.fault, self.at, self.scans = fault, at, 0
        self.executed: list[str] = []

    def send(self, command, timeout_s: float = 5.0) -> Ack:
        if isinstance(command, ScanCommand):
            self.scans += 1
            if self.fault == "refuse" and self.scans - 1 == self.at:
                raise CommandRefused(Ack.refusal(command, "refused", "vendor interlock: column valve closed"))
        self.executed.append(command.kind)
        return super().send(command, timeout_s)

    def next_frame(self, timeout_s: float) -> Frame:
        frame = super().next_frame(timeout_s)
        if self.fault == "misplaced" and self.executed.count("scan") - 1 == self.at:
            header = frame.header.model_copy(update={"x_nm": frame.header.x_nm + 2.0})  # the stage slipped
            return Frame(header, frame.image)
        return frame


@pytest.mark.parametrize("fault", ["refuse", "misplaced"])
@pytest.mark.parametrize("policy", ["raster", "defects"])
def test_a_refused_move_or_an_off_readback_holds_and_blanks(segmenter, tmp_path, fault, policy):
    driver = _Misbehaving(fault, at=1)
    state = make_loop(driver, segmenter, tmp_path, policy=policy, steps=6).run()
    assert state.status == "held" and "safe hold" in state.reason, state.reason
    assert driver.state.blanked and driver.executed[-1] == "blank"
    scans_after_fault = driver.executed[driver.executed.index("scan") :].count("scan")
    assert scans_after_fault <= 1 + 2  # the faulty scan, at most one committed ahead, nothing after the hold
    kinds = [r["type"] for r in records(tmp_path)]
    assert "safe_hold" in kinds and kinds[-1] == "stop"
    assert records(tmp_path)[-1]["beam_blanked"]
    assert state.steps_done <= 2


@pytest.mark.parametrize("fault", ["nan", "shape", "stale", "lost", ""])
def test_every_frame_received_is_analysed_or_counted_as_skipped(segmenter, tmp_path, fault):
    driver = FaultyDriver({1: fault, 3: fault})
    state = make_loop(driver, segmenter, tmp_path, policy="raster", steps=5).run()
    skipped = sum(state.frames_skipped.values())
    assert state.frames_received == state.frames_analysed + skipped, (state.frames_received, state.frames_skipped)
    assert state.frames_analysed == state.steps_done == 5
    assert (skipped > 0) == (fault in ("nan", "shape", "stale"))
    stop = records(tmp_path)[-1]
    assert stop["frames"] == {"received": state.frames_received, "analysed": 5, "skipped": state.frames_skipped}


class _SlowPerception:
    """The real perception behind a delay; remembers each analysed frame's age when analysis began."""

    def __init__(self, inner, delay_s: float, gate: threading.Event | None = None) -> None:
        self.inner, self.delay_s, self.gate = inner, delay_s, gate
        self.ages_s: list[float] = []

    def observe(self, frame, step, rotation_deg=0.0):
        self.ages_s.append(time.time() - frame.header.acquisition_end_unix_s)
        if self.gate is not None:
            self.gate.wait()  # hung until the test lets go
        time.sleep(self.delay_s)
        return self.inner.observe(frame, step, rotation_deg)


def test_a_slow_model_never_decides_on_a_frame_older_than_the_maximum_age(segmenter, tmp_path):
    loop = make_loop(SimulatedDriver(specimen_seed=2), segmenter, tmp_path, policy="raster", steps=4)
    loop.config = LoopConfig(4, frame_timeout_s=5.0, max_frame_age_s=0.3, max_failures=50)
    slow = loop.perception = _SlowPerception(loop.perception, delay_s=0.5)  # type: ignore[assignment]
    state = loop.run()
    assert state.status == "completed"
    assert max(slow.ages_s) <= 0.3, slow.ages_s
    assert state.frames_skipped.get("too_old", 0) > 0  # the frames committed ahead waited out the slow analysis
    assert state.frames_received == state.frames_analysed + sum(state.frames_skipped.values())


def test_a_hung_model_is_detected_within_its_timeout_and_the_beam_is_blanked(segmenter, tmp_path):
    driver = SimulatedDriver(specimen_seed=2)
    loop = make_loop(driver, segmenter, tmp_path, policy="defects", steps=4)
    loop.config = LoopConfig(4, frame_timeout_s=5.0, perception_timeout_s=0.5)
    gate = threading.Event()
    loop.perception = _SlowPerception(loop.perception, delay_s=0.0, gate=gate)  # type: ignore[assignment]
    try:
        t0 = time.monotonic()
        state = loop.run()
        elapsed_s = time.monotonic() - t0
    finally:
        gate.set()
    assert state.status == "held" and "did not answer" in state.reason
    assert elapsed_s < 0.5 + 3.0
    assert driver.state.blanked and state.errors.get("perception_hung") == 1
    assert driver.commands_executed == 3  # unblank, the one scan, and the blank: no move after the hang


def test_after_the_instrument_restarts_the_loop_reads_it_back_and_unblanks_before_moving(segmenter, tmp_path):
    server = InstrumentServer(SimulatedDriver(specimen_seed=2), "tcp://127.0.0.1:0", heartbeat_s=0.1).start()
    endpoint = server.endpoint
    remote = RemoteDriver(endpoint, heartbeat_s=0.1)
    loop = make_loop(remote, segmenter, tmp_path, policy="defects", steps=4, reconnect_grace_s=10.0)
    restarted: list[InstrumentServer] = []

    def restart_after_two(loop_) -> None:
        if loop_.state.steps_done == 2 and not restarted:
            server.stop()  # the instrument process dies...
            time.sleep(0.5)
            fresh = SimulatedDriver(specimen_seed=2)
            fresh.state.blanked = True  # ...and comes back with the beam blanked (as after a dead-man blank)
            restarted.append(InstrumentServer(fresh, endpoint, heartbeat_s=0.1).start())

    loop.on_step = restart_after_two
    try:
        state = loop.run()
    finally:
        remote.close()
        for s in restarted:
            s.stop()
    assert state.status == "completed" and state.steps_done == 4, state.reason
    kinds = [(r["type"], r.get("command", {}).get("kind")) for r in records(tmp_path)]
    back = kinds.index(("reconnected", None))
    after = [k for k in kinds[: back + 1] if k[0] == "command"][-1]
    assert after == ("command", "unblank")  # the unblank is recorded before the reconnection completes
    next_scan = next(i for i, k in enumerate(kinds) if i > back and k == ("command", "scan"))
    assert next_scan > back
