"""Replay: strict (zero divergence), divergence reports, what-if, the replay driver, damaged logs, import."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.cli import main
from drivers.base import CommandRefused, ScanCommand, UnblankCommand
from drivers.recording import read_session
from drivers.remote import RemoteDriver
from drivers.replay import ReplayDriver
from drivers.server import InstrumentServer

SMALL = "[field]\nfov_nm = 2.56\npixels = 128\n[policies]\nlength_nm = 5.0\ninitial_fields = 2\n"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A simulated bayes session of 6 small fields."""
    root = tmp_path_factory.mktemp("recorded")
    config = root / "small.toml"
    config.write_text(SMALL)
    argv = ["run", "--policy", "bayes", "--steps", "6", "--seed", "4", "--config", str(config), "--quiet"]
    assert main([*argv, "--record", str(root / "session")]) == 0
    return root / "session"


def test_strict_replay_reproduces_every_decision(recorded, tmp_path, capsys):
    out = tmp_path / "replay.json"
    assert main(["replay", str(recorded), "--quiet", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["divergences"] == [] and report["recorded_decisions"] == 6 and report["model_matches_recording"]
    assert report["replay"]["served"] == 6 and report["summary"]["steps"] == 6
    original = json.loads((recorded / "SUMMARY.json").read_text()) if (recorded / "SUMMARY.json").exists() else None
    recorded_summary = next(r for r in read_session(recorded).records if r["type"] == "summary")["summary"]
    assert report["summary"]["defects_found"] == recorded_summary["defects_found"]
    assert original is None or original["fields"] == report["summary"]["fields"]
    assert "0 of 6 decisions diverged" in capsys.readouterr().err


def test_keep_featureless_reaches_the_replayed_configuration(recorded, tmp_path, capsys):
    """For sessions recorded before the input check: the replay's perception keeps featureless frames' columns."""
    again = tmp_path / "again"
    assert main(["replay", str(recorded), "--quiet", "--keep-featureless", "--record", str(again)]) == 0
    start = next(r for r in read_session(again).records if r["type"] == "start")
    assert start["config"]["keep_featureless"] is True
    recorded_start = next(r for r in read_session(recorded).records if r["type"] == "start")
    assert recorded_start["config"]["keep_featureless"] is False


def test_a_different_seed_diverges_and_says_where(recorded, tmp_path, capsys):
    out = tmp_path / "replay.json"
    assert main(["replay", str(recorded), "--seed", "5", "--quiet", "--json", str(out)]) == 3
    divergences = json.loads(out.read_text())["divergences"]
    assert divergences and divergences[0]["step"] == 0  # the random initial design differs at once
    assert "x_nm" in divergences[0]["why"] or "y_nm" in divergences[0]["why"]
    assert main(["replay", str(recorded), "--seed", "5", "--quiet", "--allow-divergence"]) == 0


def test_what_if_replay_serves_recorded_fields_and_refuses_the_rest(recorded, tmp_path):
    out = tmp_path / "what-if.json"
    assert main(["replay", str(recorded), "--policy", "raster", "--steps", "6", "--quiet", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["replay"]
    assert r["mode"] == "instrument" and r["refused_no_data"] > 0 and 0 < r["served"] <= 6
    assert r["served_fraction"] == pytest.approx(r["served"] / (r["served"] + r["refused_no_data"]), abs=1e-4)


def _scan_like(header, **change) -> ScanCommand:
    fields = {"x_nm": header.x_nm, "y_nm": header.y_nm, "fov_nm": header.fov_nm, "rows": header.shape[0],
              "cols": header.shape[1], "dwell_us": header.dwell_us, **change}  # fmt: skip
    return ScanCommand(**fields)


def test_instrument_mode_resamples_recorded_data_exactly(recorded):
    driver = ReplayDriver(recorded, mode="instrument")
    source = driver.frames[0]
    h = source.header
    driver.send(UnblankCommand())
    driver.send(_scan_like(h))  # the recorded field itself
    same = driver.next_frame(1.0)
    assert np.allclose(same.image, source.image, atol=1e-5) and same.header.metadata["replay"]["mode"] == "instrument"
    # the central half, at the recorded sampling: a crop (the centre of a 128-px field falls between pixels)
    driver.send(_scan_like(h, fov_nm=h.fov_nm / 2, rows=64, cols=64))
    crop = driver.next_frame(1.0)
    assert np.allclose(crop.image, source.image[32:96, 32:96], atol=1e-4)
    with pytest.raises(CommandRefused, match="no data"):
        driver.send(_scan_like(h, x_nm=h.x_nm + 50.0))
    assert driver.report["refused_no_data"] == 1 and driver.report["served"] == 2


def test_strict_replay_driver_is_exhausted_after_the_recording(recorded):
    driver = ReplayDriver(recorded)
    driver.send(UnblankCommand())
    for f in driver.frames:
        driver.send(_scan_like(f.header))
        assert np.array_equal(driver.next_frame(1.0).image, f.image)
    with pytest.raises(CommandRefused, match="recording exhausted"):
        driver.send(_scan_like(driver.frames[0].header))


def test_a_recording_served_over_zeromq_is_the_recording(recorded):
    server = InstrumentServer(ReplayDriver(recorded), "tcp://127.0.0.1:0", heartbeat_s=0.2).start()
    try:
        with RemoteDriver(server.endpoint, heartbeat_s=0.2) as remote:
            assert remote.capabilities().instrument.startswith("replay of")
            remote.send(UnblankCommand())
            originals = read_session(recorded).frames[:3]
            for f in originals:
                remote.send(_scan_like(f.header))
                assert np.array_equal(remote.next_frame(5.0).image, f.image)
    finally:
        server.stop()


def test_a_strict_replay_over_tcp_is_run_only_when_the_run_is_told_to_expect_one(recorded, tmp_path, capsys):
    """Its frames say nothing of the commanded fields' readback; a tcp:// instrument may not claim that unasked."""
    guard = (
        "[guard]\nstage_x_nm = { low = -50.0, high = 50.0 }\nstage_y_nm = { low = -50.0, high = 50.0 }\n"
        "fov_nm = { low = 0.5, high = 20.0 }\npixels = { low = 16, high = 1024 }\n"
        "dwell_us = { low = 0.1, high = 100.0 }\nprobe_current_pa = 20.0\n"
    )
    config = tmp_path / "tcp.toml"
    config.write_text(SMALL + guard)
    driver = ReplayDriver(recorded, mode="strict")
    with InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.2) as server:
        argv = ["run", "--instrument", server.endpoint, "--policy", "bayes", "--steps", "6", "--seed", "4"]
        argv += ["--config", str(config), "--quiet"]
        assert main(argv) == 2
        assert "says it is a strict replay" in capsys.readouterr().err and driver.stats["served"] == 0
        out = tmp_path / "SUMMARY.json"
        assert main([*argv, "--instrument-is-replay", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["status"] == "completed" and summary["steps"] == 6 and driver.stats["served"] == 6


def _record_offsets(log: bytes) -> list[int]:
    from drivers.recording import iter_records

    return [end for end, _, _ in iter_records(log)]


def test_damaged_recordings_replay_their_valid_prefix(recorded, tmp_path):
    log = (recorded / "session.log").read_bytes()
    originals = read_session(recorded).frames
    rng = np.random.default_rng(0)
    boundaries = _record_offsets(log)
    stop_end = boundaries[[r["type"] for r in read_session(recorded).records].index("stop")]
    cuts = boundaries + [int(c) for c in rng.integers(9, len(log), 25)]
    flips = [int(p) for p in rng.integers(8, len(log), 25)]
    cases = [log[:cut] for cut in cuts]
    for p in flips:
        flipped = bytearray(log)
        flipped[p] ^= 1 << int(rng.integers(8))
        cases.append(bytes(flipped))
    for data in cases:
        (tmp_path / "session.log").write_bytes(data)
        driver = ReplayDriver(tmp_path)
        n = len(driver.frames)
        assert all(np.array_equal(a.image, b.image) for a, b in zip(driver.frames, originals[:n], strict=True))
        report = driver.report
        assert report["valid_bytes"] <= len(data)
        if report["complete_recording"] and data != log:  # a cut exactly between records
            assert len(data) in boundaries and report["ended_cleanly"] == (len(data) >= stop_end)
        elif data != log:
            assert report["problem"] and n <= len(originals)


def test_a_damaged_recording_replays_from_the_cli_and_says_what_was_lost(recorded, tmp_path, capsys):
    log = (recorded / "session.log").read_bytes()
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "session.log").write_bytes(log[: int(len(log) * 0.5)])
    assert main(["replay", str(cut), "--quiet", "--allow-divergence"]) == 0
    err = capsys.readouterr().err
    assert "damaged" in err and "bytes valid" in err


def test_a_log_cut_before_the_last_frame_replays_what_it_holds_without_divergence(recorded, tmp_path, capsys):
    log = (recorded / "session.log").read_bytes()
    types = [r["type"] for r in read_session(recorded).records]
    last_frame = len(types) - 1 - types[::-1].index("frame")
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "session.log").write_bytes(log[: _record_offsets(log)[last_frame - 1]])  # its decision kept, no frame
    out = tmp_path / "r.json"
    assert main(["replay", str(cut), "--quiet", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["divergences"] == [] and report["recorded_decisions"] == 5
    assert report["recorded_decisions_not_replayed"] == 1
    assert "1 recorded decisions of later steps were not replayed" in capsys.readouterr().err


def test_fewer_steps_replay_the_first_ones_and_more_than_recorded_or_none_are_refused(recorded, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["replay", str(recorded), "--quiet", "--steps", "3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["divergences"] == [] and report["recorded_decisions"] == 3
    assert report["recorded_decisions_not_replayed"] == 3
    assert main(["replay", str(recorded), "--quiet", "--steps", "7"]) == 2
    assert "the recording holds 6 frames" in capsys.readouterr().err
    assert main(["replay", str(recorded), "--quiet", "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err


def test_import_builds_a_session_that_replays(tmp_path, capsys):
    rng = np.random.default_rng(1)
    names = []
    for i in range(2):
        np.save(tmp_path / f"img{i}.npy", rng.random((128, 128), dtype=np.float32))
        names.append(str(tmp_path / f"img{i}.npy"))
    (tmp_path / "pos.csv").write_text("image,x_nm,y_nm,pixel_size_nm\nimg0.npy,0,0,0.02\nimg1.npy,2.56,0,0.02\n")
    out = tmp_path / "imported"
    assert main(["sessions", "import", *names, "--positions", str(tmp_path / "pos.csv"), "--out", str(out)]) == 0
    frames = read_session(out).frames
    assert [f.header.x_nm for f in frames] == [0.0, 2.56] and frames[0].header.pixel_size_nm == 0.02
    assert main(["replay", str(out), "--quiet"]) == 0


@pytest.mark.parametrize(
    "positions", [[(0.0, 0.0), (0.5, 0.0), (1.0, 0.0)], [(0.0, 0.0), (0.0, 0.0)]], ids=["drift", "two_detectors"]
)
def test_an_imported_session_replays_every_frame_however_its_fields_overlap(tmp_path, positions):
    """A drift series (fields overlapping) or two detectors at one position: one frame served, then 'exhausted'."""
    rng = np.random.default_rng(2)
    names, rows = [], ["image,x_nm,y_nm,pixel_size_nm"]
    for i, (x, y) in enumerate(positions):
        np.save(tmp_path / f"f{i}.npy", rng.random((128, 128), dtype=np.float32))
        names.append(str(tmp_path / f"f{i}.npy"))
        rows.append(f"f{i}.npy,{x},{y},0.02")
    (tmp_path / "pos.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "imported"
    assert main(["sessions", "import", *names, "--positions", str(tmp_path / "pos.csv"), "--out", str(out)]) == 0
    assert main(["replay", str(out), "--quiet", "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "completed" and report["replay"]["served"] == len(positions)
    assert [(f["x_nm"], f["y_nm"]) for f in report["summary"]["fields"]] == positions


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        ("image,x_nm,y_nm\nimg0.npy,0,0\n", "no pixel size"),
        ("image,x_nm\nimg0.npy,0\n", "missing columns"),
        ("image,x_nm,y_nm,pixel_size_nm\nother.npy,0,0,0.02\n", "not in pos.csv: img0.npy"),
        ("image,x_nm,y_nm,pixel_size_nm\nimg0.npy,abc,0,0.02\n", "x_nm='abc' is not a number"),
    ],
)
def test_import_names_what_is_wrong(tmp_path, capsys, csv, message):
    np.save(tmp_path / "img0.npy", np.zeros((64, 64), np.float32))
    (tmp_path / "pos.csv").write_text(csv)
    argv = ["sessions", "import", str(tmp_path / "img0.npy"), "--positions", str(tmp_path / "pos.csv")]
    assert main([*argv, "--out", str(tmp_path / "s")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_the_imported_real_session_replays(tmp_path):
    from pathlib import Path

    fixture = Path(__file__).parents[1] / "data" / "imported_sto" / "session"
    out = tmp_path / "r.json"
    assert main(["replay", str(fixture), "--quiet", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["replay"]["served"] == 1 and report["replay"]["ended_cleanly"]
    header = read_session(fixture).frames[0].header
    assert header.shape == (400, 380) and header.pixel_size_nm == pytest.approx(0.00933, rel=0.01)
    # SrTiO3 [001] over 3.7 x 3.5 nm: about 85 unit cells, each with one Sr and one Ti-O column (and O columns)
    assert 150 < report["summary"]["atoms_found"] < 500


def test_replay_paces_frames_at_the_requested_speed(recorded):
    import time

    frames = read_session(recorded).frames
    recorded_span = frames[-1].header.acquisition_end_unix_s - frames[0].header.acquisition_end_unix_s
    driver = ReplayDriver(recorded, speed=2.0)
    driver.send(UnblankCommand())
    t0 = time.monotonic()
    for f in frames:
        driver.send(_scan_like(f.header))
    assert time.monotonic() - t0 >= recorded_span / 2.0 * 0.95  # never faster than asked (no upper bound here)


def test_instrument_replay_serves_a_recording_to_any_client(tmp_path, capsys):
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    fixture = Path(__file__).parents[1] / "data" / "imported_sto" / "session"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "instrument", "--replay", str(fixture), "--bind", endpoint],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert "replay of" in proc.stdout.readline()
        assert main(["instrument", "--check", endpoint]) == 0
        caps = json.loads(capsys.readouterr().out)["capabilities"]
        x, y = (0.5 * (caps[k]["low"] + caps[k]["high"]) for k in ("stage_x_nm", "stage_y_nm"))
        assert main(["instrument", "--check", endpoint, "--at", f"{x},{y}"]) == 0
        out = capsys.readouterr().out
        assert '"instrument": "replay of session' in out and '"shape": [\n      400,\n      380\n    ]' in out
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_instrument_mode_interpolates_like_the_reference_and_honours_rotation(recorded):
    from scipy.ndimage import map_coordinates

    driver = ReplayDriver(recorded, mode="instrument")
    source = driver.frames[0]
    h = source.header
    driver.send(UnblankCommand())
    # 80 % of the field on 100 x 100 pixels: every pixel interpolated (the separable path)
    driver.send(_scan_like(h, fov_nm=0.8 * h.fov_nm, rows=100, cols=100))
    got = driver.next_frame(1.0).image
    px = 0.8 * h.fov_nm / 100
    at = (np.arange(100) - 49.5) * px / h.pixel_size_nm + (h.shape[0] - 1) / 2
    rr, cc = np.meshgrid(at, at, indexing="ij")
    expected = map_coordinates(source.image.astype(np.float64), [rr, cc], order=1)
    assert np.allclose(got, expected, atol=1e-4 * float(np.abs(expected).max()))
    # the same field scanned at 90 degrees: the recorded image turned (the general path)
    driver.send(_scan_like(h, rotation_deg=90.0))
    assert np.allclose(driver.next_frame(1.0).image, np.rot90(source.image, 1), atol=1e-4)


def test_strict_replay_keeps_frames_with_their_scans_when_one_was_lost(tmp_path, capsys):
    """The recorded run lost step 1's frame: the replay must not hand step 2's image to step 1's scan."""
    from agent.config import load_config
    from agent.experiment import Experiment, open_instrument
    from drivers.base import DriverTimeout

    overrides = {"policy": "raster", "steps": 4, "seed": 1, "field.fov_nm": 2.56, "field.pixels": 128}
    config = load_config(None, {**overrides, "frame_timeout_s": 1.0, "record": str(tmp_path / "s")})

    class LosesTheSecondFrame:
        def __init__(self, inner):
            self.inner, self.frames = inner, 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def next_frame(self, timeout_s):
            frame = self.inner.next_frame(timeout_s)
            self.frames += 1
            if self.frames == 2:
                raise DriverTimeout("lost on the way")
            return frame

    with Experiment(config, driver=LosesTheSecondFrame(open_instrument(config))) as experiment:
        assert experiment.run().errors["frame_lost"] == 1
    out = tmp_path / "replay.json"
    assert main(["replay", str(tmp_path / "s"), "--quiet", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["divergences"] == [] and report["replay"]["not_recorded"] == 1 and report["replay"]["served"] == 4


def test_a_recording_without_frames_is_no_pass(recorded, tmp_path, capsys):
    log = (recorded / "session.log").read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "session.log").write_bytes(log[: _record_offsets(log)[0]])  # the start record only
    assert main(["replay", str(tmp_path / "cut"), "--quiet"]) == 2
    assert "holds no recorded frames to replay" in capsys.readouterr().err


def test_a_bad_pixel_outside_the_requested_field_does_not_spread_into_it():
    from drivers.replay_fields import _linear_weights, _separable_resample

    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    rows, cols = _linear_weights(np.linspace(20, 40, 16), 64), _linear_weights(np.linspace(10, 30, 16), 64)
    clean = rows @ image @ cols.T
    image[0, 0] = np.nan  # far from the field
    np.testing.assert_allclose(_separable_resample(image, rows, cols), clean, rtol=1e-6)


def test_what_if_replay_of_oblong_imported_frames_serves_fields(tmp_path):
    """Frames twice as wide as tall: square fields as tall as a frame fit, and are served."""
    rng = np.random.default_rng(2)
    names = []
    for i in range(3):
        np.save(tmp_path / f"w{i}.npy", rng.random((64, 128), dtype=np.float32))
        names.append(str(tmp_path / f"w{i}.npy"))
    rows = "".join(f"w{i}.npy,{2.56 * i},0,0.02\n" for i in range(3))
    (tmp_path / "pos.csv").write_text("image,x_nm,y_nm,pixel_size_nm\n" + rows)
    out = tmp_path / "oblong"
    assert main(["sessions", "import", *names, "--positions", str(tmp_path / "pos.csv"), "--out", str(out)]) == 0
    report = tmp_path / "r.json"
    assert main(["replay", str(out), "--policy", "raster", "--steps", "3", "--quiet", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["replay"]["served"] > 0


def test_a_nion_frame_s_scan_rotation_is_read_from_its_nion_metadata():
    from drivers.base import Frame
    from drivers.replay_fields import _rotation

    image = np.zeros((16, 16), np.float32)
    assert _rotation(Frame.of(image, 0.02, metadata={"nion": {"rotation_deg": 30.0}})) == 30.0
    assert _rotation(Frame.of(image, 0.02, metadata={"rotation_deg": 12.0, "nion": {"rotation_deg": 30.0}})) == 12.0
    assert _rotation(Frame.of(image, 0.02, metadata={"nion": {"rotation_deg": None}})) == 0.0


def test_a_session_at_another_probe_current_replays_with_the_dose_counted_as_recorded(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        "[field]\nfov_nm = 2.56\npixels = 128\n[policies]\nlength_nm = 5.0\n[simulator]\nprobe_current_pa = 200.0\n"
    )
    argv = ["run", "--policy", "raster", "--steps", "3", "--config", str(config), "--quiet"]
    assert main([*argv, "--record", str(tmp_path / "s")]) == 0
    start = next(r for r in read_session(tmp_path / "s").records if r["type"] == "start")
    assert start["config"]["guard"]["probe_current_pa"] == 200.0  # the guard counted the simulator's beam
    assert main(["replay", str(tmp_path / "s"), "--quiet"]) == 0
