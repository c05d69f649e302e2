"""How a run leaves the beam: blanked on the way out, however the run ended, and said how.

The blank is the one command sent even when it could not be recorded (a full disk must not leave
the beam on), and every wait for it is bounded: a lost ack must not leave the question open.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.recorder import SessionRecorder
from drivers.base import (
    Ack,
    BlankCommand,
    Capabilities,
    Command,
    CommandRefused,
    Driver,
    DriverError,
    DriverTimeout,
    deadline_in,
)
from drivers.recording import RecordingError

logger = logging.getLogger("agent.loop")  # (the loop's own: its records are the loop's shutdown)


def record_if_possible(write: Callable[[], None]) -> None:
    """On the way out a recording failure is logged, not raised: blanking comes first."""
    try:
        write()
    except RecordingError as exc:
        logger.error("not recorded: %s", exc)


def capabilities_now(driver: Driver) -> Capabilities | None:
    """The driver's capabilities, or None if it cannot say now (not connected)."""
    try:
        return driver.capabilities()
    except DriverError:
        return None


def blank_on_the_way_out(
    driver: Driver,
    recorder: SessionRecorder,
    send: Callable[[Command, float], Ack],
    error: Callable[[str, str], None],
    timeout_s: float,
    step: int,
) -> str:
    """Blank the beam, twice at most, each attempt bounded by ``timeout_s``; how it ended.

    ``send`` sends a command and waits for its ack (the loop's counted send), ``error`` records an
    error, ``step`` is the step the records are filed under.  The outcome: ``acknowledged``;
    ``unacknowledged`` (sent, no ack in time, twice: the instrument may be inside a long command, and
    a server carries a blank out however late); ``refused`` (by the instrument or its server);
    ``failed`` (not sent: no link); ``unsupported`` (the instrument has no blank).
    """
    cap = capabilities_now(driver)
    if cap is None or "blank" not in cap.command_kinds:
        return "unsupported"
    outcomes: list[str] = []
    for attempt in range(2):
        outcomes.append(_blank(recorder, send, error, timeout_s, step, attempt))
        if outcomes[-1] == "acknowledged":
            return "acknowledged"
    return "unacknowledged" if "unacknowledged" in outcomes else outcomes[-1]


def _blank(
    recorder: SessionRecorder,
    send: Callable[[Command, float], Ack],
    error: Callable[[str, str], None],
    timeout_s: float,
    step: int,
    attempt: int,
) -> str:
    """Send one blank, recorded where possible; how it ended."""
    blank = BlankCommand(deadline_unix_s=deadline_in(timeout_s))
    record_if_possible(lambda: recorder.command(blank, step))
    try:
        ack = send(blank, timeout_s)
    except (DriverError, OSError) as exc:
        outcome = _outcome(exc)
        if isinstance(exc, CommandRefused):
            refusal = exc.ack
            record_if_possible(lambda: recorder.ack(refusal, step))
        message = f"could not blank the beam (attempt {attempt + 1}, {outcome}): {exc}"
        record_if_possible(lambda: error("blank_failed", message))
        return outcome
    record_if_possible(lambda: recorder.ack(ack, step))
    return "acknowledged"


def _outcome(exc: Exception) -> str:
    """How a blank on the way out ended, by what the driver raised."""
    if isinstance(exc, DriverTimeout):
        return "unacknowledged"
    return "refused" if isinstance(exc, CommandRefused) else "failed"
