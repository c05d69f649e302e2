"""The loop against real drivers (in-process simulator, ZeroMQ over loopback) and every named fault."""

from __future__ import annotations

import numpy as np
import pytest

from agent.guard import Guard, GuardConfig
from agent.loop import Loop, LoopConfig
from agent.perception import Perception
from agent.policies import FieldTemplate, PolicyContext, Region, make_policy
from agent.recorder import SessionRecorder
from drivers.base import Ack, CommandRefused, Frame, ScanCommand
from drivers.recording import read_session
from drivers.remote import RemoteDriver
from drivers.server import InstrumentServer
from drivers.simulated import SimulatedDriver

FIELD = FieldTemplate(fov_nm=2.56, pixels=128, dwell_us=10.0)
REGION = Region(-20.0, 20.0, -20.0, 20.0)


def make_loop(driver, segmenter, tmp_path, policy="raster", steps=4, **loop_options) -> Loop:
    policy_obj = make_policy(policy, PolicyContext(REGION, FIELD, seed=1)) if isinstance(policy, str) else policy
    config = LoopConfig(steps, frame_timeout_s=5.0, **loop_options)
    guard = Guard(driver.capabilities(), GuardConfig())
    return Loop(driver, Perception(segmenter), policy_obj, guard, config, SessionRecorder(tmp_path / "session"))


def records(tmp_path) -> list[dict]:
    return read_session(tmp_path / "session").records


def test_a_run_records_everything_in_order_and_blanks_the_beam(segmenter, tmp_path):
    driver = SimulatedDriver(specimen_seed=2)
    state = make_loop(driver, segmenter, tmp_path, policy="defects", steps=3).run()
    assert (state.status, state.steps_done, len(state.fields)) == ("completed", 3, 3)
    kinds = [r["type"] for r in records(tmp_path)]
    assert kinds.count("observation") == 3 and kinds.count("decision") == 3 and kinds[-1] == "stop"
    observations = [r for r in records(tmp_path) if r["type"] == "observation"]
    assert sum(obs["n_atoms"] for obs in observations) > 0
    for obs in observations:
        atoms = obs["atoms"]
        assert len(atoms["presence_entropy"]) == len(atoms["uncertainty"]) == obs["n_atoms"]
        assert all(0 <= b <= np.log(2) for b in atoms["presence_entropy"])
    scans = [r for r in records(tmp_path) if r["type"] == "command" and r["command"]["kind"] == "scan"]
    frames = read_session(tmp_path / "session").frames
    assert [f.header.command_id for f in frames] == [c["command"]["id"] for c in scans]
    stop = records(tmp_path)[-1]
    assert stop["status"] == "completed" and stop["beam_blanked"] and driver.state.blanked


def test_commands_are_written_before_they_are_sent_and_raster_commits_ahead(segmenter, tmp_path):
    make_loop(SimulatedDriver(specimen_seed=2), segmenter, tmp_path, policy="raster", steps=3).run()
    order = [(r["type"], r.get("step")) for r in records(tmp_path) if r["type"] in ("command", "ack", "observation")]
    scan_steps = [s for t, s in order if t == "command"][1:-1]  # between unblank and blank
    assert scan_steps == [0, 1, 2]
    assert order.index(("command", 1)) < order.index(("observation", 0))  # the next scan is already running
    assert all(order.index(("command", s)) < order.index(("ack", s)) for s in (0, 1, 2))


def test_adaptive_policies_wait_for_the_analysis_and_time_frame_to_command(segmenter, tmp_path):
    loop = make_loop(SimulatedDriver(specimen_seed=2), segmenter, tmp_path, policy="defects", steps=3)
    loop.run()
    order = [(r["type"], r.get("step")) for r in records(tmp_path) if r["type"] in ("command", "observation")]
    assert order.index(("observation", 0)) < order.index(("command", 1))
    assert loop.timings.counts["frame_to_command"] == 2


