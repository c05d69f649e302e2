"""``autoscope run`` end to end: in-process simulator, a simulated instrument over TCP, signals, bad config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from agent.cli import main
from drivers.recording import read_session

SMALL = "[field]\nfov_nm = 2.56\npixels = 128\n[policies]\nlength_nm = 5.0\n" + (
    "[guard]\nstage_x_nm = { low = -100.0, high = 100.0 }\nstage_y_nm = { low = -100.0, high = 100.0 }\n"
    "fov_nm = { low = 0.5, high = 20.0 }\npixels = { low = 16, high = 1024 }\ndwell_us = { low = 0.1, high = 100.0 }\n"
    "probe_current_pa = 20.0\n"
)  # a real instrument's limits must be configured (tcp runs need them)


@pytest.fixture
def small_config(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text(SMALL)
    return path


def check_summary(summary: dict, steps: int) -> None:
    assert summary["steps"] == steps and len(summary["fields"]) == steps
    assert {"x_nm", "y_nm", "fov_nm"} == set(summary["fields"][0])
    assert summary["atoms_found"] > 50 * steps  # 2.56 nm of MoS2 holds about 150 columns
    assert summary["latency_ms"]["perceive"]["p50"] > 0 and "p99" in summary["latency_ms"]["perceive"]
    assert summary["refusals"] == 0 and summary["travel_nm"] > 0 and summary["dose"]["total_e_per_a2"] > 0
    assert 0 <= summary["true_defects_found"] <= summary["true_defects_in_fields"]


def test_run_against_the_in_process_simulator(tmp_path, small_config, capsys):
    record, summary_path = tmp_path / "session", tmp_path / "SUMMARY.json"
    argv = ["run", "--instrument", "sim", "--policy", "defects", "--steps", "3", "--config", str(small_config)]
    assert main([*argv, "--record", str(record), "--json", str(summary_path), "--quiet"]) == 0
    summary = json.loads(summary_path.read_text())
    check_summary(summary, 3)
    assert summary["latency_ms"]["total"]["n"] == 2  # frame to next command, for an adaptive policy
    assert json.loads((record / "SUMMARY.json").read_text()) == summary
    session = read_session(record)
    assert session.complete and len(session.frames) == 3
    start = session.records[0]
    assert start["type"] == "start" and start["config"]["policy"] == "defects" and len(start["model"]["sha256"]) == 64
    assert "numpy" in start["versions"] and start["capabilities"]["instrument"].startswith("simulated")
    assert "defects:" in capsys.readouterr().err


def test_run_against_a_simulated_instrument_over_tcp(sim_server, tmp_path, small_config):
    endpoint, _ = sim_server
    summary_path = tmp_path / "SUMMARY.json"
    argv = ["run", "--instrument", endpoint, "--policy", "bayes", "--steps", "4", "--config", str(small_config)]
    assert main([*argv, "--json", str(summary_path), "--quiet"]) == 0
    summary = json.loads(summary_path.read_text())
    check_summary(summary, 4)
    assert summary["policy"] == "bayes" and summary["status"] == "completed"


def test_given_field_centres_are_the_candidates_and_one_outside_the_region_is_refused(tmp_path, capsys):
    config = tmp_path / "centres.toml"
    config.write_text(
        SMALL.replace("[policies]\n", "[policies]\ncentres_nm = [[4.0, 2.0], [-3.0, 1.0], [0.0, -5.0]]\n")
    )
    summary = tmp_path / "SUMMARY.json"
    argv = ["run", "--policy", "raster", "--steps", "3", "--config", str(config), "--quiet"]
    assert main([*argv, "--json", str(summary)]) == 0
    fields = {(f["x_nm"], f["y_nm"]) for f in json.loads(summary.read_text())["fields"]}
    assert fields == {(4.0, 2.0), (-3.0, 1.0), (0.0, -5.0)}
    config.write_text(SMALL.replace("[policies]\n", "[policies]\ncentres_nm = [[4.0, 2.0], [500.0, 0.0]]\n"))
    assert main(argv) == 2
    assert "field centres [(500.0, 0.0)] lie outside the region" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("field", "said"),
    [("dwell_us = 1e300", "dwell_us=1e+300 is outside the allowed"), ("pixels = 4000", "frame dose")],
)
def test_a_field_no_scan_may_take_is_refused_at_the_start_not_step_after_step(tmp_path, capsys, field, said):
    config = tmp_path / "f.toml"
    config.write_text(f"steps = 2\n[field]\nfov_nm = 2.0\n{field}\n")
    assert main(["run", "--config", str(config), "--quiet", "--record", str(tmp_path / "s")]) == 2
    assert f"the configured [field] cannot be scanned here: {said}" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_bad_configuration_exits_2_naming_the_key(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[field]\npixls = 128\n")
    assert main(["run", "--config", str(path), "--steps", "1"]) == 2
    assert "unknown key 'field.pixls'" in capsys.readouterr().err


def test_bad_reward_expression_exits_2(capsys):
    assert main(["run", "--reward", "n_defects + os.system", "--steps", "1", "--quiet"]) == 2
    assert "not allowed" in capsys.readouterr().err


def _wait_for_frames(record, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (record / "session.log").exists() and len(read_session(record).frames) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"no {n} frames recorded within {timeout_s} s")


@pytest.mark.parametrize("instrument_alive", [True, False])
def test_sigterm_blanks_the_beam_and_stops_within_5_s(sim_server, tmp_path, small_config, instrument_alive):
    endpoint, server = sim_server
    record = tmp_path / "session"
    run = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--instrument", endpoint, "--policy", "raster", "--steps", "100000",
         "--config", str(small_config), "--record", str(record), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        _wait_for_frames(record, 2, timeout_s=60)
        if not instrument_alive:
            server.kill()
            server.communicate(timeout=10)
        t0 = time.monotonic()
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        if run.poll() is None:
            run.kill()
    assert elapsed < 5.0 and run.returncode == 130, err
    stop = [r for r in read_session(record).records if r["type"] == "stop"][-1]
    assert stop["status"] == "interrupted" and "SIGTERM" in stop["reason"]
    assert stop["beam_blanked"] is instrument_alive
    assert ("NOT confirmed blanked" in err) is not instrument_alive  # (the operator is told)


def test_the_baseline_policies_run_without_importing_torch(small_config):
    code = (
        "import sys; from agent.cli import main; "
        f"status = main(['run', '--policy', 'raster', '--steps', '1', '--config', {str(small_config)!r}, '--quiet']); "
        "print(status, 'torch' in sys.modules, 'gpytorch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.split() == ["0", "False", "False"]


def _listener():
    """A plain TCP listener standing in for an instrument: did anyone connect?"""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.settimeout(0.5)
    return sock, f"tcp://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    ("guard", "message"),
    [
        ("", "missing: guard.stage_x_nm, guard.stage_y_nm, guard.fov_nm, guard.pixels, guard.dwell_us"),
        ("[guard]\nstage_x_nm = { low = -10.0, high = 10.0 }\n", "missing: guard.stage_y_nm, guard.fov_nm"),
        (SMALL.split("[guard]\n")[1].replace("low = -100.0, high = 100.0", "low = 5.0, high = -5.0", 1), "stage_x_nm"),
    ],
)
def test_a_config_without_sane_limits_refuses_to_start_without_touching_the_instrument(
    tmp_path, capsys, guard, message
):
    config = tmp_path / "limits.toml"
    config.write_text(
        "[field]\nfov_nm = 2.56\npixels = 128\n" + ("[guard]\n" if guard and "[guard]" not in guard else "") + guard
    )
    sock, endpoint = _listener()
    try:
        assert main(["run", "--instrument", endpoint, "--steps", "2", "--config", str(config), "--quiet"]) == 2
        with pytest.raises(TimeoutError):
            sock.accept()  # nobody ever connected
    finally:
        sock.close()
    err = capsys.readouterr().err
    assert message in err and ("low (5.0) must not exceed high (-5.0)" in err or "missing" in message)


def test_limits_wider_than_the_instruments_refuse_before_any_command(tmp_path, capsys):
    from drivers.memory import InMemoryDriver
    from drivers.server import InstrumentServer

    config = tmp_path / "wide.toml"
    config.write_text(
        SMALL.replace("stage_x_nm = { low = -100.0, high = 100.0 }", "stage_x_nm = { low = -5000.0, high = 100.0 }")
    )
    driver = InMemoryDriver()  # its stage reaches +-1000 nm
    with InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.2) as server:
        assert main(["run", "--instrument", server.endpoint, "--steps", "2", "--config", str(config), "--quiet"]) == 2
        assert driver.commands == []  # (the server's own blank when it stops comes after)
    assert "guard.stage_x_nm [-5000, 100] is wider than the instrument's [-1000, 1000]" in capsys.readouterr().err


def test_a_second_signal_does_not_break_off_the_safe_shutdown(capsys):
    import os
    import signal
    import time

    from agent.cli.run import signals_interrupt
    from agent.run_state import Interrupted

    with signals_interrupt():
        with pytest.raises(Interrupted, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        os.kill(os.getpid(), signal.SIGINT)  # while the loop shuts down: must not raise
        time.sleep(0.05)
    assert "already stopping" in capsys.readouterr().err


def test_dkl_on_a_region_small_enough_that_its_survey_is_segmented_still_learns_from_it(tmp_path):
    """A 20 nm region's 512 px survey is sampled finer than perception's limit: it is segmented, and is still the
    survey (dkl used to wait for an image it never got and stop as "exhausted" after one frame, exit 0)."""
    config = tmp_path / "dkl_small.toml"
    config.write_text(
        "region_x_nm = { low = -10.0, high = 10.0 }\nregion_y_nm = { low = -10.0, high = 10.0 }\n"
        "[field]\nfov_nm = 2.56\npixels = 64\n[policies]\nsurvey_pixels = 512\ninitial_fields = 2\n"
    )
    summary = tmp_path / "s.json"
    argv = ["run", "--policy", "dkl", "--steps", "4", "--config", str(config), "--quiet", "--json", str(summary)]
    assert main(argv) == 0
    assert json.loads(summary.read_text())["steps"] == 4


@pytest.mark.parametrize("kind", ["directory", "parent is a file"])
def test_a_json_path_that_cannot_be_written_is_refused_before_the_run(tmp_path, small_config, capsys, kind):
    (tmp_path / "afile").write_text("x")
    json_path = tmp_path if kind == "directory" else tmp_path / "afile" / "SUMMARY.json"
    record = tmp_path / "session"
    argv = ["run", "--steps", "1", "--config", str(small_config), "--record", str(record), "--quiet"]
    assert main([*argv, "--json", str(json_path)]) == 2
    err = capsys.readouterr().err
    assert f"--json {json_path}" in err and "Traceback" not in err
    assert not record.exists()  # refused before the run: nothing was acquired, nothing is lost


@pytest.fixture
def curve_server(tmp_path):
    """A simulated instrument behind CURVE on loopback: yields (endpoint, client key arguments)."""
    from drivers.security import load_server_keys
    from drivers.server import InstrumentServer
    from drivers.simulated import SimulatedDriver

    keys = tmp_path / "keys"
    assert main(["instrument", "--make-keys", str(keys)]) == 0
    curve = load_server_keys(keys / "server.key_secret", keys / "clients")
    client = ["--client-key", str(keys / "client.key_secret"), "--server-public", str(keys / "server.key")]
    driver = SimulatedDriver(specimen_seed=3)
    with InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.2, curve=curve) as server:
        yield server.endpoint, client
    driver.close()


def test_run_reaches_a_curve_server_with_client_keys_and_says_why_it_cannot_without(
    curve_server, tmp_path, small_config, capsys
):
    endpoint, client = curve_server
    argv = ["run", "--instrument", endpoint, "--policy", "raster", "--steps", "1", "--config", str(small_config)]
    summary_path = tmp_path / "SUMMARY.json"
    assert main([*argv, *client, "--json", str(summary_path), "--quiet"]) == 0
    assert json.loads(summary_path.read_text())["steps"] == 1
    capsys.readouterr()
    assert main([*argv, client[0], client[1], "--quiet"]) == 2  # one key without the other
    assert "--client-key needs --server-public" in capsys.readouterr().err
    assert main([*argv, "--quiet"]) == 1  # not admitted without keys
    err = capsys.readouterr().err
    assert "Disconnected" in err and "(--client-key, --server-public)" in err and "Traceback" not in err


def test_tomo_run_takes_client_keys_for_a_tcp_instrument_only(tmp_path, capsys):
    assert main(["instrument", "--make-keys", str(tmp_path)]) == 0
    client = ["--client-key", str(tmp_path / "client.key_secret"), "--server-public", str(tmp_path / "server.key")]
    capsys.readouterr()
    assert main(["tomo", "run", "--instrument", "sim", *client]) == 2
    assert "are for a tcp:// instrument" in capsys.readouterr().err
    tcp = ["--instrument", "tcp://127.0.0.1:1", "--probe-current-pa", "20", "--at", "0,0"]
    assert main(["tomo", "run", *tcp, *client[2:]]) == 2
    assert "--server-public needs --client-key" in capsys.readouterr().err


def _interrupt_after_frames(argv: list[str], record, n: int = 2) -> tuple[int, str]:
    """Run ``autoscope ARGV`` recording into ``record``; SIGINT once ``n`` frames are recorded."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        _wait_for_frames(record, n, timeout_s=60)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


