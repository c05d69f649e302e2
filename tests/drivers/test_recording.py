"""The session log: round trips, and the valid prefix of a file cut at any byte."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import Frame
from drivers.recording import LOG_NAME, MAGIC, RecordingError, SessionWriter, read_session


def _frame(seq: int, rows: int = 6, cols: int = 5) -> Frame:
    image = (np.arange(rows * cols, dtype=np.uint16) + seq).reshape(rows, cols)
    return Frame.of(image, 0.2, sequence=seq, x_nm=float(seq))


def _write_sample(directory) -> list:
    with SessionWriter(directory) as w:
        w.write({"type": "start", "config": {"policy": "raster"}})
        for i in range(3):
            w.write({"type": "command", "id": f"c{i}", "x_nm": float(i)})
            w.write_frame(_frame(i), command_id=f"c{i}")
            w.write({"type": "decision", "step": i, "value": 0.5 * i})
        w.write({"type": "stop", "status": 0, "reason": "done"})
    return [r["type"] for r in read_session(directory).records]


def test_round_trip(tmp_path):
    kinds = _write_sample(tmp_path)
    result = read_session(tmp_path)
    assert result.complete and result.problem is None
    assert kinds == ["start"] + ["command", "frame", "decision"] * 3 + ["stop"]
    assert len(result.frames) == 3
    np.testing.assert_array_equal(result.frames[2].image, _frame(2).image)
    assert result.records[2]["command_id"] == "c0"


def test_every_cut_recovers_exactly_the_complete_records(tmp_path):
    _write_sample(tmp_path / "full")
    data = (tmp_path / "full" / LOG_NAME).read_bytes()
    full = read_session(tmp_path / "full")
    ends, n = [], 0
    # record boundaries: re-read prefixes and note where the record count changes
    for cut in range(len(data) + 1):
        path = tmp_path / "cut.log"
        path.write_bytes(data[:cut])
        result = read_session(path)
        assert result.records == full.records[: len(result.records)]  # a prefix, nothing invented
        if len(result.records) > n:
            n = len(result.records)
            ends.append(cut)
        assert result.valid_bytes <= cut
        assert (result.problem is None) == (cut == result.valid_bytes and cut >= len(MAGIC))
    assert n == len(full.records) and len(ends) == n


@settings(max_examples=60, deadline=None)
@given(position=st.integers(min_value=len(MAGIC), max_value=10_000), flip=st.integers(1, 255))
def test_corruption_stops_reading_at_the_damaged_record(tmp_path_factory, position, flip):
    directory = tmp_path_factory.mktemp("s")
    _write_sample(directory)
    path = directory / LOG_NAME
    data = bytearray(path.read_bytes())
    position %= len(data)
    if position < len(MAGIC):
        return
    data[position] ^= flip
    path.write_bytes(bytes(data))
    clean = read_session(directory)
    assert not clean.complete
    assert clean.valid_bytes <= position


def test_ten_thousand_single_byte_flips_are_all_detected_and_never_raise(tmp_path):
    """S2: every flip anywhere after the magic ends the valid prefix at or before it; nothing is invented."""
    _write_sample(tmp_path / "full")
    data = (tmp_path / "full" / LOG_NAME).read_bytes()
    full = read_session(tmp_path / "full").records
    rng = np.random.default_rng(8)
    path = tmp_path / "flipped.log"
    for position, flip in zip(rng.integers(0, len(data), 10_000), rng.integers(1, 256, 10_000), strict=True):
        damaged = bytearray(data)
        damaged[position] ^= flip
        path.write_bytes(bytes(damaged))
        if position < len(MAGIC):  # (a flip of the version byte reads as another format version)
            with pytest.raises(RecordingError, match=r"not an autoscope session log|of format version"):
                read_session(path)
            continue
        result = read_session(path)  # no exception: the damage is reported, not raised
        assert not result.complete and result.problem is not None
        assert result.valid_bytes <= position
        assert result.records == full[: len(result.records)]


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        (1, b"[1, 2, 3]"),
        (1, b'"hello"'),
        (1, b'{"no_type": 1}'),
        (1, b"[" * 100_000 + b"]" * 100_000),
        (2, len(b"[1]").to_bytes(4, "little") + b"[1]" + bytes(8)),
    ],
    ids=["list", "string", "untyped", "deeply_nested", "frame_of_a_list"],
)
def test_a_record_with_a_good_checksum_but_no_record_inside_ends_the_valid_prefix(tmp_path, kind, payload):
    """Written by hand or by a bug: the readers' .get on a list or a string raised AttributeError."""
    import zlib

    from drivers.recording import _HEAD

    _write_sample(tmp_path)
    log = tmp_path / LOG_NAME
    good = log.read_bytes()
    body = bytes([kind]) + payload
    log.write_bytes(good + _HEAD.pack(len(body), zlib.crc32(body)) + body)
    result = read_session(tmp_path)
    assert len(result.records) == 11 and result.valid_bytes == len(good)
    assert result.problem is not None and f"record at byte {len(good)} is unreadable" in result.problem


