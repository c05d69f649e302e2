"""The Nion driver against Nion's own simulated STEM (nionswift-usim), headless.

The contract suite runs on it too (tests/contracts); here: the field lands where Nion's API puts it,
the dwell is honoured, atoms planted under usim's beam are found, and a closed loop through our
server is recorded and replays.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

pytest.importorskip("nion.instrumentation", reason="the Nion extra is not installed")

from drivers.base import BlankCommand, CommandRefused, ScanCommand, UnblankCommand
from drivers.nion import NionDriver, require_nion
from drivers.nion_usim import PeriodicImageScanData, SpecimenScanData, UsimHost
from drivers.recording import read_session

ROOT = Path(__file__).resolve().parents[2]
ABTEM = ROOT.parent / "shared" / "data" / "sim" / "abtem" / "mos2_prism.npz"


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two frames smoothed over a few pixels (usim draws fresh noise for every frame)."""
    a, b = ndimage.gaussian_filter(a, 2.0), ndimage.gaussian_filter(b, 2.0)
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _direct(scan, x_nm: float, y_nm: float, fov_nm: float, size: int, dwell_us: float, rotation_deg: float = 0.0):
    """One frame recorded straight through Nion's API (no driver) at the same parameters."""
    from nion.utils import Geometry

    fp = scan.get_current_frame_parameters()
    fp.pixel_size = Geometry.IntSize(height=size, width=size)
    fp.fov_nm, fp.pixel_time_us, fp.rotation_rad = fov_nm, dwell_us, math.radians(rotation_deg)
    fp.center_nm = Geometry.FloatPoint(y=y_nm, x=x_nm)
    return scan.record_immediate(fp)[0].data


@pytest.fixture
def usim(usim_scan_data):
    host = UsimHost(usim_scan_data)
    stem, scan = host.start()
    driver = NionDriver(stem, scan)
    driver.send(UnblankCommand())
    yield driver, stem, scan
    driver.close()
    host.stop()


def test_a_field_is_the_one_nions_api_records_at_the_same_parameters(usim):
    driver, _, scan = usim
    cmd = ScanCommand(x_nm=120.0, y_nm=-80.0, fov_nm=200.0, rows=96, cols=96, dwell_us=1.0, rotation_deg=20.0)
    driver.send(cmd)
    ours = driver.next_frame(10.0).image
    same = _direct(scan, 120.0, -80.0, 200.0, 96, 1.0, 20.0)
    elsewhere = _direct(scan, 420.0, -80.0, 200.0, 96, 1.0, 20.0)
    assert _corr(ours, same) > 0.9
    assert _corr(ours, elsewhere) < 0.5


def test_moving_the_stage_moves_the_field_as_usim_says(usim):
    _, stem, scan = usim
    driver = NionDriver(stem, scan, positioner="stage")
    try:
        driver.send(UnblankCommand())
        driver.send(ScanCommand(x_nm=60.0, y_nm=30.0, fov_nm=200.0, rows=96, cols=96, dwell_us=1.0))
        frame = driver.next_frame(10.0)
        ok, stage_x = stem.TryGetVal("stage_position_m.x")
        assert ok and stage_x == pytest.approx(-60e-9)  # the specimen moves under the beam
        assert (frame.header.x_nm, frame.header.y_nm) == (60.0, 30.0)
        stem.SetVal("stage_position_m.x", 0.0)
        stem.SetVal("stage_position_m.y", 0.0)
        assert _corr(frame.image, _direct(scan, 60.0, 30.0, 200.0, 96, 1.0)) > 0.8  # = the scan offset there
    finally:
        stem.SetVal("stage_position_m.x", 0.0)
        stem.SetVal("stage_position_m.y", 0.0)


def test_the_dwell_time_is_honoured(usim):
    driver, _, _ = usim
    took = {}
    for dwell_us in (10.0, 100.0):
        t0 = time.perf_counter()
        driver.send(ScanCommand(x_nm=0.0, y_nm=0.0, fov_nm=50.0, rows=64, cols=64, dwell_us=dwell_us))
        frame = driver.next_frame(10.0)
        took[dwell_us] = time.perf_counter() - t0
        assert frame.header.dwell_us == dwell_us
    nominal_s = 64 * 64 * (100.0 - 10.0) * 1e-6
    assert took[100.0] - took[10.0] >= 0.8 * nominal_s, took


def _recall(found_rc: np.ndarray, truth_rc: np.ndarray, radius_px: float) -> float:
    if len(truth_rc) == 0:
        return 1.0
    if len(found_rc) == 0:
        return 0.0
    distance, _ = cKDTree(found_rc).query(truth_rc)
    return float(np.mean(distance <= radius_px))


