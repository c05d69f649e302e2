"""Parts shared by drivers that run in this process.

The frame queue, the beam/stage state, and :class:`LocalInstrument`, the base of instruments that
execute commands at once.

:class:`~drivers.memory.InMemoryDriver` and :class:`~drivers.simulated_tomo.SimulatedTiltDriver` are
local instruments; :class:`~drivers.simulated.SimulatedDriver` composes the queue and state (its scans
also check the dose); a vendor driver can use them too.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from drivers.base import (
    Ack,
    BlankCommand,
    Capabilities,
    Command,
    CommandRefused,
    Disconnected,
    DriverError,
    DriverTimeout,
    Frame,
    FrameHeader,
    ScanCommand,
    SetTiltCommand,
    StopCommand,
    UnblankCommand,
)
from drivers.limits import refusal_reason


class FrameQueue:
    """Acquired frames waiting to be read; ``get`` never blocks past its timeout."""

    def __init__(self) -> None:
        self._frames: collections.deque[Frame | DriverError] = collections.deque()
        self._ready = threading.Condition()
        self.closed = False

    def put(self, frame: Frame | DriverError) -> None:
        """Append a frame (or the error an acquisition ended with, raised to its reader) and wake a reader."""
        with self._ready:
            self._frames.append(frame)
            self._ready.notify_all()

    def get(self, timeout_s: float) -> Frame:
        """The oldest frame; :class:`DriverTimeout` after ``timeout_s``, :class:`Disconnected` once closed.

        A negative timeout is taken as 0 (a frame only if one is waiting); NaN or infinity is a ValueError.
        """
        if not math.isfinite(timeout_s):
            raise ValueError(f"timeout_s must be a finite number of seconds, not {timeout_s!r}")
        timeout_s = max(float(timeout_s), 0.0)
        with self._ready:
            if not self._ready.wait_for(lambda: bool(self._frames) or self.closed, timeout=timeout_s):
                raise DriverTimeout(f"no frame within {timeout_s} s")
            if not self._frames:
                raise Disconnected("instrument is closed")
            item = self._frames.popleft()
        if isinstance(item, DriverError):
            raise item
        return item

    def close(self) -> None:
        """Wake every reader; later reads of an empty queue raise :class:`Disconnected`."""
        with self._ready:
            self.closed = True
            self._ready.notify_all()


@dataclass
class BeamState:
    """Beam blanking, stage tilt and the frame counter of a local instrument."""

    blanked: bool = False
    tilt_deg: float = 0.0
    sequence: int = 0
    blank_times_unix_s: list[float] = field(default_factory=list)  # when each blank or stop took effect

    def admit(self, cap: Capabilities, command: Command, dose_e_per_a2: float | None = None) -> None:
        """Raise :class:`CommandRefused` unless ``command`` may run now (limits, deadline, beam)."""
        reason = refusal_reason(cap, command, dose_e_per_a2)
        code = "refused"
        if reason is None and time.time() > command.deadline_unix_s:
            reason, code = "deadline passed before execution", "expired"
        if reason is None and isinstance(command, ScanCommand) and self.blanked:
            reason = "the beam is blanked: unblank first"
        if reason is not None:
            raise CommandRefused(Ack.refusal(command, code, reason))

    def apply(self, command: Command) -> None:
        """Change state for a non-scan command."""
        if isinstance(command, SetTiltCommand):
            self.tilt_deg = command.tilt_deg
        elif isinstance(command, (BlankCommand, StopCommand)):
            self.blanked = True
            self.blank_times_unix_s.append(time.time())
        elif isinstance(command, UnblankCommand):
            self.blanked = False

    def scan_header(self, command: ScanCommand, start_unix_s: float, metadata: dict[str, Any]) -> FrameHeader:
        """The header of a float32 frame acquired for ``command`` just now (consumes a sequence number)."""
        return FrameHeader(
            sequence=self.next_sequence(),
            command_id=command.id,
            acquisition_start_unix_s=start_unix_s,
            acquisition_end_unix_s=time.time(),
            x_nm=command.x_nm,
            y_nm=command.y_nm,
            fov_nm=command.fov_nm,
            shape=(command.rows, command.cols),
            dtype="float32",
            pixel_size_nm=command.fov_nm / command.cols,
            dwell_us=command.dwell_us,
            tilt_deg=self.tilt_deg,
            metadata=metadata,
        )

    def next_sequence(self) -> int:
        """The next frame's sequence number."""
        self.sequence += 1
        return self.sequence - 1


class LocalInstrument:
    """An instrument in this process that executes commands at once: subclasses say what a scan records.

    Thread-safe.  A scan is admitted against the capabilities, then ``_acquire`` makes its frame; other
    commands change the beam and stage state.  ``commands`` records every accepted command, in order.
    """

    def __init__(self, capabilities: Capabilities) -> None:
        self._cap = capabilities
        self._frames = FrameQueue()
        self._lock = threading.Lock()
        self.state = BeamState()
        self.commands: list[Command] = []

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._frames.closed

    def capabilities(self) -> Capabilities:
        """The instrument's capabilities."""
        return self._cap

    def send(self, command: Command, timeout_s: float = 5.0) -> Ack:
        """Execute a command at once; refuse it with a reason if it is out of range, expired or blanked."""
        if self.closed:
            raise Disconnected("instrument is closed")
        with self._lock:
            self.state.admit(self._cap, command)
            self.commands.append(command)
            if isinstance(command, ScanCommand):
                self._frames.put(self._acquire(command))
            else:
                self.state.apply(command)
        return Ack.accept(command)

    def _acquire(self, command: ScanCommand) -> Frame:
        raise NotImplementedError

    def next_frame(self, timeout_s: float) -> Frame:
        """The oldest unread frame; raises :class:`DriverTimeout` after ``timeout_s``."""
        return self._frames.get(timeout_s)

    def close(self) -> None:
        """Close and blank the beam; pending and future calls raise :class:`Disconnected`."""
        self.state.blanked = True
        self._frames.close()
