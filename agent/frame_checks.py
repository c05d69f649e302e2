"""Checks a frame must pass before the loop analyses it: where it was taken, and how long ago."""

from __future__ import annotations

import math
import time

from drivers.base import Frame, FrameHeader, ScanCommand


def is_strict_replay(frame: Frame) -> bool:
    """True for frames a strict replay serves: recorded fields, whatever was asked."""
    replayed = frame.header.metadata.get("replay")
    return isinstance(replayed, dict) and replayed.get("mode") == "strict"


def readback_problem(command: ScanCommand, header: FrameHeader, tolerance_nm: float) -> str | None:
    """Why the frame's header does not show the commanded field (centre and field of view), or None."""
    off_nm = math.hypot(header.x_nm - command.x_nm, header.y_nm - command.y_nm)
    if not off_nm <= tolerance_nm:
        return (
            f"centre read back at ({header.x_nm:g}, {header.y_nm:g}) nm, {off_nm:.3g} nm from the commanded "
            f"({command.x_nm:g}, {command.y_nm:g}) nm (tolerance {tolerance_nm:g} nm)"
        )
    if not abs(header.fov_nm - command.fov_nm) <= tolerance_nm:
        return f"field of view read back as {header.fov_nm:g} nm, commanded {command.fov_nm:g} nm"
    return None


def frame_age_s(frame: Frame, now_unix_s: float | None = None) -> float:
    """Seconds since the frame's acquisition ended (by the instrument's clock)."""
    return (time.time() if now_unix_s is None else now_unix_s) - frame.header.acquisition_end_unix_s
