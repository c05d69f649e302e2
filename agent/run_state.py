"""What a run of the loop is told (:class:`LoopConfig`) and what it has done (:class:`RunState`), and how it ends."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from agent.observation import Observation


class Interrupted(BaseException):
    """Raised in the loop's thread by a SIGINT/SIGTERM handler: stop now, safely."""


class StopLoop(Exception):
    """Ends the run with ``status`` and ``reason``."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class LoopConfig:
    """Fault tolerance and timing of the loop.

    Attributes
    ----------
    steps : frames to analyse.
    frame_timeout_s : wait for a frame beyond its nominal scan time.
    command_timeout_s : wait for an ack.
    max_failures : consecutive failed steps (lost frames, bad frames, refusals) before giving up.
    reconnect_grace_s : how long a lost instrument may take to come back.
    stop_timeout_s : how long blanking the beam may take on the way out.
    readback_tolerance_nm : a frame whose header puts it (centre or field of view) further than this
        from what was commanded puts the loop in safe hold.
    max_frame_age_s : frames whose acquisition ended longer ago than this are skipped, never analysed
        (instrument and agent clocks must agree to well within it).
    perception_timeout_s : a model that takes longer on one frame is declared hung: safe hold.
    trust_recorded_fields : honour a driver's claim to serve recorded fields (a strict replay, whose
        frames' readback and age are then not checked); an untrusted claim is refused (at the start)
        or puts the loop in safe hold (after a reconnection).
    """

    steps: int
    frame_timeout_s: float = 30.0
    command_timeout_s: float = 5.0
    max_failures: int = 20
    reconnect_grace_s: float = 10.0
    stop_timeout_s: float = 1.0
    readback_tolerance_nm: float = 0.5
    max_frame_age_s: float = 60.0
    perception_timeout_s: float = 60.0
    trust_recorded_fields: bool = False

    def __post_init__(self) -> None:
        for name in ("frame_timeout_s", "command_timeout_s", "reconnect_grace_s", "stop_timeout_s",
                     "max_frame_age_s", "perception_timeout_s"):  # fmt: skip
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"LoopConfig.{name} must be a positive number of seconds (got {value!r})")


@dataclass
class RunState:
    """What the loop has done so far (read by the live view and the summary)."""

    steps_done: int = 0
    issued: int = 0
    failures_in_row: int = 0
    refusals: list[dict[str, Any]] = field(default_factory=list)  # the latest 1000
    refusal_count: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    fields: list[tuple[float, float, float]] = field(default_factory=list)
    atoms_found: int = 0
    featureless_frames: int = 0  # analysed frames with nothing above their noise (models.input_check)
    travel_nm: float = 0.0
    status: str = "running"
    reason: str = ""
    beam_blank: str = ""  # how the blank on the way out ended (see Loop._shutdown); "" while running
    last: Observation | None = None
    frames_received: int = 0  # = frames_analysed + sum(frames_skipped.values()), always
    frames_analysed: int = 0
    frames_recorded: int = 0
    frames_skipped: dict[str, int] = field(default_factory=dict)
    frames_lost_with_link: int = 0  # scans in flight when the connection was lost: their frames never came
    commands: dict[str, int] = field(default_factory=dict)  # sent, acked, refused_locally, refused_remotely...
    model_failures: dict[str, int] = field(default_factory=dict)
    fallback_decisions: int = 0

    def skip(self, reason: str) -> None:
        """Count a received frame that was not analysed."""
        bump(self.frames_skipped, reason)

    def counters(self) -> dict[str, Any]:
        """The run's counters as the stop record and ``autoscope sessions inspect`` show them."""
        frames = {
            "received": self.frames_received, "analysed": self.frames_analysed, "recorded": self.frames_recorded,
            "skipped": dict(self.frames_skipped), "lost_with_link": self.frames_lost_with_link,
        }  # fmt: skip
        return {
            "frames": frames,
            "commands": dict(self.commands),
            "model_failures": dict(self.model_failures),
            "fallback_decisions": self.fallback_decisions,
        }


def bump(counter: dict[str, int], key: str, n: int = 1) -> None:
    """Add ``n`` to ``counter[key]`` (0 when absent)."""
    counter[key] = counter.get(key, 0) + n
