"""``ReplayDriver``: a recorded session standing in for the instrument.

Two modes:

* ``strict``: the n-th scan is answered by the frame recorded for the n-th recorded scan command,
  whatever it asks for; a scan whose frame never came in the recorded session gets none now either
  (the agent meets the same timeout), so later frames stay with their own scans.  A log without
  command records (an imported session) serves its frames in recorded order.  The agent's decisions
  are compared with the recorded ones elsewhere: :mod:`agent.replay`.
* ``instrument``: a scan is answered from the recorded image data: the finest recorded frame that
  covers the requested field is resampled onto the requested pixel grid; a field no frame covers is
  refused with a reason starting "no data:".

Served frames keep the recorded image values; their header says they are replayed (``metadata["replay"]``:
mode, source sequence and command id).  A damaged log replays its valid prefix: :attr:`ReplayDriver.report`
says what was lost; frames come only from records whose checksum held.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from drivers.base import (
    Ack,
    Capabilities,
    Command,
    CommandRefused,
    Disconnected,
    Frame,
    Range,
    ScanCommand,
    SetTiltCommand,
)
from drivers.local import BeamState, FrameQueue
from drivers.recording import read_session
from drivers.replay_fields import RecordedFields

Mode = Literal["strict", "instrument"]
ALL_KINDS = ("scan", "set_tilt", "blank", "unblank", "stop")


class ReplayDriver:
    """Serve a recorded session as an instrument.

    Parameters
    ----------
    directory
        A session directory (or its ``session.log``).
    mode
        ``strict`` or ``instrument`` (see the module docstring).
    speed
        None: as fast as possible; 1.0: the recorded pace (strict) or the scan's dwell time (instrument);
        any other positive factor divides those times.

    Raises
    ------
    drivers.recording.RecordingError
        When the directory holds no session log at all.
    """

    def __init__(self, directory: str | Path, mode: Mode = "strict", speed: float | None = None) -> None:
        if mode not in ("strict", "instrument"):
            raise ValueError(f"mode must be 'strict' or 'instrument' (got {mode!r})")
        if speed is not None and not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a positive number or None for maximum speed (got {speed!r})")
        self.directory = Path(directory)
        result = read_session(directory)
        self.records = result.records
        self.frames = result.frames
        self.mode, self.speed = mode, speed
        self._fields = RecordedFields(self.frames)  # (instrument mode: the frame covering a field, resampled)
        self.start = next((r for r in result.records if r.get("type") == "start"), None)
        self.state = BeamState()
        self._queue = FrameQueue()
        self._lock = threading.Lock()
        self._next = 0
        # Strict mode: the recorded scans' command ids in order, and the frame each one got.
        self._scan_ids = [
            r["command"].get("id")
            for r in result.records
            if r.get("type") == "command" and isinstance(r.get("command"), dict) and r["command"].get("kind") == "scan"
        ]
        # Strict mode: the fate of each recorded set_tilt, in order (a tilt refused then is refused now).
        self._tilt_acks = _recorded_tilt_acks(result.records)
        self._next_tilt = 0
        self._frame_of: dict[str, int] = {}
        for i, f in enumerate(result.frames):
            if f.header.command_id is not None:
                self._frame_of.setdefault(f.header.command_id, i)
        self._t0: float | None = None
        self.stats = {"served": 0, "refused_no_data": 0, "refused_exhausted": 0, "not_recorded": 0}
        self.problem, self.valid_bytes, self.file_bytes = result.problem, result.valid_bytes, result.file_bytes
        self._cap = self._capabilities()

    # -- the Driver protocol ---------------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        """The recorded instrument's capabilities (or limits spanning the recorded frames)."""
        return self._cap

    def send(self, command: Command, timeout_s: float = 5.0) -> Ack:
        """Accept a command; a scan queues its frame (or is refused: no data, or the recording is used up)."""
        if self._queue.closed:
            raise Disconnected("replay is closed")
        with self._lock:
            self.state.admit(self._cap, command)
            if isinstance(command, SetTiltCommand) and self.mode == "strict":
                self._as_recorded_tilt(command)
            if not isinstance(command, ScanCommand):
                self.state.apply(command)
                return Ack.accept(command)
            frame = self._strict(command) if self.mode == "strict" else self._instrument(command)
            if frame is None:  # its frame never came in the recorded session: none comes now either
                self.stats["not_recorded"] += 1
                return Ack.accept(command)
            self.stats["served"] += 1
            self._queue.put(frame)
        return Ack.accept(command)

    def next_frame(self, timeout_s: float) -> Frame:
        """The oldest unread frame; :class:`DriverTimeout` after ``timeout_s``."""
        return self._queue.get(timeout_s)

    def close(self) -> None:
        """Stop serving; blocked and later calls raise :class:`Disconnected`."""
        self._queue.close()

    @property
    def report(self) -> dict[str, Any]:
        """What was served and refused, and what the recording lost (if it was damaged)."""
        return {
            "mode": self.mode,
            "frames_recorded": len(self.frames),
            **self.stats,
            "complete_recording": self.problem is None and self.valid_bytes == self.file_bytes,
            # a log cut exactly between records reads as complete; only its missing stop record tells
            "ended_cleanly": any(r.get("type") == "stop" for r in self.records),
            "problem": self.problem,
            "valid_bytes": self.valid_bytes,
            "file_bytes": self.file_bytes,
        }

    # -- strict -------------------------------------------------------------------------------------
    def _strict(self, command: ScanCommand) -> Frame | None:
        if not self._scan_ids:  # no command records (an imported session): the frames in recorded order
            return self._strict_next(command)
        if self._next >= len(self._scan_ids):
            raise self._exhausted(command, f"it holds {len(self._scan_ids)} scans and all were replayed")
        index = self._frame_of.get(self._scan_ids[self._next])
        self._next += 1
        return None if index is None else self._as_recorded(index, command)

    def _as_recorded_tilt(self, command: SetTiltCommand) -> None:
        """Refuse the n-th tilt if the recorded session's n-th tilt was refused (its scans follow in step)."""
        recorded = self._tilt_acks[self._next_tilt] if self._next_tilt < len(self._tilt_acks) else None
        self._next_tilt += 1
        if recorded is not None and recorded.get("accepted") is False:
            why = f"refused in the recorded session ({recorded.get('code')}): {recorded.get('reason', '')}"
            raise CommandRefused(Ack.refusal(command, "refused", why))

    def _strict_next(self, command: ScanCommand) -> Frame:
        if self._next >= len(self.frames):
            raise self._exhausted(command, f"it holds {len(self.frames)} frames and all were served")
        self._next += 1
        return self._as_recorded(self._next - 1, command)

    def _as_recorded(self, index: int, command: ScanCommand) -> Frame:
        """Recorded frame ``index`` as the answer to ``command``, at the recorded pace."""
        source = self.frames[index]
        self._pace(source.header.acquisition_end_unix_s, 0.0)
        return self._served(source, command, source.image, source.header.model_dump())

    def _exhausted(self, command: ScanCommand, what: str) -> CommandRefused:
        self.stats["refused_exhausted"] += 1
        lost = f" (the log was cut: {self.problem})" if self.problem else ""
        return CommandRefused(Ack.refusal(command, "unsupported", f"recording exhausted: {what}{lost}"))

    # -- instrument -----------------------------------------------------------------------------------
    def _instrument(self, command: ScanCommand) -> Frame:
        index = self._fields.covering(command)
        if index is None:
            self.stats["refused_no_data"] += 1
            where = f"({command.x_nm:g}, {command.y_nm:g}) nm"
            reason = f"no data: no recorded frame covers the {command.fov_nm:g} nm field at {where}"
            raise CommandRefused(Ack.refusal(command, "unsupported", reason))
        source = self.frames[index]
        self._pace(None, command.duration_s)
        image = self._fields.resample(index, command)
        h = source.header
        fields = h.model_dump()
        fields.update(
            x_nm=command.x_nm, y_nm=command.y_nm, fov_nm=command.fov_nm, shape=image.shape,
            pixel_size_nm=command.fov_nm / command.cols, dwell_us=command.dwell_us,
        )  # fmt: skip
        return self._served(source, command, image, fields)

    # -- shared ----------------------------------------------------------------------------------------
    def _served(self, source: Frame, command: ScanCommand, image: np.ndarray, fields: dict[str, Any]) -> Frame:
        now = time.time()
        metadata = dict(fields.get("metadata") or {})
        metadata["replay"] = {
            "mode": self.mode,
            "source_sequence": source.header.sequence,
            "source_command_id": source.header.command_id,
        }
        fields.update(
            sequence=self.state.next_sequence(), command_id=command.id, acquisition_start_unix_s=now,
            acquisition_end_unix_s=now, metadata=metadata, dtype=str(image.dtype), shape=image.shape,
        )  # fmt: skip
        return Frame(type(source.header).model_validate(fields), image)

    def _pace(self, recorded_end_s: float | None, scan_s: float) -> None:
        """Wait so frames come at the recorded pace (or the scan's duration) divided by ``speed``."""
        if self.speed is None:
            return
        if recorded_end_s is None:
            time.sleep(scan_s / self.speed)
            return
        first = self.frames[0].header.acquisition_end_unix_s
        if self._t0 is None:
            self._t0 = time.monotonic()
        due = self._t0 + (recorded_end_s - first) / self.speed
        time.sleep(max(0.0, due - time.monotonic()))

    def _capabilities(self) -> Capabilities:
        if self.start and isinstance(self.start.get("capabilities"), dict):
            cap = Capabilities.model_validate(self.start["capabilities"])
            cap = cap.model_copy(update={"instrument": f"replay of {self.directory.name} ({cap.instrument})"})
        else:
            cap = _capabilities_spanning(self.frames, f"replay of {self.directory.name}")
        return cap.model_copy(update={"serves_recorded_fields": self.mode == "strict"})


