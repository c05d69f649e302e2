"""An in-memory driver for tests: deterministic synthetic frames, every command recorded."""

from __future__ import annotations

import threading
import time

import numpy as np

from drivers.base import Ack, Capabilities, Command, Disconnected, Frame, Range, ScanCommand
from drivers.local import BeamState, FrameQueue

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
        self._frames = FrameQueue()
        self._lock = threading.Lock()
        self.state = BeamState()
        self.commands: list[Command] = []

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._frames.closed

    def capabilities(self) -> Capabilities:
        """The configured capabilities."""
        return self._cap

    def send(self, command: Command, timeout_s: float = 5.0) -> Ack:
        """Execute a command at once; refuse it with a reason if it is out of range, expired or blanked."""
        if self.closed:
            raise Disconnected("driver is closed")
        with self._lock:
            self.state.admit(self._cap, command)
            self.commands.append(command)
            if isinstance(command, ScanCommand):
                self._frames.put(self._acquire(command))
            else:
                self.state.apply(command)
        return Ack.accept(command)

    def _acquire(self, command: ScanCommand) -> Frame:
        start = time.time()
        image = self._rng.random((command.rows, command.cols), dtype=np.float32)
        return Frame(self.state.scan_header(command, start, {"source": "memory"}), image)

    def next_frame(self, timeout_s: float) -> Frame:
        """The oldest unread frame; raises :class:`DriverTimeout` after ``timeout_s``."""
        return self._frames.get(timeout_s)

    def close(self) -> None:
        """Close; pending and future calls raise :class:`Disconnected`."""
        self._frames.close()
