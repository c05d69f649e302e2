"""``autoscope tomo``: tilt schemes, an experiment in process and over TCP, the real tilt series."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from agent.cli import main
from agent.cli import tomo_run as tomo_cli
from agent.policies.tilt import TILT_SCHEMES, tilt_plan
from drivers.recording import read_session

REAL_SERIES = Path(__file__).parents[2].parent / "shared" / "data" / "real" / "etspy" / "HAADF.dm3"


@pytest.mark.parametrize("scheme", TILT_SCHEMES)
@pytest.mark.parametrize(("n", "low", "high"), [(20, -70.0, 70.0), (7, -60.0, 30.0), (41, -45.0, 45.0)])
def test_tilt_schemes_give_n_distinct_reachable_angles(scheme, n, low, high):
    angles = tilt_plan(scheme, n, low, high)
    assert len(angles) == n and len(set(np.round(angles, 6))) == n
    assert all(low - 1e-9 <= a <= high + 1e-9 for a in angles)


def test_dose_symmetric_starts_at_zero_and_alternates_in_pairs():
    angles = tilt_plan("dose-symmetric", 9, -60, 60)
    step = angles[1]
    assert angles[:5] == [0.0, step, 2 * step, -step, -2 * step]


@pytest.mark.parametrize("n", [6, 9, 20, 21])
def test_dose_symmetric_reaches_both_ends_of_a_symmetric_range(n):
    """A step of the whole range over n - 1 stopped at +-66.3 of +-70 deg (20 tilts), at 48 of 60 (6 tilts)."""
    angles = tilt_plan("dose-symmetric", n, -60.0, 60.0)
    assert min(angles) == pytest.approx(-60.0) and max(angles) == pytest.approx(60.0)
    assert len(set(np.round(angles, 6))) == n and all(isinstance(a, float) for a in angles)


def test_unknown_scheme_is_named():
    with pytest.raises(ValueError, match="unknown tilt scheme"):
        tilt_plan("spiral", 10, -60, 60)


def test_tomo_run_in_process_records_and_scores(tmp_path):
    summary_path, record = tmp_path / "SUMMARY.json", tmp_path / "session"
    argv = ["tomo", "run", "--policy", "golden-ratio", "--tilts", "12", "--size-px", "32", "--phantom-seed", "2"]
    assert main([*argv, "--record", str(record), "--json", str(summary_path)]) == 0
    summary = json.loads(summary_path.read_text())
    assert summary["policy"] == "golden-ratio" and len(summary["angles_deg"]) == 12
    assert summary["decision_ms"]["p50"] is not None
    assert summary["psnr_db"]["sart"] > 15 and 0 < summary["ssim"]["wbp"] <= 1
    session = read_session(record)
    assert len(session.frames) == 12
    assert np.allclose([f.header.tilt_deg for f in session.frames], summary["angles_deg"], atol=1e-4)


def test_tomo_run_refuses_tilts_beyond_the_holder(tmp_path):
    summary_path = tmp_path / "SUMMARY.json"
    argv = ["tomo", "run", "--policy", "sequential", "--tilts", "5", "--size-px", "32", "--range-deg", "-80", "80"]
    assert main([*argv, "--json", str(summary_path)]) == 0
    summary = json.loads(summary_path.read_text())
    assert len(summary["angles_deg"]) == 3 and len(summary["refusals"]) == 2  # -80 and +80 are out of reach
    assert all("tilt_deg" in r for r in summary["refusals"])


def test_tomo_run_over_tcp_against_a_simulated_holder(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "instrument", "--sim", "--tomo", "--size-px", "32", "--phantom-seed", "2",
         "--bind", endpoint],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert "tomography holder" in proc.stdout.readline()
        summary_path = tmp_path / "SUMMARY.json"
        argv = ["tomo", "run", "--instrument", endpoint, "--policy", "dose-symmetric", "--tilts", "9",
                "--probe-current-pa", "20", "--at", "0,0"]  # fmt: skip
        assert main([*argv, "--json", str(summary_path)]) == 0
        summary = json.loads(summary_path.read_text())
        assert summary["angles_deg"][0] == 0.0 and summary["psnr_db"]["wbp"] > 10  # scored from the seed
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


@pytest.mark.skipif(not REAL_SERIES.is_file(), reason="needs ../shared/data/real/etspy/HAADF.dm3")
def test_the_real_tilt_series_reconstructs_to_a_disk(tmp_path):
    out = tmp_path / "vol.npy"
    argv = ["tomo", "reconstruct", str(REAL_SERIES), "--tilt-axis", "cols", "--axis-shift-px", "-2"]
    assert main([*argv, "--out", str(out)]) == 0
    volume = np.load(out)
    assert volume.shape == (64, 64, 64) and (tmp_path / "vol.png").is_file() and (tmp_path / "vol.mrc").is_file()
    plane = volume[:, 32, :]  # the needle's cross-section: a bright disk in the middle of the tilt plane
    centre = plane[24:40, 24:40].mean()
    ring = np.concatenate([plane[:8].ravel(), plane[-8:].ravel()]).mean()
    assert centre > ring + 3 * plane[:8].std()


def test_adaptive_tomo_run_uses_the_bundled_inpainting_ensemble(tmp_path):
    summary_path = tmp_path / "SUMMARY.json"
    argv = ["tomo", "run", "--policy", "adaptive", "--tilts", "8", "--size-px", "64", "--phantom-seed", "1003"]
    assert main([*argv, "--json", str(summary_path)]) == 0
    summary = json.loads(summary_path.read_text())
    angles = summary["angles_deg"]
    assert angles[0] == 0.0 and len(set(angles)) == 8 and all(-70 <= a <= 70 for a in angles)
    assert set(summary["psnr_db"]) == {"wbp", "sart", "inpaint-wbp"}
    assert summary["decision_ms"]["p99"] < 5000


def test_a_recorded_tomography_session_is_not_mistaken_for_a_scan_session(tmp_path, capsys):
    record = tmp_path / "tomo-session"
    assert main(["tomo", "run", "--tilts", "3", "--size-px", "32", "--record", str(record)]) == 0
    assert read_session(record).records[0]["kind"] == "tomography"
    assert main(["replay", str(record), "--quiet"]) == 2
    assert "tomography session" in capsys.readouterr().err


def test_a_tomography_session_replays_strictly_with_zero_divergence(tmp_path):
    record = tmp_path / "tomo"
    argv = ["tomo", "run", "--policy", "adaptive", "--tilts", "5", "--size-px", "32"]
    assert main([*argv, "--record", str(record)]) == 0
    out = tmp_path / "replay.json"
    assert main([*argv[:-2], "--size-px", "32", "--instrument", str(record), "--json", str(out)]) == 0
    replay = json.loads(out.read_text())
    assert replay["divergences"] == [] and replay["replay"]["served"] == 5
    other = ["tomo", "run", "--policy", "sequential", "--tilts", "5", "--instrument", str(record)]
    assert main(other) == 3  # another scheme asks for other tilts: every difference is reported


def test_an_adaptive_run_chooses_within_the_holder_and_a_run_with_no_projection_says_why(tmp_path, capsys):
    summary = tmp_path / "s.json"
    argv = ["tomo", "run", "--tilts", "5", "--size-px", "32"]
    assert main([*argv, "--policy", "adaptive", "--range-deg", "-80", "80", "--json", str(summary)]) == 0
    got = json.loads(summary.read_text())  # it used to propose the same refused angle 4 times and fail
    assert len(got["angles_deg"]) == 5 and got["refusals"] == []
    assert main([*argv, "--policy", "sequential", "--range-deg", "75", "85"]) == 2
    refused = "0 projection(s) acquired, at least 2 are needed (refused: tilt_deg: no value is allowed"
    assert refused in capsys.readouterr().err  # (the holder's range and --range-deg do not overlap)


def test_reconstruct_will_not_overwrite_its_own_input(tmp_path, capsys):
    series = np.random.default_rng(0).random((5, 16, 16)).astype(np.float32)
    np.save(tmp_path / "s.npy", series)
    (tmp_path / "s.rawtlt").write_text("\n".join(str(a) for a in (-40, -20, 0, 20, 40)))
    assert main(["tomo", "reconstruct", str(tmp_path / "s.npy"), "--out", str(tmp_path / "s.mrc")]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert np.array_equal(np.load(tmp_path / "s.npy"), series)


def test_reconstruct_names_each_bad_series_or_option_and_writes_nothing(tmp_path, capsys):
    angles = tmp_path / "a.txt"
    angles.write_text("\n".join(str(a) for a in (-40, -20, 0, 20, 40)))
    good = tmp_path / "good.npy"
    np.save(good, np.random.default_rng(0).random((5, 16, 16)).astype(np.float32))
    bad = {
        "rows0.npy": np.zeros((5, 0, 16), np.float32),
        "narrow.npy": np.zeros((5, 16, 1), np.float32),
        "complex.npy": np.zeros((5, 16, 16), np.complex64),
        "flat.npy": np.zeros((16, 16), np.float32),
    }
    for name, array in bad.items():
        np.save(tmp_path / name, array)
    (tmp_path / "adir").mkdir()
    out = tmp_path / "v" / "vol"
    cases = [
        (["rows0.npy"], "at least 1 row"),
        (["narrow.npy"], "pixels across the tilt axis"),
        (["complex.npy"], "must be real numbers, not complex64"),
        (["flat.npy"], "this holds a 2-D array"),
        (["adir"], "adir is a directory"),
        (["good.npy", "--axis-shift-px", "nan"], "--axis-shift-px nan is not a shift"),
        (["good.npy", "--axis-shift-px", "1e9"], "--axis-shift-px 1e+09 is not a shift"),
        (["good.npy", "--range-deg", "10", "5"], "--range-deg 10 5 keeps 0 of the 5 tilts"),
        (["good.npy", "--range-deg", "-1", "1"], "keeps 1 of the 5 tilts (-40 to 40 deg): at least 2"),
    ]
    for (name, *extra), said in cases:
        argv = ["tomo", "reconstruct", str(tmp_path / name), "--angles", str(angles), "--out", str(out), *extra]
        assert main(argv) == 2, name
        assert said in capsys.readouterr().err
    assert not out.parent.exists()


def test_projection_scans_pass_the_guard_and_the_dose_budget_ends_the_series():
    from agent.guard import Decision, Guard, GuardConfig
    from agent.recorder import SessionRecorder
    from agent.timings import StageTimings
    from agent.tomo import PlannedTilts, acquire_series
    from drivers.simulated_tomo import SimulatedTiltDriver

    driver = SimulatedTiltDriver(phantom_seed=0, size_px=32)
    cap = driver.capabilities()
    side = int(cap.pixels.low)
    one = Guard(cap).frame_dose_e_per_a2(Decision("scan", 0.0, 0.0, cap.fov_nm.low, side, side, 1.0))
    config = GuardConfig(allow_revisits=True, dose_budget_e_per_a2=2.5 * one)
    sent = []
    send = driver.send
    driver.send = lambda command, *rest: sent.append(command.kind) or send(command, *rest)  # type: ignore[method-assign]
    try:
        series = acquire_series(
            driver, PlannedTilts("sequential", 5, (-60.0, 60.0)), 5, SessionRecorder(None), StageTimings(),
            guard_config=config,
        )  # fmt: skip
    finally:
        driver.close()
    assert len(series.projections) == 2
    assert len(series.refusals) == 1 and "dose budget" in series.refusals[0]
    assert sent.count("scan") == 2 and sent.count("set_tilt") == 2  # no tilt without its projection


def test_a_tomo_run_that_cannot_record_closes_its_connection(tmp_path, capsys):
    from drivers.recording import SessionWriter
    from drivers.server import InstrumentServer
    from drivers.simulated_tomo import SimulatedTiltDriver

    SessionWriter(tmp_path / "taken").close()  # --record names a directory that holds a session already
    holder = SimulatedTiltDriver(phantom_seed=0, size_px=32)
    with InstrumentServer(holder, "tcp://127.0.0.1:0", deadman_s=None) as server:
        argv = ["tomo", "run", "--instrument", server.endpoint, "--tilts", "3", "--record", str(tmp_path / "taken"),
                "--probe-current-pa", "20", "--at", "0,0"]  # fmt: skip
        assert main(argv) == 2
        assert "already" in capsys.readouterr().err
        end = time.monotonic() + 3.0
        while server.clients and time.monotonic() < end:  # the client said bye
            time.sleep(0.05)
        assert server.clients == 0
    holder.close()


def test_a_tomo_run_on_a_real_instrument_needs_the_probe_current_its_dose_is_counted_at(capsys):
    argv = ["tomo", "run", "--instrument", "tcp://127.0.0.1:9", "--tilts", "3"]
    assert main(argv) == 2  # refused before any connection is tried
    assert "needs --probe-current-pa" in capsys.readouterr().err
    assert main([*argv, "--probe-current-pa", "-5"]) == 2
    assert "positive" in capsys.readouterr().err
    assert main([*argv, "--probe-current-pa", "20"]) == 2  # nor without the field the projections are scanned at
    assert "needs --at X_NM,Y_NM" in capsys.readouterr().err


def test_every_projection_is_scanned_at_the_field_given_and_one_the_guard_refuses_ends_the_series():
    from agent.recorder import SessionRecorder
    from agent.timings import StageTimings
    from agent.tomo import PlannedTilts, ProjectionField, acquire_series
    from drivers.simulated_tomo import SimulatedTiltDriver

    def series_at(where):
        driver = SimulatedTiltDriver(phantom_seed=0, size_px=32)
        frames = []
        next_frame = driver.next_frame
        driver.next_frame = lambda timeout_s: frames.append(next_frame(timeout_s)) or frames[-1]  # type: ignore
        try:
            tilts = PlannedTilts("sequential", 3, (-30.0, 30.0))
            return acquire_series(driver, tilts, 3, SessionRecorder(None), StageTimings(), where=where), frames
        finally:
            driver.close()

    series, frames = series_at(ProjectionField(0.0, 0.0, dwell_us=2.0))  # the holder's one field, a longer dwell
    assert len(series.projections) == 3 and {f.header.dwell_us for f in frames} == {2.0}
    series, frames = series_at(ProjectionField(3.0, -2.0))  # the 16 nm field reaches past the holder's +-8 nm
    assert not frames and len(series.refusals) == 1 and "beyond the allowed" in series.refusals[0]


def test_the_series_dose_is_counted_at_the_given_current(tmp_path):
    from agent.guard import Decision, Guard, GuardConfig
    from agent.recorder import SessionRecorder
    from agent.timings import StageTimings
    from agent.tomo import PlannedTilts, acquire_series
    from drivers.simulated_tomo import SimulatedTiltDriver

    driver = SimulatedTiltDriver(phantom_seed=0, size_px=32)
    cap = driver.capabilities()
    side = int(cap.pixels.low)
    projection = Decision("scan", 0.0, 0.0, cap.fov_nm.low, side, side, 1.0)
    per_pa = Guard(cap, GuardConfig(probe_current_pa=1.0)).frame_dose_e_per_a2(projection)
    current_pa = 1000.0 / (2.5 * per_pa)  # each projection 40 % of a budget of 1000: two fit (all five at 20 pA)
    args = _Args(instrument="sim", range_deg=(-60.0, 60.0), probe_current_pa=current_pa, dose_budget_e_per_a2=1000.0)
    try:
        series = acquire_series(
            driver, PlannedTilts("sequential", 5, (-60.0, 60.0)), 5, SessionRecorder(None), StageTimings(),
            guard_config=tomo_cli._guard_config(args),
        )  # fmt: skip
    finally:
        driver.close()
    assert len(series.projections) == 2 and "dose budget" in series.refusals[-1]


class _Args:
    def __init__(self, **values) -> None:
        self.__dict__.update(values)


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--members", "0"], "--members: Input should be greater than or equal to 1"),
        (["--phantoms", "1"], "--phantoms: Input should be greater than or equal to 2"),
        (["--size-px", "17"], "size_px (17) must be a multiple of 2**depth (8)"),
    ],
)
def test_tomo_train_names_the_option_it_refuses_in_one_line(tmp_path, capsys, flags, said):
    assert main(["tomo", "train", "--out", str(tmp_path / "t"), *flags]) == 2
    err = capsys.readouterr().err
    assert said in err and "pydantic.dev" not in err and len(err.strip().splitlines()) == 1


def test_a_series_the_dose_budget_cuts_short_says_so_on_the_console_and_in_its_summary(tmp_path, capsys):
    out = tmp_path / "s.json"
    argv = ["tomo", "run", "--tilts", "6", "--size-px", "32", "--dose-budget-e-per-a2", "12", "--json", str(out)]
    assert main(argv) == 0  # the guard did its job: no hold
    err = capsys.readouterr().err
    assert "the series ended after 2 of 6 tilts: dose budget" in err and "1 refused" in err
    summary = json.loads(out.read_text())
    assert summary["ended_early"].startswith("dose budget") and summary["held"] is None


def test_a_strict_replay_takes_the_recorded_scheme_tilts_and_range_unless_told_otherwise(tmp_path, capsys):
    """Without them it replayed with the defaults (dose-symmetric, 20 tilts in +-70): 5 of 6 decisions diverged."""
    record = tmp_path / "tomo"
    argv = ["tomo", "run", "--policy", "sequential", "--tilts", "5", "--range-deg", "-50", "50", "--size-px", "32"]
    assert main([*argv, "--record", str(record)]) == 0
    out = tmp_path / "replay.json"
    assert main(["tomo", "run", "--instrument", str(record), "--json", str(out)]) == 0
    replay = json.loads(out.read_text())
    assert replay["divergences"] == [] and replay["policy"] == "sequential" and len(replay["angles_deg"]) == 5
    assert main(["tomo", "run", "--instrument", str(record), "--policy", "golden-ratio"]) == 3  # told otherwise
    scan = tmp_path / "scan"
    assert main(["run", "--steps", "1", "--record", str(scan), "--quiet", "--policy", "raster"]) == 0
    assert main(["tomo", "run", "--instrument", str(scan)]) == 2
    assert "is a scan session: replay it with autoscope replay" in capsys.readouterr().err
