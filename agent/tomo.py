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

from agent.guard import Decision, Guard, GuardConfig, Refusal
from agent.policies.tilt import tilt_plan
from agent.recorder import SessionRecorder
from agent.timings import StageTimings
from drivers.base import Capabilities, Driver, UnblankCommand, deadline_in
from models.tomo import psnr_db, reconstruct


@dataclass
class TiltSeries:
    """What a tilt experiment acquired."""

    angles_deg: list[float] = field(default_factory=list)
    projections: list[np.ndarray] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


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
    guard_config: GuardConfig | None = None, where: ProjectionField | None = None,
) -> TiltSeries:  # fmt: skip
    """Ask ``chooser.next_angle`` ``n_tilts`` times; refused tilts are recorded and skipped.

    A refused projection scan (its field, its dose, or the series' dose budget) ends the series: every
    later projection is of the same field (``where``; default :class:`ProjectionField`).
    ``guard_config`` defaults to :class:`GuardConfig` with revisits allowed.
    """
    where = where or ProjectionField()
    cap = driver.capabilities()
    guard = Guard(cap, guard_config or GuardConfig(allow_revisits=True))
    driver.send(UnblankCommand(deadline_unix_s=deadline_in(5.0)))
    series = TiltSeries()
    refused: set[float] = set()
    for step in range(n_tilts):
        t0 = time.perf_counter()
        density = [_density(p, series.metadata) for p in series.projections]
        angle, why = chooser.next_angle(series.angles_deg, density)
        decision = Decision("set_tilt", tilt_deg=angle, rationale=why)
        if angle in refused:  # the chooser is stuck on an angle the guard refuses: asking again changes nothing
            reason = f"the chooser proposed {angle:g} deg again after it was refused; no further tilts"
            series.refusals.append(reason)
            recorder.decision(decision, step)
            recorder.write("refusal", step=step, source="loop", reason=reason)
            break
        checked = guard.check(decision)
        timings.add("decide", 1e3 * (time.perf_counter() - t0))
        recorder.decision(decision, step)
        if isinstance(checked, Refusal):
            refused.add(angle)
            series.refusals.append(checked.reason)
            recorder.write("refusal", step=step, source="guard", reason=checked.reason)
            continue
        projection = where.decision(cap, angle)
        scan = guard.check(projection)
        if isinstance(scan, Refusal):
            series.refusals.append(scan.reason)
            recorder.decision(projection, step)
            recorder.write("refusal", step=step, source="guard", reason=f"projection: {scan.reason}; no further tilts")
            break
        recorder.command(checked, step)
        recorder.ack(driver.send(checked), step)
        recorder.command(scan, step)
        recorder.ack(driver.send(scan), step)
        guard.commit(scan)
        frame = driver.next_frame(30.0)
        recorder.frame(frame, step)
        series.angles_deg.append(float(frame.header.tilt_deg))
        series.projections.append(np.asarray(frame.image, dtype=np.float32))
        series.metadata = dict(frame.header.metadata)
        timings.add("step", 1e3 * (time.perf_counter() - t0))
    return series


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
