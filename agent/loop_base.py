"""What every stage of the loop uses: its attributes, fault bookkeeping and the plain command channel.

:class:`agent.loop.Loop` is built in layers, one module each, each readable alone:

- ``_LoopBase`` (here): what the loop holds, how a fault is counted and recorded, how a command is
  sent and its outcome counted;
- ``_LinkRecovery`` (:mod:`agent.loop_link`): a lost or re-established instrument connection;
- ``_Traffic`` (:mod:`agent.loop_traffic`): deciding and sending scans, waiting for their frames;
- ``Loop`` (:mod:`agent.loop`): the run, and the analysis of each frame.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.guard import Decision, Guard
from agent.perception import Perception
from agent.policies import Policy
from agent.recorder import SessionRecorder
from agent.run_state import LoopConfig, RunState, StopLoop, bump
from agent.timings import StageTimings
from drivers.base import (
    Ack,
    BlankCommand,
    Command,
    CommandRefused,
    Disconnected,
    Driver,
    DriverError,
    DriverTimeout,
    Frame,
    ScanCommand,
    UnblankCommand,
    deadline_in,
)

logger = logging.getLogger("agent.loop")  # (one logger for the whole loop, whichever layer speaks)


@dataclass
class InFlight:
    """A scan sent and not yet answered by its frame."""

    step: int
    decision: Decision
    command: ScanCommand
    sent_s: float


class _LoopBase:
    """The loop's attributes (set by :class:`agent.loop.Loop`), its fault bookkeeping, its command channel."""

    driver: Driver
    perception: Perception
    policy: Policy
    guard: Guard
    config: LoopConfig
    recorder: SessionRecorder
    state: RunState
    timings: StageTimings
    fallback: Policy | None
    _fallback_due: bool
    _replaying: bool  # the driver serves recorded fields (a trusted strict replay)
    _seen_generation: int  # the driver's reconnection count last seen
    _in_flight: deque[InFlight]
    _current: InFlight | None  # the scan whose frame is being waited for or analysed
    _lost_since: float | None  # when the present streak of link failures began
    _frame_at: float | None  # when the last frame arrived (for the frame-to-command time)

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

    def _record_frame(self, frame: Frame, step: int) -> None:
        self.recorder.frame(frame, step)
        self.state.frames_recorded += 1

    # -- the command channel ----------------------------------------------------------------------------
    def _blank_command(self) -> BlankCommand:
        return BlankCommand(deadline_unix_s=deadline_in(self.config.command_timeout_s))

    def _unblank_command(self) -> UnblankCommand:
        return UnblankCommand(deadline_unix_s=deadline_in(self.config.command_timeout_s))

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
