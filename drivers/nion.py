"""A :class:`~drivers.base.Driver` over Nion Swift's instrumentation API (nionswift-instrumentation).

The driver talks to the two objects every Nion STEM exposes inside its Swift process, or headless with
Nion's own simulator (:mod:`drivers.nion_usim`): the STEM controller (named controls such as the beam
blanker ``C_Blank``) and the scan hardware source (frame parameters, ``record_immediate``).  Serve it
with :class:`drivers.server.InstrumentServer` like any other driver.

Coordinates.  A frame's ``(x_nm, y_nm)`` is the centre of its field on the specimen, in the frame the
protocol defines (columns along +x, rows along +y).  With ``positioner="scan"`` (default) fields are
placed by the scan offset (``center_nm``) within the scan's reach and the stage stays put; with
``positioner="stage"`` the stage moves (``StageOutX/Y`` on a microscope, ``stage_position_m`` in
usim; metres) and the scan stays centred.  Either way the field centre on the specimen is
``center - (stage - beam shift)``, which is what usim renders and what the header reads back.

Nion's ``fov_nm`` spans the frame's rows; ours spans its columns: the driver converts, so pixels
stay square (``pixel_size_nm = fov_nm / cols``).  Limits Nion does not report (pixel counts, dwell,
dose) come from :class:`NionLimits`.  Tilt is offered only where the instrument has a stage tilt
control (``StageOutA``, radians).  The package is optional: ``pip install 'autoscope[nion]'``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from drivers.base import (
    Ack,
    BlankCommand,
    Capabilities,
    Command,
    CommandRefused,
    Disconnected,
    Frame,
    FrameHeader,
    ProtocolError,
    Range,
    ScanCommand,
    SetTiltCommand,
    StopCommand,
    UnblankCommand,
)
from drivers.local import BeamState, FrameQueue

# Control names, tried in order: a Nion microscope first, then Nion's simulator.
STAGE_X = ("StageOutX", "stage_position_m.x")
STAGE_Y = ("StageOutY", "stage_position_m.y")
BEAM_SHIFT_X = ("CSH.x",)
BEAM_SHIFT_Y = ("CSH.y",)
TILT = ("StageOutA",)
logger = logging.getLogger(__name__)

BLANKER = "C_Blank"


def require_nion() -> None:
    """Raise a clear ImportError when Nion's instrumentation packages are missing."""
    try:
        import nion.instrumentation.scan_base  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "the Nion driver needs Nion's instrumentation packages: pip install 'autoscope[nion]' "
            f"(nionswift-instrumentation, and nionswift-usim for the simulator); import failed: {exc}"
        ) from None


