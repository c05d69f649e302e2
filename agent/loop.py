"""The streaming loop: the only place that sends commands to an instrument.

Driver -> Frame -> perception -> Observation -> Policy.ingest / suggest -> Decision -> Guard -> Command
-> Driver, with per-stage timings, a session record of everything, and a stop record however it ends.
When the policy commits ahead (a raster), the next scan is sent before the current frame is analysed,
so the instrument works while the agent thinks.  Built in layers (:mod:`agent.loop_base`): this module
holds the run and the analysis of each frame; :mod:`agent.loop_traffic` the scans and frames;
:mod:`agent.loop_link` the instrument connection.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from agent.exit_blank import blank_on_the_way_out, capabilities_now, record_if_possible
from agent.guard import Guard
from agent.loop_base import InFlight, logger
from agent.loop_link import UntrustedReplayClaim
from agent.loop_traffic import _Traffic
from agent.observation import Observation
from agent.perception import Perception
from agent.policies import Policy
from agent.recorder import SessionRecorder
from agent.run_state import Interrupted, LoopConfig, RunState, StopLoop, bump
from agent.scoring import TruthScorer
from agent.timings import StageTimings
from drivers.base import Driver, Frame
from drivers.recording import RecordingError
from models.preprocess import ImageError
from models.segmenter import ModelOutputError

__all__ = ["Interrupted", "Loop", "LoopConfig", "UntrustedReplayClaim"]


class Loop(_Traffic):
    """Run a policy against an instrument.

    Parameters
    ----------
    driver, perception, policy, guard
        The parts; the loop owns none of them (the caller closes the driver).
    config
        Steps and fault tolerance.
    recorder
        Where records go (a recorder with no directory records nothing).
    on_step
        Called after every analysed frame with the loop (the live view).
    fallback
        A model-free policy (a raster) that takes the next decision whenever the model fails on a frame
        (raises, or returns non-finite or mis-shaped outputs): that frame is not analysed, the policy is
        not fed, and the instrument keeps acquiring.  None: the failed step is simply retried.
    """

    def __init__(
        self,
        driver: Driver,
        perception: Perception,
        policy: Policy,
        guard: Guard,
        config: LoopConfig,
        recorder: SessionRecorder | None = None,
        on_step: Callable[[Loop], None] | None = None,
        fallback: Policy | None = None,
    ) -> None:
        self.driver, self.perception, self.policy, self.guard = driver, perception, policy, guard
        self.fallback = fallback
        self._fallback_due = False
        self.paused = False
        self._seen_generation = self._link_generation()
        self.config = config
        # a strict replay is said once by the driver, not by each frame; taken only from a trusted driver
        self._replaying = self._replay_claim(capabilities_now(driver))
        self.recorder = recorder or SessionRecorder(None)
        self.on_step = on_step
        self.timings = StageTimings()
        self.state = RunState()
        self.scorer = TruthScorer()
        self._in_flight: deque[InFlight] = deque()
        self._current: InFlight | None = None
        self._lost_since: float | None = None
        self._frame_at: float | None = None
        self._perceiver = ThreadPoolExecutor(1, thread_name_prefix="perception")  # a hung model cannot hang the loop

    # -- the run --------------------------------------------------------------------------------------
    def run(self) -> RunState:
        """Run until ``steps`` frames are analysed, the policy has nothing left, or something stops it.

        Always blanks the beam and writes a stop record; ``state.status`` is ``completed``,
        ``exhausted`` (the policy ran out of fields), ``interrupted``, ``failed`` or ``held`` (safe hold:
        the instrument refused a move, a frame's readback was off, or the model hung; nothing more is
        sent until an operator starts a new run).
        """
        if self.start():
            while self.step():
                pass
        return self.state

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the run has ended (stop record written)."""
        return self.state.status == "running"

    def start(self) -> bool:
        """Unblank the beam; False if the run ended at once (see ``state``)."""
        return self._guarded(lambda: self._send_simple(self._unblank_command()))

    def step(self) -> bool:
        """Analyse one more frame (a paused loop does nothing); False once the run has ended."""
        if not self.running:
            return False
        if self.paused:
            return True
        if self.state.steps_done >= self.config.steps:
            self._shutdown("completed", f"{self.config.steps} steps done")
            return False
        return self._guarded(self._step)

    def pause(self) -> None:
        """Operator pause: blank the beam and send nothing more until :meth:`resume` (scans in flight finish)."""
        if self.running and not self.paused and self._guarded(lambda: self._send_simple(self._blank_command())):
            self.paused = True
            record_if_possible(lambda: self.recorder.write("paused", step=self.state.issued))

    def resume(self) -> None:
        """End a pause: unblank, then steps go on."""
        if self.running and self.paused:
            self.paused = False
            if self._guarded(lambda: self._send_simple(self._unblank_command())):
                record_if_possible(lambda: self.recorder.write("resumed", step=self.state.issued))

    def abort(self, reason: str) -> None:
        """End the run now (an operator's stop): blank, stop record with ``reason``."""
        if self.running:
            self._shutdown("interrupted", reason)

    def _guarded(self, action: Callable[[], None]) -> bool:
        """Run ``action``; end the run (blank, stop record) on whatever stops it, and say whether it goes on."""
        try:
            action()
            return True
        except (Interrupted, KeyboardInterrupt) as exc:
            self._shutdown("interrupted", str(exc) or type(exc).__name__)
        except StopLoop as exc:
            self._shutdown(exc.status, exc.reason)
        except RecordingError as exc:  # nothing may be sent that cannot be recorded first
            self._shutdown("failed", f"the session can no longer be recorded: {exc}")
        except Exception as exc:
            self._shutdown("failed", f"unexpected {type(exc).__name__}: {exc}")
            raise
        return False

    def _step(self) -> None:
        depth = 2 if self.policy.commits_ahead else 1
        self._fill(depth)
        if not self._in_flight:
            raise StopLoop("exhausted", "the policy has no field left to propose")
        job = self._current = self._in_flight.popleft()
        try:
            self._handle(job, depth)
        finally:
            self._current = None
            s = self.state
            in_hand = s.frames_received - s.frames_analysed - sum(s.frames_skipped.values())
            if in_hand > 0:  # the run stopped with a frame received but not yet analysed or skipped
                s.skip("run_stopped")

    def _handle(self, job: InFlight, depth: int) -> None:
        t0 = time.perf_counter()
        frame = self._await_frame(job)
        self.timings.add("wait_frame", 1e3 * (time.perf_counter() - t0))
        if frame is not None and frame.header.command_id != job.command.id:
            job = self._current = self._skip_to(job, str(frame.header.command_id))
        if frame is None:
            self._failed(job.decision, "no usable frame")
            return
        self._check_frame(job, frame)
        self._frame_at = time.perf_counter()
        if self.policy.commits_ahead:
            self._fill(depth)  # the instrument scans the next field while this one is analysed
        if self._too_old(job, frame):  # checked last: sending the next scan may have taken a while
            return
        self._analyse(job, frame)

    def _analyse(self, job: InFlight, frame: Frame) -> None:
        t0 = time.perf_counter()
        try:
            obs = self._observe(job, frame)
        except StopLoop:  # a hung model: safe hold
            raise
        except ImageError as exc:
            self.state.skip("bad_frame")
            self._error("bad_frame", f"frame of step {job.step} cannot be analysed: {exc}", step=job.step)
            self._record_frame(frame, job.step)
            self._failed(job.decision, str(exc))
            return
        except Exception as exc:  # the model failed on a good frame: no decision from it
            self._model_failed(job, frame, exc)
            return
        t1 = time.perf_counter()
        self._call_policy("ingest", lambda: self.policy.ingest(obs))
        t2 = time.perf_counter()
        self.timings.add("perceive", 1e3 * (t1 - t0))
        self.timings.add("ingest", 1e3 * (t2 - t1))
        true_new = self.scorer.add(frame, obs)
        truth = {"true_new_defects": true_new} if self.scorer.available else {}
        stages = ("wait_frame", "suggest", "guard", "send", "perceive", "ingest", "frame_to_command")
        loop_ms = {k: round(self.timings.last(k), 3) for k in stages if self.timings.counts.get(k)}
        self._record_frame(frame, job.step)
        self.recorder.write("observation", **obs.summary(), **truth, loop_ms=loop_ms)
        self.timings.add("record", 1e3 * (time.perf_counter() - t2))
        for stage, ms in obs.timings_ms.items():
            self.timings.add(f"perceive.{stage}", ms)
        s = self.state
        s.frames_analysed += 1
        s.steps_done += 1
        s.failures_in_row = 0
        s.atoms_found += obs.n_atoms
        s.featureless_frames += obs.featureless
        s.last = obs
        if self.on_step is not None:
            self.on_step(self)

    def _observe(self, job: InFlight, frame: Frame) -> Observation:
        """Perception on the worker thread, waited for at most ``perception_timeout_s``."""
        pending = self._perceiver.submit(self.perception.observe, frame, job.step, job.command.rotation_deg)
        try:
            return pending.result(timeout=self.config.perception_timeout_s)
        except FutureTimeout:
            self.state.skip("perception_hung")
            self._error(
                "perception_hung", f"no observation of step {job.step} after {self.config.perception_timeout_s:g} s"
            )
            self._hold(f"the model did not answer within perception_timeout_s={self.config.perception_timeout_s:g}")
            raise  # unreachable: _hold raises

    def _model_failed(self, job: InFlight, frame: Frame, exc: Exception) -> None:
        """Withhold the decision the frame would have fed; the fallback policy takes the next one."""
        reason = exc.reason if isinstance(exc, ModelOutputError) else f"raised_{type(exc).__name__}"
        bump(self.state.model_failures, reason)
        self.state.skip("model_failed")
        self._record_frame(frame, job.step)
        fallback = self.fallback.name if self.fallback is not None else None
        message = f"the model failed on the frame of step {job.step} ({reason}): {exc}"
        self._error("model_failed", message, step=job.step, reason=reason, fallback=fallback)
        self._fallback_due = self.fallback is not None
        self._failed(job.decision, f"model failed: {reason}")

    def _shutdown(self, status: str, reason: str) -> None:
        """Blank the beam (bounded wait) and write the stop record.

        The record's ``beam_blank`` says how the blank ended (:func:`agent.exit_blank.blank_on_the_way_out`:
        ``acknowledged``, ``unacknowledged``, ``refused``, ``failed``, ``unsupported``); ``beam_blanked``
        is true only for ``acknowledged``.
        """
        blank = blank_on_the_way_out(self.driver, self.recorder, self._send_counted, self._error,
                                     self.config.stop_timeout_s, self.state.issued)  # fmt: skip
        blanked = blank == "acknowledged"
        if not blanked:
            logger.warning("the beam was not confirmed blanked on the way out: %s", blank)
        self._perceiver.shutdown(wait=False, cancel_futures=True)  # a hung model's thread is left behind
        s = self.state
        s.status, s.reason, s.beam_blank = status, reason, blank
        timings_ms = self.timings.summary()
        counters = {**s.counters(), "link": self._link_counters(timings_ms), "recorder": self.recorder.counters()}
        record_if_possible(lambda: self.recorder.write(
            "stop", status=status, reason=reason, beam_blanked=blanked, beam_blank=blank, steps=s.steps_done,
            timings_ms=timings_ms, errors=s.errors, frames=counters["frames"], counters=counters,
        ))  # fmt: skip
        logger.info("run %s: %s", status, reason)
