"""A tilt-series experiment: the agent chooses tilts, the instrument projects, the series is reconstructed.

Each tilt is a ``set_tilt`` decision that passes the guard (which refuses anything outside the holder's
range), then a scan of the whole projection that passes it too (the frame's dose, the dose budget over
the series: the one field is scanned at every tilt, so repeats are allowed); both commands and every
projection are recorded as in a scan session.  At the end the series is reconstructed with each
method and, when the phantom is known (a simulation), scored against it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.exit_blank import blank_on_the_way_out
from agent.frame_checks import is_strict_replay, readback_problem
from agent.guard import Decision, Guard, GuardConfig, Refusal
from agent.policies.tilt import tilt_plan
from agent.recorder import SessionRecorder
from agent.timings import StageTimings
from drivers.base import (
    Capabilities,
    Command,
    CommandRefused,
    Driver,
    DriverTimeout,
    Frame,
    ProtocolError,
    ScanCommand,
    UnblankCommand,
    deadline_in,
)
from models.tomo import psnr_db, reconstruct

#: How long past its scan time a projection's frame is waited for (s).
FRAME_TIMEOUT_S = 30.0


@dataclass
class TiltSeries:
    """What a tilt experiment acquired."""

    angles_deg: list[float] = field(default_factory=list)
    projections: list[np.ndarray] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: How the blank at the end went (:func:`agent.exit_blank.blank_on_the_way_out`); None before the end.
    beam_blank: str | None = None
    #: Why the instrument's answers ended the series (a refused projection, no frame, a read-back off): a safe
    #: hold, after which an operator checks the instrument; None when it did what it was told.
    held: str | None = None
    #: Why the series stopped before its last tilt (a projection the guard refused: its dose, the budget; or
    #: the hold above); None when every tilt was asked for.
    ended: str | None = None


@dataclass(frozen=True)
class Readback:
    """How far a projection may be read back from what was commanded before the series is held.

    Parameters
    ----------
    tolerance_nm : the field's centre and field of view (also its pixels, and a dwell at most 5 % longer:
        :func:`~agent.frame_checks.readback_problem`).  Not checked on a strict replay's frames, which are
        the recorded fields wherever a scan asks.
    tilt_tolerance_deg : the tilt (a goniometer reads back within about a tenth of a degree of where it
        settled).  Checked on a strict replay too: its frames carry the recorded tilt.
    replay_trusted : take a frame's word that it is a strict replay's (the field then goes unchecked):
        only for a replay this program runs itself, never for an instrument over the wire, whose bridge
        could say so of a live microscope's frames.
    """

    tolerance_nm: float = 0.5
    tilt_tolerance_deg: float = 0.5
    replay_trusted: bool = False

    def problem(self, scan: ScanCommand, tilt_deg: float, frame: Frame) -> str | None:
        """Why ``frame`` is not the projection of ``scan`` at ``tilt_deg``, or None."""
        header = frame.header
        if not abs(header.tilt_deg - tilt_deg) <= self.tilt_tolerance_deg:
            return (
                f"tilt read back as {header.tilt_deg:g} deg, commanded {tilt_deg:g} deg "
                f"(tolerance {self.tilt_tolerance_deg:g})"
            )
        if self.replay_trusted and is_strict_replay(frame):
            return None
        return readback_problem(scan, header, self.tolerance_nm)


class PlannedTilts:
    """A fixed scheme (:func:`~agent.policies.tilt.tilt_plan`) behind the next-angle interface."""

    def __init__(self, scheme: str, n_tilts: int, range_deg: tuple[float, float]) -> None:
        self.scheme = scheme
        self.plan = tilt_plan(scheme, n_tilts, *range_deg)

    def next_angle(self, angles_deg: list[float], projections: list[np.ndarray]) -> tuple[float, dict[str, Any]]:
        """The next planned angle (projections are not looked at)."""
        k = self.asked
        self.asked += 1
        return self.plan[k], {"scheme": self.scheme, "order": k}

    asked = 0


@dataclass(frozen=True)
class ProjectionField:
    """Where and how every projection of a series is scanned.

    Attributes
    ----------
    x_nm, y_nm : field centre on the specimen, nm (an instrument does not report where it is: for one, the
        user gives it).  fov_nm, pixels : field of view and pixels a side; None takes the instrument's
        smallest (a simulated holder reports exactly one).  dwell_us : pixel dwell.
    """

    x_nm: float = 0.0
    y_nm: float = 0.0
    fov_nm: float | None = None
    pixels: int | None = None
    dwell_us: float = 1.0

    def decision(self, cap: Capabilities, angle_deg: float) -> Decision:
        """The projection scan at ``angle_deg`` (for the guard to check)."""
        side = int(cap.pixels.low if self.pixels is None else self.pixels)
        fov_nm = cap.fov_nm.low if self.fov_nm is None else self.fov_nm
        why = {"projection_at_tilt_deg": angle_deg}
        return Decision("scan", self.x_nm, self.y_nm, fov_nm, side, side, self.dwell_us, rationale=why)


def acquire_series(
    driver: Driver, chooser: Any, n_tilts: int, recorder: SessionRecorder, timings: StageTimings,
    guard_config: GuardConfig | None = None, where: ProjectionField | None = None, readback: Readback | None = None,
) -> TiltSeries:  # fmt: skip
    """Ask ``chooser.next_angle`` ``n_tilts`` times; refused tilts are recorded and skipped.

    A refused projection scan (its field, its dose, or the series' dose budget) ends the series: every
    later projection is of the same field (``where``; default :class:`ProjectionField`).  A tilt the
    holder refuses is skipped like one the guard refuses; a refused unblank or projection, a projection
    whose frame does not come, or one read back off the commanded tilt or field (``readback``; default
    :class:`Readback`) ends the series in a safe hold (:attr:`TiltSeries.held`).  The beam is blanked
    when the series ends, however it ends (:attr:`TiltSeries.beam_blank` says how that went).
    ``guard_config`` defaults to :class:`GuardConfig` with revisits allowed.
    """
    cap = driver.capabilities()
    guard = Guard(cap, guard_config or GuardConfig(allow_revisits=True))
    run = _Acquisition(
        driver, chooser, recorder, timings, guard, cap, where or ProjectionField(), readback or Readback()
    )
    try:
        if run.unblank():
            for step in range(n_tilts):
                if not run.step(step):
                    break
    finally:
        run.series.beam_blank = run.blank()
    return run.series


@dataclass
class _Acquisition:
    """One tilt series being acquired: a tilt and its projection per step."""

    driver: Driver
    chooser: Any
    recorder: SessionRecorder
    timings: StageTimings
    guard: Guard
    cap: Capabilities
    where: ProjectionField
    readback: Readback
    series: TiltSeries = field(default_factory=TiltSeries)
    refused: set[float] = field(default_factory=set)
    last_step: int = 0

    def unblank(self) -> bool:
        """Unblank for the series (recorded first); False, a safe hold, when the instrument refuses."""
        if "unblank" not in self.cap.command_kinds:
            return True
        why_not = self._send(UnblankCommand(deadline_unix_s=deadline_in(5.0)), 0)
        return why_not is None or self._hold(0, f"the instrument refused to unblank: {why_not}")

    def step(self, step: int) -> bool:
        """Choose a tilt, go there and record its projection; False when the series ends here."""
        t0 = time.perf_counter()
        self.last_step = step
        density = [_density(p, self.series.metadata) for p in self.series.projections]
        angle, why = self.chooser.next_angle(self.series.angles_deg, density)
        decision = Decision("set_tilt", tilt_deg=angle, rationale=why)
        if angle in self.refused:  # the chooser is stuck on an angle that was refused: asking again changes nothing
            self.recorder.decision(decision, step)
            reason = f"the chooser proposed {angle:g} deg again after it was refused; no further tilts"
            return self._end(step, "loop", reason, reason)
        checked = self.guard.check(decision)
        self.timings.add("decide", 1e3 * (time.perf_counter() - t0))
        self.recorder.decision(decision, step)
        if isinstance(checked, Refusal):
            return self._skip(step, angle, "guard", checked.reason)
        projection = self.where.decision(self.cap, angle)
        scan = self.guard.check(projection)
        if isinstance(scan, Refusal):
            self.recorder.decision(projection, step)
            return self._end(step, "guard", scan.reason, f"projection: {scan.reason}; no further tilts")
        if (why_not := self._send(checked, step)) is not None:
            return self._skip(step, angle, "instrument", f"the holder refused tilt {angle:g} deg: {why_not}")
        if (why_not := self._send(scan, step)) is not None:
            return self._hold(step, f"the instrument refused the projection at {angle:g} deg: {why_not}")
        assert isinstance(scan, ScanCommand)  # (what the guard makes of a scan decision)
        self.guard.commit(scan)
        if not self._project(step, scan, angle):
            return False
        self.timings.add("step", 1e3 * (time.perf_counter() - t0))
        return True

    def _project(self, step: int, scan: ScanCommand, angle: float) -> bool:
        """Take the scan's frame into the series once its read-back matches what was commanded."""
        frame = self._frame_of(step, scan)
        if isinstance(frame, str):
            return self._hold(step, f"no projection came at {angle:g} deg: {frame}")
        self.recorder.frame(frame, step)
        problem = self.readback.problem(scan, angle, frame)
        if problem is not None:
            return self._hold(step, f"the projection at {angle:g} deg was read back off: {problem}")
        self.series.angles_deg.append(float(frame.header.tilt_deg))
        self.series.projections.append(np.asarray(frame.image, dtype=np.float32))
        self.series.metadata = dict(frame.header.metadata)
        return True

    def _send(self, command: Command, step: int) -> str | None:
        """Record and send ``command``, record its ack; why it was refused, or None when it was accepted."""
        self.recorder.command(command, step)
        try:
            ack = self.driver.send(command)
        except CommandRefused as exc:
            ack = exc.ack
        self.recorder.ack(ack, step)
        return None if ack.accepted else ack.reason or ack.code

    @staticmethod
    def _frame_wait_s(scan: ScanCommand) -> float:
        return FRAME_TIMEOUT_S + scan.duration_s

    def _frame_of(self, step: int, scan: ScanCommand) -> Frame | str:
        """The scan's frame, or why none came (frames of earlier scans, delivered late, are recorded as errors)."""
        wait_s = self._frame_wait_s(scan)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                frame = self.driver.next_frame(max(deadline - time.monotonic(), 0.0))
            except DriverTimeout:
                return f"none within {wait_s:g} s"
            except ProtocolError as exc:  # the server's word that the acquisition failed (a lost link propagates)
                return str(exc)
            if frame.header.command_id in (None, scan.id):
                return frame
            message = f"a frame answering {frame.header.command_id} arrived for {scan.id}"
            self.recorder.write("error", kind="stale_frame", message=message, step=step)

    def _skip(self, step: int, angle: float, source: str, reason: str) -> bool:
        """A refused tilt: recorded, never proposed again; the series goes on."""
        self.refused.add(angle)
        self.series.refusals.append(reason)
        self.recorder.write("refusal", step=step, source=source, reason=reason)
        return True

    def _end(self, step: int, source: str, reason: str, recorded: str) -> bool:
        self.series.refusals.append(reason)
        self.series.ended = reason
        self.recorder.write("refusal", step=step, source=source, reason=recorded)
        return False

    def _hold(self, step: int, reason: str) -> bool:
        """The instrument did not do what it was told: no further tilts (a safe hold)."""
        self.series.held = reason
        return self._end(step, "instrument", reason, f"safe hold: {reason}")

    def blank(self) -> str:
        """Blank the beam at the end of the series, however it ended; how that went (``acknowledged``...)."""

        def error(kind: str, message: str) -> None:
            self.recorder.write("error", kind=kind, message=message, step=self.last_step)

        return blank_on_the_way_out(self.driver, self.recorder, self.driver.send, error, 5.0, self.last_step)


def _density(projection: np.ndarray, m: dict[str, Any]) -> np.ndarray:
    """A projection as projected density, undoing the simulated detector when its constants are known."""
    if {"dose_e_per_px", "background", "signal_per_voxel"} <= set(m):
        return (projection / m["dose_e_per_px"] - m["background"]) / m["signal_per_voxel"]
    return projection


def projected_density(series: TiltSeries) -> np.ndarray:
    """Every projection as projected density, ``(n, rows, cols)``."""
    return np.stack([_density(p, series.metadata) for p in series.projections])


def score(volumes: dict[str, np.ndarray], truth: np.ndarray) -> dict[str, dict[str, float]]:
    """PSNR (dB) and SSIM of each reconstruction against the true volume."""
    from skimage.metrics import structural_similarity

    out = {}
    for method, vol in volumes.items():
        data_range = float(truth.max() - truth.min()) or 1.0
        ssim = structural_similarity(vol.astype(np.float64), truth.astype(np.float64), data_range=data_range)
        out[method] = {"psnr_db": round(psnr_db(vol, truth), 3), "ssim": round(float(ssim), 4)}
    return out


def reconstruct_all(series: TiltSeries, inpainter: Any = None) -> dict[str, np.ndarray]:
    """One volume per method: ``wbp``, ``sart`` and, with an inpainter, ``inpaint-wbp``."""
    density = projected_density(series)
    angles = np.array(series.angles_deg)
    volumes = {m: reconstruct(density, angles, m) for m in ("wbp", "sart")}
    if inpainter is not None:
        from models.inpaint import reconstruct_inpainted

        volumes["inpaint-wbp"] = reconstruct_inpainted(density, angles, inpainter)
    return volumes
