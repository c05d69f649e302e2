"""The CLI on bad input: each problem named in one line (exit 2), nothing half-written, no traceback.

Also the life of a ``watch`` session: a start and a stop record, also when it is ended by Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import zmq

from agent.cli import EXIT_USAGE, main
from drivers.base import Frame
from drivers.codec import encode_frame
from drivers.recording import read_session
from drivers.security import CurveServerKeys, apply_server_keys, start_authenticator
from simulators import SimulatedFrame

POSITIONS = "image,x_nm,y_nm,pixel_size_nm\n"


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# -- sessions import -------------------------------------------------------------------------------
def _import(tmp_path, images, csv_text: str | None = None, positions=None) -> int:
    """``sessions import`` of ``images`` (file names in tmp_path, or paths) into tmp_path/s."""
    if positions is None:
        positions = tmp_path / "pos.csv"
        positions.write_bytes(csv_text.encode("utf-8") if isinstance(csv_text, str) else csv_text)
    paths = [str(tmp_path / i) if isinstance(i, str) else str(i) for i in images]
    return main(["sessions", "import", *paths, "--positions", str(positions), "--out", str(tmp_path / "s")])


@pytest.fixture
def image(tmp_path):
    """A 64 x 64 image a.npy in tmp_path."""
    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((64, 64), dtype=np.float32))
    return tmp_path / "a.npy"


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_import_names_a_positions_file_it_cannot_read(tmp_path, image, capsys, kind):
    positions = tmp_path / "pos.csv"
    if kind == "directory":
        positions.mkdir()
    assert _import(tmp_path, ["a.npy"], positions=positions) == EXIT_USAGE
    assert f"cannot read the positions CSV {positions}" in _error(capsys)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        (POSITIONS + "a.npy,,0,0.02\n", "pos.csv line 2 (a.npy): x_nm is empty"),
        (POSITIONS + "a.npy,0, ,0.02\n", "pos.csv line 2 (a.npy): y_nm is empty"),
        ("x_nm,y_nm,image\n0,0\n", "pos.csv line 2: the row has no cell for image"),
        (POSITIONS + "a.npy,0\n", "pos.csv line 2: the row has no cell for y_nm, pixel_size_nm"),
        (POSITIONS + "a.npy,0,0,0.02,9\n", "pos.csv line 2: the row has more cells"),
        (POSITIONS + "a.npy,0,0,-0.02\n", "pixel_size_nm=-0.02 must be positive"),
        (POSITIONS + "a.npy,0,0,0\n", "pixel_size_nm=0 must be positive"),
        (POSITIONS + "a.npy,0,0,1e308\n", "pos.csv line 2 (a.npy): the CSV's pixel size 1e+308 nm is outside"),
        ("image,x_nm,y_nm,x_nm\na.npy,0,0,5\n", "pos.csv: the columns x_nm appear more than once"),
    ],
)
def test_import_names_the_line_and_the_cell_at_fault(tmp_path, image, capsys, csv_text, message):
    assert _import(tmp_path, ["a.npy"], csv_text) == EXIT_USAGE
    assert message in _error(capsys)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros(64, np.float32), "must be 2-D (rows, cols), got shape (64,)"),
        (np.zeros((3, 64, 64), np.float32), "must be 2-D (rows, cols), got shape (3, 64, 64)"),
        (np.where(np.eye(64) > 0, np.nan, 1.0).astype(np.float32), "64 NaN or Inf pixels"),
        (np.zeros((64, 4), np.float32), "at least 16 x 16 pixels"),
    ],
)
def test_import_refuses_an_image_that_is_not_a_finite_2d_frame(tmp_path, capsys, array, message):
    np.save(tmp_path / "bad.npy", array)
    assert _import(tmp_path, ["bad.npy"], POSITIONS + "bad.npy,0,0,0.02\n") == EXIT_USAGE
    err = _error(capsys)
    assert "bad.npy: image" in err and message in err
    assert not (tmp_path / "s").exists()


def test_import_refuses_two_images_of_one_name_and_one_image_twice(tmp_path, image, capsys):
    (tmp_path / "d").mkdir()
    np.save(tmp_path / "d" / "a.npy", np.ones((64, 64), np.float32))
    csv_text = POSITIONS + "a.npy,0,0,0.02\n"
    assert _import(tmp_path, ["a.npy", tmp_path / "d" / "a.npy"], csv_text) == EXIT_USAGE
    assert "a.npy is given 2 times" in _error(capsys)
    assert _import(tmp_path, ["a.npy", "a.npy"], csv_text) == EXIT_USAGE
    assert "a.npy is given 2 times" in _error(capsys)
    assert not (tmp_path / "s").exists()


def test_import_reads_a_csv_with_a_byte_order_mark(tmp_path, image):
    assert _import(tmp_path, ["a.npy"], b"\xef\xbb\xbf" + (POSITIONS + "a.npy,1.5,0,0.02\r\n").encode()) == 0
    assert [f.header.x_nm for f in read_session(tmp_path / "s").frames] == [1.5]


@pytest.mark.parametrize(
    ("dtype", "offset", "recorded"),
    [
        ("uint32", 2**31, "float64"), ("uint64", 7, "int32"), ("int8", -100, "int32"), ("float16", 0.5, "float32"),
        (">u2", 7, "uint16"), (">f4", 0.5, "float32"),  # big-endian files (an MRC written so): refused by the header
    ],
)  # fmt: skip
def test_import_keeps_every_recorded_value_of_any_pixel_type(tmp_path, dtype, offset, recorded):
    """A uint32 detector frame offset by 2**31 with tens of counts of contrast became one constant in float32."""
    counts = np.random.default_rng(1).integers(0, 60, (64, 64))
    original = (counts.astype(dtype) + np.asarray(offset, dtype=dtype)).astype(dtype)
    np.save(tmp_path / "w.npy", original)
    assert _import(tmp_path, ["w.npy"], POSITIONS + "w.npy,0,0,0.02\n") == 0
    frame = read_session(tmp_path / "s").frames[0]
    assert frame.image.dtype == np.dtype(recorded) and np.array_equal(frame.image, original)
    assert np.ptp(frame.image) == np.ptp(original.astype(np.float64))


# -- files that cannot be read or written: OSError, ZeroMQ errors, Ctrl-C -----------------------------
def test_an_os_error_is_one_line_naming_the_path(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["simulate", "demo", "--out", str(tmp_path / "afile")]) == EXIT_USAGE
    assert f"error: {tmp_path / 'afile'}: File exists" in _error(capsys)


def test_ctrl_c_exits_130_without_a_traceback():
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as silent:  # a port nobody answers on
        port = silent.bind_to_random_port("tcp://127.0.0.1")
        argv = ["instrument", "--check", f"tcp://127.0.0.1:{port}", "--timeout-s", "30"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=_sigint_as_at_a_terminal,
        )  # fmt: skip
        silent.poll(10_000)  # the client's hello: it is waiting for the welcome now
        _, err = _interrupt(proc)
    assert proc.returncode == 130 and "Traceback" not in err and "interrupted" in err


# -- report and simulate outputs ------------------------------------------------------------------
def test_report_of_a_log_file_goes_beside_it_and_a_directory_out_is_refused(tmp_path, image, capsys):
    assert _import(tmp_path, ["a.npy"], POSITIONS + "a.npy,0,0,0.02\n") == 0
    assert main(["report", str(tmp_path / "s" / "session.log")]) == 0
    assert (tmp_path / "s" / "report.html").read_text().startswith("<!doctype html>")
    assert main(["report", str(tmp_path / "s"), "--out", str(tmp_path)]) == EXIT_USAGE
    assert f"--out {tmp_path} is a directory" in _error(capsys)


def test_no_output_overwrites_the_session_log_it_reads_or_records(tmp_path, image, capsys):
    """report --out, replay --json and run --json naming a session log are refused before any work."""
    assert _import(tmp_path, ["a.npy"], POSITIONS + "a.npy,0,0,0.02\n") == 0
    log = tmp_path / "s" / "session.log"
    before = log.read_bytes()
    os.link(log, tmp_path / "linked.log")
    attempts = [
        ["report", str(tmp_path / "s"), "--out", str(log)],
        ["report", str(log), "--out", str(tmp_path / "linked.log")],
        ["replay", str(tmp_path / "s"), "--quiet", "--json", str(log)],
        ["run", "--steps", "1", "--record", str(tmp_path / "r"), "--json", str(tmp_path / "r" / "session.log")],
    ]
    for argv in attempts:
        assert main(argv) == EXIT_USAGE, argv
        assert "would overwrite" in _error(capsys)
    assert log.read_bytes() == before and not (tmp_path / "r").exists()
    # the logs a command records: replay --record's own, a record directory named like a log, the chain's next
    (tmp_path / "r.2").mkdir()
    (tmp_path / "r.2" / "session.log").write_bytes(before)
    recording = [
        [
            "replay",
            str(tmp_path / "s"),
            "--quiet",
            "--record",
            str(tmp_path / "rr"),
            "--json",
            str(tmp_path / "rr" / "session.log"),
        ],
        ["run", "--steps", "1", "--record", str(tmp_path / "x.log"), "--json", str(tmp_path / "x.log" / "session.log")],
        ["run", "--steps", "1", "--record", str(tmp_path / "r"), "--json", str(tmp_path / "r.3" / "session.log")],
    ]
    for argv in recording:
        assert main(argv) == EXIT_USAGE, argv
        assert "would overwrite" in _error(capsys)
    assert main(["replay", str(tmp_path / "s"), "--quiet", "--json", str(tmp_path)]) == EXIT_USAGE
    assert f"--json {tmp_path} is a directory" in _error(capsys)  # (refused before the replay, not after it)


def test_a_start_record_whose_configuration_is_not_a_table_is_named(tmp_path, capsys):
    from drivers.recording import SessionWriter

    with SessionWriter(tmp_path / "s") as w:
        w.write({"type": "start", "config": [1, 2]})
        w.write_frame(Frame.of(np.ones((32, 32), np.float32), 0.02, sequence=0))
    assert main(["replay", str(tmp_path / "s"), "--quiet"]) == EXIT_USAGE
    assert "the start record's configuration is not a table: [1, 2]" in _error(capsys)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["instrument", "--check", "tcp://127.0.0.1:1", "--timeout-s", "1e300"], "at most 86400 s"),
        (["instrument", "--check", "tcp://127.0.0.1:1", "--timeout-s", "nan"], "at most 86400 s"),
        (["replay", "{session}", "--quiet", "--speed", "1e-320"], "a factor from 0.001 to 1e+06"),
        (["replay", "{session}", "--quiet", "--speed", "inf"], "a factor from 0.001 to 1e+06"),
    ],
)
def test_absurd_timeouts_and_speeds_are_named_not_overflows(tmp_path, image, capsys, argv, said):
    assert _import(tmp_path, ["a.npy"], POSITIONS + "a.npy,0,0,0.02\n") == 0
    try:
        code = main([a.replace("{session}", str(tmp_path / "s")) for a in argv])
    except SystemExit as exc:  # (argparse's own refusal of an option's value)
        code = exc.code
    assert code == EXIT_USAGE and said in _error(capsys)


@pytest.mark.parametrize("pixel_size_nm", ["1e300", "1e-11"])
def test_import_refuses_a_pixel_size_no_frame_has(tmp_path, image, capsys, pixel_size_nm):
    assert _import(tmp_path, ["a.npy"], POSITIONS + f"a.npy,0,0,{pixel_size_nm}\n") == EXIT_USAGE
    assert "is outside 1e-05 to 10000 nm" in _error(capsys) and not (tmp_path / "s").exists()


def test_a_recording_without_frames_is_not_served_as_an_instrument(tmp_path, capsys):
    from drivers.recording import SessionWriter

    with SessionWriter(tmp_path / "s") as w:
        w.write({"type": "start", "config": {}})
    assert main(["instrument", "--replay", str(tmp_path / "s"), "--bind", "tcp://127.0.0.1:0"]) == EXIT_USAGE
    assert "holds no recorded frames to serve" in _error(capsys)


def test_a_signal_before_the_replay_loop_starts_exits_130_without_a_traceback(tmp_path, image, monkeypatch, capsys):
    """Reading a large log or loading the model happens under the signal handler too: Interrupted is no crash."""
    import agent.replay
    from agent.run_state import Interrupted

    assert _import(tmp_path, ["a.npy"], POSITIONS + "a.npy,0,0,0.02\n") == 0

    def interrupted(*args, **kwargs):
        raise Interrupted("stopped by SIGINT")

    monkeypatch.setattr(agent.replay, "ReplayDriver", interrupted)
    assert main(["replay", str(tmp_path / "s"), "--quiet"]) == 130
    assert "interrupted" in _error(capsys)


STEM = ["simulate", "stem", "--pixels", "32", "--fov-nm", "2", "--specimen-size-nm", "32"]


def test_simulate_adds_the_npz_suffix_and_reports_the_file_it_wrote(tmp_path, capsys):
    assert main([*STEM, "--out", str(tmp_path / "frame")]) == 0
    assert json.loads(capsys.readouterr().out)["file"] == str(tmp_path / "frame.npz")
    assert SimulatedFrame.load_npz(tmp_path / "frame.npz").image.shape == (32, 32)


@pytest.mark.parametrize(
    ("out", "png", "message"),
    [
        ("outdir", None, "--out {tmp}/outdir is a directory"),
        ("afile/f.npz", None, "--out {tmp}/afile/f.npz: {tmp}/afile is a file, not a directory"),
        ("f.npz", "f.xyz", "--png {tmp}/f.xyz: the picture is a PNG image; give a name ending in .png"),
    ],
)
def test_simulate_refuses_an_output_it_cannot_write_before_writing_anything(tmp_path, capsys, out, png, message):
    (tmp_path / "outdir").mkdir()
    (tmp_path / "afile").write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    extra = [] if png is None else ["--png", str(tmp_path / png)]
    assert main([*STEM, "--out", str(tmp_path / out), *extra]) == EXIT_USAGE
    assert message.format(tmp=tmp_path) in _error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# -- watch -------------------------------------------------------------------------------------------
@contextmanager
def frame_stream(curve: CurveServerKeys | None = None, rate_hz: float = 20.0) -> Iterator[str]:
    """A PUB endpoint streaming 64 x 64 frames (0.02 nm per pixel) as an instrument server's ``--pub``."""
    ctx = zmq.Context()
    auth = start_authenticator(ctx, curve) if curve is not None else None
    sock = ctx.socket(zmq.PUB)
    sock.linger = 0
    if curve is not None:
        apply_server_keys(sock, curve)
    sock.bind("tcp://127.0.0.1:0")
    stop = threading.Event()

    def publish() -> None:
        rng, seq = np.random.default_rng(0), 0
        while not stop.wait(1.0 / rate_hz):
            image = rng.random((64, 64), dtype=np.float32)
            frame = Frame.of(image, 0.02, sequence=seq, x_nm=float(seq % 5), command_id=f"c{seq}")
            sock.send_multipart([b"frame", *encode_frame(frame, seq)], copy=False)
            seq += 1

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        yield sock.getsockopt_string(zmq.LAST_ENDPOINT)
    finally:
        stop.set()
        thread.join(5.0)
        sock.close()
        if auth is not None:
            auth.stop()
        ctx.term()