def test_refuses_foreign_files_and_second_writers(tmp_path):
    (tmp_path / "x.log").write_bytes(b"not a session")
    with pytest.raises(RecordingError, match="not an autoscope session log"):
        read_session(tmp_path / "x.log")
    with pytest.raises(RecordingError, match="no session log"):
        read_session(tmp_path / "missing")
    SessionWriter(tmp_path / "s").close()
    with pytest.raises(RecordingError, match="already exists"):
        SessionWriter(tmp_path / "s")


def test_records_with_non_finite_numbers_are_refused(tmp_path):
    with SessionWriter(tmp_path) as w, pytest.raises(ValueError):
        w.write({"type": "decision", "value": float("nan")})


WRITER = """
import sys, time
from drivers.recording import SessionWriter
w = SessionWriter(sys.argv[1])
i = 0
while True:
    w.write({"type": "tick", "i": i, "pad": "x" * (i % 97)})
    i += 1
"""


def test_kill_9_loses_at_most_the_record_being_written(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "s")])
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    result = read_session(tmp_path / "s")
    ticks = [r["i"] for r in result.records]
    assert len(ticks) > 100 and ticks == list(range(len(ticks)))
    assert result.file_bytes - result.valid_bytes < 200  # at most one partial record


def test_sessions_inspect_summarises_and_reports_damage(tmp_path, capsys):
    from agent.cli import main

    _write_sample(tmp_path / "s")
    assert main(["sessions", "inspect", str(tmp_path / "s"), "--json"]) == 0
    import json

    summary = json.loads(capsys.readouterr().out)
    assert summary["by_type"] == {"command": 3, "decision": 3, "frame": 3, "start": 1, "stop": 1}
    assert summary["complete"] and summary["stop"]["reason"] == "done"
    log = tmp_path / "s" / LOG_NAME
    log.write_bytes(log.read_bytes()[:-7])
    assert main(["sessions", "inspect", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "stop: none (session cut short)" in out and "damaged" in out
    assert main(["sessions", "inspect", str(tmp_path / "nothing")]) == 2


def test_a_log_of_another_format_version_says_so(tmp_path):
    SessionWriter(tmp_path / "s").close()
    log = tmp_path / "s" / LOG_NAME
    log.write_bytes(MAGIC[:-1] + bytes([MAGIC[-1] + 1]) + log.read_bytes()[len(MAGIC) :])
    with pytest.raises(RecordingError, match=f"format version {MAGIC[-1] + 1}; this autoscope reads version"):
        read_session(tmp_path / "s")


def test_a_session_that_cannot_be_created_is_a_recording_error(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(RecordingError, match=r"cannot create the session directory .*afile/s"):
        SessionWriter(tmp_path / "afile" / "s")


def test_an_instrument_replay_picks_the_same_frame_as_looking_at_every_one(tmp_path):
    """The frames looked at in detail are narrowed by their circles: the choice must not change."""
    from drivers.base import Frame, ScanCommand
    from drivers.recording import SessionWriter
    from drivers.replay import ReplayDriver
    from drivers.replay_fields import RecordedFields, _rotation, _to_pixels

    rng = np.random.default_rng(0)
    with SessionWriter(tmp_path / "s") as writer:
        for i in range(300):
            rows, cols = (int(v) for v in rng.choice([16, 24, 40], 2))
            image = rng.random((rows, cols)).astype(np.float32)
            header = {"sequence": i, "x_nm": float(rng.uniform(-40, 40)), "y_nm": float(rng.uniform(-40, 40))}
            header["metadata"] = {"rotation_deg": float(rng.choice([0.0, 0.0, 30.0, 90.0]))}
            writer.write_frame(Frame.of(image, float(rng.choice([0.25, 0.5, 1.0])), **header))
    driver = ReplayDriver(tmp_path / "s", mode="instrument")
    fields = RecordedFields(driver.frames)

    def every_frame(command):
        x, y = fields._corners(command)
        best = None
        for i, f in enumerate(driver.frames):
            h = f.header
            row, col = _to_pixels(x, y, h.x_nm, h.y_nm, h.pixel_size_nm, tuple(h.shape), _rotation(f))
            e = 1e-3
            inside = (
                (row >= -0.5 - e) & (row <= h.shape[0] - 0.5 + e) & (col >= -0.5 - e) & (col <= h.shape[1] - 0.5 + e)
            )
            if inside.all() and (best is None or h.pixel_size_nm < driver.frames[best].header.pixel_size_nm):
                best = i
        return best

    found = 0
    for _ in range(400):
        rows, cols = (int(v) for v in rng.choice([8, 16, 32], 2))
        command = ScanCommand(
            x_nm=float(rng.uniform(-40, 40)), y_nm=float(rng.uniform(-40, 40)), fov_nm=float(rng.uniform(1, 15)),
            rows=rows, cols=cols, dwell_us=1.0, rotation_deg=float(rng.choice([0.0, 30.0, 45.0])),
        )  # fmt: skip
        expected = every_frame(command)
        assert fields.covering(command) == expected
        found += expected is not None
    driver.close()
    assert found > 40  # the requests are not all out of reach: the test compares real choices