class NionLimits(BaseModel):
    """What a Nion instrument does not report itself; set these for the microscope at hand."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    pixels: Range = Range(low=16, high=4096)
    dwell_us: Range = Range(low=0.1, high=1000.0)
    fov_min_nm: float = Field(0.5, gt=0.0)
    stage_reach_nm: float = Field(500.0, gt=0.0, description='positioner="stage": |x|, |y| at most this')
    tilt_deg: Range = Range(low=-60.0, high=60.0)
    max_dose_e_per_a2: float = Field(1e7, gt=0.0)
    readback_tolerance_nm: float = Field(
        1e-6, ge=0.0, le=0.01, description="readbacks this close to the command report the command exactly"
    )


class NionDriver:
    """Drive a Nion STEM through its STEM controller and scan hardware source.

    Parameters
    ----------
    stem
        The STEM controller (``Registry.get_component("stem_controller")``).
    scan
        The scan hardware source (``HardwareSourceManager().get_hardware_source_for_hardware_source_id(...)``).
    limits
        Limits the instrument does not report.
    positioner
        ``"scan"``: place fields by the scan offset; ``"stage"``: move the stage.
    channel
        Index of the detector channel to record (0: HAADF on Nion instruments).
    on_close
        Called last by :meth:`close` (e.g. to stop a simulator the driver was given).
    """

    def __init__(
        self,
        stem: Any,
        scan: Any,
        limits: NionLimits | None = None,
        positioner: Literal["scan", "stage"] = "scan",
        channel: int = 0,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        require_nion()
        self._on_close = on_close
        self.stem, self.scan, self.limits = stem, scan, limits or NionLimits()
        self.positioner, self.channel = positioner, channel
        channels = int(getattr(scan, "channel_count", channel + 1))
        if not 0 <= channel < channels:
            raise ValueError(f"channel {channel}: the scan device has {channels} channels (0 to {channels - 1})")
        self.state = BeamState()
        ok, blanker = stem.TryGetVal(BLANKER)
        self.state.blanked = bool(ok and blanker)  # what the blanker reads now, not an assumption
        self._frames = FrameQueue()
        self._lock = threading.Lock()
        self._acquirer = ThreadPoolExecutor(1, thread_name_prefix="nion-acquire")
        self._generation = 0  # a stop or blank advances it: scans queued before it never run
        self._stage = (self._control(STAGE_X), self._control(STAGE_Y))
        self._shift = (self._control(BEAM_SHIFT_X), self._control(BEAM_SHIFT_Y))
        self._tilt = self._control(TILT)
        if positioner == "stage" and None in self._stage:
            raise ValueError(f"positioner='stage' needs stage controls ({STAGE_X[0]}/{STAGE_Y[0]}); none was found")
        self._cap = self._capabilities()

    # -- the instrument's controls ------------------------------------------------------------------
    def _control(self, names: tuple[str, ...]) -> str | None:
        for name in names:
            ok, _ = self.stem.TryGetVal(name)
            if ok:
                return name
        return None

    def _value(self, name: str | None, default: float = 0.0) -> float:
        if name is None:
            return default
        ok, value = self.stem.TryGetVal(name)
        return float(value) if ok and value is not None else default

    def _offset_nm(self) -> tuple[float, float]:
        """Stage less beam shift, in nm: where the specimen sits under the scan's centre."""
        stage = [1e9 * self._value(n) for n in self._stage]
        shift = [1e9 * self._value(n) for n in self._shift]
        return stage[0] - shift[0], stage[1] - shift[1]

    def _capabilities(self) -> Capabilities:
        lim = self.limits
        max_fov = float(getattr(getattr(self.scan, "max_field_of_view_nm_stream", None), "value", 0.0) or 1000.0)
        if self.positioner == "scan":
            ox, oy = self._offset_nm()
            reach = 0.5 * max_fov
            x_range, y_range = Range(low=-reach - ox, high=reach - ox), Range(low=-reach - oy, high=reach - oy)
        else:
            x_range = y_range = Range(low=-lim.stage_reach_nm, high=lim.stage_reach_nm)
        kinds = ["scan", "blank", "unblank", "stop"] + (["set_tilt"] if self._tilt else [])
        return Capabilities(
            instrument=f"Nion STEM ({getattr(self.scan, 'hardware_source_id', 'scan')}, positioner {self.positioner})",
            command_kinds=tuple(kinds),
            stage_x_nm=x_range,
            stage_y_nm=y_range,
            fov_nm=Range(low=lim.fov_min_nm, high=max_fov),
            pixels=lim.pixels,
            dwell_us=lim.dwell_us,
            tilt_deg=lim.tilt_deg if self._tilt else None,
            max_dose_e_per_a2=lim.max_dose_e_per_a2,
            detectors=(str(self.scan.get_channel_name(self.channel)),),
        )

    # -- Driver ---------------------------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        """Limits: the scan's reach (or the configured stage reach), its maximum field, and :class:`NionLimits`."""
        return self._cap

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._frames.closed

    def send(self, command: Command, timeout_s: float = 5.0) -> Ack:
        """Check a command and carry it out: a scan is queued for acquisition, the rest take effect at once."""
        if self.closed:
            raise Disconnected("the Nion driver is closed")
        with self._lock:
            self.state.admit(self._cap, command)
            if isinstance(command, ScanCommand):
                self._check_reach(command)
                self._acquirer.submit(self._acquire, command, self._generation)
            elif isinstance(command, (BlankCommand, StopCommand)):
                self._generation += 1
                self._set_blanker(command, 1.0)
                self.state.apply(command)
                self._abort_running_scan()
            elif isinstance(command, UnblankCommand):
                self._set_blanker(command, 0.0)
                self.state.apply(command)
            elif isinstance(command, SetTiltCommand):
                self._set_tilt(command)
        return Ack.accept(command)

    def _check_reach(self, command: ScanCommand) -> None:
        """Refuse a field beyond the scan's reach now (the offset read now) or taller than its largest field."""
        max_fov = self._cap.fov_nm.high
        height = command.fov_nm * command.rows / command.cols
        t = math.radians(command.rotation_deg)
        half_x = 0.5 * (abs(math.cos(t)) * command.fov_nm + abs(math.sin(t)) * height)
        half_y = 0.5 * (abs(math.sin(t)) * command.fov_nm + abs(math.cos(t)) * height)
        if height > max_fov:
            reason = f"the field is {height:g} nm tall ({command.rows} rows): the scan spans at most {max_fov:g} nm"
        elif self.positioner == "scan":
            ox, oy = self._offset_nm()
            cx, cy = command.x_nm + ox, command.y_nm + oy
            if abs(cx) + half_x > 0.5 * max_fov or abs(cy) + half_y > 0.5 * max_fov:
                reason = (
                    f"the field at ({command.x_nm:g}, {command.y_nm:g}) nm reaches beyond the scan's"
                    f" {max_fov:g} nm field from where the specimen sits now (offset {ox:g}, {oy:g} nm)"
                )
            else:
                return
        else:
            return
        raise CommandRefused(Ack.refusal(command, "refused", reason))

    def _abort_running_scan(self) -> None:
        """Stop the scan in progress (its frame is dropped: it was stopped)."""
        abort = getattr(self.scan, "abort_recording", None)
        if abort is None:
            return
        try:
            abort()
        except Exception as exc:  # the beam is blanked already; log what did not stop
            logger.error("Nion did not abort the running scan: %s: %s", type(exc).__name__, exc)

    def _set_blanker(self, command: Command, value: float) -> None:
        """Set ``C_Blank`` and read it back; a blanker that did not take the value refuses the command."""
        if not self.stem.SetVal(BLANKER, value):
            raise CommandRefused(Ack.refusal(command, "error", f"Nion did not accept {BLANKER} = {value:g}"))
        readback = self.stem.TryGetVal(BLANKER)
        if readback[0] and readback[1] != value:
            raise CommandRefused(
                Ack.refusal(command, "error", f"{BLANKER} reads {readback[1]!r} after setting {value:g}")
            )

    def next_frame(self, timeout_s: float) -> Frame:
        """The oldest acquired frame; :class:`~drivers.base.DriverTimeout` after ``timeout_s``."""
        return self._frames.get(timeout_s)

    def close(self) -> None:
        """Blank the beam, abort a running acquisition, drop queued ones, refuse further work (idempotent)."""
        if self.closed:
            return
        try:
            self._generation += 1
            if not self.stem.SetVal(BLANKER, 1.0):
                logger.error("closing: Nion did not take %s = 1: the beam may be unblanked", BLANKER)
        finally:
            self.state.blanked = True
            self._frames.close()
            self._abort_running_scan()
            self._acquirer.shutdown(wait=True, cancel_futures=True)
            if self._on_close is not None:
                self._on_close()

    # -- carrying out commands ------------------------------------------------------------------------
    def _set_tilt(self, command: SetTiltCommand) -> None:
        if self._tilt is None or not self.stem.SetVal(self._tilt, math.radians(command.tilt_deg)):
            raise CommandRefused(Ack.refusal(command, "refused", f"the instrument did not take {TILT[0]}"))
        self.state.apply(command)

    def _place(self, command: ScanCommand) -> None:
        """Move the stage for ``positioner="stage"`` (on the acquisition thread, so in order with the scans).

        The scan offset of ``positioner="scan"`` is set with the frame parameters.
        """
        if self.positioner != "stage":
            return
        shift = [1e9 * self._value(n) for n in self._shift]
        targets = (shift[0] - command.x_nm, shift[1] - command.y_nm)  # centre 0: field = shift - stage
        for name, target_nm in zip(self._stage, targets, strict=True):
            if not self.stem.SetVal(name, 1e-9 * target_nm):
                raise CommandRefused(Ack.refusal(command, "refused", f"the instrument did not take {name}"))

    def _frame_parameters(self, command: ScanCommand) -> Any:
        from nion.utils import Geometry

        fp = self.scan.get_current_frame_parameters()
        ox, oy = self._offset_nm() if self.positioner == "scan" else (0.0, 0.0)
        centre = (command.x_nm + ox, command.y_nm + oy) if self.positioner == "scan" else (0.0, 0.0)
        fp.pixel_size = Geometry.IntSize(height=command.rows, width=command.cols)
        fp.fov_nm = command.fov_nm * command.rows / command.cols  # Nion's fov spans the rows
        fp.pixel_time_us = command.dwell_us
        fp.rotation_rad = math.radians(command.rotation_deg)
        fp.center_nm = Geometry.FloatPoint(y=centre[1], x=centre[0])
        # The whole field, never the operator's subscan: a subscan would change the shape and pixel size.
        fp.subscan_pixel_size = None
        fp.subscan_fractional_size = None
        fp.subscan_fractional_center = None
        fp.subscan_rotation = 0.0
        return fp

    def _acquire(self, command: ScanCommand, generation: int) -> None:
        if generation != self._generation:  # a stop or blank came after it was queued: it never runs
            return
        if time.time() > command.deadline_unix_s:  # it waited behind other scans past its deadline
            self._frames.put(ProtocolError("expired", f"Nion scan {command.id}: deadline passed in the queue"))
            return
        try:
            self._place(command)
            start = time.time()
            xdata = self.scan.record_immediate(self._frame_parameters(command))[self.channel]
            end = time.time()
            # Read after the scan (a stage's readback may lag its move); no other move runs meanwhile.
            frame = self._frame(command, xdata, (start, end), self._offset_nm())
        except Exception as exc:  # the acquisition failed: its reader gets the error in place of the frame
            if generation == self._generation:
                self._frames.put(
                    ProtocolError("acquisition", f"Nion scan {command.id} failed: {type(exc).__name__}: {exc}")
                )
            return
        if not self.closed and generation == self._generation:  # not stopped while it scanned
            self._frames.put(frame)

    def _frame(
        self, command: ScanCommand, xdata: Any, times_unix_s: tuple[float, float], offset_nm: tuple[float, float]
    ) -> Frame:
        scan_md = dict(xdata.metadata.get("scan", {}))
        hs_md = dict(xdata.metadata.get("hardware_source", {}))
        image = np.ascontiguousarray(xdata.data, dtype=np.float32)
        if image.shape != (command.rows, command.cols):
            raise ValueError(f"Nion returned a {image.shape} image for a {command.rows} x {command.cols} scan")
        rows, cols = image.shape
        start, end = times_unix_s
        ox, oy = offset_nm
        x = float(scan_md.get("center_x_nm", 0.0)) - ox
        y = float(scan_md.get("center_y_nm", 0.0)) - oy
        fov = float(scan_md.get("fov_nm", command.fov_nm * rows / cols)) * cols / rows
        tol = self.limits.readback_tolerance_nm

        def exact(readback: float, commanded: float) -> float:
            return commanded if abs(readback - commanded) <= tol else readback

        header = FrameHeader(
            sequence=self.state.next_sequence(),
            command_id=command.id,
            acquisition_start_unix_s=start,
            acquisition_end_unix_s=end,
            x_nm=exact(x, command.x_nm),
            y_nm=exact(y, command.y_nm),
            fov_nm=exact(fov, command.fov_nm),
            shape=(rows, cols),
            dtype="float32",
            pixel_size_nm=exact(fov, command.fov_nm) / cols,
            dwell_us=exact(float(hs_md.get("pixel_time_us", command.dwell_us)), command.dwell_us),
            tilt_deg=math.degrees(self._value(self._tilt)) if self._tilt else self.state.tilt_deg,
            detector=str(hs_md.get("channel_name", "HAADF")),
            metadata={
                "nion": {
                    "scan_id": str(scan_md.get("scan_id", "")),
                    "center_nm": [scan_md.get("center_x_nm"), scan_md.get("center_y_nm")],
                    "specimen_offset_nm": [ox, oy],
                    "rotation_deg": scan_md.get("rotation_deg"),
                    "positioner": self.positioner,
                }
            },
        )
        return Frame(header, image)
