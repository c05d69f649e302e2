"""The streaming loop: the only place that sends commands to an instrument.

Driver -> Frame -> perception -> Observation -> Policy.ingest / suggest -> Decision -> Guard -> Command
-> Driver, with per-stage timings, a session record of everything, and a stop record however it ends.
When the policy commits ahead (a raster), the next scan is sent before the current frame is analysed,
so the instrument works while the agent thinks.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from agent.exit_blank import blank_on_the_way_out, capabilities_now, record_if_possible
from agent.frame_checks import frame_age_s, is_strict_replay, readback_problem
from agent.guard import Decision, Guard, Refusal
from agent.observation import Observation
from agent.perception import Perception
from agent.policies import Policy
from agent.recorder import SessionRecorder
from agent.run_state import Interrupted, LoopConfig, RunState, StopLoop, bump
from agent.scoring import TruthScorer
from agent.timings import StageTimings
from drivers.base import (
    Ack,
    BlankCommand,
    Capabilities,
    Command,
    CommandRefused,
    Disconnected,
    Driver,
    DriverError,
    DriverTimeout,
    Frame,
    ProtocolError,
    ScanCommand,
    UnblankCommand,
    deadline_in,
)
from drivers.recording import RecordingError
from models.preprocess import ImageError
from models.segmenter import ModelOutputError

logger = logging.getLogger(__name__)


class UntrustedReplayClaim(ValueError):
    """A driver claims to serve recorded fields and the loop was not told to trust it."""


@dataclass
class _InFlight:
    step: int
    decision: Decision
    command: ScanCommand
    sent_s: float


class Loop:
    """Run a policy against an instrument.

    Parameters
    ----------
    driver, perception, policy, guard
        The parts; the loop owns none of them (the caller closes the driver).
    config
        Steps and fault tolerance.
    recorder
        Where records go (a recorder with no directory records nothing).
    on_step
        Called after every analysed frame with the loop (the live view).
    fallback
        A model-free policy (a raster) that takes the next decision whenever the model fails on a frame
        (raises, or returns non-finite or mis-shaped outputs): that frame is not analysed, the policy is
        not fed, and the instrument keeps acquiring.  None: the failed step is simply retried.
    """

    def __init__(
        self,
        driver: Driver,
        perception: Perception,
        policy: Policy,
        guard: Guard,
        config: LoopConfig,
        recorder: SessionRecorder | None = None,
        on_step: Callable[[Loop], None] | None = None,
        fallback: Policy | None = None,
    ) -> None:
        self.driver, self.perception, self.policy, self.guard = driver, perception, policy, guard
        self.fallback = fallback
        self._fallback_due = False
        self.paused = False
        self._seen_generation = self._link_generation()
        self.config = config
        # a strict replay is said once by the driver, not by each frame; taken only from a trusted driver
        self._replaying = self._replay_claim(capabilities_now(driver))
        self.recorder = recorder or SessionRecorder(None)
        self.on_step = on_step
        self.timings = StageTimings()
        self.state = RunState()
        self.scorer = TruthScorer()
        self._in_flight: deque[_InFlight] = deque()
        self._current: _InFlight | None = None
        self._lost_since: float | None = None
        self._frame_at: float | None = None
        self._perceiver = ThreadPoolExecutor(1, thread_name_prefix="perception")  # a hung model cannot hang the loop

    # -- the run --------------------------------------------------------------------------------------
    def run(self) -> RunState:
        """Run until ``steps`` frames are analysed, the policy has nothing left, or something stops it.

        Always blanks the beam and writes a stop record; ``state.status`` is ``completed``,
        ``exhausted`` (the policy ran out of fields), ``interrupted``, ``failed`` or ``held`` (safe hold:
        the instrument refused a move, a frame's readback was off, or the model hung; nothing more is
        sent until an operator starts a new run).
        """
        if self.start():
            while self.step():
                pass
        return self.state

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the run has ended (stop record written)."""
        return self.state.status == "running"

    def start(self) -> bool:
        """Unblank the beam; False if the run ended at once (see ``state``)."""
        return self._guarded(lambda: self._send_simple(self._unblank_command()))

    def step(self) -> bool:
        """Analyse one more frame (a paused loop does nothing); False once the run has ended."""
        if not self.running:
            return False
        if self.paused:
            return True
        if self.state.steps_done >= self.config.steps:
            self._shutdown("completed", f"{self.config.steps} steps done")
            return False
        return self._guarded(self._step)

    def pause(self) -> None:
        """Operator pause: blank the beam and send nothing more until :meth:`resume` (scans in flight finish)."""
        if self.running and not self.paused and self._guarded(lambda: self._send_simple(self._blank_command())):
            self.paused = True
            record_if_possible(lambda: self.recorder.write("paused", step=self.state.issued))

    def resume(self) -> None:
        """End a pause: unblank, then steps go on."""
        if self.running and self.paused:
            self.paused = False
            if self._guarded(lambda: self._send_simple(self._unblank_command())):
                record_if_possible(lambda: self.recorder.write("resumed", step=self.state.issued))

    def abort(self, reason: str) -> None:
        """End the run now (an operator's stop): blank, stop record with ``reason``."""
        if self.running:
            self._shutdown("interrupted", reason)

    def _guarded(self, action: Callable[[], None]) -> bool:
        """Run ``action``; end the run (blank, stop record) on whatever stops it, and say whether it goes on."""
        try:
            action()
            return True
        except (Interrupted, KeyboardInterrupt) as exc:
            self._shutdown("interrupted", str(exc) or type(exc).__name__)
        except StopLoop as exc:
            self._shutdown(exc.status, exc.reason)
        except RecordingError as exc:  # nothing may be sent that cannot be recorded first
            self._shutdown("failed", f"the session can no longer be recorded: {exc}")
        except Exception as exc:
            self._shutdown("failed", f"unexpected {type(exc).__name__}: {exc}")
            raise
        return False

    def _blank_command(self) -> BlankCommand:
        return BlankCommand(deadline_unix_s=deadline_in(self.config.command_timeout_s))

    def _unblank_command(self) -> UnblankCommand:
        return UnblankCommand(deadline_unix_s=deadline_in(self.config.command_timeout_s))

    def _step(self) -> None:
        depth = 2 if self.policy.commits_ahead else 1
        self._fill(depth)
        if not self._in_flight:
            raise StopLoop("exhausted", "the policy has no field left to propose")
        job = self._current = self._in_flight.popleft()
        try:
            self._handle(job, depth)
        finally:
            self._current = None
            s = self.state
            in_hand = s.frames_received - s.frames_analysed - sum(s.frames_skipped.values())
            if in_hand > 0:  # the run stopped with a frame received but not yet analysed or skipped
                s.skip("run_stopped")

    def _handle(self, job: _InFlight, depth: int) -> None:
        t0 = time.perf_counter()
        frame = self._await_frame(job)
        self.timings.add("wait_frame", 1e3 * (time.perf_counter() - t0))
        if frame is not None and frame.header.command_id != job.command.id:
            job = self._current = self._skip_to(job, str(frame.header.command_id))
        if frame is None:
            self._failed(job.decision, "no usable frame")
            return
        self._check_frame(job, frame)
        self._frame_at = time.perf_counter()
        if self.policy.commits_ahead:
            self._fill(depth)  # the instrument scans the next field while this one is analysed
        if self._too_old(job, frame):  # checked last: sending the next scan may have taken a while
            return
        self._analyse(job, frame)

    def _strict_replay(self, frame: Frame) -> bool:
        """A frame of a strict replay: the driver said so when connecting, and the frame says so too."""
        return self._replaying and is_strict_replay(frame)

    def _check_frame(self, job: _InFlight, frame: Frame) -> None:
        """Safe hold when the frame was not taken where it was commanded."""
        if self._strict_replay(frame):  # a strict replay serves the recorded fields, wherever asked
            return
        problem = readback_problem(job.command, frame.header, self.config.readback_tolerance_nm)
        if problem is not None:
            self.state.skip("readback")
            self._record_frame(frame, job.step)
            self._hold(f"readback of step {job.step} is off: {problem}")

    def _too_old(self, job: _InFlight, frame: Frame) -> bool:
        age_s = frame_age_s(frame)
        if self._strict_replay(frame) or age_s <= self.config.max_frame_age_s:
            return False
        self.state.skip("too_old")
        message = f"frame of step {job.step} is {age_s:.1f} s old (max_frame_age_s={self.config.max_frame_age_s:g})"
        self._error("frame_too_old", message, step=job.step)
        self._failed(job.decision, "frame too old")
        return True

    def _analyse(self, job: _InFlight, frame: Frame) -> None:
        t0 = time.perf_counter()
        try:
            obs = self._observe(job, frame)
        except StopLoop:  # a hung model: safe hold
            raise
        except ImageError as exc:
            self.state.skip("bad_frame")
            self._error("bad_frame", f"frame of step {job.step} cannot be analysed: {exc}", step=job.step)
            self._record_frame(frame, job.step)
            self._failed(job.decision, str(exc))
            return
        except Exception as exc:  # the model failed on a good frame: no decision from it
            self._model_failed(job, frame, exc)
            return
        t1 = time.perf_counter()
        self._call_policy("ingest", lambda: self.policy.ingest(obs))
        t2 = time.perf_counter()
        self.timings.add("perceive", 1e3 * (t1 - t0))
        self.timings.add("ingest", 1e3 * (t2 - t1))
        true_new = self.scorer.add(frame, obs)
        truth = {"true_new_defects": true_new} if self.scorer.available else {}
        stages = ("wait_frame", "suggest", "guard", "send", "perceive", "ingest", "frame_to_command")
        loop_ms = {k: round(self.timings.last(k), 3) for k in stages if self.timings.counts.get(k)}
        self._record_frame(frame, job.step)
        self.recorder.write("observation", **obs.summary(), **truth, loop_ms=loop_ms)
        self.timings.add("record", 1e3 * (time.perf_counter() - t2))
        for stage, ms in obs.timings_ms.items():
            self.timings.add(f"perceive.{stage}", ms)
        s = self.state
        s.frames_analysed += 1
        s.steps_done += 1
        s.failures_in_row = 0
        s.atoms_found += obs.n_atoms
        s.featureless_frames += obs.featureless
        s.last = obs
        if self.on_step is not None:
            self.on_step(self)

    def _observe(self, job: _InFlight, frame: Frame) -> Observation:
        """Perception on the worker thread, waited for at most ``perception_timeout_s``."""
        pending = self._perceiver.submit(self.perception.observe, frame, job.step, job.command.rotation_deg)
        try:
            return pending.result(timeout=self.config.perception_timeout_s)
        except FutureTimeout:
            self.state.skip("perception_hung")
            self._error(
                "perception_hung", f"no observation of step {job.step} after {self.config.perception_timeout_s:g} s"
            )
            self._hold(f"the model did not answer within perception_timeout_s={self.config.perception_timeout_s:g}")
            raise  # unreachable: _hold raises

    def _record_frame(self, frame: Frame, step: int) -> None:
        self.recorder.frame(frame, step)
        self.state.frames_recorded += 1

    def _model_failed(self, job: _InFlight, frame: Frame, exc: Exception) -> None:
        """Withhold the decision the frame would have fed; the fallback policy takes the next one."""
        reason = exc.reason if isinstance(exc, ModelOutputError) else f"raised_{type(exc).__name__}"
        bump(self.state.model_failures, reason)
        self.state.skip("model_failed")
        self._record_frame(frame, job.step)
        fallback = self.fallback.name if self.fallback is not None else None
        message = f"the model failed on the frame of step {job.step} ({reason}): {exc}"
        self._error("model_failed", message, step=job.step, reason=reason, fallback=fallback)
        self._fallback_due = self.fallback is not None
        self._failed(job.decision, f"model failed: {reason}")

    # -- deciding and sending -------------------------------------------------------------------------
    def _fill(self, depth: int) -> None:
        """Issue commands until ``depth`` scans are in flight (or every step has its command)."""
        s = self.state
        self._check_link()
        while len(self._in_flight) < depth and self._frames_wanted() > 0:
            t0 = time.perf_counter()
            policy, fallback = self._decider()
            decisions = self._call_policy("suggest", lambda: policy.suggest(1))  # noqa: B023 (called at once)
            t1 = time.perf_counter()
            if not decisions:
                return
            decision = decisions[0]
            checked = self.guard.check(decision)
            t2 = time.perf_counter()
            self.recorder.decision(decision, s.issued)
            if fallback:
                s.fallback_decisions += 1
                self.recorder.write("fallback", step=s.issued, policy=policy.name)
            if isinstance(checked, Refusal):
                self._refused(decision, "guard", checked.reason)
                continue
            if not isinstance(checked, ScanCommand):  # tilt series run in agent.tomo, not here
                self._refused(decision, "loop", f"this loop acquires scans; a {checked.kind} decision is not run")
                continue
            self.timings.add("suggest", 1e3 * (t1 - t0))
            self.timings.add("guard", 1e3 * (t2 - t1))
            if self._send_scan(checked, decision):
                self._in_flight.append(_InFlight(s.issued, decision, checked, time.perf_counter()))
                s.issued += 1

    def _decider(self) -> tuple[Policy, bool]:
        """The policy that takes the next decision, and whether it is the fallback (used once per failure)."""
        if self._fallback_due and self.fallback is not None:
            self._fallback_due = False
            return self.fallback, True
        return self.policy, False

    def _frames_wanted(self) -> int:
        """Frames still to ask for: the steps not yet done, less those in flight or being analysed."""
        busy = len(self._in_flight) + (self._current is not None)
        return self.config.steps - self.state.steps_done - busy

    def _send_scan(self, command: ScanCommand, decision: Decision) -> bool:
        step = self.state.issued
        self.recorder.command(command, step)  # before it is sent: a crash now still shows the intent
        t0 = time.perf_counter()
        if self._frame_at is not None and not self.policy.commits_ahead:
            self.timings.add("frame_to_command", 1e3 * (t0 - self._frame_at))
            self._frame_at = None
        # wait for the ack as long as the command may still run: given up on, it can no longer execute
        timeout_s = max(self.config.command_timeout_s, command.deadline_unix_s - time.time() + 0.25)
        try:
            ack = self._send_counted(command, timeout_s)
        except CommandRefused as exc:
            self.recorder.ack(exc.ack, step)
            reason = exc.ack.reason or exc.ack.code or "refused"
            if exc.ack.code == "refused":  # our limits let it through and the instrument did not: stop moving
                self._count_refusal("instrument", reason)  # (the hold first: a failure count must not pre-empt it)
                self._hold(f"the instrument refused a move: {exc.ack.reason}")
            self._refused(decision, "instrument", reason)
            return False
        except DriverTimeout as exc:
            self.guard.commit(command, ran=False)  # it may have run: its dose counts (the conservative side)
            self._error("ack_timeout", str(exc), step=step)
            self._failed(decision, "no ack")
            return False
        except Disconnected as exc:
            self.guard.commit(command, ran=False)  # it may have reached the instrument before the link broke
            self._instrument_lost(exc)
            return False
        except DriverError as exc:  # an error reply naming it (hello_first: the server forgot us), a driver failing
            if not isinstance(exc, ProtocolError):  # (an error reply: it did not run; anything else may have)
                self.guard.commit(command, ran=False)
            self._error("command_failed", f"{type(exc).__name__}: {exc}", step=step)
            self._failed(decision, f"the instrument did not take it: {exc}")
            return False
        self._lost_since = None
        self.timings.add("send", 1e3 * (time.perf_counter() - t0))
        self.recorder.ack(ack, step)
        self.guard.commit(command)
        s = self.state
        if s.fields:
            px, py, _ = s.fields[-1]
            s.travel_nm += ((command.x_nm - px) ** 2 + (command.y_nm - py) ** 2) ** 0.5
        s.fields.append((command.x_nm, command.y_nm, command.fov_nm))
        return True

    def _send_counted(self, command: Command, timeout_s: float) -> Ack:
        """Send a command, counting it as sent, then as acked or by how it failed."""
        bump(self.state.commands, "sent")
        try:
            ack = self.driver.send(command, timeout_s=timeout_s)
        except CommandRefused as exc:
            bump(self.state.commands, f"refused_remotely_{exc.ack.code or 'refused'}")
            raise
        except DriverTimeout:
            bump(self.state.commands, "ack_timeouts")
            raise
        except DriverError as exc:
            bump(self.state.commands, "disconnected" if isinstance(exc, Disconnected) else "failed")
            raise
        bump(self.state.commands, "acked")
        return ack

    def _send_simple(self, command: BlankCommand | UnblankCommand) -> None:
        try:
            if command.kind not in self.driver.capabilities().command_kinds:
                return
            self.recorder.command(command, self.state.issued)
            self.recorder.ack(self._send_counted(command, self.config.command_timeout_s), self.state.issued)
        except DriverError as exc:
            raise StopLoop("failed", f"the instrument did not accept {command.kind}: {exc}") from None

    # -- receiving --------------------------------------------------------------------------------------
    def _await_frame(self, job: _InFlight) -> Frame | None:
        c = job.command
        deadline = job.sent_s + c.duration_s + self.config.frame_timeout_s
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                self._error("frame_timeout", f"no frame for step {job.step} ({c.id})", step=job.step)
                return None
            try:
                frame = self.driver.next_frame(min(remaining, 0.25))
            except DriverTimeout:
                continue
            except ProtocolError as exc:
                self._error("acquisition", f"step {job.step}: {exc}", step=job.step)
                return None
            except Disconnected as exc:
                self._forget_in_flight("the link was lost", waiting=job)
                self._instrument_lost(exc)
                return None
            self.state.frames_received += 1
            if frame.header.command_id != c.id:
                if any(j.command.id == frame.header.command_id for j in self._in_flight):
                    return frame  # a later scan answered: this one's frame was lost (see _skip_to)
                self.state.skip("stale_frame")
                self._error("stale_frame", f"a frame answering {frame.header.command_id} arrived for {c.id}")
                continue
            strict_replay = self._strict_replay(frame)
            if tuple(frame.header.shape) != (c.rows, c.cols) and not strict_replay:  # a replay serves what it has
                reason = f"frame of shape {tuple(frame.header.shape)} answers a {c.rows}x{c.cols} scan"
                self.state.skip("bad_frame")
                self._error("bad_frame", reason, step=job.step)
                return None
            return frame

    def _skip_to(self, job: _InFlight, command_id: str) -> _InFlight:
        """Frames come in order: when a later scan answers, the scans before it lost their frames."""
        lost = [job]
        while self._in_flight[0].command.id != command_id:
            lost.append(self._in_flight.popleft())
        for j in lost:
            self._error("frame_lost", f"the frame of step {j.step} ({j.command.id}) never came", step=j.step)
            self._failed(j.decision, "frame lost")
        return self._in_flight.popleft()

    # -- faults -----------------------------------------------------------------------------------------
    def _call_policy(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:
            logger.exception("policy %s failed", what)
            raise StopLoop("failed", f"policy {what} raised {type(exc).__name__}: {exc}") from exc

    def _error(self, kind: str, message: str, **fields: Any) -> None:
        logger.warning("%s: %s", kind, message)
        self.state.errors[kind] = self.state.errors.get(kind, 0) + 1
        self.recorder.write("error", kind=kind, message=message, **fields)

    def _refused(self, decision: Decision, source: str, reason: str) -> None:
        self._count_refusal(source, reason)
        self._failed(decision, reason)

    def _count_refusal(self, source: str, reason: str) -> None:
        if source != "instrument":
            bump(self.state.commands, "refused_locally")
        self.state.refusal_count += 1
        self.state.refusals.append({"step": self.state.issued, "source": source, "reason": reason})
        del self.state.refusals[:-1000]  # bounded: the count is kept below
        self.state.errors[f"refused_by_{source}"] = self.state.errors.get(f"refused_by_{source}", 0) + 1
        self.recorder.write("refusal", step=self.state.issued, source=source, reason=reason)

    def _failed(self, decision: Decision, reason: str) -> None:
        self._call_policy("reject", lambda: self.policy.reject(decision, reason))
        self.state.failures_in_row += 1
        if self.state.failures_in_row >= self.config.max_failures:
            raise StopLoop("failed", f"{self.state.failures_in_row} failures in a row; last: {reason}")

    def _hold(self, reason: str) -> None:
        """Safe hold: record why and end the run; the shutdown blanks the beam and nothing more is sent."""
        self.recorder.write("safe_hold", reason=reason, step=self.state.issued)
        raise StopLoop("held", f"safe hold: {reason}")

    def _instrument_lost(self, exc: Exception) -> None:
        """Wait for a reconnecting driver to come back; stop once it has been gone for the grace period.

        The grace runs from the first failure of a streak, not from each: a driver may still report
        itself connected for a few heartbeats after its peer died, and every send meanwhile fails.
        """
        self._error("disconnected", str(exc))
        self._forget_in_flight("the link was lost")
        now = time.monotonic()
        self._lost_since = self._lost_since or now
        deadline = self._lost_since + self.config.reconnect_grace_s
        connected = getattr(self.driver, "connected", None)
        while connected is not None and time.monotonic() < deadline:
            time.sleep(0.05)  # let a dying connection be noticed before trusting `connected`
            if self.driver.connected and self._resume():  # type: ignore[attr-defined]
                self._seen_generation = self._link_generation()
                return
        raise StopLoop("failed", f"instrument lost: {exc}")

    def _forget_in_flight(self, why: str, waiting: _InFlight | None = None) -> None:
        """Forget the scans in flight on a lost link, and the one ``waiting`` for its frame: recorded, counted."""
        lost = [*([waiting] if waiting else []), *self._in_flight]
        self._in_flight.clear()
        if lost:
            steps = ", ".join(str(j.step) for j in lost)
            self._error("frames_lost_with_link", f"{why}: the frames of step(s) {steps} will not come")
            self.state.frames_lost_with_link += len(lost)

    def _driver_stats(self) -> dict[str, Any]:
        """The driver's own counters, if it keeps any (the remote driver does)."""
        stats = getattr(self.driver, "stats", None)
        return dict(stats) if isinstance(stats, dict) else {}

    def _link_generation(self) -> int:
        """How many times the driver has reconnected (0 for drivers that never do)."""
        return int(self._driver_stats().get("reconnects", 0))

    def _check_link(self) -> None:
        """A reconnection the loop did not see (it happened while waiting for a frame) is resumed first.

        No move may follow a reconnection before the instrument's state is read back and the beam
        unblanked; the scans in flight on the old connection will not answer.
        """
        generation = self._link_generation()
        if generation == self._seen_generation:
            return
        self._seen_generation = generation
        self._error("reconnected", "the instrument connection was re-established since the last command")
        self._forget_in_flight("the link was re-established")
        if not self._resume():  # lost again meanwhile: wait for it as for any loss
            self._instrument_lost(Disconnected("the instrument was lost again while its state was read back"))

    def _resume(self) -> bool:
        """After a reconnection: read the instrument's state back and unblank before any move.

        The instrument may have restarted (the guard takes its limits again: narrower than the
        configuration's means a safe hold), or its dead-man timer blanked the beam meanwhile.  False
        if the connection failed again meanwhile.
        """
        try:
            capabilities = self.driver.capabilities()
            self._replaying = self._replay_claim(capabilities)
            beyond = self.guard.refresh(capabilities)
            if beyond:
                raise StopLoop("held", "safe hold: the reconnected instrument's limits are narrower than the "
                               f"configuration's: {'; '.join(beyond)}")  # fmt: skip
            unblank = self._unblank_command()
            self.recorder.command(unblank, self.state.issued)
            self.recorder.ack(self._send_counted(unblank, self.config.command_timeout_s), self.state.issued)
        except CommandRefused as exc:
            raise StopLoop("held", f"safe hold: the reconnected instrument refused to unblank: {exc}") from None
        except UntrustedReplayClaim as exc:
            raise StopLoop("held", f"safe hold: the reconnected instrument {exc}") from None
        except DriverError:
            return False
        self.recorder.write("reconnected", capabilities=capabilities.model_dump(mode="json"))
        return True

    def _replay_claim(self, capabilities: Capabilities | None) -> bool:
        """Whether the driver serves recorded fields (a strict replay), whose readback and age go unchecked.

        Raises
        ------
        UntrustedReplayClaim
            The driver claims it but ``config.trust_recorded_fields`` is not set: a live instrument
            whose bridge said so would have its frames' positions taken on trust.
        """
        claimed = capabilities is not None and capabilities.serves_recorded_fields
        if claimed and not self.config.trust_recorded_fields:
            raise UntrustedReplayClaim(
                "says it is a strict replay (serves recorded fields, whose readback and age would go unchecked), "
                "but the run was not told to expect one (instrument_is_replay)"
            )
        return claimed

    def _shutdown(self, status: str, reason: str) -> None:
        """Blank the beam (bounded wait) and write the stop record.

        The record's ``beam_blank`` says how the blank ended (:func:`agent.exit_blank.blank_on_the_way_out`:
        ``acknowledged``, ``unacknowledged``, ``refused``, ``failed``, ``unsupported``); ``beam_blanked``
        is true only for ``acknowledged``.
        """
        blank = blank_on_the_way_out(self.driver, self.recorder, self._send_counted, self._error,
                                     self.config.stop_timeout_s, self.state.issued)  # fmt: skip
        blanked = blank == "acknowledged"
        if not blanked:
            logger.warning("the beam was not confirmed blanked on the way out: %s", blank)
        self._perceiver.shutdown(wait=False, cancel_futures=True)  # a hung model's thread is left behind
        s = self.state
        s.status, s.reason, s.beam_blank = status, reason, blank
        timings_ms = self.timings.summary()
        counters = {**s.counters(), "link": self._link_counters(timings_ms), "recorder": self.recorder.counters()}
        record_if_possible(lambda: self.recorder.write(
            "stop", status=status, reason=reason, beam_blanked=blanked, beam_blank=blank, steps=s.steps_done,
            timings_ms=timings_ms, errors=s.errors, frames=counters["frames"], counters=counters,
        ))  # fmt: skip
        logger.info("run %s: %s", status, reason)

    def _link_counters(self, timings_ms: dict[str, dict[str, float]]) -> dict[str, Any]:
        """The driver's own counters (sequence gaps, stale acks, reconnects...) and the command round trip."""
        link = self._driver_stats()
        rtt = getattr(self.driver, "heartbeat_rtt_ms", None)
        if callable(rtt):
            link["heartbeat_rtt_ms"] = rtt()
        send = timings_ms.get("send")
        if send is not None:  # a scan sent and its ack back: the link's round trip as the loop sees it
            link["command_round_trip_ms"] = send
        return link
