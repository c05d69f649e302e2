"""Safe hold, frame accounting, frame age and a hung model: the loop's reliability mechanisms.

Real simulated instruments (in-process and behind a real ZeroMQ server); faults are injected by thin
wrappers where an instrument cannot be made to misbehave on demand.
"""

from __future__ import annotations

import copy
import threading
import time

import pytest

from agent.guard import Guard, GuardConfig
from agent.loop import LoopConfig
from agent.policies import PolicyContext, make_policy
from drivers.base import Ack, CommandRefused, Disconnected, DriverTimeout, Frame, ProtocolError, Range, ScanCommand
from drivers.recording import read_session
from drivers.remote import RemoteDriver
from drivers.server import InstrumentServer
from drivers.simulated import SimulatedDriver
from tests.agent.test_loop import FIELD, REGION, FaultyDriver, make_loop, records
from tests.reliability.harness import FailingModel


class _Misbehaving(SimulatedDriver):
    """A simulated instrument that refuses, or misplaces, its ``at``-th scan (``misplaced_as_replay``: and
    labels that frame as a strict replay's, which only a driver saying so when connecting may serve)."""

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
        if self.fault.startswith("misplaced") and self.executed.count("scan") - 1 == self.at:
            update: dict = {"x_nm": frame.header.x_nm + 2.0}  # the stage slipped
            if self.fault == "misplaced_as_replay":
                update["metadata"] = {**frame.header.metadata, "replay": {"mode": "strict"}}
            header = frame.header.model_copy(update=update)
            return Frame(header, frame.image)
        if self.fault == "dwell_in_ms" and self.executed.count("scan") - 1 == self.at:  # a pixel time in ms
            return Frame(frame.header.model_copy(update={"dwell_us": frame.header.dwell_us * 1000.0}), frame.image)
        return frame


@pytest.mark.parametrize("fault", ["refuse", "misplaced", "misplaced_as_replay", "dwell_in_ms"])
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


def test_a_refused_move_holds_even_when_it_is_the_failure_that_reaches_the_limit(segmenter, tmp_path):
    driver = _Misbehaving("refuse", at=0)
    state = make_loop(driver, segmenter, tmp_path, policy="defects", steps=4, max_failures=1).run()
    assert state.status == "held" and "vendor interlock" in state.reason
    assert "safe_hold" in [r["type"] for r in records(tmp_path)]


class _RejectsOneScan(SimulatedDriver):
    """Answers its second scan with an error reply (as a server that forgot the client does: hello_first)."""

    def __init__(self) -> None:
        super().__init__(specimen_seed=2)
        self.scans = 0

    def send(self, command, timeout_s: float = 5.0) -> Ack:
        if isinstance(command, ScanCommand):
            self.scans += 1
            if self.scans == 2:
                raise ProtocolError("hello_first", "no hello on this connection (or forgotten since): not accepted")
        return super().send(command, timeout_s)


def test_a_command_the_instrument_answers_with_an_error_is_a_failed_step_not_a_crash(segmenter, tmp_path):
    state = make_loop(_RejectsOneScan(), segmenter, tmp_path, policy="defects", steps=3).run()
    assert state.status == "completed" and state.steps_done == 3 and state.errors["command_failed"] == 1


