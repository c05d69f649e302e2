"""The session record log: append-only, length-prefixed, checksummed, readable after any crash.

A session is a directory holding ``session.log``.  The file starts with the
8-byte magic ``ASCOPE`` followed by the bytes 0x00 0x01; then records, each::

    u32 length (of kind + body, little-endian) | u32 crc32 (of kind + body) | u8 kind | body

Kind 1 is a JSON record (UTF-8 object with a ``"type"``); kind 2 is a frame:
``u32 header length | header JSON | raw image bytes`` (C order, dtype and shape
in the header).  A record is written with one ``write`` call and flushed, so a
process killed at any moment leaves at most one partial record, and the reader
returns the valid prefix: it stops at the first record that is cut short or
whose checksum fails, and says so.  This module lives in ``drivers`` because
replay (an instrument) reads what the agent writes.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drivers.base import Frame, FrameHeader

MAGIC = b"ASCOPE\x00\x01"
LOG_NAME = "session.log"
_HEAD = struct.Struct("<II")
_KIND_JSON = 1
_KIND_FRAME = 2
#: Largest record the reader accepts (a guard against reading garbage lengths).
MAX_RECORD_BYTES = 1 << 30


class RecordingError(ValueError):
    """A session directory or log cannot be read at all (missing, not a session log)."""


def _json_bytes(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()


class SessionWriter:
    """Append records to ``directory/session.log``.

    Parameters
    ----------
    directory
        Created if missing; must not already hold a session log.
    fsync
        Also ``fsync`` after every record (survives power loss, costs latency);
        without it, records survive a killed process but not a crashed machine.
    """

    def __init__(self, directory: str | Path, fsync: bool = False) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOG_NAME
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way, no permission, a read-only file system
            why = exc.strerror or exc
            raise RecordingError(f"cannot create the session directory {self.directory}: {why}") from None
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except FileExistsError:
            raise RecordingError(f"{self.path} already exists: a session directory is written once") from None
        except OSError as exc:  # no permission, a read-only or full file system
            raise RecordingError(f"cannot create a session log at {self.path}: {exc.strerror or exc}") from None
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while recording: see is_being_recorded
        self._fsync = fsync
        self.records = 0
        self.bytes_written = 0
        self.failed: str | None = None  # why writing stopped, once it has
        self._write(MAGIC)

    def _write(self, data: bytes | memoryview) -> None:
        """Append ``data`` whole, or fail leaving the file as it was (a valid prefix, never a torn record).

        Raises
        ------
        RecordingError
            The disk refused (full, I/O error...); this and every later write fail.
        """
        if self.failed is not None:
            raise RecordingError(f"{self.path} can no longer be written: {self.failed}")
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            if self._fsync:
                os.fsync(self._fd)
        except OSError as exc:
            self.failed = f"{exc.strerror or exc} (errno {exc.errno}) after {self.records} records"
            try:
                os.ftruncate(self._fd, self.bytes_written)  # drop the torn record: the log stays a valid prefix
            except OSError:
                pass  # the reader still stops at the torn record; nothing after it is ever written
            raise RecordingError(f"cannot record to {self.path}: {self.failed}") from exc
        self.bytes_written += len(data)

    def _record(self, kind: int, body: bytes) -> None:
        payload = bytes([kind]) + body
        self._write(_HEAD.pack(len(payload), zlib.crc32(payload)) + payload)
        self.records += 1

    def write(self, record: dict[str, Any]) -> None:
        """Append a JSON record; it must have a string ``"type"`` and only finite numbers."""
        if not isinstance(record.get("type"), str):
            raise ValueError("a record needs a string 'type'")
        self._record(_KIND_JSON, _json_bytes(record))

    def write_frame(self, frame: Frame, **extra: Any) -> None:
        """Append a frame record (header JSON plus raw image bytes)."""
        head = _json_bytes({"type": "frame", "header": frame.header.model_dump(mode="json"), **extra})
        image = np.ascontiguousarray(frame.image)
        self._record(_KIND_FRAME, struct.pack("<I", len(head)) + head + image.tobytes())

    def close(self) -> None:
        """Flush to disk and close (idempotent); the file is closed even when the flush fails.

        Raises
        ------
        RecordingError
            The final flush failed on a log that had been written without error until then (a log that
            failed earlier already said so).
        """
        if self._fd < 0:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            if self.failed is None:
                self.failed = f"flush on close: {exc.strerror or exc} (errno {exc.errno})"
                raise RecordingError(f"cannot flush {self.path}: {self.failed}") from exc
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SessionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class ReadResult:
    """What a session log held: its valid records, and whether (and where) it was cut."""

    records: list[dict[str, Any]] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)
    valid_bytes: int = 0
    file_bytes: int = 0
    problem: str | None = None

    @property
    def complete(self) -> bool:
        """True when every byte of the file belonged to a valid record."""
        return self.problem is None and self.valid_bytes == self.file_bytes


def _record_object(record: Any) -> dict[str, Any]:
    """``record`` if it is a record (a JSON object with a ``type``).

    Raises
    ------
    ValueError
        Anything else (its checksum may be fine: a log written by hand, or by a bug).
    """
    if not isinstance(record, dict) or not isinstance(record.get("type"), str):
        raise ValueError(f"a record is a JSON object with a 'type', not {str(record)[:60]!r}")
    return record


def _decode_frame(body: bytes) -> tuple[dict[str, Any], Frame]:
    (n,) = struct.unpack_from("<I", body)
    record = _record_object(json.loads(body[4 : 4 + n]))
    header = FrameHeader.model_validate(record["header"])
    image = np.frombuffer(body[4 + n :], dtype=header.dtype).reshape(header.shape)
    return record, Frame(header, image)


def iter_records(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(end offset, kind, body) of every intact record after the magic; stops at the first bad one."""
    pos = len(MAGIC)
    while pos + _HEAD.size <= len(data):
        length, crc = _HEAD.unpack_from(data, pos)
        start, end = pos + _HEAD.size, pos + _HEAD.size + length
        if length == 0 or length > MAX_RECORD_BYTES or end > len(data):
            return
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            return
        yield end, payload[0], payload[1:]
        pos = end


