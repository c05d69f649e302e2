"""The frame's readback against the command it answers."""

from __future__ import annotations

import pytest

from agent.frame_checks import readback_problem
from drivers.base import FrameHeader, ScanCommand

COMMAND = ScanCommand(x_nm=10.0, y_nm=-5.0, fov_nm=2.56, rows=128, cols=128, dwell_us=2.0)


def _header(**changes) -> FrameHeader:
    fields = dict(
        sequence=0, command_id=COMMAND.id, acquisition_start_unix_s=1.0, acquisition_end_unix_s=2.0,
        x_nm=10.0, y_nm=-5.0, fov_nm=2.56, shape=(128, 128), dtype="float32", pixel_size_nm=0.02, dwell_us=2.0,
    )  # fmt: skip
    return FrameHeader(**{**fields, **changes})


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({}, None),
        ({"x_nm": 10.3}, None),  # within the 0.5 nm tolerance
        ({"dwell_us": 2.08}, None),  # rounded to the instrument's clock
        ({"dwell_us": 0.5}, None),  # shorter: less dose than counted
        ({"x_nm": 11.0}, "centre read back"),
        ({"fov_nm": 3.2}, "field of view read back"),
        ({"shape": (64, 128)}, "64 x 128 pixels read back"),
        ({"dwell_us": 2000.0}, "dwell read back as 2000 us"),  # a pixel time taken in ms
    ],
)
def test_the_readback_must_show_the_commanded_field_pixels_and_no_longer_dwell(changes, problem):
    found = readback_problem(COMMAND, _header(**changes), tolerance_nm=0.5)
    assert found is None if problem is None else problem in found
