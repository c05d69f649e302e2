"""The instrument boundary: frames, commands, capabilities, acknowledgements, errors, the Driver protocol.

Every message type is a frozen pydantic model with ``extra="forbid"`` and
non-finite floats rejected; every numeric field is bounded.  Commands form a
closed union discriminated by ``kind``.  A frame is a :class:`FrameHeader`
plus a numpy image; the header names the command it answers.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

#: Version of the wire schema; a peer speaking another version is refused.
PROTOCOL_VERSION = 1

_STRICT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
_ID = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
_COORD_NM = Annotated[float, Field(ge=-1e6, le=1e6)]
_DTYPES = Literal["uint8", "uint16", "int16", "int32", "float32", "float64"]
# Looked up, not parsed, on every frame: parsing a dtype name or asking a dtype for its name is slow.
_NUMPY_DTYPES = {name: np.dtype(name) for name in get_args(_DTYPES)}
FRAME_DTYPES: frozenset[str] = frozenset(_NUMPY_DTYPES)  # the pixel types a frame may hold


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype of a frame dtype name (one of ``FrameHeader.dtype``'s values)."""
    return _NUMPY_DTYPES[name]


def new_command_id() -> str:
    """A fresh unique command id."""
    return uuid.uuid4().hex


def deadline_in(seconds: float) -> float:
    """An absolute deadline (Unix time, s) ``seconds`` from now."""
    return time.time() + seconds


class _Command(BaseModel):
    model_config = _STRICT
    id: _ID = Field(default_factory=new_command_id, description="Unique per command; duplicates are dropped.")
    deadline_unix_s: float = Field(
        default_factory=lambda: deadline_in(30.0),
        ge=0.0,
        le=1e11,
        description="Absolute time after which the instrument must not execute the command.",
    )


class ScanCommand(_Command):
    """Scan a region and return one frame."""

    kind: Literal["scan"] = "scan"
    x_nm: _COORD_NM
    y_nm: _COORD_NM
    fov_nm: float = Field(gt=0.0, le=1e5)
    rows: int = Field(ge=1, le=16384)
    cols: int = Field(ge=1, le=16384)
    dwell_us: float = Field(gt=0.0, le=1e6)
    rotation_deg: float = Field(0.0, ge=-360.0, le=360.0)

    @property
    def duration_s(self) -> float:
        """The scan's nominal time: every pixel for its dwell (flyback and settling not counted)."""
        return self.rows * self.cols * self.dwell_us * 1e-6


class SetTiltCommand(_Command):
    """Tilt the stage (single tilt axis)."""

    kind: Literal["set_tilt"] = "set_tilt"
    tilt_deg: float = Field(ge=-90.0, le=90.0)


class BlankCommand(_Command):
    """Blank the beam (no dose reaches the specimen)."""

    kind: Literal["blank"] = "blank"


class UnblankCommand(_Command):
    """Unblank the beam."""

    kind: Literal["unblank"] = "unblank"


class StopCommand(_Command):
    """Stop any acquisition in progress and blank the beam."""

    kind: Literal["stop"] = "stop"


Command = Annotated[
    ScanCommand | SetTiltCommand | BlankCommand | UnblankCommand | StopCommand, Field(discriminator="kind")
]
COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)
COMMAND_KINDS = ("scan", "set_tilt", "blank", "unblank", "stop")


class Range(BaseModel):
    """A closed interval [low, high]."""

    model_config = _STRICT
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self

    def __contains__(self, value: object) -> bool:
        return isinstance(value, (int, float)) and self.low <= value <= self.high


class Capabilities(BaseModel):
    """What an instrument accepts, reported by every driver."""

    model_config = _STRICT
    protocol_version: int = PROTOCOL_VERSION
    instrument: str = Field(max_length=128)
    command_kinds: tuple[Literal["scan", "set_tilt", "blank", "unblank", "stop"], ...]
    stage_x_nm: Range
    stage_y_nm: Range
    fov_nm: Range
    pixels: Range
    dwell_us: Range
    tilt_deg: Range | None = None
    max_dose_e_per_a2: float = Field(gt=0.0, description="Largest dose one frame may deliver.")
    detectors: tuple[str, ...] = ("HAADF",)
    serves_recorded_fields: bool = Field(
        False,
        description="A strict replay: every frame is a recorded field, wherever a scan asks, so the agent "
        "does not check its readback, age or shape.  Never true for an instrument.",
    )