@pytest.mark.parametrize("fault", ["nan", "shape", "stale", "lost", ""])
def test_every_frame_received_is_analysed_or_counted_as_skipped(segmenter, tmp_path, fault):
    driver = FaultyDriver({1: fault, 3: fault})
    state = make_loop(driver, segmenter, tmp_path, policy="raster", steps=5).run()
    skipped = sum(state.frames_skipped.values())
    assert state.frames_received == state.frames_analysed + skipped, (state.frames_received, state.frames_skipped)
    assert state.frames_analysed == state.steps_done == 5
    assert (skipped > 0) == (fault in ("nan", "shape", "stale"))
    stop = records(tmp_path)[-1]
    recorded = state.frames_recorded
    expected = {
        "received": state.frames_received, "analysed": 5, "recorded": recorded, "skipped": state.frames_skipped,
        "lost_with_link": 0,
    }  # fmt: skip
    assert stop["frames"] == expected == stop["counters"]["frames"]
    assert recorded == len(read_session(tmp_path / "session").frames)  # every recorded frame is on disk


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("nan", "non_finite"), ("shape", "shape"), ("raise", "raised_RuntimeError"), ("range", "range")],
)
def test_a_failing_model_withholds_the_decision_and_the_fallback_decides_on_the_same_frame(
    segmenter, tmp_path, fault, reason
):
    spoiled = copy.copy(segmenter)
    spoiled.model = FailingModel(segmenter.model, {1: fault})
    loop = make_loop(SimulatedDriver(specimen_seed=2), spoiled, tmp_path, policy="defects", steps=4)
    ingested: list[int] = []
    inner_ingest = loop.policy.ingest
    loop.policy.ingest = lambda obs: (ingested.append(obs.step), inner_ingest(obs))  # type: ignore[method-assign]
    loop.fallback = make_policy("raster", PolicyContext(REGION, FIELD, seed=1))
    state = loop.run()
    assert state.status == "completed" and state.steps_done == 4
    assert state.model_failures == {reason: 1} and state.frames_skipped == {"model_failed": 1}
    assert 1 not in ingested and len(ingested) == 4  # the failed frame fed no decision
    log = records(tmp_path)
    failure = next(i for i, r in enumerate(log) if r["type"] == "error" and r["kind"] == "model_failed")
    assert log[failure]["reason"] == reason and log[failure]["fallback"] == "raster"
    after = [r["type"] for r in log[failure:]]
    assert after.index("fallback") < after.index("command") < after.index("observation")  # the very next move
    fallback = next(r for r in log[failure:] if r["type"] == "fallback")
    assert fallback["policy"] == "raster" and state.fallback_decisions == 1
    assert log[-1]["counters"]["model_failures"] == {reason: 1}


def test_a_model_that_keeps_failing_stops_the_run_blanked(segmenter, tmp_path):
    spoiled = copy.copy(segmenter)
    spoiled.model = FailingModel(segmenter.model, dict.fromkeys(range(100), "nan"))
    driver = SimulatedDriver(specimen_seed=2)
    loop = make_loop(driver, spoiled, tmp_path, policy="defects", steps=4, max_failures=3)
    loop.fallback = make_policy("raster", PolicyContext(REGION, FIELD, seed=1))
    state = loop.run()
    assert state.status == "failed" and "model failed" in state.reason and state.steps_done == 0
    assert state.model_failures == {"non_finite": 3} and driver.state.blanked


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


def _run_through_a_restart(segmenter, tmp_path, fresh, guard: GuardConfig | None = None):
    """A 6-step run whose instrument dies after step 2 and comes back as ``fresh()`` (a new driver).

    Returns the run's state, the driver it came back as, and how many commands that one executed
    (read before its server stops, which blanks too).
    """
    server = InstrumentServer(SimulatedDriver(specimen_seed=2), "tcp://127.0.0.1:0", heartbeat_s=0.1).start()
    endpoint = server.endpoint
    remote = RemoteDriver(endpoint, heartbeat_s=0.1)
    loop = make_loop(remote, segmenter, tmp_path, policy="defects", steps=6, reconnect_grace_s=10.0)
    if guard is not None:
        loop.guard = Guard(remote.capabilities(), guard)
    restarted: list[SimulatedDriver] = []
    servers: list[InstrumentServer] = []

    def restart_after_two(loop_) -> None:
        if loop_.state.steps_done == 2 and not restarted:
            server.stop()
            time.sleep(0.5)
            restarted.append(fresh())
            servers.append(InstrumentServer(restarted[0], endpoint, heartbeat_s=0.1).start())

    loop.on_step = restart_after_two
    try:
        state = loop.run()
        executed = restarted[0].commands_executed
    finally:
        remote.close()
        for s in servers:
            s.stop()
    return state, restarted[0], executed


