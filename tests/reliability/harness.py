"""The invariant harness: a fault-injecting instrument that checks what it is sent, and the checks of
issue 8's five invariants on a run and its session log.

The instrument (:class:`ChaosInstrument`) wraps a real :class:`~drivers.simulated.SimulatedDriver` and
checks every command independently of the agent's code: finite, within its own copy of the limits, an
id it has not executed before, not past its deadline, and already in the session log on disk (except
the final blank, which goes out even when the disk has failed).  Faults are switched on by the test:
down (disconnected, for a while or for good), frozen (silent: commands lost, frames held back and
delivered late), and a corrupted next frame.

:class:`Observed` wraps the real perception and policy to check that no decision is fed by an invalid
model output or a frame older than the maximum age; :class:`Shadow` keeps every record the writer
reported written, which the log on disk must equal exactly.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from agent.observation import Observation
from agent.perception import Perception
from agent.recorder import SessionRecorder
from drivers.base import (
    Ack,
    Capabilities,
    Command,
    Disconnected,
    DriverTimeout,
    Frame,
    ScanCommand,
)
from drivers.recording import read_session
from drivers.simulated import SimulatedDriver

#: Corruptions :meth:`ChaosInstrument.corrupt_next` applies to a frame.
CORRUPTIONS = ("nan", "inf", "shape", "stale", "old", "misplaced", "int16")


def recorded_command_ids(directory: Path) -> set[str]:
    """Ids of the command records in the session log on disk."""
    records = read_session(directory).records
    return {r["command"]["id"] for r in records if r.get("type") == "command"}


class ChaosInstrument:
    """A simulated instrument with switchable faults that audits every command it is given.

    Parameters
    ----------
    inner
        The instrument.
    limits
        The instrument's own copy of the limits: field name -> (low, high).
    recorded_ids
        Returns the command ids recorded so far (read from disk); None skips that check.
    """

    def __init__(
        self,
        inner: SimulatedDriver,
        limits: dict[str, tuple[float, float]],
        recorded_ids: Callable[[], set[str]] | None = None,
    ) -> None:
        self.inner, self.limits, self.recorded_ids = inner, limits, recorded_ids
        self.violations: list[str] = []
        self.executed: list[Command] = []
        self._seen_ids: set[str] = set()
        self.frames_delivered = 0
        self.down_until: float | None = None
        self.frozen = False
        self._held: list[Frame] = []
        self._corrupt: str | None = None
        self._old_ids: list[str] = []
        self._needs_readback = False

    # -- faults ----------------------------------------------------------------------------------------
    def go_down(self, for_s: float) -> None:
        """Disconnect for ``for_s`` seconds (``math.inf``: until :meth:`come_back`)."""
        self.down_until = time.monotonic() + for_s
        self._needs_readback = True
        self._held.clear()  # a restarted instrument has no frames for anyone

    def come_back(self) -> None:
        """Reconnect now."""
        self.down_until = None

    def corrupt_next(self, kind: str) -> None:
        """Spoil the next frame delivered (one of :data:`CORRUPTIONS`)."""
        self._corrupt = kind

    @property
    def down(self) -> bool:
        """True while disconnected."""
        return self.down_until is not None and time.monotonic() < self.down_until

    # -- the Driver protocol ---------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """The loop polls this while it waits for a lost instrument."""
        return not self.down

    def capabilities(self) -> Capabilities:
        if self.down:
            raise Disconnected("the instrument is down")
        self._needs_readback = False  # the handshake: the agent reads the instrument's state
        return self.inner.capabilities()

    def send(self, command: Command, timeout_s: float = 5.0) -> Ack:
        if self.down:
            raise Disconnected("the instrument is down")
        if self.frozen:
            raise DriverTimeout(f"no ack for {command.id} within {timeout_s:g} s")  # lost in a silent peer
        self._audit(command)
        self.executed.append(command)
        return self.inner.send(command, timeout_s)

    def next_frame(self, timeout_s: float) -> Frame:
        if self.down:
            raise Disconnected("the instrument is down")
        if self.frozen:
            try:
                self._held.append(self.inner.next_frame(0.0))  # acquired, never delivered while frozen
            except DriverTimeout:
                pass
            raise DriverTimeout("no frame: the instrument is frozen")
        frame = self._held.pop(0) if self._held else self.inner.next_frame(timeout_s)
        if self._corrupt is not None:
            frame, self._corrupt = self._spoil(frame, self._corrupt), None
        self.frames_delivered += 1
        return frame

    def close(self) -> None:
        self.inner.close()

    # -- checks ----------------------------------------------------------------------------------------
    def _audit(self, command: Command) -> None:
        if command.id in self._seen_ids:
            self.violations.append(f"command {command.id} executed twice")
        self._seen_ids.add(command.id)
        if command.deadline_unix_s < time.time():
            self.violations.append(f"command {command.id} executed after its deadline")
        for name, (low, high) in self.limits.items():
            value = getattr(command, name, None)
            if value is not None and not (math.isfinite(value) and low <= value <= high):
                self.violations.append(f"{command.kind} {name}={value!r} outside [{low}, {high}]")
        if isinstance(command, ScanCommand):
            if self._needs_readback:
                self.violations.append(f"scan {command.id} before the state was read back after a reconnect")
            self._old_ids.append(command.id)
        if self.recorded_ids is not None and command.kind != "blank" and command.id not in self.recorded_ids():
            self.violations.append(f"{command.kind} {command.id} sent before it was recorded")

    def _spoil(self, frame: Frame, kind: str) -> Frame:
        h, image = frame.header, frame.image.copy()
        if kind in ("nan", "inf"):
            image[image.shape[0] // 2, :] = np.nan if kind == "nan" else np.inf
            return Frame(h, image)
        if kind == "shape":
            cut = np.ascontiguousarray(image[:, : image.shape[1] // 2])
            return Frame(h.model_copy(update={"shape": cut.shape}), cut)
        if kind == "stale" and len(self._old_ids) > 3:
            return Frame(h.model_copy(update={"command_id": self._old_ids[0]}), image)
        if kind == "old":
            update = {"acquisition_start_unix_s": h.acquisition_start_unix_s - 100.0}
            update["acquisition_end_unix_s"] = h.acquisition_end_unix_s - 100.0
            return Frame(h.model_copy(update=update), image)
        if kind == "misplaced":
            return Frame(h.model_copy(update={"x_nm": h.x_nm + 3.0}), image)
        if kind == "int16":  # a different dtype: must be accepted
            scaled = (image / max(float(image.max()), 1e-9) * 30000).astype(np.int16)
            return Frame(h.model_copy(update={"dtype": "int16"}), scaled)
        return frame


class FailingModel:
    """The real onnxruntime model, whose outputs can be spoiled (the next call's, or chosen calls' by index:
    ``nan``, ``shape``, ``range``, ``raise``); remembers whether the last call's was."""

    def __init__(self, inner: Any, faults: dict[int, str] | None = None) -> None:
        self.inner = inner
        self.faults = faults or {}  # by call index, besides next_fault
        self.calls = 0
        self.next_fault: str | None = None
        self.last_spoiled = False

    def run(self, image: np.ndarray, input_name: str = "image") -> dict[str, np.ndarray]:
        fault, self.next_fault = self.next_fault or self.faults.get(self.calls), None
        self.calls += 1
        self.last_spoiled = fault is not None
        out = self.inner.run(image, input_name)
        if fault == "raise":
            raise RuntimeError("onnxruntime: Non-zero status code returned while running Conv node")
        if fault == "nan":
            out["mean_probs"][:, 0, 0] = np.nan
        if fault == "shape":
            out["mutual_info"] = out["mutual_info"][:, :-1]
        if fault == "range":
            out["mean_probs"] = out["mean_probs"] * -3.0
        return out


