"""The guard: a policy's Decision becomes a Command only if it is safe, else a refusal with a reason.

Limits are the intersection of what the instrument reports (its Capabilities) and what
the configuration allows.  The guard refuses non-finite values, positions, fields,
pixel counts and dwell times outside the limits, steps longer than allowed, fields
that would push the accumulated dose anywhere past the budget, and repeats of a field
already scanned.  It never clamps: a decision is taken as it is or not at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.field_index import FieldIndex, FieldRecord
from drivers.base import Capabilities, Command, Range, ScanCommand, SetTiltCommand, deadline_in

_STRICT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def half_extent_nm(fov_nm: float, rows: float, cols: float, rotation_deg: float) -> tuple[float, float]:
    """Half the x and y extent of a field ``fov_nm`` wide and ``fov_nm * rows / cols`` tall, rotated."""
    half_w, half_h = 0.5 * fov_nm, 0.5 * fov_nm * rows / cols
    c, s = abs(math.cos(math.radians(rotation_deg))), abs(math.sin(math.radians(rotation_deg)))
    return half_w * c + half_h * s, half_w * s + half_h * c


def _half_diagonal_nm(fov_nm: float, rows: float, cols: float) -> float:
    """Radius of the disc that holds the field at any rotation: ``fov_nm`` wide, ``fov_nm * rows / cols`` tall."""
    return 0.5 * fov_nm * math.hypot(1.0, rows / cols)


class GuardConfig(BaseModel):
    """Configured limits; each is intersected with the instrument's own."""

    model_config = ConfigDict(**_STRICT, strict=True)  # (from TOML: `allow_revisits = "no"` is a mistake, not True)
    stage_x_nm: Range | None = None
    stage_y_nm: Range | None = None
    fov_nm: Range | None = None
    pixels: Range | None = None
    dwell_us: Range | None = None
    tilt_deg: Range | None = None
    max_step_nm: float = Field(1000.0, gt=0.0, description="Longest stage move between two fields.")
    dose_budget_e_per_a2: float = Field(5e6, gt=0.0, description="Largest accumulated dose at any point.")
    probe_current_pa: float = Field(20.0, gt=0.0, description="Beam current used to compute the dose of a scan.")
    revisit_tolerance_nm: float = Field(0.5, ge=0.0, description="A field this close to a scanned one is a repeat.")
    allow_revisits: bool = False
    command_timeout_s: float = Field(30.0, gt=0.0, description="Deadline given to each command.")


@dataclass(frozen=True)
class Decision:
    """What a policy proposes: a field to scan or a tilt, with the reasons for it.

    Attributes
    ----------
    kind : ``"scan"`` or ``"set_tilt"``.
    x_nm, y_nm, fov_nm, rows, cols, dwell_us, rotation_deg : the field (scan).
    tilt_deg : the tilt (set_tilt).
    rationale : acquisition value, uncertainty, predicted reward... (recorded, not interpreted).
    """

    kind: str
    x_nm: float = 0.0
    y_nm: float = 0.0
    fov_nm: float = 0.0
    rows: int = 0
    cols: int = 0
    dwell_us: float = 0.0
    rotation_deg: float = 0.0
    tilt_deg: float = 0.0
    rationale: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Refusal:
    """A decision the guard did not let through, and why."""

    decision: Decision
    reason: str


#: Limits named alike in the guard's configuration and the instrument's capabilities.
CHECKED_LIMITS = ("stage_x_nm", "stage_y_nm", "fov_nm", "pixels", "dwell_us", "tilt_deg")


def limits_beyond_instrument(guard: GuardConfig, cap: Capabilities) -> list[str]:
    """Configured limits wider than the instrument's (each named with both ranges); empty when all fit."""
    problems = []
    for name in CHECKED_LIMITS:
        wanted, allowed = getattr(guard, name), getattr(cap, name)
        if wanted is None:
            continue
        if allowed is None:
            problems.append(f"guard.{name} is set but the instrument reports no {name} range")
        elif wanted.low < allowed.low or wanted.high > allowed.high:
            problems.append(
                f"guard.{name} [{wanted.low:g}, {wanted.high:g}] is wider than the instrument's "
                f"[{allowed.low:g}, {allowed.high:g}]"
            )
    return problems


def intersect(a: Range | None, b: Range | None) -> Range | None:
    """The overlap of two optional ranges (either may be None: the other stands); None if they do not overlap."""
    if a is None:
        return b
    if b is None:
        return a
    low, high = max(a.low, b.low), min(a.high, b.high)
    return Range(low=low, high=high) if low <= high else None


