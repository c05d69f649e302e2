"""A passive observer of an instrument server's frame stream (its PUB endpoint): frames, no commands.

For an agent that only watches and suggests while a person drives.  Frames carry the stream's own
sequence numbers; gaps (the publisher drops frames for a subscriber that falls behind its high-water
mark) are counted in ``stats["frames_lost"]``, never hidden.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import zmq
from zmq.utils.monitor import parse_monitor_message

from drivers.base import Disconnected, DriverTimeout, Frame, ProtocolError
from drivers.codec import decode_envelope, decode_frame
from drivers.security import CurveClientKeys, apply_client_keys

# The connection's events the subscriber watches: made, secured, or refused (CURVE keys, a security mismatch).
_WATCHED = (
    zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)  # fmt: skip


class FrameSubscriber:
    """Subscribe to ``endpoint`` (an instrument server's ``--pub``).

    Parameters
    ----------
    endpoint
        The server's PUB endpoint.
    max_frame_bytes
        Larger frames are dropped and counted (the socket itself has no size limit: one there would
        drop the connection, and the frames published while it is made again, uncounted).
    queue_frames
        Frames held for a slow reader before the publisher drops (and this side counts) the rest.
    curve
        CURVE client keys when the server requires them.
    """

    def __init__(
        self,
        endpoint: str,
        max_frame_bytes: int = 256 * 2**20,
        queue_frames: int = 100,
        curve: CurveClientKeys | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.max_frame_bytes = max_frame_bytes
        self.stats: Counter[str] = Counter()
        self._expected: int | None = None
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        for opt, value in ((zmq.LINGER, 0), (zmq.RCVHWM, queue_frames), (zmq.MAXMSGSIZE, -1)):
            self._sock.setsockopt(opt, value)
        if curve is not None:
            apply_client_keys(self._sock, curve)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"frame")
        self._monitor = self._sock.get_monitor_socket(_WATCHED)  # (a refused key is said, not waited out)
        self._link = {"connected": 0, "handshakes": 0, "handshake_failures": 0}
        try:
            self._sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise ValueError(f"cannot connect to {endpoint!r}: {exc} (expected e.g. tcp://HOST:PORT)") from None

    def next_frame(self, timeout_s: float) -> Frame:
        """The next frame of the stream.

        Raises
        ------
        DriverTimeout
            None within ``timeout_s``.
        """
        if not math.isfinite(timeout_s):
            raise ValueError(f"timeout_s must be a finite number of seconds, not {timeout_s!r}")
        deadline = time.monotonic() + timeout_s
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        while events := dict(poller.poll(max(int(1000 * (deadline - time.monotonic())), 0))):
            if self._monitor in events:
                self._check_link()
            frame = self._receive() if self._sock in events else None
            if frame is not None:  # (a bad message is counted, and the wait goes on to the deadline)
                return frame
        raise DriverTimeout(f"no frame on {self.endpoint} within {timeout_s} s")

    def link_problem(self) -> str | None:
        """Why no frame may have come: no connection made, or handshakes that failed; None once one worked."""
        self._check_link()
        if self._link["handshakes"]:
            return None
        if self._link["handshake_failures"]:
            failed = self._link["handshake_failures"]
            return (f"the handshake with the server failed ({failed} times): a server that requires CURVE keys "
                    "answers no client without them, or with others (--client-key, --server-public)")  # fmt: skip
        if not self._link["connected"]:
            return "no connection was made (nothing listening there?)"
        return None

    def _check_link(self) -> None:
        """Read the connection's events; a server that refuses this client's keys is an error at once.

        Raises
        ------
        Disconnected
            The server refused this client's CURVE keys (it is not on the allow-list).
        """
        while self._monitor.poll(0):
            event = parse_monitor_message(self._monitor.recv_multipart())["event"]
            if event & zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                raise Disconnected(
                    f"the server at {self.endpoint} refused this client's CURVE keys (not on its allow-list)"
                )
            if event & zmq.EVENT_CONNECTED:
                self._link["connected"] += 1
            elif event & zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._link["handshakes"] += 1
            else:
                self._link["handshake_failures"] += 1

    def pending(self) -> list[Frame]:
        """Every frame already received and not yet read (oldest first), without waiting."""
        self._check_link()
        frames = []
        while self._sock.poll(0):
            frame = self._receive()
            if frame is not None:
                frames.append(frame)
        return frames

    def _receive(self) -> Frame | None:
        parts = self._sock.recv_multipart(copy=False)
        try:
            if len(parts) != 3 or parts[0].bytes != b"frame":
                raise ProtocolError("parts", f"a stream message has 3 parts, got {len(parts)}")
            obj = decode_envelope([parts[1].bytes, parts[2].buffer])  # type: ignore[list-item]
            frame, seq = decode_frame(obj, parts[2].buffer, self.max_frame_bytes)
        except ProtocolError as exc:
            self.stats[f"error_{exc.code}"] += 1
            return None
        if self._expected is not None and seq > self._expected:
            self.stats["frames_lost"] += seq - self._expected
        self._expected = seq + 1
        self.stats["frames"] += 1
        return frame

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if not self._sock.closed:
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._sock.close(linger=0)
            self._ctx.term()

    def __enter__(self) -> FrameSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