class Observed:
    """Perception and policy wrappers that catch a decision fed by a bad output or an old frame."""

    def __init__(self, perception: Perception, model: FailingModel, max_frame_age_s: float) -> None:
        self.perception, self.model, self.max_frame_age_s = perception, model, max_frame_age_s
        self.valid: set[int] = set()
        self.violations: list[str] = []

    def observe(self, frame: Frame, step: int, rotation_deg: float = 0.0) -> Observation:
        age_s = time.time() - frame.header.acquisition_end_unix_s
        obs = self.perception.observe(frame, step, rotation_deg)
        if self.model.last_spoiled:
            self.violations.append(f"step {step}: an observation was made from a spoiled model output")
        elif age_s > self.max_frame_age_s:
            self.violations.append(f"step {step}: a frame {age_s:.1f} s old was analysed")
        else:
            self.valid.add(id(obs))
        return obs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.perception, name)

    def watch(self, policy: Any) -> Any:
        """Make ``policy`` report any observation it is fed that :meth:`observe` did not pass."""
        ingest = policy.ingest

        def checked(obs: Observation) -> None:
            if id(obs) not in self.valid:
                self.violations.append(f"the policy was fed an unchecked observation of step {obs.step}")
            ingest(obs)

        policy.ingest = checked
        return policy


class Shadow:
    """Every record the session writer reported as written, in order (what the log must hold)."""

    def __init__(self, recorder: SessionRecorder) -> None:
        self.records: list[dict[str, Any]] = []
        writer = recorder.writer
        assert writer is not None
        write, write_frame = writer.write, writer.write_frame

        def shadow_write(record: dict[str, Any]) -> None:
            write(record)
            self.records.append(json.loads(json.dumps(record)))

        def shadow_frame(frame: Frame, **extra: Any) -> None:
            write_frame(frame, **extra)
            head = {"type": "frame", "header": frame.header.model_dump(mode="json"), **extra}
            self.records.append(json.loads(json.dumps(head)))

        writer.write, writer.write_frame = shadow_write, shadow_frame  # type: ignore[method-assign]


def fill_disk(recorder: SessionRecorder) -> None:
    """From now on the session's writes fail with ENOSPC from the kernel (the log's fd now is /dev/full)."""
    writer = recorder.writer
    assert writer is not None
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, writer._fd)
    os.close(full)


def session_problems(directory: Path, shadow: Shadow, writer_failed: bool) -> list[str]:
    """Invariant 4: the log reads back as exactly what was written; complete unless the disk failed."""
    result = read_session(directory)
    problems = []
    if result.records != shadow.records:
        n = next((i for i, (a, b) in enumerate(zip(result.records, shadow.records, strict=False)) if a != b), None)
        problems.append(
            f"the log holds {len(result.records)} records, {len(shadow.records)} were written; first difference at {n}"
        )
    if not writer_failed and not result.complete:
        problems.append(f"the log is damaged: {result.problem}")
    return problems


def frame_problems(state: Any, delivered: int, recorded_on_disk: int | None) -> list[str]:
    """Invariant 3: received = analysed + skipped, exactly; everything delivered was received."""
    problems = []
    skipped = sum(state.frames_skipped.values())
    if state.frames_received != state.frames_analysed + skipped:
        problems.append(f"received {state.frames_received} != analysed {state.frames_analysed} + skipped {skipped}")
    if delivered != state.frames_received:
        problems.append(f"the instrument delivered {delivered} frames, the loop counted {state.frames_received}")
    if recorded_on_disk is not None and recorded_on_disk != state.frames_recorded:
        problems.append(f"{state.frames_recorded} frames counted as recorded, {recorded_on_disk} on disk")
    return problems