class FrameHeader(BaseModel):
    """Everything about a frame but its pixels."""

    model_config = _STRICT
    protocol_version: int = PROTOCOL_VERSION
    sequence: int = Field(ge=0, description="Per-instrument frame counter; gaps mean lost frames.")
    command_id: _ID | None = None
    acquisition_start_unix_s: float = Field(ge=0.0)
    acquisition_end_unix_s: float = Field(ge=0.0)
    x_nm: _COORD_NM
    y_nm: _COORD_NM
    fov_nm: float = Field(gt=0.0)
    shape: tuple[Annotated[int, Field(ge=1, le=16384)], Annotated[int, Field(ge=1, le=16384)]]
    dtype: _DTYPES
    pixel_size_nm: float = Field(gt=0.0)
    dwell_us: float = Field(gt=0.0)
    tilt_deg: float = Field(0.0, ge=-90.0, le=90.0)
    detector: str = Field("HAADF", max_length=64)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Size of the image buffer this header describes."""
        return _NUMPY_DTYPES[self.dtype].itemsize * self.shape[0] * self.shape[1]


@dataclass(frozen=True)
class Frame:
    """A header and its image; ``image.shape``/``dtype`` always match the header."""

    header: FrameHeader
    image: np.ndarray

    @classmethod
    def of(cls, image: np.ndarray, pixel_size_nm: float, **header: Any) -> Frame:
        """A frame around ``image``: shape, dtype and field of view from the array, the rest from ``header``.

        Unset fields default to sequence 0, position (0, 0), dwell 1 us and the current time.
        """
        now = time.time()
        fields: dict[str, Any] = {
            "sequence": 0,
            "acquisition_start_unix_s": now,
            "acquisition_end_unix_s": now,
            "x_nm": 0.0,
            "y_nm": 0.0,
            "dwell_us": 1.0,
            "fov_nm": pixel_size_nm * image.shape[1],
            **header,
            "shape": tuple(image.shape),
            "dtype": str(image.dtype),
            "pixel_size_nm": pixel_size_nm,
        }
        return cls(FrameHeader.model_validate(fields), image)

    def __post_init__(self) -> None:
        if self.image.shape != tuple(self.header.shape) or self.image.dtype != _NUMPY_DTYPES[self.header.dtype]:
            raise ProtocolError(
                "shape_mismatch",
                f"image {self.image.shape} {self.image.dtype} does not match header "
                f"{self.header.shape} {self.header.dtype}",
            )


class Ack(BaseModel):
    """The instrument's answer to a command: accepted, or not and why."""

    model_config = _STRICT
    command_id: _ID
    kind: str = Field(max_length=32)
    accepted: bool
    code: Literal["ok", "refused", "expired", "duplicate", "invalid", "unsupported", "busy", "error"] = "ok"
    reason: str = Field("", max_length=2000)

    @classmethod
    def accept(cls, command: _Command) -> Ack:
        """The ack accepting ``command``."""
        return cls(command_id=command.id, kind=getattr(command, "kind", "?"), accepted=True)

    @classmethod
    def refusal(cls, command: _Command, code: str, reason: str) -> Ack:
        """An ack refusing ``command`` with a ``code`` and a human-readable ``reason``."""
        return cls.model_validate(
            {
                "command_id": command.id,
                "kind": getattr(command, "kind", "?"),
                "accepted": False,
                "code": code,
                "reason": reason[:2000],
            }
        )


class DriverError(Exception):
    """Base of all driver errors."""


class DriverTimeout(DriverError):
    """Nothing arrived within the timeout."""


class CommandRefused(DriverError):
    """The instrument refused a command; ``ack`` says why."""

    def __init__(self, ack: Ack) -> None:
        super().__init__(f"{ack.kind} {ack.command_id} {ack.code}: {ack.reason}")
        self.ack = ack


class Disconnected(DriverError):
    """The instrument is gone (missed heartbeats, closed, or unreachable)."""


class ProtocolError(DriverError):
    """A message violated the protocol; ``code`` names the violation."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@runtime_checkable
class Driver(Protocol):
    """An instrument: capabilities, commands in, frames out, never blocking past a timeout."""

    def capabilities(self) -> Capabilities:
        """The instrument's accepted commands and limits."""
        ...

    def send(self, command: Command, timeout_s: float = 5.0) -> Ack:
        """Send a command; returns its ack, raises :class:`CommandRefused` if it was not accepted."""
        ...

    def next_frame(self, timeout_s: float) -> Frame:
        """The next frame; raises :class:`DriverTimeout` if none arrives within ``timeout_s``."""
        ...

    def close(self) -> None:
        """Release the instrument (idempotent)."""
        ...
