"""A tilt series holds the instrument to what it was told: refusals, late and missing frames, read-back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.cli import main
from agent.recorder import SessionRecorder
from agent.timings import StageTimings
from agent.tomo import PlannedTilts, TiltSeries, acquire_series
from drivers.base import Ack, Command, CommandRefused, Frame, ScanCommand, SetTiltCommand
from drivers.recording import read_session
from drivers.server import InstrumentServer
from drivers.simulated_tomo import SimulatedTiltDriver


class FaultyHolder(SimulatedTiltDriver):
    """A simulated holder with one fault: it settles ``off_deg`` from the tilt it is sent to (a slipping
    goniometer), refuses tilts beyond ``stuck_beyond_deg``, refuses to unblank, loses every frame, or
    delivers a frame of an earlier scan late, before the first projection's own."""

    def __init__(
        self,
        off_deg: float = 0.0,
        stuck_beyond_deg: float = 90.0,
        refuses_unblank: bool = False,
        loses_frames: bool = False,
        late: bool = False,
    ) -> None:
        super().__init__(phantom_seed=0, size_px=32)
        self.off_deg, self.stuck_beyond_deg, self.refuses_unblank = off_deg, stuck_beyond_deg, refuses_unblank
        self.loses_frames, self.late = loses_frames, late

    def send(self, command: Command, timeout_s: float = 5.0) -> Ack:
        if command.kind == "unblank" and self.refuses_unblank:
            raise CommandRefused(Ack.refusal(command, "refused", "the gun valve is closed"))
        if isinstance(command, SetTiltCommand):
            if abs(command.tilt_deg) > self.stuck_beyond_deg:
                raise CommandRefused(Ack.refusal(command, "refused", "the goniometer is stuck"))
            command = command.model_copy(update={"tilt_deg": command.tilt_deg + self.off_deg})
        ack = super().send(command, timeout_s)
        if isinstance(command, ScanCommand) and self.loses_frames:
            self._frames.get(0.0)
        return ack

    def _acquire(self, command: ScanCommand) -> Frame:
        frame = super()._acquire(command)
        if self.late:
            self.late = False
            self._frames.put(Frame(frame.header.model_copy(update={"command_id": "an-earlier-scan"}), frame.image))
        return frame


def _series(holder: FaultyHolder, tmp_path, n: int = 3) -> tuple[TiltSeries, list[dict]]:
    recorder = SessionRecorder(tmp_path / "session")
    try:
        series = acquire_series(holder, PlannedTilts("sequential", n, (-60.0, 60.0)), n, recorder, StageTimings())
    finally:
        recorder.close()
        holder.close()
    return series, read_session(tmp_path / "session").records


def _blanked_last(holder: FaultyHolder, series: TiltSeries, records: list[dict]) -> bool:
    """The holder's last command was a blank it acknowledged, and the session recorded it before it was sent."""
    commands = [r["command"] for r in records if r["type"] == "command"]
    last = holder.commands[-1]
    return last.kind == "blank" and commands[-1]["id"] == last.id and series.beam_blank == "acknowledged"


def test_a_tilt_read_back_off_holds_the_series_and_blanks_the_beam(tmp_path):
    holder = FaultyHolder(off_deg=2.0)
    series, records = _series(holder, tmp_path)
    assert series.projections == [] and series.held is not None
    assert "tilt read back as -58 deg, commanded -60 deg" in series.held
    assert [r["type"] for r in records].count("frame") == 1  # the projection that was off is kept in the record
    assert any(r["type"] == "refusal" and r["reason"].startswith("safe hold") for r in records)
    assert _blanked_last(holder, series, records)


def test_a_tilt_within_tolerance_is_taken_at_the_angle_read_back(tmp_path):
    series, records = _series(FaultyHolder(off_deg=0.2), tmp_path)
    assert series.held is None and series.angles_deg == pytest.approx([-59.8, 0.2, 60.2])
    commands = [r["command"]["kind"] for r in records if r["type"] == "command"]
    assert commands[0] == "unblank" and commands[-1] == "blank"  # recorded, like every command


