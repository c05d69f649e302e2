"""Small ZeroMQ socket helpers shared by the server and the remote driver."""

from __future__ import annotations

import zmq


def readable(sock: zmq.Socket[bytes]) -> bool:
    """True when a whole message waits on ``sock``.

    Asking costs a socket option read; a non-blocking read of an empty socket raises ``zmq.Again``,
    whose construction costs several times more, once for every drained socket on every message.
    Reading until this is False also re-arms the socket's edge-triggered descriptor.
    """
    events = sock.getsockopt(zmq.EVENTS)
    return isinstance(events, int) and bool(events & zmq.POLLIN)


def discard_waiting(sock: zmq.Socket[bytes]) -> None:
    """Read and discard everything waiting on ``sock`` (a wake-up socket)."""
    while readable(sock):
        sock.recv()
