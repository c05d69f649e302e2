"""An in-memory driver for tests: deterministic synthetic frames, every command recorded."""

from __future__ import annotations

import collections
import threading
import time

import numpy as np

from drivers.base import (
    Ack,
    BlankCommand,
    Capabilities,
    Command,
    CommandRefused,
    Disconnected,
    DriverTimeout,
    Frame,
    FrameHeader,
    Range,
    ScanCommand,
    SetTiltCommand,
    StopCommand,
    UnblankCommand,
)
from drivers.limits import refusal_reason

DEFAULT_CAPABILITIES = Capabilities(
    instrument="in-memory test instrument",
    command_kinds=("scan", "set_tilt", "blank", "unblank", "stop"),
    stage_x_nm=Range(low=-1000, high=1000),
    stage_y_nm=Range(low=-1000, high=1000),
    fov_nm=Range(low=0.5, high=2000),
    pixels=Range(low=8, high=4096),
    dwell_us=Range(low=0.1, high=1000),
    tilt_deg=Range(low=-70, high=70),
    max_dose_e_per_a2=1e9,
)


class InMemoryDriver:
    """A fake instrument: a scan yields a seeded random float32 frame of the requested size.

    Thread-safe; ``commands`` records every accepted command, in order.
    """

    def __init__(self, capabilities: Capabilities = DEFAULT_CAPABILITIES, seed: int = 0) -> None:
        self._cap = capabilities
        self._rng = np.random.default_rng(seed)
        self._frames: collections.deque[Frame] = collections.deque()
        self._ready = threading.Condition()
        self._sequence = 0
        self._tilt_deg = 0.0
        self.blanked = False
        self.closed = False
        self.commands: list[Command] = []

    def capabilities(self) -> Capabilities:
        """The configured capabilities."""
        return self._cap

    def send(self, command: Command, timeout_s: float = 5.0) -> Ack:
        """Execute a command at once; refuse it with a reason if it is out of range or expired."""
        if self.closed:
            raise Disconnected("driver is closed")
        reason = refusal_reason(self._cap, command)
        if reason is None and time.time() > command.deadline_unix_s:
            reason = "deadline passed before execution"
        if reason is None and isinstance(command, ScanCommand) and self.blanked:
            reason = "the beam is blanked"
        if reason is not None:
            raise CommandRefused(
                Ack(command_id=command.id, kind=command.kind, accepted=False, code="refused", reason=reason)
            )
        self.commands.append(command)
        if isinstance(command, ScanCommand):
            self._acquire(command)
        elif isinstance(command, SetTiltCommand):
            self._tilt_deg = command.tilt_deg
        elif isinstance(command, (BlankCommand, StopCommand)):
            self.blanked = True
        elif isinstance(command, UnblankCommand):
            self.blanked = False
        return Ack(command_id=command.id, kind=command.kind, accepted=True)

    def _acquire(self, command: ScanCommand) -> None:
        start = time.time()
        image = self._rng.random((command.rows, command.cols), dtype=np.float32)
        header = FrameHeader(
            sequence=self._sequence,
            command_id=command.id,
            acquisition_start_unix_s=start,
            acquisition_end_unix_s=time.time(),
            x_nm=command.x_nm,
            y_nm=command.y_nm,
            fov_nm=command.fov_nm,
            shape=(command.rows, command.cols),
            dtype="float32",
            pixel_size_nm=command.fov_nm / command.cols,
            dwell_us=command.dwell_us,
            tilt_deg=self._tilt_deg,
            metadata={"source": "memory"},
        )
        self._sequence += 1
        with self._ready:
            self._frames.append(Frame(header, image))
            self._ready.notify_all()

    def next_frame(self, timeout_s: float) -> Frame:
        """The oldest unread frame; raises :class:`DriverTimeout` after ``timeout_s``."""
        with self._ready:
            if not self._ready.wait_for(lambda: bool(self._frames) or self.closed, timeout=timeout_s):
                raise DriverTimeout(f"no frame within {timeout_s} s")
            if self.closed and not self._frames:
                raise Disconnected("driver is closed")
            return self._frames.popleft()

    def close(self) -> None:
        """Close; pending and future calls raise :class:`Disconnected`."""
        with self._ready:
            self.closed = True
            self._ready.notify_all()