def is_being_recorded(directory: str | Path) -> bool:
    """Whether a running :class:`SessionWriter` (in any process) holds ``directory``'s session log.

    A writer holds an exclusive lock on its log until it is closed; the lock goes with the process, so
    a killed agent's log is free at once.
    """
    path = Path(directory) / LOG_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # (closing releases a lock taken here)
    return False


def log_path(session: str | Path) -> Path:
    """The session log of ``session``: the file itself if it is one, else ``session/session.log`` (existing or not)."""
    path = Path(session)
    return path if path.is_file() else path / LOG_NAME


def read_session(directory: str | Path) -> ReadResult:
    """Read ``directory/session.log`` (or a log file path), recovering the valid prefix.

    Raises
    ------
    RecordingError
        If the file is missing or does not start with the session magic.
    """
    path = Path(directory)
    path = path / LOG_NAME if path.is_dir() else path  # (any file given is read as a log)
    if not path.is_file():
        raise RecordingError(f"no session log at {path}")
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):  # cut inside the magic: an empty session
            return ReadResult(file_bytes=len(data), problem="file ends inside the header")
        if len(data) >= len(MAGIC) and data.startswith(MAGIC[:-1]):
            raise RecordingError(
                f"{path} is a session log of format version {data[len(MAGIC) - 1]};"
                f" this autoscope reads version {MAGIC[-1]}"
            )
        raise RecordingError(f"{path} is not an autoscope session log")
    result = ReadResult(valid_bytes=len(MAGIC), file_bytes=len(data))
    for end, kind, body in iter_records(data):
        try:
            if kind == _KIND_JSON:
                result.records.append(_record_object(json.loads(body)))
            elif kind == _KIND_FRAME:
                record, frame = _decode_frame(body)
                result.records.append(record)
                result.frames.append(frame)
            else:
                raise ValueError(f"unknown record kind {kind}")
        except (ValueError, KeyError, TypeError, RecursionError, struct.error) as exc:  # content bad: stop here
            result.problem = f"record at byte {result.valid_bytes} is unreadable: {exc}"
            return result
        result.valid_bytes = end
    if result.valid_bytes < result.file_bytes:
        result.problem = (
            f"{result.file_bytes - result.valid_bytes} trailing bytes after byte {result.valid_bytes} "
            "are a partial or corrupt record"
        )
    return result