def test_tilts_the_holder_refuses_are_skipped_and_the_series_goes_on(tmp_path):
    holder = FaultyHolder(stuck_beyond_deg=40.0)
    series, records = _series(holder, tmp_path, n=5)  # -60, -30, 0, 30, 60
    assert series.held is None and series.angles_deg == [-30.0, 0.0, 30.0]
    assert len(series.refusals) == 2 and all("the goniometer is stuck" in r for r in series.refusals)
    refused = [r for r in records if r["type"] == "ack" and not r["ack"]["accepted"]]
    assert len(refused) == 2 and all(r["ack"]["kind"] == "set_tilt" for r in refused)
    assert _blanked_last(holder, series, records)


def test_a_refused_unblank_holds_before_any_tilt(tmp_path):
    holder = FaultyHolder(refuses_unblank=True)
    series, records = _series(holder, tmp_path)
    assert series.held is not None and "refused to unblank: the gun valve is closed" in series.held
    assert [c.kind for c in holder.commands] == ["blank"]  # no tilt, no scan; blanked all the same
    assert [r["ack"]["kind"] for r in records if r["type"] == "ack" and not r["ack"]["accepted"]] == ["unblank"]
    assert series.beam_blank == "acknowledged"


def test_a_projection_whose_frame_never_comes_holds_the_series(tmp_path, monkeypatch):
    import agent.tomo

    monkeypatch.setattr(agent.tomo, "FRAME_TIMEOUT_S", 0.2)
    holder = FaultyHolder(loses_frames=True)
    series, records = _series(holder, tmp_path)
    assert series.projections == [] and series.held is not None and "no projection came" in series.held
    assert _blanked_last(holder, series, records)


def test_a_frame_of_an_earlier_scan_is_recorded_and_passed_over(tmp_path):
    series, records = _series(FaultyHolder(late=True), tmp_path)
    assert series.held is None and len(series.projections) == 3
    (stale,) = [r for r in records if r["type"] == "error"]
    assert stale["kind"] == "stale_frame" and "an-earlier-scan" in stale["message"]


def _tcp_run(holder: FaultyHolder, tmp_path, *extra: str, frame_timeout_s: float = 30.0) -> tuple[int, dict, list]:
    summary = tmp_path / "summary.json"
    with InstrumentServer(holder, "tcp://127.0.0.1:0", deadman_s=None, frame_timeout_s=frame_timeout_s) as server:
        argv = ["tomo", "run", "--instrument", server.endpoint, "--tilts", "3", "--probe-current-pa", "20",
                "--at", "0,0", "--record", str(tmp_path / "s"), "--json", str(summary), *extra]  # fmt: skip
        status = main(argv)
    holder.close()
    return status, json.loads(summary.read_text()), read_session(tmp_path / "s").records


def test_tomo_run_over_tcp_ends_in_a_safe_hold_when_the_holder_slips(tmp_path, capsys):
    status, summary, records = _tcp_run(FaultyHolder(off_deg=-1.5), tmp_path)
    err = capsys.readouterr().err
    assert status == 4 and "safe hold (the beam is blanked" in err and "tilt read back as -1.5 deg" in err
    assert summary["held"] and summary["beam_blank"] == "acknowledged" and "psnr_db" not in summary
    assert [r["status"] for r in records if r["type"] == "stop"] == ["held"]
    assert [r["command"]["kind"] for r in records if r["type"] == "command"][-1] == "blank"  # ours, not the server's


def test_a_wider_tilt_tolerance_takes_the_same_slip(tmp_path):
    status, summary, _ = _tcp_run(
        FaultyHolder(off_deg=-1.5), tmp_path, "--tilt-tolerance-deg", "2", "--range-deg", "-60", "60"
    )
    assert status == 0 and summary["held"] is None and len(summary["angles_deg"]) == 3


