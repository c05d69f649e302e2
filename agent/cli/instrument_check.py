"""``autoscope instrument --check``: connect to a running server, print its capabilities, and (``--at``) one frame."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from agent.cli.options import client_keys, option_value

#: ``--check --at``'s frame options, small and short by default: flag, type, default, unit, what it sets, and
#: the :class:`~drivers.base.Capabilities` range it must lie in.
CHECK_FRAME: tuple[tuple[str, type, float, str, str, str], ...] = (
    ("--fov-nm", float, 10.0, "nm", "field of view", "fov_nm"),
    ("--pixels", int, 256, "px", "pixels a side", "pixels"),
    ("--dwell-us", float, 1.0, "us", "pixel dwell", "dwell_us"),
)


def check_scan(args: argparse.Namespace, cap: Any) -> Any:
    """The :class:`~drivers.base.ScanCommand` of ``--check --at`` (None without ``--at``).

    Raises
    ------
    ValueError
        The position or a frame parameter given outside what the instrument reports (named, with its
        range); nothing has been sent.  A frame parameter not given takes its default, brought within
        that range.
    """
    from drivers.base import ScanCommand

    if args.at is None:
        return None
    x, y = args.at
    _within("--at x", x, cap.stage_x_nm, "nm", cap.instrument)
    _within("--at y", y, cap.stage_y_nm, "nm", cap.instrument)
    values = []
    for flag, _, default, unit, _, attribute in CHECK_FRAME:
        allowed, value = getattr(cap, attribute), option_value(args, flag)
        if value is None:  # the default, brought within what the instrument accepts
            value = min(max(default, allowed.low), allowed.high)
        _within(flag, value, allowed, unit, cap.instrument)
        values.append(value)
    fov_nm, pixels, dwell_us = values
    side = int(pixels)
    return ScanCommand(x_nm=x, y_nm=y, fov_nm=fov_nm, rows=side, cols=side, dwell_us=dwell_us)


def _within(flag: str, value: float, allowed: Any, unit: str, instrument: str) -> None:
    """Refuse ``value`` outside ``allowed`` (a :class:`~drivers.base.Range`), naming the flag and the range."""
    if not allowed.low <= value <= allowed.high:  # also refuses NaN
        raise ValueError(
            f"{flag} {value:g} {unit} is outside what {instrument} accepts "
            f"({allowed.low:g} to {allowed.high:g} {unit}); nothing was sent"
        )


def check(args: argparse.Namespace) -> int:
    """Connect and print the capabilities; with ``--at``: unblank, scan one frame, print its header, blank again."""
    from agent.connect import connect_remote
    from drivers.base import DriverError, UnblankCommand

    with connect_remote(args.check, client_keys(args), connect_timeout_s=args.timeout_s) as remote:
        cap = remote.capabilities()
        print(json.dumps({"capabilities": cap.model_dump(mode="json")}, indent=2))
        scan = check_scan(args, cap)
        if scan is None:
            print("no frame acquired: give --at X_NM,Y_NM to scan one field there", file=sys.stderr)
            return 0
        if "unblank" in cap.command_kinds:  # the server blanks the beam when a client goes: unblank to scan
            remote.send(UnblankCommand())
        try:
            remote.send(scan)
            frame = remote.next_frame(args.timeout_s + scan.duration_s)
        except BaseException:
            with contextlib.suppress(DriverError):  # the scan's error is the one to report
                _blank(remote, cap)
            raise
        _blank(remote, cap)
        print(json.dumps({"frame_header": frame.header.model_dump(mode="json")}, indent=2))
    return 0


def _blank(remote: Any, cap: Any) -> None:
    """Leave the beam blanked after the check, as the server does when a client goes (``cap``: its capabilities)."""
    from drivers.base import BlankCommand

    if "blank" in cap.command_kinds:
        remote.send(BlankCommand())
