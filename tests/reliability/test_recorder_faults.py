"""The recorder when the disk fails: ENOSPC/EIO at the k-th write, and a real full tmpfs.

The log on disk stays a valid prefix (no torn record), nothing is sent that was not recorded first
(except the final blank, which must go out regardless), and the run stops with the beam blanked.
"""

from __future__ import annotations

import errno
import os
import subprocess
import types
from pathlib import Path

import pytest

from agent.guard import Guard, GuardConfig
from agent.loop import Loop, LoopConfig
from agent.perception import Perception
from agent.policies import FieldTemplate, PolicyContext, Region, make_policy
from agent.recorder import SessionRecorder
from drivers import recording
from drivers.memory import InMemoryDriver
from drivers.recording import RecordingError, SessionWriter, read_session


def _failing_os(fail_at: int, code: int) -> types.SimpleNamespace:
    """``os`` whose ``write`` fails with ``code`` from its ``fail_at``-th call on (a dying disk stays dead)."""
    calls = {"n": 0}

    def write(fd: int, data: object) -> int:
        calls["n"] += 1
        if calls["n"] >= fail_at:
            raise OSError(code, os.strerror(code))
        return os.write(fd, data)  # type: ignore[arg-type]

    names = {name: getattr(os, name) for name in dir(os) if not name.startswith("__")}
    return types.SimpleNamespace(**{**names, "write": write})


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_failed_write_leaves_a_valid_prefix_and_stops_all_later_writes(tmp_path, monkeypatch, code):
    monkeypatch.setattr(recording, "os", _failing_os(fail_at=5, code=code))
    writer = SessionWriter(tmp_path / "s")  # write 1: the magic
    for i in range(3):
        writer.write({"type": "note", "i": i})  # writes 2-4
    with pytest.raises(RecordingError, match=os.strerror(code)):
        writer.write({"type": "note", "i": 3})
    with pytest.raises(RecordingError, match="can no longer be written"):
        writer.write({"type": "note", "i": 4})
    writer.close()
    monkeypatch.undo()
    session = read_session(tmp_path / "s")
    assert [r["i"] for r in session.records] == [0, 1, 2] and session.valid_bytes == session.file_bytes


class _Instrument(InMemoryDriver):
    """Remembers the ids of the commands it executed."""

    def __init__(self) -> None:
        super().__init__()
        self.executed: list[str] = []

    def send(self, command, timeout_s: float = 5.0):
        ack = super().send(command, timeout_s)
        self.executed.append(command.id)
        return ack


def _run(segmenter, directory: Path, steps: int = 30) -> tuple[_Instrument, object]:
    instrument = _Instrument()
    field = FieldTemplate(fov_nm=2.56, pixels=128, dwell_us=1.0)
    policy = make_policy("raster", PolicyContext(Region(-50.0, 50.0, -50.0, 50.0), field, seed=0))
    recorder = SessionRecorder(directory)
    loop = Loop(instrument, Perception(segmenter), policy, Guard(instrument.capabilities(), GuardConfig()),
                LoopConfig(steps), recorder)  # fmt: skip
    state = loop.run()
    recorder.close()
    return instrument, state


def _check_invariants(instrument: _Instrument, state, directory: Path) -> None:
    assert state.status == "failed" and "can no longer be recorded" in state.reason, state.reason
    assert instrument.state.blanked  # the final blank went out even though it could not be recorded
    session = read_session(directory)
    assert session.valid_bytes == session.file_bytes  # no torn record at the end
    recorded = {r["command"]["id"] for r in session.records if r["type"] == "command"}
    unrecorded = [cid for cid in instrument.executed if cid not in recorded]
    assert len(unrecorded) <= 1  # at most the final blank
    if unrecorded:
        assert unrecorded[0] == instrument.executed[-1] and instrument.commands[-1].kind == "blank"


@pytest.mark.parametrize(("fail_at", "code"), [(6, errno.ENOSPC), (17, errno.EIO), (40, errno.ENOSPC)])
def test_the_loop_stops_safely_when_the_disk_fails_mid_run(segmenter, tmp_path, monkeypatch, fail_at, code):
    monkeypatch.setattr(recording, "os", _failing_os(fail_at, code))
    instrument, state = _run(segmenter, tmp_path / "s")
    monkeypatch.undo()
    _check_invariants(instrument, state, tmp_path / "s")


@pytest.fixture
def small_tmpfs(tmp_path):
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(mount_point)], check=True,
                       capture_output=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False, capture_output=True, timeout=10)


def test_a_real_full_filesystem(segmenter, small_tmpfs):
    instrument, state = _run(segmenter, small_tmpfs / "s")  # 128 x 128 float32 frames: 64 KiB each
    _check_invariants(instrument, state, small_tmpfs / "s")
    assert "No space left" in state.reason


def test_an_experiment_whose_recording_fails_at_close_still_closes_the_instrument(tmp_path, monkeypatch):
    from agent.config import load_config
    from agent.experiment import Experiment, open_instrument

    overrides = {"policy": "raster", "steps": 1, "seed": 1, "field.fov_nm": 2.56, "field.pixels": 128}
    config = load_config(None, {**overrides, "record": str(tmp_path / "s")})
    driver = open_instrument(config)
    experiment = Experiment(config, driver=driver)

    def fsync(fd: int) -> None:  # the disk dies before the final flush
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(recording, "os", types.SimpleNamespace(**{**vars(os), "fsync": fsync}))
    with pytest.raises(RecordingError):
        experiment.close()
    assert driver.closed
