"""Parts shared by in-process drivers: the frame queue's timeouts, and the simulated tilt holder's scans."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from drivers.base import CommandRefused, DriverTimeout, ScanCommand, SetTiltCommand, UnblankCommand
from drivers.local import FrameQueue
from drivers.simulated_tomo import SimulatedTiltDriver


@pytest.mark.parametrize("timeout_s", [math.nan, math.inf, -math.inf])
def test_a_non_finite_timeout_is_refused_not_waited_on_forever(timeout_s):
    with pytest.raises(ValueError, match="finite"):
        FrameQueue().get(timeout_s)


def test_a_negative_timeout_returns_at_once():
    t0 = time.monotonic()
    with pytest.raises(DriverTimeout):
        FrameQueue().get(-5.0)
    assert time.monotonic() - t0 < 0.5


def _projection(**changes: float) -> ScanCommand:
    fields = {"x_nm": 0.0, "y_nm": 0.0, "fov_nm": 16.0, "rows": 32, "cols": 32, "dwell_us": 1.0} | changes
    return ScanCommand(**fields)


def test_the_tilt_holder_refuses_what_it_cannot_record_and_honours_the_dwell():
    driver = SimulatedTiltDriver(phantom_seed=0, size_px=32)
    try:
        driver.send(UnblankCommand())
        driver.send(SetTiltCommand(tilt_deg=10.0))
        with pytest.raises(CommandRefused, match="centre must be"):  # the projection is of the whole phantom
            driver.send(_projection(x_nm=8.0))
        with pytest.raises(CommandRefused, match="unrotated"):
            driver.send(_projection(rotation_deg=90.0))
        driver.send(_projection(dwell_us=1.0))
        driver.send(_projection(dwell_us=4.0))
        short, long = driver.next_frame(5.0), driver.next_frame(5.0)
    finally:
        driver.close()
    assert long.header.metadata["dose_e_per_px"] == pytest.approx(4 * short.header.metadata["dose_e_per_px"])
    assert np.mean(long.image) == pytest.approx(4 * np.mean(short.image), rel=0.02)
