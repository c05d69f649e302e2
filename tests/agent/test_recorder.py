"""Session directories: a chain of sessions whose agents were killed, each linked to the one before."""

from __future__ import annotations

import json

import pytest

from agent.recorder import UNCLOSED_MARK, SessionRecorder, claim_session_dir
from drivers.recording import RecordingError


def _killed_session(directory) -> None:
    recorder = SessionRecorder(directory)
    recorder.write("start", note="the agent dies before its stop record")
    recorder.close()


def test_each_new_session_follows_the_latest_unclosed_one_and_a_finished_chain_is_never_reused(tmp_path):
    base = tmp_path / "run"
    assert claim_session_dir(base) == (base, None)
    _killed_session(base)
    second, previous = claim_session_dir(base)
    assert second == tmp_path / "run.2" and previous["path"] == str(base)
    _killed_session(second)
    third, previous = claim_session_dir(base)
    assert third == tmp_path / "run.3" and previous["path"] == str(second)  # the latest, not the first
    assert json.loads((second / UNCLOSED_MARK).read_text())["records"] == 1
    recorder = SessionRecorder(third)
    recorder.write("stop", status="completed")
    recorder.close()
    with pytest.raises(RecordingError, match=r"run\.3 already holds a finished session"):
        claim_session_dir(base)


def test_a_session_still_being_recorded_is_neither_marked_unclosed_nor_followed(tmp_path):
    base = tmp_path / "run"
    live = SessionRecorder(base)  # a running agent: its log has no stop record yet
    live.write("start", note="still running")
    with pytest.raises(RecordingError, match="is being recorded by a running agent"):
        claim_session_dir(base)
    assert not (base / UNCLOSED_MARK).exists()
    live.close()  # closed without a stop record: now it is a killed session's log, and is followed
    assert claim_session_dir(base)[0] == tmp_path / "run.2"
