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
    assert main(["instrument", "--check", endpoint]) == 0
    out = capsys.readouterr().out
    cap_text, header_text = out.split('{\n  "frame_header"')
    caps = json.loads(cap_text)["capabilities"]
    header = json.loads('{"frame_header"' + header_text)["frame_header"]
    assert caps["instrument"].startswith("simulated STEM") and "scan" in caps["command_kinds"]
    assert header["shape"] == [256, 256] and header["dtype"] == "float32" and header["sequence"] == 0
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
    assert "Disconnected" in capsys.readouterr().err


def test_public_bind_without_keys_is_refused(capsys):
    assert main(["instrument", "--sim", "--bind", "tcp://0.0.0.0:5999"]) == 2
    assert "refusing to bind" in capsys.readouterr().err


def test_make_keys_then_serve_with_curve(tmp_path, capsys):
    assert main(["instrument", "--make-keys", str(tmp_path)]) == 0
    assert (tmp_path / "server.key_secret").exists() and (tmp_path / "clients" / "client.key").exists()
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