def test_a_run_over_zeromq_matches_the_in_process_one(segmenter, tmp_path):
    server = InstrumentServer(SimulatedDriver(specimen_seed=2), "tcp://127.0.0.1:0", heartbeat_s=0.2).start()
    try:
        with RemoteDriver(server.endpoint, heartbeat_s=0.2) as remote:
            remote_state = make_loop(remote, segmenter, tmp_path / "a", policy="raster", steps=3).run()
    finally:
        server.stop()
    local_state = make_loop(SimulatedDriver(specimen_seed=2), segmenter, tmp_path / "b", policy="raster", steps=3).run()
    assert remote_state.status == "completed" and remote_state.fields == local_state.fields
    assert remote_state.atoms_found == local_state.atoms_found  # same specimen, same noise seed: same frames


class FaultyDriver:
    """A real simulated instrument whose Nth scan goes wrong in a chosen way."""

    def __init__(self, faults: dict[int, str]) -> None:
        self.inner = SimulatedDriver(specimen_seed=2)
        self.faults = faults
        self.scans = 0
        self._pending: list[str] = []
        self._stash: list[Frame] = []

    def capabilities(self):
        return self.inner.capabilities()

    def send(self, command, timeout_s: float = 5.0) -> Ack:
        if isinstance(command, ScanCommand):
            fault = self.faults.get(self.scans, "")
            self.scans += 1
            if fault == "refuse":
                raise CommandRefused(Ack.refusal(command, "refused", "vendor interlock: column valve closed"))
            self._pending.append(fault)
        return self.inner.send(command, timeout_s)

    def next_frame(self, timeout_s: float) -> Frame:
        if self._stash:
            return self._stash.pop()
        frame = self.inner.next_frame(timeout_s)
        fault = self._pending.pop(0)
        if fault == "nan":
            image = frame.image.copy()
            image[5, 5] = np.nan
            return Frame(frame.header, image)
        if fault == "shape":
            image = np.ascontiguousarray(frame.image[:, :100])
            return Frame(frame.header.model_copy(update={"shape": image.shape}), image)
        if fault == "stale":  # a frame answering a command of long ago, then the real one
            self._stash.append(frame)
            return Frame(frame.header.model_copy(update={"command_id": "an-old-command"}), frame.image)
        if fault == "lost":  # the frame never comes: the next one does
            return self.next_frame(timeout_s)
        return frame

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("nan", "bad_frame"),
        ("shape", "bad_frame"),
        ("stale", "stale_frame"),
        ("lost", "frame_lost"),
    ],
)
@pytest.mark.parametrize("policy", ["raster", "defects"])
def test_faults_are_recorded_and_the_run_continues(segmenter, tmp_path, fault, error, policy):
    driver = FaultyDriver({1: fault})
    loop = make_loop(driver, segmenter, tmp_path, policy=policy, steps=4)
    if fault == "lost" and policy == "defects":
        loop.config = LoopConfig(4, frame_timeout_s=0.3)  # one scan in flight: its frame simply times out
        error = "frame_timeout"
    state = loop.run()
    assert state.status == "completed" and state.errors.get(error) == 1, state.errors
    assert state.steps_done == 4
    logged = [r for r in records(tmp_path) if r["type"] in ("error", "refusal")]
    assert logged and (fault != "refuse" or "valve" in logged[0]["reason"])


def test_too_many_failures_in_a_row_stop_the_run(segmenter, tmp_path):
    driver = FaultyDriver({i: "nan" for i in range(100)})
    state = make_loop(driver, segmenter, tmp_path, steps=10, max_failures=3).run()
    assert state.status == "failed" and "3 failures in a row" in state.reason
    assert records(tmp_path)[-1]["type"] == "stop"


class ExplodingPolicy:
    name = "exploding"
    commits_ahead = False

    def __init__(self) -> None:
        self.inner = make_policy("raster", PolicyContext(REGION, FIELD))
        self.ingested = 0

    def suggest(self, n=1):
        return self.inner.suggest(n)

    def ingest(self, observation):
        self.ingested += 1
        if self.ingested == 2:
            raise RuntimeError("the policy's model diverged")

    def reject(self, decision, reason):
        self.inner.reject(decision, reason)


