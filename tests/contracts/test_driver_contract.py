"""The Driver contract: every implementation behaves the same at the instrument boundary.

Runs over the in-memory driver, the simulated instrument, the Nion driver on Nion's own simulator
(nionswift-usim, headless), and the remote driver talking to each of them through a real instrument
server on loopback TCP.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from drivers.base import (
    BlankCommand,
    Capabilities,
    CommandRefused,
    Disconnected,
    Driver,
    DriverTimeout,
    ScanCommand,
    SetTiltCommand,
    StopCommand,
    UnblankCommand,
)
from drivers.memory import InMemoryDriver
from drivers.remote import RemoteDriver
from drivers.server import InstrumentServer
from drivers.simulated import SimulatedDriver


def _simulated() -> SimulatedDriver:
    return SimulatedDriver(specimen_seed=1, specimen_config={"width_nm": 64.0, "height_nm": 64.0})


def _nion(scan_data: Any) -> Driver:
    from drivers.nion import NionDriver
    from drivers.nion_usim import UsimHost

    host = UsimHost(scan_data)
    stem, scan = host.start()
    return NionDriver(stem, scan, on_close=host.stop)


@pytest.fixture(params=["memory", "simulated", "nion", "remote-memory", "remote-simulated", "remote-nion"])
def driver(request) -> Iterator[Driver]:
    kind = request.param
    if kind.endswith("nion"):
        pytest.importorskip("nion.instrumentation", reason="the Nion extra is not installed")
        scan_data = request.getfixturevalue("usim_scan_data")
    make = {"memory": InMemoryDriver, "simulated": _simulated, "nion": lambda: _nion(scan_data)}[
        kind.removeprefix("remote-")
    ]
    inner: Driver = make()
    if not kind.startswith("remote"):
        yield inner
        inner.close()
        return
    server = InstrumentServer(inner, "tcp://127.0.0.1:0", heartbeat_s=0.2).start()
    remote = RemoteDriver(server.endpoint, heartbeat_s=0.2)
    yield remote
    remote.close()
    server.stop()
    inner.close()


def _scan(cap: Capabilities, **kw) -> ScanCommand:
    x = 0.5 * (cap.stage_x_nm.low + cap.stage_x_nm.high)
    y = 0.5 * (cap.stage_y_nm.low + cap.stage_y_nm.high)
    args = {"x_nm": x, "y_nm": y, "fov_nm": 4.0, "rows": 48, "cols": 64, "dwell_us": 2.0, **kw}
    return ScanCommand(**args)


def test_reports_capabilities(driver):
    cap = driver.capabilities()
    assert isinstance(cap, Capabilities)
    assert "scan" in cap.command_kinds and "stop" in cap.command_kinds
    assert cap.stage_x_nm.low < cap.stage_x_nm.high and cap.pixels.low >= 1 and cap.max_dose_e_per_a2 > 0


def test_scan_returns_the_frame_it_asked_for(driver):
    cmd = _scan(driver.capabilities(), rotation_deg=15.0)
    ack = driver.send(cmd)
    assert ack.accepted and ack.command_id == cmd.id and ack.kind == "scan"
    frame = driver.next_frame(timeout_s=10.0)
    h = frame.header
    assert h.command_id == cmd.id and h.shape == (48, 64) and frame.image.shape == (48, 64)
    assert str(frame.image.dtype) == h.dtype
    assert (h.x_nm, h.y_nm, h.fov_nm, h.dwell_us) == (cmd.x_nm, cmd.y_nm, cmd.fov_nm, cmd.dwell_us)
    assert h.pixel_size_nm == pytest.approx(4.0 / 64)
    assert h.acquisition_start_unix_s <= h.acquisition_end_unix_s
    assert np.isfinite(frame.image).all()


def test_sequence_numbers_increase(driver):
    cap = driver.capabilities()
    seqs = []
    for _ in range(3):
        driver.send(_scan(cap))
        seqs.append(driver.next_frame(10.0).header.sequence)
    assert seqs == sorted(seqs) and len(set(seqs)) == 3


def test_next_frame_times_out_instead_of_hanging(driver):
    t0 = time.monotonic()
    with pytest.raises(DriverTimeout):
        driver.next_frame(timeout_s=0.3)
    assert time.monotonic() - t0 < 1.5


@pytest.mark.parametrize(
    ("field", "value", "name"), [("x_nm", 1e5, "x_nm"), ("rows", 10_000, "rows"), ("dwell_us", 5000.0, "dwell_us")]
)
def test_out_of_range_commands_are_refused_with_a_reason(driver, field, value, name):
    with pytest.raises(CommandRefused) as info:
        driver.send(_scan(driver.capabilities(), **{field: value}))
    assert info.value.ack.code == "refused" and name in info.value.ack.reason
    with pytest.raises(DriverTimeout):
        driver.next_frame(0.2)  # nothing was acquired


def test_expired_commands_are_not_executed(driver):
    with pytest.raises(CommandRefused) as info:
        driver.send(_scan(driver.capabilities(), deadline_unix_s=time.time() - 1.0))
    assert info.value.ack.code in ("expired", "refused") and "deadline" in info.value.ack.reason
    with pytest.raises(DriverTimeout):
        driver.next_frame(0.2)


def test_blanked_beam_refuses_scans_until_unblanked(driver):
    cap = driver.capabilities()
    assert driver.send(BlankCommand()).accepted
    with pytest.raises(CommandRefused, match="blank"):
        driver.send(_scan(cap))
    assert driver.send(UnblankCommand()).accepted
    driver.send(_scan(cap))
    assert driver.next_frame(10.0).header.shape == (48, 64)
    assert driver.send(StopCommand()).accepted
    with pytest.raises(CommandRefused):
        driver.send(_scan(cap))


def test_tilt_is_applied_and_reported(driver):
    cap = driver.capabilities()
    if "set_tilt" not in cap.command_kinds:  # an instrument without a stage tilt says so, and refuses tilts
        assert cap.tilt_deg is None
        with pytest.raises(CommandRefused, match="set_tilt"):
            driver.send(SetTiltCommand(tilt_deg=12.5))
        return
    assert cap.tilt_deg is not None
    assert driver.send(SetTiltCommand(tilt_deg=12.5)).accepted
    driver.send(_scan(cap))
    assert driver.next_frame(10.0).header.tilt_deg == 12.5
    with pytest.raises(CommandRefused, match="tilt_deg"):
        driver.send(SetTiltCommand(tilt_deg=cap.tilt_deg.high + 1.0))


def test_closed_driver_refuses_work(driver):
    driver.close()
    driver.close()  # idempotent
    with pytest.raises(Disconnected):
        driver.send(BlankCommand())
