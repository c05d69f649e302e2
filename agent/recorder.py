"""What the loop writes to a session log (see :mod:`drivers.recording` for the format)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

from agent.guard import Decision
from drivers.base import Ack, Command, Frame
from drivers.recording import LOG_NAME, RecordingError, SessionWriter, is_being_recorded, read_session

UNCLOSED_MARK = "UNCLOSED.json"


def claim_session_dir(directory: Path) -> tuple[Path, dict[str, Any] | None]:
    """Where a new session asked to go to ``directory`` is recorded, and the unclosed session it follows.

    Sessions asked to go to one directory form a chain: ``directory``, ``directory.2``, ``directory.3``...
    A chain whose latest session is closed is never reused.  When the latest is *unclosed* (its agent
    was killed: no stop record), it is marked with ``UNCLOSED.json`` and left as it is; the new session
    goes to the next suffix and its start record links back to it.

    Raises
    ------
    RecordingError
        The latest session of the chain is closed, or still being recorded by a running agent.
    """
    directory = Path(directory)
    chain = _chain(directory)
    if len(chain) == 1 and not (directory / LOG_NAME).exists():
        return directory, None
    latest = chain[-1]
    if is_being_recorded(latest):  # not killed: another agent is writing it now
        raise RecordingError(f"{latest} is being recorded by a running agent: choose another directory")
    old = read_session(latest)
    if any(r.get("type") == "stop" for r in old.records):
        raise RecordingError(f"{latest} already holds a finished session: a session directory is written once")
    previous = {
        "path": str(latest),
        "closed": False,
        "records": len(old.records),
        "frames": len(old.frames),
        "valid_bytes": old.valid_bytes,
        "file_bytes": old.file_bytes,
        "problem": old.problem,
        "last_record_unix_s": next((r.get("t_unix_s") for r in reversed(old.records) if "t_unix_s" in r), None),
    }
    mark = latest / UNCLOSED_MARK
    if not mark.exists():
        mark.write_text(json.dumps({**previous, "marked_unix_s": time.time()}, indent=2) + "\n")
    return _suffixed(directory, len(chain) + 1), previous


def chain_logs(directory: Path) -> list[Path]:
    """Every session log a session asked to go to ``directory`` may be written to, or follow.

    The chain's logs (``directory``, ``directory.2``...) and the next one (see :func:`claim_session_dir`).
    """
    chain = _chain(Path(directory))
    return [d / LOG_NAME for d in (*chain, _suffixed(Path(directory), len(chain) + 1))]


def _chain(directory: Path) -> list[Path]:
    """``directory`` and the suffixed directories after it that hold session logs, in order."""
    chain = [directory]
    while (_suffixed(directory, len(chain) + 1) / LOG_NAME).exists():
        chain.append(_suffixed(directory, len(chain) + 1))
    return chain


def _suffixed(directory: Path, k: int) -> Path:
    return directory.with_name(f"{directory.name}.{k}")


def decision_record(decision: Decision, step: int) -> dict[str, Any]:
    """A decision as a JSON-able record (non-finite values, which the guard refuses, are written as null)."""
    return {"type": "decision", "step": step, **_jsonable(dataclasses.asdict(decision))}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalar
        return _jsonable(value.item())
    return value


class SessionRecorder:
    """Writes the loop's records, each stamped with the wall time; ``None`` directory records nothing.

    ``keep_decisions`` also keeps every decision record in :attr:`decisions` (replay compares them).
    """

    def __init__(self, directory: str | Path | None, fsync: bool = False, keep_decisions: bool = False) -> None:
        self.writer = SessionWriter(directory, fsync=fsync) if directory is not None else None
        self.directory = Path(directory) if directory is not None else None
        self.keep_decisions = keep_decisions
        self.decisions: list[dict[str, Any]] = []

    def write(self, record_type: str, /, **fields: Any) -> None:
        """Append a JSON record of type ``record_type``."""
        if self.writer is not None:
            self.writer.write({"type": record_type, "t_unix_s": time.time(), **_jsonable(fields)})

    def decision(self, decision: Decision, step: int) -> None:
        """A decision with its rationale."""
        record = decision_record(decision, step)
        if self.keep_decisions:
            self.decisions.append(record)
        if self.writer is not None:
            self.writer.write({**record, "t_unix_s": time.time()})

    def command(self, command: Command, step: int) -> None:
        """A command, written before it is sent."""
        self.write("command", step=step, command=command.model_dump(mode="json"))

    def ack(self, ack: Ack, step: int) -> None:
        """The instrument's answer to a command."""
        self.write("ack", step=step, ack=ack.model_dump(mode="json"))

    def frame(self, frame: Frame, step: int) -> None:
        """A frame: raw image and header."""
        if self.writer is not None:
            self.writer.write_frame(frame, step=step, t_unix_s=time.time())

    def counters(self) -> dict[str, Any]:
        """Records and bytes written; the backlog is always 0: every record is written before the loop goes on."""
        w = self.writer
        if w is None:
            return {"records": 0, "bytes": 0, "backlog": 0, "failed": None}
        return {"records": w.records, "bytes": w.bytes_written, "backlog": 0, "failed": w.failed}

    def close(self) -> None:
        """Flush and close."""
        if self.writer is not None:
            self.writer.close()
