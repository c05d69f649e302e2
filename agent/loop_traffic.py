"""The loop's traffic with the instrument: decisions through the guard to scans, and the frames that answer them."""

from __future__ import annotations

import time

from agent.frame_checks import frame_age_s, is_strict_replay, readback_problem
from agent.guard import Decision, Refusal
from agent.loop_base import InFlight
from agent.loop_link import _LinkRecovery
from agent.policies import Policy
from drivers.base import (
    CommandRefused,
    Disconnected,
    DriverError,
    DriverTimeout,
    Frame,
    ProtocolError,
    ScanCommand,
)


class _Traffic(_LinkRecovery):
    """Deciding and sending scans, waiting for their frames (see :mod:`agent.loop_base` for the layers)."""

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
                self._in_flight.append(InFlight(s.issued, decision, checked, time.perf_counter()))
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

    # -- receiving --------------------------------------------------------------------------------------
    def _await_frame(self, job: InFlight) -> Frame | None:
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

    def _skip_to(self, job: InFlight, command_id: str) -> InFlight:
        """Frames come in order: when a later scan answers, the scans before it lost their frames."""
        lost = [job]
        while self._in_flight[0].command.id != command_id:
            lost.append(self._in_flight.popleft())
        for j in lost:
            self._error("frame_lost", f"the frame of step {j.step} ({j.command.id}) never came", step=j.step)
            self._failed(j.decision, "frame lost")
        return self._in_flight.popleft()

    def _strict_replay(self, frame: Frame) -> bool:
        """A frame of a strict replay: the driver said so when connecting, and the frame says so too."""
        return self._replaying and is_strict_replay(frame)

    def _check_frame(self, job: InFlight, frame: Frame) -> None:
        """Safe hold when the frame was not taken where it was commanded."""
        if self._strict_replay(frame):  # a strict replay serves the recorded fields, wherever asked
            return
        problem = readback_problem(job.command, frame.header, self.config.readback_tolerance_nm)
        if problem is not None:
            self.state.skip("readback")
            self._record_frame(frame, job.step)
            self._hold(f"readback of step {job.step} is off: {problem}")

    def _too_old(self, job: InFlight, frame: Frame) -> bool:
        age_s = frame_age_s(frame)
        if self._strict_replay(frame) or age_s <= self.config.max_frame_age_s:
            return False
        self.state.skip("too_old")
        message = f"frame of step {job.step} is {age_s:.1f} s old (max_frame_age_s={self.config.max_frame_age_s:g})"
        self._error("frame_too_old", message, step=job.step)
        self._failed(job.decision, "frame too old")
        return True
