"""Checking a command against an instrument's capabilities (drivers refuse, never clamp)."""

from __future__ import annotations

from drivers.base import Capabilities, Command, Range, ScanCommand, SetTiltCommand


def _outside(name: str, value: float, allowed: Range | None, unit: str) -> str | None:
    if allowed is None:
        return f"{name} is not supported by this instrument"
    if value not in allowed:
        return f"{name}={value:g} is outside [{allowed.low:g}, {allowed.high:g}] {unit}".rstrip()
    return None


def refusal_reason(cap: Capabilities, command: Command, dose_e_per_a2: float | None = None) -> str | None:
    """Why ``command`` must be refused by an instrument with ``cap``, or None if it is acceptable.

    Parameters
    ----------
    cap
        The instrument's capabilities.
    command
        The command to check.
    dose_e_per_a2
        The dose the command would deliver, when the instrument can tell.
    """
    if command.kind not in cap.command_kinds:
        return f"command kind {command.kind!r} is not supported (supported: {', '.join(cap.command_kinds)})"
    checks: list[str | None] = []
    if isinstance(command, ScanCommand):
        checks = [
            _outside("x_nm", command.x_nm, cap.stage_x_nm, "nm"),
            _outside("y_nm", command.y_nm, cap.stage_y_nm, "nm"),
            _outside("fov_nm", command.fov_nm, cap.fov_nm, "nm"),
            _outside("rows", command.rows, cap.pixels, "pixels"),
            _outside("cols", command.cols, cap.pixels, "pixels"),
            _outside("dwell_us", command.dwell_us, cap.dwell_us, "us"),
        ]
        if dose_e_per_a2 is not None and dose_e_per_a2 > cap.max_dose_e_per_a2:
            checks.append(f"dose {dose_e_per_a2:.3g} e/A^2 exceeds the maximum {cap.max_dose_e_per_a2:.3g} per frame")
    elif isinstance(command, SetTiltCommand):
        checks = [_outside("tilt_deg", command.tilt_deg, cap.tilt_deg, "deg")]
    return next((c for c in checks if c), None)
