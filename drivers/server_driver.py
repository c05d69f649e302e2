"""The instrument server's calls into its driver: whatever the driver raises becomes an answer, counted.

Only the server's worker thread calls the driver, through :class:`DriverCalls`; nothing the driver
raises may end that thread, so every failure becomes a refusing :class:`Ack` or a
:class:`ProtocolError` for the client, counted in the server's ``stats``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from drivers.base import (
    Ack,
    Command,
    CommandRefused,
    Driver,
    DriverError,
    DriverTimeout,
    Frame,
    ProtocolError,
    ScanCommand,
)
from drivers.job_queue import NEVER_UNIX_S, URGENT

logger = logging.getLogger("drivers.server")  # (the server's own: one logger to configure or filter)

# While it waits for a frame the worker looks this often for a blank or stop to carry out at once, and after
# one it waits at most this long for the stopped scan's frame (a driver that aborts delivers none).
_FRAME_SLICE_S = 0.05
_STOPPED_FRAME_GRACE_S = 1.0


class DriverCalls:
    """Run commands on ``driver`` and wait for their frames, counting every failure in ``stats``.

    Parameters
    ----------
    driver
        The server's driver.
    stats
        The server's counters (``expired``, ``refused``, ``driver_errors``, ``driver_exceptions``,
        ``frames_missing``, ``stale_frames``).
    frame_timeout_s
        How long to wait for the frame of an accepted scan beyond its nominal scan time.
    """

    def __init__(self, driver: Driver, stats: Counter[str], frame_timeout_s: float) -> None:
        self.driver = driver
        self.stats = stats
        self.frame_timeout_s = frame_timeout_s

    def execute(self, command: Command) -> Ack:
        """Run one command on the driver; whatever the driver raises becomes a refusal.

        A ``blank`` or ``stop`` never expires: however long it waited, running it late is safe and not
        running it is not, so the driver gets it without a deadline.
        """
        if command.kind in URGENT:
            command = command.model_copy(update={"deadline_unix_s": NEVER_UNIX_S})
        elif time.time() > command.deadline_unix_s:
            self.stats["expired"] += 1
            return Ack.refusal(command, "expired", "deadline passed while queued")
        try:
            return self.driver.send(command)
        except CommandRefused as exc:
            self.stats["refused"] += 1
            return exc.ack
        except DriverError as exc:
            self.stats["driver_errors"] += 1
            return Ack.refusal(command, "error", str(exc))
        except Exception as exc:  # a vendor API failing in an unforeseen way must not kill the worker
            self.stats["driver_exceptions"] += 1
            logger.exception("the driver raised on %s", command.kind)
            return Ack.refusal(command, "error", f"the instrument failed: {type(exc).__name__}: {exc}")

    def acquire(
        self, command: ScanCommand, run_urgent_jobs: Callable[[], bool], wait_s: float | None = None
    ) -> Frame | ProtocolError | None:
        """The frame of an accepted scan, an error when none came, or None if ``wait_s`` passed first.

        Waiting the whole budget (``wait_s`` None), ``run_urgent_jobs`` is called between slices of the
        wait: it carries out a ``blank`` or ``stop`` that arrived meanwhile at once, not after the frame
        (the beam would stay on for the rest of the scan), and says whether it did; the stopped scan's
        frame is then waited for a short grace only.  A frame of another scan (one a driver delivered
        after its scan was given up) is dropped and counted.
        """
        if wait_s is not None:
            return self.next_frame(command, wait_s)
        budget = command.duration_s + self.frame_timeout_s
        deadline = time.monotonic() + budget
        stopped = False
        while (left := deadline - time.monotonic()) > 0:
            outcome = self.next_frame(command, min(left, _FRAME_SLICE_S))
            if outcome is not None:
                return outcome
            if not stopped and run_urgent_jobs():
                stopped = True
                deadline = min(deadline, time.monotonic() + _STOPPED_FRAME_GRACE_S)
        self.stats["frames_missing"] += 1
        if stopped:
            return ProtocolError("acquisition", "the scan was stopped (stop or blank) before its frame came")
        return ProtocolError("acquisition", f"scan was accepted but no frame came within {budget:.1f} s")

    def next_frame(self, command: ScanCommand, timeout_s: float) -> Frame | ProtocolError | None:
        """One wait for the scan's frame: the frame, an error, or None when ``timeout_s`` passed."""
        try:
            frame = self.driver.next_frame(timeout_s)
        except DriverTimeout:
            return None
        except DriverError as exc:
            self.stats["frames_missing"] += 1
            return ProtocolError("acquisition", f"scan was accepted but no frame came: {exc}")
        except Exception as exc:  # as in execute: the worker must live on
            self.stats["driver_exceptions"] += 1
            logger.exception("the driver raised while acquiring")
            return ProtocolError("acquisition", f"the instrument failed: {type(exc).__name__}: {exc}")
        if frame.header.command_id not in (None, command.id):  # a given-up scan's frame, delivered late
            self.stats["stale_frames"] += 1
            return None
        return frame