def test_an_instrument_back_with_narrower_limits_than_configured_means_a_safe_hold(segmenter, tmp_path):
    def narrower() -> SimulatedDriver:
        fresh = SimulatedDriver(specimen_seed=2)
        fresh._cap = fresh._cap.model_copy(update={"stage_x_nm": Range(low=-10.0, high=10.0)})
        return fresh

    guard = GuardConfig(stage_x_nm=Range(low=-30.0, high=30.0))
    state, back, executed = _run_through_a_restart(segmenter, tmp_path, narrower, guard)
    assert state.status == "held" and "narrower" in state.reason and "guard.stage_x_nm [-30, 30]" in state.reason
    assert executed == 1 and back.state.blanked  # the hold's blank: no unblank, no move
    assert state.steps_done == 2


def _claims_to_be_a_replay(driver: SimulatedDriver) -> SimulatedDriver:
    driver._cap = driver._cap.model_copy(update={"serves_recorded_fields": True})
    return driver


def test_a_driver_claiming_to_serve_recorded_fields_is_taken_at_its_word_only_when_trusted(segmenter, tmp_path):
    from agent.loop import UntrustedReplayClaim

    with pytest.raises(UntrustedReplayClaim, match="says it is a strict replay"):
        make_loop(_claims_to_be_a_replay(SimulatedDriver(specimen_seed=2)), segmenter, tmp_path)
    driver = _claims_to_be_a_replay(_Misbehaving("misplaced_as_replay", at=1))
    loop = make_loop(driver, segmenter, tmp_path / "trusted", steps=3, trust_recorded_fields=True)
    assert loop.run().status == "completed"  # a trusted replay's frames are the recorded fields, wherever asked


def test_an_instrument_back_claiming_to_be_a_replay_means_a_safe_hold(segmenter, tmp_path):
    """A bridge restarted into saying its frames are recorded fields must not turn the readback checks off."""
    state, back, executed = _run_through_a_restart(
        segmenter, tmp_path, lambda: _claims_to_be_a_replay(SimulatedDriver(specimen_seed=2))
    )
    assert state.status == "held" and "says it is a strict replay" in state.reason
    assert executed == 1 and back.state.blanked  # the hold's blank: no unblank, no move
    assert state.steps_done == 2


def test_the_stop_record_and_sessions_inspect_carry_the_counters(segmenter, tmp_path, capsys):
    from agent.cli import main

    server = InstrumentServer(SimulatedDriver(specimen_seed=2), "tcp://127.0.0.1:0", heartbeat_s=0.1).start()
    remote = RemoteDriver(server.endpoint, heartbeat_s=0.1)
    try:
        loop = make_loop(remote, segmenter, tmp_path, policy="defects", steps=3)
        time.sleep(0.4)  # a few heartbeats and their echoes
        state = loop.run()
    finally:
        remote.close()
        server.stop()
    counters = records(tmp_path)[-1]["counters"]
    assert counters["frames"]["received"] == state.frames_received == 3
    assert counters["commands"] == {"sent": 5, "acked": 5}  # unblank, 3 scans, blank
    assert counters["link"]["frames"] == 3 and counters["link"].get("frames_lost", 0) == 0
    assert counters["link"]["command_round_trip_ms"]["n"] == 3 and counters["link"]["command_round_trip_ms"]["p50"] > 0
    assert counters["link"]["heartbeat_rtt_ms"]["n"] >= 1
    assert counters["recorder"]["records"] > 10 and counters["recorder"]["backlog"] == 0
    assert main(["sessions", "inspect", str(tmp_path / "session")]) == 0
    out = capsys.readouterr().out
    assert "frames: received 3, analysed 3, recorded 3" in out and "commands: sent 5, acked 5" in out
    assert "link: " in out and "recorder: records" in out and "beam blank acknowledged" in out


class _LostAcks(SimulatedDriver):
    """Executes every scan but loses the ack of the ``at``-th (the answer never arrives)."""

    def __init__(self, at: int) -> None:
        super().__init__(specimen_seed=2)
        self.at, self.scans, self.timeouts_s = at, 0, []

    def send(self, command, timeout_s: float = 5.0) -> Ack:
        ack = super().send(command, timeout_s)
        if isinstance(command, ScanCommand):
            self.scans += 1
            if self.scans == self.at:
                self.timeouts_s.append(timeout_s)
                raise DriverTimeout(f"no ack for {command.id} within {timeout_s:g} s")
        return ack