def _capabilities_spanning(frames: list[Frame], name: str) -> Capabilities:
    """Limits that admit every recorded field (for sessions without a start record, e.g. imported ones)."""
    if not frames:
        x = y = Range(low=-1.0, high=1.0)
        fov = Range(low=0.01, high=1.0)
    else:
        half = [f.header.fov_nm / 2 for f in frames]
        xs = [f.header.x_nm for f in frames]
        ys = [f.header.y_nm for f in frames]
        x = Range(
            low=min(a - h for a, h in zip(xs, half, strict=True)),
            high=max(a + h for a, h in zip(xs, half, strict=True)),
        )
        y = Range(
            low=min(a - h for a, h in zip(ys, half, strict=True)),
            high=max(a + h for a, h in zip(ys, half, strict=True)),
        )
        fov = Range(low=min(f.header.fov_nm for f in frames) / 64, high=max(f.header.fov_nm for f in frames))
    return Capabilities(
        instrument=name, command_kinds=ALL_KINDS, stage_x_nm=x, stage_y_nm=y, fov_nm=fov,
        pixels=Range(low=8, high=8192), dwell_us=Range(low=0.01, high=1e4), tilt_deg=Range(low=-90, high=90),
        max_dose_e_per_a2=1e12,
    )  # fmt: skip


def _recorded_tilt_acks(records: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """The ack recorded for each recorded ``set_tilt`` command, in order (None where none was recorded)."""
    acks = {
        r["ack"].get("command_id"): r["ack"]
        for r in records
        if r.get("type") == "ack" and isinstance(r.get("ack"), dict)
    }
    return [
        acks.get(r["command"].get("id"))
        for r in records
        if r.get("type") == "command" and isinstance(r.get("command"), dict) and r["command"].get("kind") == "set_tilt"
    ]
