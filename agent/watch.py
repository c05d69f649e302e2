"""Watching: analyse the frames a person acquires and suggest where to look next; never send a command.

The watcher reads an instrument server's frame stream (:class:`drivers.observer.FrameSubscriber`).
When frames come faster than the model can analyse them it analyses the newest and skips the rest,
counting them: frames received = analysed + skipped (by reason), exactly.  Frames older than
``max_frame_age_s`` are skipped too.  A policy, if given, learns from every observation and its
suggestion for the next field is recorded (and shown), never sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.frame_checks import frame_age_s
from agent.guard import Decision
from agent.observation import Observation
from agent.perception import Perception
from agent.policies import Policy
from agent.recorder import SessionRecorder, decision_record
from drivers.base import DriverTimeout, Frame
from drivers.observer import FrameSubscriber
from models.preprocess import ImageError

logger = logging.getLogger(__name__)


@dataclass
class WatchState:
    """What the watcher has seen so far."""

    frames_received: int = 0
    frames_analysed: int = 0
    featureless: int = 0  # analysed frames with nothing above their noise (models.input_check): no atoms
    frames_skipped: dict[str, int] = field(default_factory=dict)
    suggestions: int = 0
    last: Observation | None = None
    last_suggestion: Decision | None = None

    def skip(self, reason: str, n: int = 1) -> None:
        """Count ``n`` received frames that were not analysed."""
        if n:
            self.frames_skipped[reason] = self.frames_skipped.get(reason, 0) + n


class Watcher:
    """Analyse a frame stream as fast as the model allows.

    Parameters
    ----------
    frames
        The stream.
    perception
        Segmentation and observation.
    policy
        Optional: learns from each observation; its next suggestion is recorded.
    recorder
        Where observations and suggestions go (records nothing by default).
    max_frame_age_s
        Older frames are skipped.
    on_frame
        Called after each analysed frame (a live view).
    """

    def __init__(
        self,
        frames: FrameSubscriber,
        perception: Perception,
        policy: Policy | None = None,
        recorder: SessionRecorder | None = None,
        max_frame_age_s: float = 10.0,
        on_frame: Callable[[Watcher], None] | None = None,
    ) -> None:
        self.frames, self.perception, self.policy = frames, perception, policy
        self.recorder = recorder or SessionRecorder(None)
        self.max_frame_age_s = max_frame_age_s
        self.on_frame = on_frame
        self.state = WatchState()

    def run(self, duration_s: float, idle_timeout_s: float = 1.0, start: dict[str, Any] | None = None) -> WatchState:
        """Watch for ``duration_s`` seconds; returns what was seen.

        The session opens with a ``start`` record (``kind="watch"``, the stream, and the fields of
        ``start``) and, however watching ends (Ctrl-C included), closes with a ``stop`` record (status
        ``completed``, ``interrupted`` or ``failed``, with the counts as its ``counters``) followed by
        a ``watch_stop`` record of the counts, as a run's stop record is followed by its summary.
        """
        self.recorder.write("start", kind="watch", frames=self.frames.endpoint, duration_s=duration_s,
                            max_frame_age_s=self.max_frame_age_s, **(start or {}))  # fmt: skip
        status, reason = "failed", "stopped by an error"
        try:
            self._watch(duration_s, idle_timeout_s)
            status, reason = "completed", f"watched for {duration_s:g} s"
        except KeyboardInterrupt:
            status, reason = "interrupted", "stopped by Ctrl-C"
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            counts = self._counts()
            self.recorder.write("stop", status=status, reason=reason, counters=counts)
            self.recorder.write("watch_stop", **counts)
        return self.state

    def _watch(self, duration_s: float, idle_timeout_s: float) -> None:
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            try:
                first = self.frames.next_frame(min(idle_timeout_s, max(end - time.monotonic(), 0.0)))
            except DriverTimeout:
                continue
            batch = [first, *self.frames.pending()]
            self.state.frames_received += len(batch)
            self.state.skip("behind", len(batch) - 1)  # the model cannot keep up: only the newest is analysed
            self._analyse(batch[-1])

    def _counts(self) -> dict[str, Any]:
        """Frames received, analysed and skipped (by reason), lost by the stream, and suggestions made."""
        s = self.state
        return {"received": s.frames_received, "analysed": s.frames_analysed, "featureless": s.featureless,
                "skipped": dict(s.frames_skipped), "stream_lost": int(self.frames.stats["frames_lost"]),
                "suggestions": s.suggestions}  # fmt: skip

    def _analyse(self, frame: Frame) -> None:
        s = self.state
        if frame_age_s(frame) > self.max_frame_age_s:
            s.skip("too_old")
            return
        try:
            obs = self.perception.observe(frame, s.frames_analysed, _rotation(frame))
        except ImageError:
            s.skip("bad_frame")
            return
        except Exception as exc:  # a failing model: no suggestion from this frame
            logger.warning("the model failed on a watched frame: %s", exc)
            s.skip("model_failed")
            return
        s.frames_analysed += 1
        s.featureless += obs.featureless
        s.last = obs
        self.recorder.write("observation", **obs.summary())
        if self.policy is not None:
            self.policy.ingest(obs)
            suggested = self.policy.suggest(1)
            if suggested:
                release = getattr(self.policy, "release", None)  # (a policy written before release existed)
                if release is not None:
                    release(suggested[0])  # advice only: proposed again until the person scans there
                s.last_suggestion = suggested[0]
                s.suggestions += 1
                self.recorder.write("suggestion", **_without_type(decision_record(suggested[0], s.suggestions)))
        if self.on_frame is not None:
            self.on_frame(self)


def _rotation(frame: Frame) -> float:
    value = frame.header.metadata.get("rotation_deg", 0.0)
    return float(value) if isinstance(value, (int, float)) else 0.0


def _without_type(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "type"}