def _inner(rc: np.ndarray, shape: tuple[int, int], margin: float) -> np.ndarray:
    keep = (
        (rc[:, 0] > margin)
        & (rc[:, 0] < shape[0] - 1 - margin)
        & (rc[:, 1] > margin)
        & (rc[:, 1] < shape[1] - 1 - margin)
    )
    return rc[keep]


def test_the_agent_finds_the_atoms_planted_under_usims_beam(segmenter):
    from simulators import ImagingParams, Specimen, SpecimenConfig, get_lattice

    specimen = Specimen(SpecimenConfig(seed=4, lattice="MoS2", width_nm=60.0, height_nm=60.0))
    data = SpecimenScanData(specimen, ImagingParams(track_dose=False), seed=1)
    with UsimHost(data) as (stem, scan):
        driver = NionDriver(stem, scan)
        driver.send(UnblankCommand())
        driver.send(ScanCommand(x_nm=3.0, y_nm=-2.0, fov_nm=5.12, rows=256, cols=256, dwell_us=10.0))
        frame = driver.next_frame(30.0)
        driver.close()
    atoms = segmenter.atoms(segmenter.segment(frame.image, frame.header.pixel_size_nm))
    truth = data.last_truth.columns
    nn_px = get_lattice("MoS2").nn_spacing_nm / frame.header.pixel_size_nm
    truth_rc = _inner(np.column_stack([truth.row, truth.col]), frame.image.shape, 4)
    found_rc = _inner(np.column_stack([atoms.row, atoms.col]), frame.image.shape, 4)
    assert len(truth_rc) > 300
    assert _recall(found_rc, truth_rc, nn_px / 2) >= 0.95
    assert _recall(truth_rc, found_rc, nn_px / 2) >= 0.95  # precision


@pytest.mark.skipif(not ABTEM.is_file(), reason="needs ../shared/data/sim/abtem/mos2_prism.npz")
def test_atoms_of_an_abtem_multislice_cell_are_found_through_usim(segmenter):
    cell = np.load(ABTEM)
    pixel_nm = float(cell["pixel_size_A"]) / 10.0
    data = PeriodicImageScanData(cell["image"], pixel_nm, counts_per_us=20.0, seed=2)
    with UsimHost(data) as (stem, scan):
        driver = NionDriver(stem, scan)
        driver.send(UnblankCommand())
        driver.send(ScanCommand(x_nm=1.7, y_nm=1.6, fov_nm=2.56, rows=128, cols=128, dwell_us=10.0))
        frame = driver.next_frame(30.0)
        driver.close()
    atoms = segmenter.atoms(segmenter.segment(frame.image, frame.header.pixel_size_nm))
    # The cell's columns, tiled, in the frame's pixels (rotation 0: columns along +x, rows along +y).
    h, w = cell["image"].shape
    rc = cell["col_rc_px"] * pixel_nm
    tiles = [rc + np.array([dy * h, dx * w]) * pixel_nm for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    yx = np.concatenate(tiles)
    px = frame.header.pixel_size_nm
    truth_rc = np.column_stack([(yx[:, 0] - 1.6) / px + 63.5, (yx[:, 1] - 1.7) / px + 63.5])
    truth_rc = _inner(truth_rc, frame.image.shape, 4)
    found_rc = _inner(np.column_stack([atoms.row, atoms.col]), frame.image.shape, 4)
    nn_px = 0.184 / px  # MoS2 Mo-S projected spacing
    assert len(truth_rc) > 50
    assert _recall(found_rc, truth_rc, nn_px / 2) >= 0.9


def test_a_missing_nion_package_gives_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "nion.instrumentation.scan_base", None)
    with pytest.raises(ImportError, match=r"pip install 'autoscope\[nion\]'"):
        require_nion()


LIMITS = (
    "[field]\nfov_nm = 2.56\npixels = 128\n[policies]\nlength_nm = 5.0\n[guard]\n"
    "stage_x_nm = { low = -20.0, high = 20.0 }\nstage_y_nm = { low = -20.0, high = 20.0 }\n"
    "fov_nm = { low = 0.5, high = 20.0 }\npixels = { low = 16, high = 512 }\ndwell_us = { low = 0.1, high = 20.0 }\n"
    "probe_current_pa = 20.0\n"
)


