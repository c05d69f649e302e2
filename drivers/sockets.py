"""Small ZeroMQ socket helpers shared by the server and the remote driver."""

from __future__ import annotations

from typing import Any

import zmq

# Plain ints: combining pyzmq's enum members builds a new enum object on every call, on every message.
_POLLIN = int(zmq.POLLIN)
_SNDMORE = int(zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)


def readable(sock: zmq.Socket[bytes]) -> bool:
    """True when a whole message waits on ``sock``.

    Asking costs a socket option read; a non-blocking read of an empty socket raises ``zmq.Again``,
    whose construction costs several times more, once for every drained socket on every message.
    Reading until this is False also re-arms the socket's edge-triggered descriptor.
    """
    events = sock.getsockopt(zmq.EVENTS)
    return isinstance(events, int) and bool(events & _POLLIN)


def discard_waiting(sock: zmq.Socket[bytes]) -> None:
    """Read and discard everything waiting on ``sock`` (a wake-up socket)."""
    while readable(sock):
        sock.recv()


def send_parts(
    sock: zmq.Socket[bytes], parts: list[Any], flags: int = 0, copy: bool = True, track: bool = False
) -> zmq.MessageTracker | None:
    """``sock.send_multipart(parts, flags, copy, track)`` with plain-int flags (raises ``zmq.Again`` as it does).

    ZeroMQ delivers a multipart message whole or not at all: once the first part is queued the rest follow.
    ``track`` (with ``copy=False``): the last part's tracker, done once ZeroMQ has let its buffer go.
    """
    for part in parts[:-1]:
        sock.send(part, flags | _SNDMORE, copy=copy)
    tracker = sock.send(parts[-1], flags, copy=copy, track=track)
    return tracker if isinstance(tracker, zmq.MessageTracker) else None