class Guard:
    """Turn decisions into commands, or refuse them; remembers fields and dose of what it let through."""

    def __init__(self, capabilities: Capabilities, config: GuardConfig | None = None) -> None:
        self.config = config or GuardConfig()
        self._take_limits(capabilities)
        #: Where the last scan known to have run put the field (None before the first).
        self.position: tuple[float, float] | None = None
        #: Scans sent since whose outcome is unknown (no ack: they may or may not have run).
        self._unsure: list[tuple[float, float]] = []
        self._fields = FieldIndex()  # every accepted scan, binned: checks cost the same however many there are
        self._doses: list[float] = []

    def _take_limits(self, cap: Capabilities) -> None:
        c = self.config
        self.kinds = set(cap.command_kinds)
        self.limits: dict[str, Range | None] = {
            "x_nm": intersect(cap.stage_x_nm, c.stage_x_nm),
            "y_nm": intersect(cap.stage_y_nm, c.stage_y_nm),
            "fov_nm": intersect(cap.fov_nm, c.fov_nm),
            "rows": intersect(cap.pixels, c.pixels),
            "cols": intersect(cap.pixels, c.pixels),
            "dwell_us": intersect(cap.dwell_us, c.dwell_us),
            "tilt_deg": intersect(cap.tilt_deg, c.tilt_deg),
        }
        self.max_frame_dose = cap.max_dose_e_per_a2

    def refresh(self, capabilities: Capabilities) -> list[str]:
        """Take the limits of an instrument that reconnected (it may have restarted with other ones).

        Fields already scanned and the dose they received are kept.  Returns what of the configuration
        is wider than the new limits (as :func:`limits_beyond_instrument`); in that case nothing changes
        and the caller must not move.
        """
        problems = limits_beyond_instrument(self.config, capabilities)
        if not problems:
            self._take_limits(capabilities)
        return problems

    def frame_dose_e_per_a2(self, d: Decision) -> float:
        """Dose one frame of ``d`` delivers: ``I * t_dwell / (e * pixel area)`` (inf for a field of no area)."""
        electrons = self.config.probe_current_pa * 1e-12 * d.dwell_us * 1e-6 / 1.602176634e-19
        pixel_area_a2 = (d.fov_nm / d.cols * 10.0) ** 2 if d.cols > 0 else 0.0
        return electrons / pixel_area_a2 if pixel_area_a2 > 0 else math.inf

    def _out_of_limits(self, d: Decision, names: tuple[str, ...]) -> str | None:
        for name in names:
            value = getattr(d, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return f"{name}={value!r} is not a finite number"
            if name in ("rows", "cols") and not float(value).is_integer():
                return f"{name}={value!r} is not a whole number of pixels"
            allowed = self.limits[name]
            if allowed is None:
                return f"{name}: no value is allowed (instrument and configuration limits do not overlap)"
            if not allowed.low <= value <= allowed.high:
                return f"{name}={value:g} is outside the allowed [{allowed.low:g}, {allowed.high:g}]"
        return None

    def _field_off_stage(self, d: Decision) -> str | None:
        """Whether any part of the (rotated) field, not only its centre, leaves the allowed stage range."""
        half_x, half_y = half_extent_nm(d.fov_nm, d.rows, d.cols, d.rotation_deg)
        for name, centre, half in (("x_nm", d.x_nm, half_x), ("y_nm", d.y_nm, half_y)):
            allowed = self.limits[name]
            if allowed is not None and not allowed.low - 1e-6 <= centre - half <= centre + half <= allowed.high + 1e-6:
                return (
                    f"the field spans {name[0]} {centre - half:g} to {centre + half:g} nm, beyond the allowed"
                    f" [{allowed.low:g}, {allowed.high:g}]"
                )
        return None

    def _accumulated_dose(self, x: float, y: float, half: float) -> float:
        """An upper bound of the dose already received anywhere in a square of half-width ``half`` at (x, y).

        The sum over every earlier field whose bounding square overlaps this one: conservative
        (two of them need not overlap each other), so the guard may refuse early but never late.
        """
        return float(sum(r.dose_e_per_a2 for r in self._fields.overlapping(x, y, half)))

    def _scan_problem(self, d: Decision) -> str | None:
        problem = self._out_of_limits(d, ("x_nm", "y_nm", "fov_nm", "rows", "cols", "dwell_us"))
        if problem:
            return problem
        if not (d.fov_nm > 0 and d.rows >= 1 and d.cols >= 1 and d.fov_nm / d.cols * 10.0 > 0):
            return f"a field of fov_nm={d.fov_nm:g} over {d.rows:g} x {d.cols:g} pixels has no area"
        if not (math.isfinite(d.rotation_deg) and -360.0 <= d.rotation_deg <= 360.0):
            return f"rotation_deg={d.rotation_deg!r} is outside [-360, 360]"
        problem = self._field_off_stage(d)
        if problem:
            return problem
        problem = self._step_problem(d)
        if problem:
            return problem
        dose = self.frame_dose_e_per_a2(d)
        if dose > self.max_frame_dose:
            return f"frame dose {dose:.3g} e/A^2 exceeds the instrument's maximum {self.max_frame_dose:.3g}"
        half = _half_diagonal_nm(d.fov_nm, d.rows, d.cols)
        total = self._accumulated_dose(d.x_nm, d.y_nm, half) + dose
        if total > self.config.dose_budget_e_per_a2:
            return f"dose budget: {total:.3g} e/A^2 would exceed {self.config.dose_budget_e_per_a2:.3g} here"
        if not self.config.allow_revisits:
            tol = self.config.revisit_tolerance_nm
            for r in self._fields.overlapping(d.x_nm, d.y_nm, tol):
                if math.hypot(d.x_nm - r.x_nm, d.y_nm - r.y_nm) <= tol and abs(d.fov_nm - r.fov_nm) <= tol:
                    return f"repeat of the field already scanned at ({r.x_nm:g}, {r.y_nm:g}) nm, fov {r.fov_nm:g} nm"
        return None

    def field_problem(self, d: Decision) -> str | None:
        """Why no field like ``d`` could be scanned anywhere (its size, pixels, dwell or frame dose), if so.

        Checked on the configured field before a run starts: a dwell beyond the limits used to show only
        as one refusal per step, until the run gave up.
        """
        problem = self._out_of_limits(d, ("fov_nm", "rows", "cols", "dwell_us"))
        if problem:
            return problem
        dose = self.frame_dose_e_per_a2(d)
        if dose > self.max_frame_dose:
            return f"frame dose {dose:.3g} e/A^2 exceeds the instrument's maximum {self.max_frame_dose:.3g}"
        return None

    def _step_problem(self, d: Decision) -> str | None:
        """A step longer than ``max_step_nm`` from where the stage is, or may be.

        From the last scan known to have run, and from every scan sent since whose outcome is unknown:
        the stage may be at any of them.
        """
        for here, what in [(self.position, "the last scan"), *((p, "a scan that may have run") for p in self._unsure)]:
            if here is not None:
                step = math.hypot(d.x_nm - here[0], d.y_nm - here[1])
                if step > self.config.max_step_nm:
                    return f"step of {step:.1f} nm from {what} exceeds max_step_nm={self.config.max_step_nm:g}"
        return None

    def check(self, d: Decision) -> Command | Refusal:
        """The command for ``d``, or a :class:`Refusal` saying why not (nothing is clamped)."""
        if d.kind not in ("scan", "set_tilt") or d.kind not in self.kinds:
            return Refusal(d, f"decision kind {d.kind!r} is not accepted here")
        deadline = deadline_in(self.config.command_timeout_s)
        if d.kind == "set_tilt":
            problem = self._out_of_limits(d, ("tilt_deg",))
            if problem:
                return Refusal(d, problem)
            return _built(d, lambda: SetTiltCommand(tilt_deg=d.tilt_deg, deadline_unix_s=deadline))
        problem = self._scan_problem(d)
        if problem:
            return Refusal(d, problem)
        return _built(
            d,
            lambda: ScanCommand(
                x_nm=d.x_nm,
                y_nm=d.y_nm,
                fov_nm=d.fov_nm,
                rows=int(d.rows),
                cols=int(d.cols),
                dwell_us=d.dwell_us,
                rotation_deg=d.rotation_deg,
                deadline_unix_s=deadline,
            ),
        )

    @property
    def doses_e_per_a2(self) -> list[float]:
        """Dose of each scan let through, in order."""
        return list(self._doses)

    def commit(self, command: Command, ran: bool = True) -> None:
        """Remember a scan that was sent: its field and dose count from now on.

        ``ran``: acknowledged, so the stage is at its field now.  Otherwise (no ack, a lost link) it may
        or may not have run: its dose counts all the same (the safe side), and later steps must be
        within ``max_step_nm`` of it as well as of the last scan known to have run.
        """
        if isinstance(command, ScanCommand):
            d = Decision(
                "scan",
                command.x_nm,
                command.y_nm,
                command.fov_nm,
                command.rows,
                command.cols,
                command.dwell_us,
                command.rotation_deg,
            )
            if ran:
                self.position = (command.x_nm, command.y_nm)
                self._unsure.clear()
            else:
                self._unsure.append((command.x_nm, command.y_nm))
            half = _half_diagonal_nm(command.fov_nm, command.rows, command.cols)
            dose = self.frame_dose_e_per_a2(d)
            self._fields.add(FieldRecord(command.x_nm, command.y_nm, half, command.fov_nm, dose))
            self._doses.append(dose)


def _built(d: Decision, build: Callable[[], Command]) -> Command | Refusal:
    """The command ``build`` makes, or a refusal where the wire schema's own bounds reject it.

    The limits checked above come from the instrument and the configuration; an instrument may report
    a range wider than the protocol carries (a stage beyond 1 m, more than 16384 pixels, a tilt beyond
    90 degrees), and such a decision is refused like any other, never raised.
    """
    try:
        return build()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return Refusal(d, f"{where}: {first.get('msg', 'invalid')} (outside what the protocol carries)")