def test_a_closed_loop_through_our_server_drives_usim_and_replays(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    server = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "instrument", "--nion-usim", "--bind", endpoint, "--specimen-seed", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    config, record = tmp_path / "nion.toml", tmp_path / "session"
    config.write_text(LIMITS)
    try:
        assert server.stdout is not None and "Nion usim" in server.stdout.readline()
        run = [
            sys.executable,
            "-m",
            "agent.cli",
            "run",
            "--instrument",
            endpoint,
            "--policy",
            "defects",
            "--steps",
            "3",
        ]
        done = subprocess.run(
            [*run, "--config", str(config), "--record", str(record), "--quiet"],
            cwd=ROOT, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        server.terminate()
        server.communicate(timeout=30)
    assert server.returncode == 0  # usim's threads stopped: the server process ended by itself
    summary = json.loads((record / "SUMMARY.json").read_text())
    assert summary["steps"] == 3 and summary["atoms_found"] > 100
    start = read_session(record).records[0]
    assert start["capabilities"]["instrument"].startswith("Nion STEM")
    replay = subprocess.run(
        [sys.executable, "-m", "agent.cli", "replay", str(record), "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr[-2000:]


def test_the_swift_plugin_serves_the_registered_hardware_and_blanks_on_close():
    from drivers.base import BlankCommand
    from drivers.nion_plugin import AutoscopeServerExtension, PluginConfig
    from drivers.remote import RemoteDriver

    with UsimHost() as (stem, _):
        config = PluginConfig(bind="tcp://127.0.0.1:0", scan_device="usim_scan_device", heartbeat_s=0.2)
        extension = AutoscopeServerExtension(api_broker=None, config=config)
        try:
            assert extension.wait_started(30.0), extension.error
            with RemoteDriver(extension.server.endpoint, heartbeat_s=0.2) as remote:
                assert remote.capabilities().instrument.startswith("Nion STEM")
                remote.send(UnblankCommand())
                assert stem.GetVal("C_Blank") == 0.0
                remote.send(ScanCommand(x_nm=0.0, y_nm=0.0, fov_nm=50.0, rows=32, cols=32, dwell_us=1.0))
                assert remote.next_frame(10.0).image.shape == (32, 32)
                remote.send(BlankCommand())
                remote.send(UnblankCommand())
        finally:
            extension.close()
        assert stem.GetVal("C_Blank") == 1.0  # Swift closing the plug-in blanks the beam


def test_the_plugin_reports_hardware_that_never_registers():
    from drivers.nion_plugin import AutoscopeServerExtension, PluginConfig

    extension = AutoscopeServerExtension(config=PluginConfig(scan_device="no_such_scan", hardware_wait_s=0.5))
    assert not extension.wait_started(5.0)
    assert "no_such_scan" in (extension.error or "")
    extension.close()


class _StuckBlanker:
    """Nion's STEM controller, except that the blanker does not take a new value (a hardware fault)."""

    def __init__(self, stem) -> None:
        self.stem = stem

    def SetVal(self, name, value):  # noqa: N802 (Nion's name)
        return False if name == "C_Blank" else self.stem.SetVal(name, value)

    def __getattr__(self, name):
        return getattr(self.stem, name)


def test_a_blank_the_blanker_did_not_take_is_refused_not_acknowledged(usim):
    _, stem, scan = usim
    driver = NionDriver(_StuckBlanker(stem), scan)
    try:
        with pytest.raises(CommandRefused, match="did not accept C_Blank"):
            driver.send(BlankCommand())
        assert stem.GetVal("C_Blank") == 0.0  # the beam is on, and nobody was told otherwise
    finally:
        driver.close()


def test_stage_moves_run_in_order_with_the_scans(usim):
    """A second scan queued while the first is scanned must not move the stage under the first."""
    _, stem, scan = usim
    driver = NionDriver(stem, scan, positioner="stage")
    try:
        driver.send(UnblankCommand())
        a = ScanCommand(x_nm=100.0, y_nm=0.0, fov_nm=200.0, rows=64, cols=64, dwell_us=100.0)  # ~0.4 s
        b = ScanCommand(x_nm=-150.0, y_nm=60.0, fov_nm=200.0, rows=64, cols=64, dwell_us=1.0)
        driver.send(a)
        time.sleep(0.15)
        driver.send(b)
        first, second = driver.next_frame(20.0), driver.next_frame(20.0)
        assert first.header.command_id == a.id and (first.header.x_nm, first.header.y_nm) == (100.0, 0.0)
        assert (second.header.x_nm, second.header.y_nm) == (-150.0, 60.0)
    finally:
        stem.SetVal("stage_position_m.x", 0.0)
        stem.SetVal("stage_position_m.y", 0.0)
        driver.close()
    assert _corr(first.image, _direct(scan, 100.0, 0.0, 200.0, 64, 1.0)) > 0.8
    assert _corr(first.image, _direct(scan, -150.0, 60.0, 200.0, 64, 1.0)) < 0.5


def test_stop_drops_the_queued_scans_and_close_does_not_wait_for_a_long_one(usim):
    from drivers.base import DriverTimeout, StopCommand

    driver, stem, _ = usim
    for _ in range(4):
        driver.send(ScanCommand(x_nm=0.0, y_nm=0.0, fov_nm=100.0, rows=64, cols=64, dwell_us=50.0))
    driver.send(StopCommand())
    assert stem.GetVal("C_Blank") == 1.0
    with pytest.raises(DriverTimeout):
        driver.next_frame(1.5)  # none of the four runs after the stop
    driver.send(UnblankCommand())
    driver.send(ScanCommand(x_nm=0.0, y_nm=0.0, fov_nm=100.0, rows=256, cols=256, dwell_us=200.0))  # 13 s
    time.sleep(0.2)
    t0 = time.monotonic()
    driver.close()
    assert time.monotonic() - t0 < 3.0


def test_a_scan_whose_deadline_passes_in_the_queue_is_not_run(usim):
    from drivers.base import ProtocolError

    driver, _, _ = usim
    driver.send(ScanCommand(x_nm=0.0, y_nm=0.0, fov_nm=100.0, rows=128, cols=128, dwell_us=50.0))  # ~0.8 s
    late = ScanCommand(
        x_nm=0.0, y_nm=0.0, fov_nm=100.0, rows=16, cols=16, dwell_us=1.0, deadline_unix_s=time.time() + 0.3
    )
    driver.send(late)
    assert driver.next_frame(20.0).image.shape == (128, 128)
    with pytest.raises(ProtocolError, match="expired"):
        driver.next_frame(20.0)


def test_an_operators_subscan_does_not_change_the_commanded_frame(usim):
    from nion.utils import Geometry

    driver, _, scan = usim
    scan.subscan_region = Geometry.FloatRect.from_center_and_size((0.3, 0.7), (0.25, 0.25))
    scan.subscan_enabled = True  # left on in Swift by the operator
    try:
        driver.send(ScanCommand(x_nm=0.0, y_nm=0.0, fov_nm=400.0, rows=128, cols=128, dwell_us=1.0))
        frame = driver.next_frame(10.0)
    finally:
        scan.subscan_enabled = False
    assert frame.image.shape == (128, 128) and frame.header.pixel_size_nm == pytest.approx(400.0 / 128)
    assert _corr(frame.image, _direct(scan, 0.0, 0.0, 400.0, 128, 1.0)) > 0.8


def test_a_blanked_beam_at_start_is_known_and_a_bad_channel_is_named(usim):
    _, stem, scan = usim
    stem.SetVal("C_Blank", 1.0)  # the operator left the beam blanked
    driver = NionDriver(stem, scan)
    try:
        assert driver.state.blanked
        with pytest.raises(CommandRefused, match="blanked"):
            driver.send(ScanCommand(x_nm=0.0, y_nm=0.0, fov_nm=50.0, rows=16, cols=16, dwell_us=1.0))
    finally:
        driver.close()
    with pytest.raises(ValueError, match="channel 7: the scan device has 4 channels"):
        NionDriver(stem, scan, channel=7)


def test_fields_beyond_the_scans_reach_now_or_taller_than_its_field_are_refused(usim):
    driver, stem, _ = usim
    reach = driver.capabilities().fov_nm.high / 2
    with pytest.raises(CommandRefused, match="tall"):  # Nion's field spans the rows: 8x the columns' here
        driver.send(ScanCommand(x_nm=0.0, y_nm=0.0, fov_nm=reach, rows=128, cols=16, dwell_us=1.0))
    with pytest.raises(CommandRefused, match="reaches beyond"):  # the centre is in range, the field is not
        driver.send(ScanCommand(x_nm=reach - 10.0, y_nm=0.0, fov_nm=100.0, rows=16, cols=16, dwell_us=1.0))
    stem.SetVal("stage_position_m.x", 600e-9)  # the stage moved after the driver started
    try:
        with pytest.raises(CommandRefused, match="offset 600"):
            driver.send(ScanCommand(x_nm=reach - 100.0, y_nm=0.0, fov_nm=50.0, rows=16, cols=16, dwell_us=1.0))
    finally:
        stem.SetVal("stage_position_m.x", 0.0)


def test_nion_limits_and_a_named_missing_plugin_configuration_are_refused(tmp_path, monkeypatch):
    from pydantic import ValidationError

    from drivers.nion import NionLimits
    from drivers.nion_plugin import AutoscopeServerExtension, load_plugin_config

    for bad in ({"stage_reach_nm": -500.0}, {"max_dose_e_per_a2": 0.0}, {"readback_tolerance_nm": 1e9}):
        with pytest.raises(ValidationError):
            NionLimits(**bad)
    monkeypatch.setenv("AUTOSCOPE_NION_CONFIG", str(tmp_path / "typo-nion.toml"))
    with pytest.raises(FileNotFoundError, match=r"typo-nion\.toml does not exist"):
        load_plugin_config()
    extension = AutoscopeServerExtension()  # inside Swift: not raised, not started, and says why
    assert not extension.wait_started(1.0) and "typo-nion.toml" in (extension.error or "")
    extension.close()