def test_a_scan_whose_ack_was_lost_counts_in_the_dose_and_was_waited_for_until_its_deadline(segmenter, tmp_path):
    driver = _LostAcks(at=2)
    loop = make_loop(driver, segmenter, tmp_path, policy="defects", steps=3, command_timeout_s=0.5)
    state = loop.run()
    assert state.commands.get("ack_timeouts") == 1
    assert len(loop.guard.doses_e_per_a2) == driver.scans  # the unacknowledged scan's dose is counted too
    assert driver.timeouts_s[0] > 20.0  # the guard's 30 s deadline, not the 0.5 s ack wait


def test_a_reconnection_during_the_analysis_is_resumed_before_the_next_move(segmenter, tmp_path):
    server = InstrumentServer(SimulatedDriver(specimen_seed=2), "tcp://127.0.0.1:0", heartbeat_s=0.1).start()
    endpoint = server.endpoint
    remote = RemoteDriver(endpoint, heartbeat_s=0.1)
    loop = make_loop(remote, segmenter, tmp_path, policy="defects", steps=3)
    fresh = _Misbehaving("none")  # remembers what it executed
    fresh.state.blanked = True  # the restarted instrument comes back blanked
    servers = [server]

    class _RestartDuringAnalysis:
        def __init__(self, inner) -> None:
            self.inner = inner

        def observe(self, frame, step, rotation_deg=0.0):
            if step == 0:  # nothing in flight: the loop will not notice from a failed call
                servers[0].stop()
                time.sleep(0.5)
                servers.append(InstrumentServer(fresh, endpoint, heartbeat_s=0.1).start())
                deadline = time.monotonic() + 10.0
                while not (remote.connected and remote.stats["reconnects"]) and time.monotonic() < deadline:
                    time.sleep(0.02)
            return self.inner.observe(frame, step, rotation_deg)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    loop.perception = _RestartDuringAnalysis(loop.perception)  # type: ignore[assignment]
    try:
        state = loop.run()
    finally:
        remote.close()
        servers[-1].stop()
    assert state.status == "completed", state.reason
    assert fresh.executed[:2] == ["unblank", "scan"]  # read back, unblanked, then moved
    log = records(tmp_path)
    reconnected = next(i for i, r in enumerate(log) if r["type"] == "reconnected")
    later_scans = [i for i, r in enumerate(log) if r["type"] == "command" and r["command"]["kind"] == "scan"]
    assert any(i > reconnected for i in later_scans) and later_scans[1] > reconnected


class _DropsLinkOnce(SimulatedDriver):
    """Loses its link once, while the loop waits for the ``at``-th frame: every frame not yet delivered is gone,
    and it is back at once (as a remote driver after a reconnection: ``connected``, ``stats['reconnects']``)."""

    def __init__(self, at: int) -> None:
        super().__init__(specimen_seed=2)
        self.at, self.waits, self.stats = at, 0, {"reconnects": 0}
        self.connected = True

    def next_frame(self, timeout_s: float) -> Frame:
        self.waits += 1
        if self.waits == self.at:
            undelivered = 0
            while True:
                try:
                    super().next_frame(0.2)
                    undelivered += 1
                except DriverTimeout:
                    break
            self.stats["reconnects"] += 1
            raise Disconnected(f"the link dropped with {undelivered} frame(s) undelivered")
        return super().next_frame(timeout_s)


def test_the_frames_a_lost_link_takes_with_it_are_counted_and_recorded(segmenter, tmp_path):
    driver = _DropsLinkOnce(at=3)
    state = make_loop(driver, segmenter, tmp_path, policy="raster", steps=4).run()  # raster: scans ahead
    assert state.status == "completed" and state.steps_done == 4, state.reason
    lost = [r for r in records(tmp_path) if r.get("kind") == "frames_lost_with_link"]
    assert len(lost) == 1 and state.errors["frames_lost_with_link"] == 1
    assert state.frames_lost_with_link == lost[0]["message"].count(",") + 1 >= 2  # the awaited one and the next
    assert records(tmp_path)[-1]["counters"]["frames"]["lost_with_link"] == state.frames_lost_with_link
