"""``autoscope instrument``: a simulated server in a subprocess, checked by ``--check`` over loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from agent.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_prints_capabilities_and_a_frame_header(sim_server, capsys):
    endpoint, proc = sim_server
    assert main(["instrument", "--check", endpoint, "--at", "12.5,-3"]) == 0
    out = capsys.readouterr().out
    cap_text, header_text = out.split('{\n  "frame_header"')
    caps = json.loads(cap_text)["capabilities"]
    header = json.loads('{"frame_header"' + header_text)["frame_header"]
    assert caps["instrument"].startswith("simulated STEM") and "scan" in caps["command_kinds"]
    assert header["shape"] == [256, 256] and header["dtype"] == "float32" and header["sequence"] == 0
    assert (header["x_nm"], header["y_nm"], header["fov_nm"], header["dwell_us"]) == (12.5, -3.0, 10.0, 1.0)
    # The server logs every command and stops cleanly on SIGINT, printing its counters.
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "command scan" in err
    assert json.loads(out.strip().splitlines()[-1])["frames"] == 1


def test_check_without_a_server_fails_quickly(capsys):
    t0 = time.monotonic()
    status = main(["instrument", "--check", f"tcp://127.0.0.1:{_free_port()}", "--timeout-s", "1"])
    assert status == 1 and time.monotonic() - t0 < 5
    err = capsys.readouterr().err
    assert "Disconnected" in err and "a server that requires CURVE keys answers no client without them" in err


def test_public_bind_without_keys_is_refused(capsys):
    assert main(["instrument", "--sim", "--bind", "tcp://0.0.0.0:5999"]) == 2
    assert "refusing to bind" in capsys.readouterr().err


def test_make_keys_then_serve_with_curve(tmp_path, capsys):
    assert main(["instrument", "--make-keys", str(tmp_path)]) == 0
    assert (tmp_path / "server.key_secret").exists() and (tmp_path / "clients" / "client.key").exists()
    assert (tmp_path / "server.key_secret").stat().st_mode & 0o077 == 0  # secrets: their owner's alone
    assert (tmp_path / "client.key_secret").stat().st_mode & 0o077 == 0
    before = (tmp_path / "server.key").read_bytes()
    assert main(["instrument", "--make-keys", str(tmp_path)]) == 2  # never over keys clients already hold
    assert "already holds keys" in capsys.readouterr().err and (tmp_path / "server.key").read_bytes() == before
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "instrument",
            "--sim",
            "--bind",
            endpoint,
            "--server-key",
            str(tmp_path / "server.key_secret"),
            "--allow-clients",
            str(tmp_path / "clients"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert "simulated instrument on" in proc.stdout.readline()
        keys = ["--client-key", str(tmp_path / "client.key_secret"), "--server-public", str(tmp_path / "server.key")]
        assert main(["instrument", "--check", endpoint, *keys]) == 0
        assert main(["instrument", "--check", endpoint, "--timeout-s", "1"]) == 1  # no keys: not admitted
    finally:
        proc.kill()
        proc.communicate(timeout=10)  # reaps the process and closes its pipes


def _instrument(*argv: str) -> subprocess.CompletedProcess:
    """``autoscope instrument ...`` in a subprocess (a server that failed to bind leaves its context behind)."""
    cmd = [sys.executable, "-m", "agent.cli", "instrument", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_an_endpoint_that_cannot_be_bound_is_named():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        in_use = f"tcp://127.0.0.1:{held.getsockname()[1]}"
        for endpoint, why in ((in_use, "Address already in use"), ("tcp://127.0.0.1:notaport", "Invalid argument")):
            done = _instrument("--sim", "--bind", endpoint)
            assert done.returncode == 2 and "Traceback" not in done.stderr
            assert f"cannot serve on --bind {endpoint}" in done.stderr and why in done.stderr


def test_missing_or_invalid_key_files_are_named(tmp_path, capsys):
    assert main(["instrument", "--make-keys", str(tmp_path)]) == 0
    capsys.readouterr()
    junk = tmp_path / "junk.key"
    junk.write_text("not a certificate\n")
    server, clients = (
        ["--server-key", str(tmp_path / "server.key_secret")],
        ["--allow-clients", str(tmp_path / "clients")],
    )
    cases = [
        (["--sim", "--server-key", str(tmp_path / "no"), *clients], f"--server-key {tmp_path / 'no'}: no such file"),
        (["--sim", "--server-key", str(junk), *clients], f"--server-key {junk} is not a CURVE certificate"),
        (["--sim", *server, "--allow-clients", str(tmp_path / "nope")], "is not a directory of client public"),
        (["--sim", "--server-key", str(tmp_path / "server.key"), *clients], "holds no secret key"),
        (["--check", "tcp://127.0.0.1:1", "--client-key", str(junk), "--server-public", str(tmp_path / "server.key")],
         f"--client-key {junk} is not a CURVE certificate"),
        (["--check", "tcp://127.0.0.1:1", "--client-key", str(tmp_path), "--server-public", str(junk)],
         f"--client-key {tmp_path}: a directory"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(["instrument", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_a_key_option_without_its_partner_is_refused(tmp_path, capsys):
    assert main(["instrument", "--make-keys", str(tmp_path)]) == 0
    capsys.readouterr()
    cases = [
        (["--sim", "--allow-clients", str(tmp_path / "clients")], "--allow-clients needs --server-key"),
        (["--sim", "--server-key", str(tmp_path / "server.key_secret")], "--server-key needs --allow-clients"),
        (["--check", "tcp://127.0.0.1:1", "--server-public", str(tmp_path / "server.key")],
         "--server-public needs --client-key"),
        (["--check", "tcp://127.0.0.1:1", "--client-key", str(tmp_path / "client.key_secret")],
         "--client-key needs --server-public"),
        (["--sim", "--client-key", str(tmp_path / "client.key_secret")], "--client-key is only for --check"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(["instrument", *argv]) == 2  # nothing is served without the authentication asked for
        assert message in capsys.readouterr().err, argv


def test_check_unblanks_to_scan_and_blanks_again_so_it_can_be_repeated(sim_server, capsys):
    endpoint, proc = sim_server
    at = ["--at", "0,0", "--pixels", "64", "--fov-nm", "4", "--dwell-us", "2"]
    assert main(["instrument", "--check", endpoint, *at]) == 0
    assert main(["instrument", "--check", endpoint, *at]) == 0  # the server blanked the beam when the first one left
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    commands = [
        line.split("command ")[1].split()[0] for line in err.splitlines() if "INFO drivers.server: command" in line
    ]
    assert commands == ["unblank", "scan", "blank"] * 2


def test_check_without_at_prints_the_capabilities_and_sends_nothing(sim_server, capsys):
    """An instrument does not report where it is: the check scans only where the user says (--at)."""
    endpoint, proc = sim_server
    assert main(["instrument", "--check", endpoint]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["capabilities"]["command_kinds"] and "give --at X_NM,Y_NM" in err
    proc.send_signal(signal.SIGINT)
    _, server_log = proc.communicate(timeout=10)
    assert "drivers.server: command" not in server_log  # no unblank, no scan, no blank


def test_check_refuses_a_frame_outside_what_the_instrument_reports(sim_server, capsys):
    endpoint, proc = sim_server
    cases = [
        (["--at", "1e9,0"], "--at x 1e+09 nm is outside"),
        (["--at", "0,-1e9"], "--at y -1e+09 nm is outside"),
        (["--at", "0,0", "--pixels", "1"], "--pixels 1 px is outside"),
        (["--at", "0,0", "--dwell-us", "nan"], "--dwell-us nan us is outside"),
        (["--at", "0,0", "--fov-nm", "1e6"], "--fov-nm 1e+06 nm is outside"),
    ]
    for argv, message in cases:
        assert main(["instrument", "--check", endpoint, *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "nothing was sent" in err, (argv, err)
    proc.send_signal(signal.SIGINT)
    _, server_log = proc.communicate(timeout=10)
    assert "drivers.server: command" not in server_log


def test_frame_options_belong_to_check_at(capsys):
    cases = [
        (["--check", "tcp://127.0.0.1:1", "--pixels", "64"], "--pixels only for --check --at"),
        (["--sim", "--at", "0,0"], "--at only for --check --at"),
    ]
    for argv, message in cases:
        assert main(["instrument", *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv
    for bad in ("1,2,3", "x,1", "inf,0"):
        try:
            main(["instrument", "--check", "tcp://127.0.0.1:1", "--at", bad])
        except SystemExit as exc:  # argparse: usage error
            assert exc.code == 2
        else:
            raise AssertionError(bad)
        assert "--at" in capsys.readouterr().err