WATCH = ["watch", "--fov-nm", "1.28", "--pixels", "64", "--providers", "cpu"]


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--duration-s", "nan"), ("--duration-s", "0"), ("--fov-nm", "inf"), ("--pixels", "-5"),
     ("--max-frame-age-s", "0")],
)  # fmt: skip
def test_watch_refuses_a_number_that_is_not_finite_and_positive(tmp_path, capsys, flag, value):
    argv = ["watch", "--frames", "tcp://127.0.0.1:1", "--duration-s", "1", "--record", str(tmp_path / "w")]
    assert main([*argv, flag, value]) == EXIT_USAGE
    assert f"{flag} must be a finite positive number" in _error(capsys)
    assert not (tmp_path / "w").exists()


def test_watch_of_a_bad_endpoint_is_named_and_leaves_no_session_behind(tmp_path):
    # (a subprocess: the subscriber that failed to connect leaves its ZeroMQ context to the garbage collector)
    argv = [*WATCH, "--frames", "tcp://127.0.0.1:notaport", "--duration-s", "1", "--record", str(tmp_path / "w")]
    done = subprocess.run([sys.executable, "-m", "agent.cli", *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_USAGE and "Traceback" not in done.stderr
    assert "tcp://127.0.0.1:notaport" in done.stderr and "Invalid argument" in done.stderr
    assert not (tmp_path / "w").exists()  # the directory can be used by the next watch


def test_a_finished_watch_session_has_start_and_stop_records_and_is_not_taken_for_a_cut_one(tmp_path, capsys):
    record = tmp_path / "w"
    with frame_stream() as endpoint:
        assert main([*WATCH, "--frames", endpoint, "--duration-s", "1.5", "--record", str(record)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    records = read_session(record).records
    start, stop = records[0], next(r for r in records if r["type"] == "stop")
    assert start["type"] == "start" and start["kind"] == "watch" and start["frames"] == endpoint
    assert start["config"]["policy"] == "defects" and len(start["model"]["sha256"]) == 64
    assert stop["status"] == "completed" and stop["counters"] == summary and summary["analysed"] > 0
    assert records[-1]["type"] == "watch_stop"
    assert main(["sessions", "inspect", str(record)]) == 0
    assert "stop: status completed, watched for 1.5 s" in capsys.readouterr().out
    assert main(["report", str(record)]) == 0
    assert "cut short" not in (record / "report.html").read_text()
    assert main(["run", "--steps", "1", "--record", str(record), "--quiet"]) == EXIT_USAGE  # closed: never reused
    assert "already holds a finished session" in _error(capsys)
    assert not (record / "UNCLOSED.json").exists()


def test_ctrl_c_ends_a_watch_with_its_summary_and_a_stop_record(tmp_path):
    record = tmp_path / "w"
    with frame_stream() as endpoint:
        argv = [*WATCH, "--frames", endpoint, "--duration-s", "60", "--record", str(record)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=_sigint_as_at_a_terminal,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while not _has(record, "observation") and time.monotonic() < deadline:
                time.sleep(0.1)
            out, err = _interrupt(proc)
        finally:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["analysed"] > 0
    stop = next(r for r in read_session(record).records if r["type"] == "stop")
    assert stop["status"] == "interrupted" and stop["counters"] == summary


def _interrupt(proc: subprocess.Popen) -> tuple[str, str]:
    """Ctrl-C ``proc`` and collect its output."""
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=20)


def _sigint_as_at_a_terminal() -> None:
    """In the child before exec: SIGINT at its default action, as at a terminal.

    A shell starts a background job with SIGINT ignored (POSIX), pytest's children inherit that, and a
    Python started with SIGINT ignored keeps ignoring it: a suite run in the background would see these
    processes ignore the Ctrl-C under test.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _has(record, record_type: str) -> bool:
    return (record / "session.log").exists() and any(r["type"] == record_type for r in read_session(record).records)


def test_watch_reads_a_curve_protected_stream_with_client_keys(tmp_path, capsys):
    from drivers.security import load_server_keys

    assert main(["instrument", "--make-keys", str(tmp_path / "keys")]) == 0
    keys = tmp_path / "keys"
    curve = load_server_keys(keys / "server.key_secret", keys / "clients")
    client = ["--client-key", str(keys / "client.key_secret"), "--server-public", str(keys / "server.key")]
    capsys.readouterr()
    with frame_stream(curve) as endpoint:
        assert main([*WATCH, "--frames", endpoint, "--duration-s", "1.5", *client]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["analysed"] > 0
        assert main([*WATCH, "--frames", endpoint, "--duration-s", "1", client[0], client[1]]) == EXIT_USAGE
        assert "--client-key needs --server-public" in _error(capsys)


def test_watch_says_why_no_frame_came_a_refused_key_at_once(tmp_path, capsys):
    """It printed received 0 and exited 0, whatever kept the frames away."""
    from drivers.security import load_server_keys

    for d in ("keys", "other"):
        assert main(["instrument", "--make-keys", str(tmp_path / d)]) == 0
    keys, other = tmp_path / "keys", tmp_path / "other"
    curve = load_server_keys(keys / "server.key_secret", keys / "clients")
    stranger = ["--client-key", str(other / "client.key_secret"), "--server-public", str(keys / "server.key")]
    capsys.readouterr()
    with frame_stream(curve) as endpoint:
        t0 = time.monotonic()
        assert main([*WATCH, "--frames", endpoint, "--duration-s", "20", *stranger]) == 1
        assert time.monotonic() - t0 < 10 and "refused this client's CURVE keys" in _error(capsys)
        assert main([*WATCH, "--frames", endpoint, "--duration-s", "1.5"]) == 0  # no keys at all
        err = _error(capsys)
        assert "no frame received from" in err and "the handshake with the server failed" in err
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as sock:
        port = sock.bind_to_random_port("tcp://127.0.0.1")
    assert main([*WATCH, "--frames", f"tcp://127.0.0.1:{port}", "--duration-s", "1"]) == 0
    assert "no connection was made (nothing listening there?)" in _error(capsys)
