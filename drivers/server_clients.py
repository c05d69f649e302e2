"""What the instrument server keeps of each client, and small helpers of the server's message handling."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import zmq

from drivers.base import ProtocolError

logger = logging.getLogger("drivers.server")  # (the server's own: one logger to configure or filter)

# Bad messages logged per client per window; beyond that they are counted, and summed up in one line when
# the client's next bad message opens a new window (a flood must not cost a log record per message).
BAD_LOGGED_PER_WINDOW = 5
BAD_LOG_WINDOW_S = 10.0


@dataclass
class Client:
    """One client of the server, from its first message until it is forgotten."""

    last_seen: float
    delivery_seq: int = 0
    welcomed: bool = False  # said hello on this connection (since it was last forgotten)
    ack_in_frame: bool = False  # its hello accepts a scan's ack inside the frame message
    #: The client's last heartbeat time stamp and when it arrived (monotonic), echoed in our next beat.
    echo: tuple[float, float] | None = None
    #: Frames handed to ZeroMQ for this client and not yet written out: (tracker, bytes), oldest first.
    unsent: deque[tuple[zmq.MessageTracker, int]] = field(default_factory=deque)
    unsent_bytes: int = 0
    #: The current window of bad-message warnings: when it opened, and the bad messages seen in it.
    bad_window: tuple[float, int] = (-float("inf"), 0)

    def frame_bytes_held(self) -> int:
        """Bytes of this client's frames still held by ZeroMQ (frames written out are let go first)."""
        while self.unsent and self.unsent[0][0].done:
            self.unsent_bytes -= self.unsent.popleft()[1]
        return self.unsent_bytes

    def hold(self, tracker: zmq.MessageTracker, nbytes: int) -> None:
        """Count a frame of ``nbytes`` handed to ZeroMQ until ``tracker`` says it was written out."""
        self.unsent.append((tracker, nbytes))
        self.unsent_bytes += nbytes

    def take_echo(self, now: float) -> dict[str, float]:
        """``echo_t`` and ``held_s`` for the client's round trip: its own stamp and how long we held it."""
        if self.echo is None:
            return {}
        t, arrived = self.echo
        self.echo = None
        return {"echo_t": t, "held_s": now - arrived}

    def warn_bad(self, name: str, exc: ProtocolError) -> None:
        """Log a bad message from this client (``name``): the first few in each window, then how many more."""
        now = time.monotonic()
        opened, seen = self.bad_window
        if now - opened >= BAD_LOG_WINDOW_S:
            if seen > BAD_LOGGED_PER_WINDOW:
                logger.warning(
                    "%d more bad messages from client %s were not logged (counted in stats['error_*'])",
                    seen - BAD_LOGGED_PER_WINDOW,
                    name,
                )
            opened, seen = now, 0
        self.bad_window = (opened, seen + 1)
        if seen < BAD_LOGGED_PER_WINDOW:
            logger.warning("bad message from client %s: %s", name, exc)
        if seen + 1 == BAD_LOGGED_PER_WINDOW:
            logger.warning(
                "client %s: further bad messages in the next %.0f s are counted, not logged", name, BAD_LOG_WINDOW_S
            )


@contextlib.contextmanager
def held(lock: threading.Lock, timeout_s: float) -> Iterator[None]:
    """Hold ``lock`` if it can be had within ``timeout_s``; go on without it otherwise (a thread stuck holding it)."""
    locked = lock.acquire(timeout=timeout_s)
    try:
        yield
    finally:
        if locked:
            lock.release()


def command_id_of(body: list[bytes]) -> str | None:
    """The command id of a rejected message, when one can be read (so the sender can match the error)."""
    try:
        obj = json.loads(bytes(body[0]))
        cid = obj["command"]["id"]
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        return None
    return cid if isinstance(cid, str) and 0 < len(cid) <= 64 else None