def test_an_interrupted_replay_exits_130_and_reports_no_decision_it_never_reached(tmp_path, small_config):
    """It exited 3, with the recorded decisions after the interruption reported as divergences."""
    recorded = tmp_path / "recorded"
    assert main(["run", "--policy", "raster", "--steps", "6", "--config", str(small_config), "--record", str(recorded),
                 "--quiet"]) == 0  # fmt: skip
    out, replayed = tmp_path / "replay.json", tmp_path / "replayed"
    argv = ["replay", str(recorded), "--speed", "0.01", "--quiet", "--json", str(out), "--record", str(replayed)]
    code, err = _interrupt_after_frames(argv, replayed)
    report = json.loads(out.read_text())
    assert code == 130 and report["status"] == "interrupted", err
    assert report["divergences"] == [] and 0 < report["recorded_decisions"] < 6


def test_an_interrupted_tilt_series_exits_130_with_a_stop_record(tmp_path):
    record = tmp_path / "tomo"
    code, err = _interrupt_after_frames(["tomo", "run", "--tilts", "500", "--size-px", "32", "--record", str(record)],
                                        record)  # fmt: skip
    assert code == 130, err
    stop = read_session(record).records[-1]
    assert stop["type"] == "stop" and stop["status"] == "interrupted" and "SIGINT" in stop["reason"]