def test_tomo_run_over_tcp_holds_when_the_server_reports_a_lost_frame(tmp_path, capsys):
    status, summary, _ = _tcp_run(FaultyHolder(loses_frames=True), tmp_path, frame_timeout_s=0.3)
    assert status == 4 and "no projection came at 0 deg" in summary["held"] and "no frame came" in summary["held"]


@pytest.mark.parametrize(("fault", "status"), [({"stuck_beyond_deg": 40.0}, 0), ({"off_deg": 2.0}, 4)])
def test_a_session_with_refused_tilts_or_a_hold_replays_strictly_to_the_same_end(tmp_path, fault, status):
    recorded = tmp_path / "recorded"
    recorder = SessionRecorder(recorded)
    holder = FaultyHolder(**fault)
    try:
        series = acquire_series(holder, PlannedTilts("sequential", 5, (-60.0, 60.0)), 5, recorder, StageTimings())
        recorder.write("stop", status="held" if series.held else "completed", reason="test")
    finally:
        recorder.close()
        holder.close()
    summary = tmp_path / "replay.json"
    argv = ["tomo", "run", "--instrument", str(recorded), "--policy", "sequential", "--tilts", "5",
            "--range-deg", "-60", "60", "--json", str(summary)]  # fmt: skip
    assert main(argv) == status
    replayed = json.loads(summary.read_text())
    assert replayed["divergences"] == [] and replayed["held"] == series.held
    assert replayed["angles_deg"] == pytest.approx(series.angles_deg)


class _ClaimsToBeAReplay(FaultyHolder):
    """A live holder's bridge whose frames say they are a strict replay's, and whose stage slipped 2 nm."""

    def _acquire(self, command: ScanCommand) -> Frame:
        frame = super()._acquire(command)
        metadata = {**frame.header.metadata, "replay": {"mode": "strict"}}
        return Frame(
            frame.header.model_copy(update={"x_nm": frame.header.x_nm + 2.0, "metadata": metadata}), frame.image
        )


def test_a_frame_over_the_wire_saying_it_is_a_replay_is_still_read_back(tmp_path, capsys):
    """Only a replay run in this process is trusted to serve recorded fields wherever a scan asks."""
    status, summary, _ = _tcp_run(_ClaimsToBeAReplay(), tmp_path)
    assert status == 4 and "centre read back at (2, 0) nm" in summary["held"]


def test_a_tilt_session_without_a_kind_replays_and_one_with_its_guard_settings_ends_where_it_ended(tmp_path):
    """Imported tilt series (no 'kind', no configuration) are replayed; the recorded dose budget is used again."""
    record = tmp_path / "budget"
    argv = ["tomo", "run", "--tilts", "6", "--size-px", "32", "--dose-budget-e-per-a2", "12"]
    assert main([*argv, "--record", str(record)]) == 0
    out = tmp_path / "replay.json"
    assert main(["tomo", "run", "--instrument", str(record), "--json", str(out)]) == 0
    replay = json.loads(out.read_text())
    assert replay["divergences"] == [] and replay["ended_early"].startswith("dose budget")
    frames = read_session(record).frames
    for i, f in enumerate(frames):
        np.save(tmp_path / f"t{i}.npy", f.image)
    rows = [f"t{i}.npy,0,0,{f.header.pixel_size_nm},{f.header.tilt_deg}" for i, f in enumerate(frames)]
    (tmp_path / "pos.csv").write_text("image,x_nm,y_nm,pixel_size_nm,tilt_deg\n" + "\n".join(rows) + "\n")
    imported = tmp_path / "imported"
    names = [str(tmp_path / f"t{i}.npy") for i in range(len(frames))]
    assert main(["sessions", "import", *names, "--positions", str(tmp_path / "pos.csv"), "--out", str(imported)]) == 0
    assert main(["tomo", "run", "--instrument", str(imported), "--policy", "sequential", "--tilts", "2"]) in (0, 3)