def test_a_policy_that_raises_stops_the_run_with_a_stop_record(segmenter, tmp_path):
    driver = SimulatedDriver(specimen_seed=2)
    state = make_loop(driver, segmenter, tmp_path, policy=ExplodingPolicy(), steps=5).run()
    assert state.status == "failed" and "diverged" in state.reason and state.steps_done == 1
    stop = records(tmp_path)[-1]
    assert stop["type"] == "stop" and stop["beam_blanked"] and driver.state.blanked


def test_an_instrument_that_disappears_ends_the_run_safely(segmenter, tmp_path):
    server = InstrumentServer(SimulatedDriver(specimen_seed=2), "tcp://127.0.0.1:0", heartbeat_s=0.1).start()
    remote = RemoteDriver(server.endpoint, heartbeat_s=0.1, reconnect=False)
    loop = make_loop(remote, segmenter, tmp_path, policy="defects", steps=50, reconnect_grace_s=0.3)

    def stop_server_after_two(loop_: Loop) -> None:
        if loop_.state.steps_done == 2:
            server.stop()

    loop.on_step = stop_server_after_two
    try:
        state = loop.run()
    finally:
        remote.close()
    assert state.status == "failed" and "instrument lost" in state.reason and state.steps_done == 2
    stop = records(tmp_path)[-1]
    assert stop["type"] == "stop" and not stop["beam_blanked"] and stop["errors"]["disconnected"] >= 1
    assert stop["beam_blank"] == "failed"  # (no link: not sent)


class _Blanker(SimulatedDriver):
    """A simulated instrument whose blanker refuses, or takes ``slow_s`` to confirm, once ``armed``."""

    def __init__(self, refuses: bool = False, slow_s: float = 0.0) -> None:
        super().__init__(specimen_seed=2)
        self.refuses, self.slow_s, self.armed = refuses, slow_s, False

    def send(self, command, timeout_s: float = 5.0):
        if command.kind == "blank" and self.armed:
            if self.refuses:
                raise CommandRefused(Ack.refusal(command, "refused", "the blanker is in maintenance mode"))
            import time

            time.sleep(self.slow_s)
        return super().send(command, timeout_s)


def _arm_after_two(driver: _Blanker):
    def arm(loop_: Loop) -> None:
        driver.armed = loop_.state.steps_done >= 2

    return arm


def test_the_stop_record_says_how_the_blank_on_the_way_out_ended(segmenter, tmp_path):
    loop = make_loop(SimulatedDriver(specimen_seed=2), segmenter, tmp_path / "ok", steps=2)
    loop.run()
    assert records(tmp_path / "ok")[-1]["beam_blank"] == "acknowledged"
    driver = _Blanker(refuses=True)
    loop = make_loop(driver, segmenter, tmp_path, steps=2)
    loop.on_step = _arm_after_two(driver)
    loop.run()
    stop = records(tmp_path)[-1]
    assert (stop["beam_blank"], stop["beam_blanked"]) == ("refused", False) and not driver.state.blanked
    refusals = [r for r in records(tmp_path) if r["type"] == "ack" and r["ack"]["kind"] == "blank"]
    assert [r["ack"]["code"] for r in refusals] == ["refused", "refused"]  # (tried twice, both recorded)


def test_a_blank_confirmed_too_late_is_recorded_unacknowledged_and_the_server_still_carries_it_out(segmenter, tmp_path):
    import time

    driver = _Blanker(slow_s=1.5)
    server = InstrumentServer(driver, "tcp://127.0.0.1:0").start()
    try:
        with RemoteDriver(server.endpoint) as remote:
            loop = make_loop(remote, segmenter, tmp_path, steps=2, stop_timeout_s=0.2)
            loop.on_step = _arm_after_two(driver)
            state = loop.run()
        stop = records(tmp_path)[-1]
        assert state.status == "completed" and (stop["beam_blank"], stop["beam_blanked"]) == ("unacknowledged", False)
        deadline = time.monotonic() + 10.0
        while not driver.state.blanked and time.monotonic() < deadline:
            time.sleep(0.05)
        assert driver.state.blanked  # the agent gone, its late blank ran all the same
    finally:
        server.stop()
