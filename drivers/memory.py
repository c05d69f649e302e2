"""An in-memory driver for tests: deterministic synthetic frames, every command recorded."""

from __future__ import annotations

import time

import numpy as np

from drivers.base import Capabilities, Frame, Range, ScanCommand
from drivers.local import LocalInstrument

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


class InMemoryDriver(LocalInstrument):
    """A fake instrument: a scan yields a seeded random float32 frame of the requested size.

    Thread-safe; ``commands`` records every accepted command, in order.
    """

    def __init__(self, capabilities: Capabilities = DEFAULT_CAPABILITIES, seed: int = 0) -> None:
        super().__init__(capabilities)
        self._rng = np.random.default_rng(seed)

    def _acquire(self, command: ScanCommand) -> Frame:
        start = time.time()
        image = self._rng.random((command.rows, command.cols), dtype=np.float32)
        return Frame(self.state.scan_header(command, start, {"source": "memory"}), image)
