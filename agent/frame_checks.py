"""Checks a frame must pass before the loop analyses it: where it was taken, and how long ago."""

from __future__ import annotations

import math
import time

from drivers.base import Frame, FrameHeader, ScanCommand


def is_strict_replay(frame: Frame) -> bool:
    """True for frames a strict replay serves: recorded fields, whatever was asked."""
    replayed = frame.header.metadata.get("replay")
    return isinstance(replayed, dict) and replayed.get("mode") == "strict"


#: How much longer than commanded a read-back dwell may be (instruments round pixel times to their clock).
DWELL_TOLERANCE = 0.05


def readback_problem(command: ScanCommand, header: FrameHeader, tolerance_nm: float) -> str | None:
    """Why the frame's header does not show the commanded field, or None.

    Centre and field of view within ``tolerance_nm``, the commanded pixels, and a dwell at most
    ``DWELL_TOLERANCE`` longer than commanded (a longer one, a pixel time taken in other units say,
    delivers more dose than the guard counted; a shorter one less).
    """
    off_nm = math.hypot(header.x_nm - command.x_nm, header.y_nm - command.y_nm)
    if not off_nm <= tolerance_nm:
        return (
            f"centre read back at ({header.x_nm:g}, {header.y_nm:g}) nm, {off_nm:.3g} nm from the commanded "
            f"({command.x_nm:g}, {command.y_nm:g}) nm (tolerance {tolerance_nm:g} nm)"
        )
    if not abs(header.fov_nm - command.fov_nm) <= tolerance_nm:
        return f"field of view read back as {header.fov_nm:g} nm, commanded {command.fov_nm:g} nm"
    if tuple(header.shape) != (command.rows, command.cols):
        return f"{header.shape[0]} x {header.shape[1]} pixels read back, commanded {command.rows} x {command.cols}"
    if not header.dwell_us <= command.dwell_us * (1.0 + DWELL_TOLERANCE):
        return (
            f"dwell read back as {header.dwell_us:g} us, commanded {command.dwell_us:g} us: more dose than the "
            "guard counted"
        )
    return None


def frame_age_s(frame: Frame, now_unix_s: float | None = None) -> float:
    """Seconds since the frame's acquisition ended (by the instrument's clock)."""
    return (time.time() if now_unix_s is None else now_unix_s) - frame.header.acquisition_end_unix_s
