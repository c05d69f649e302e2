"""``RemoteDriver``: a :class:`Driver` talking to an instrument server over ZeroMQ (DEALER).

An I/O thread owns the socket: it sends heartbeats, watches the server's, and
after three missed intervals declares the server gone, fails every pending call
with :class:`Disconnected`, and reconnects with exponential backoff on a fresh
socket.  ``LINGER=0``, ``IMMEDIATE=1`` and a small send high-water mark mean a
command is never queued for a dead peer and delivered late: sending while
disconnected fails at once, and a command still waiting for the I/O thread when
the connection is lost is dropped (its caller gets :class:`Disconnected`), never
sent on a later connection.  Frames carry a per-client delivery sequence; gaps
are counted in ``stats["frames_lost"]``, never hidden.  Built in layers: what the
server sends (:mod:`drivers.remote_inbox`), the I/O thread (:mod:`drivers.remote_session`), and here
the public driver.
"""

from __future__ import annotations

import concurrent.futures
import math
import queue
import threading
import time
from collections import Counter, deque

import zmq

from drivers.base import Ack, Capabilities, Command, CommandRefused, Disconnected, DriverTimeout, Frame, ProtocolError
from drivers.codec import MIN_KEEPALIVE_S, encode_command, envelope
from drivers.remote_session import _Session
from drivers.security import CurveClientKeys

__all__ = ["RemoteDriver"]


class RemoteDriver(_Session):
    """Connect to an instrument server at ``endpoint``.

    Parameters
    ----------
    endpoint
        The server's ROUTER endpoint, e.g. ``tcp://127.0.0.1:5555``.
    heartbeat_s
        Heartbeat interval; the server is gone after three silent intervals.  While idle the driver sends
        at least this often, and at least every quarter of the server's dead-man time (from ``welcome``).
    connect_timeout_s
        How long the constructor waits for the server's welcome.
    max_frame_bytes
        Larger frames are dropped and counted (``stats["error_too_large"]``), and :meth:`next_frame`
        raises :class:`ProtocolError` ``too_large`` in their place; the connection stays up.
    reconnect
        Reconnect with backoff (0.1 s doubling to 2 s) after the server is lost.
    curve
        CURVE client keys when the server requires them.

    Raises
    ------
    ValueError
        A malformed endpoint, or a heartbeat or timeout that is not a positive number of seconds.
    Disconnected
        If no server answers within ``connect_timeout_s``, or the server refused this client's keys.
    ProtocolError
        Code ``version``: the server speaks another protocol version.
    """

    def __init__(
        self,
        endpoint: str,
        heartbeat_s: float = 1.0,
        connect_timeout_s: float = 5.0,
        max_frame_bytes: int = 256 * 2**20,
        reconnect: bool = True,
        curve: CurveClientKeys | None = None,
    ) -> None:
        for name, value in (("heartbeat_s", heartbeat_s), ("connect_timeout_s", connect_timeout_s)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        self.endpoint = endpoint
        self.heartbeat_s = max(float(heartbeat_s), MIN_KEEPALIVE_S)
        self._keepalive_s = self.heartbeat_s  # how often to send while idle: less if the server (beat, dead-man) asks
        self._liveness_s = 3 * self.heartbeat_s  # silence after which the server is gone: longer if it beats slower
        self._forgotten = False  # the server answered hello_first: it forgot this client; say hello again
        self.max_frame_bytes = max_frame_bytes
        self.reconnect = reconnect
        self.stats: Counter[str] = Counter()
        self._auth_refused_said = 0  # stats["auth_refused"] when the last welcome came: a warning per outage
        self._rtts_ms: deque[float] = deque(maxlen=1000)
        self._curve = curve
        self._ctx = zmq.Context()
        # (connection number when posted, or None: any connection; message parts)
        self._outbox: queue.SimpleQueue[tuple[int | None, list[bytes]]] = queue.SimpleQueue()
        self._connection = 0  # bumped (under _lock) each time a connection is lost
        self._waiters: dict[str, concurrent.futures.Future[Ack]] = {}
        self._frames: queue.SimpleQueue[Frame | ProtocolError] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._settled = threading.Event()  # connected, or refused for good (self._fatal)
        self._fatal: Exception | None = None
        self._held_back: deque[tuple[int | None, list[bytes]]] = deque()  # waiting for room in the send queue
        self._caps: Capabilities | None = None
        self._wake_rx = self._ctx.socket(zmq.PAIR)
        self._wake_rx.bind(f"inproc://wake-{id(self)}")
        self._wake_tx = self._ctx.socket(zmq.PAIR)
        self._wake_tx.connect(f"inproc://wake-{id(self)}")
        self._check_endpoint()
        self._thread = threading.Thread(target=self._run, name="remote-driver-io", daemon=True)
        self._thread.start()
        try:
            self._settled.wait(connect_timeout_s)
        except BaseException:  # Ctrl-C while connecting: no I/O thread left saying hello to the server
            self.close()
            raise
        if not self._connected.is_set():
            self.close()
            if self._fatal is not None:
                raise self._fatal
            raise Disconnected(f"no instrument server answered at {endpoint} within {connect_timeout_s} s")

    def _check_endpoint(self) -> None:
        """Refuse an endpoint ZeroMQ cannot connect to (before the I/O thread would die of it)."""
        probe = self._ctx.socket(zmq.DEALER)
        try:
            probe.connect(self.endpoint)
        except zmq.ZMQError as exc:
            self._ctx.destroy(linger=0)
            raise ValueError(f"cannot connect to {self.endpoint!r}: {exc} (expected e.g. tcp://HOST:PORT)") from None
        finally:
            probe.close(linger=0)

    # -- public API ---------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while the server answers heartbeats."""
        return self._connected.is_set()

    def capabilities(self) -> Capabilities:
        """The capabilities the server reported in its last welcome."""
        if self._caps is None:
            raise Disconnected("not connected")
        return self._caps

    def send(self, command: Command, timeout_s: float = 5.0) -> Ack:
        """Send ``command`` and wait for its ack.

        Raises
        ------
        CommandRefused
            The instrument (or the server: expired, duplicate) did not accept it.
        DriverTimeout
            No ack within ``timeout_s``; the command may or may not have executed.
        Disconnected
            The server is gone: the command was not sent, or was sent and its ack lost with the
            connection (then it may have run).
        ProtocolError
            The server rejected the message (malformed, or ``hello_first``: it had forgotten this
            client); the command did not run.
        ValueError
            ``timeout_s`` is not a positive finite number (nothing is sent).
        """
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive finite number of seconds, not {timeout_s!r}")
        pending = self.submit(command)
        try:
            answer = pending.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            raise DriverTimeout(f"no ack for {command.kind} {command.id} within {timeout_s} s") from None
        finally:
            self._forget(command.id)
        if not answer.accepted:
            raise CommandRefused(answer)
        return answer

    def submit(self, command: Command) -> concurrent.futures.Future[Ack]:
        """Send ``command`` without waiting: the future resolves to its ack (accepted or not).

        This lets a caller keep scans in flight (send the next while the current frame travels).  The
        future fails with :class:`Disconnected` or :class:`ProtocolError` as :meth:`send` would raise;
        a caller that gives up on it should still expect the command to have run.  Callbacks added to
        the future run on the driver's I/O thread: they must be quick and must not call :meth:`send`
        or :meth:`close` (heartbeats wait for them, and the ack they would wait for with them).

        Raises
        ------
        Disconnected
            The server is not connected; nothing was sent.
        """
        pending: concurrent.futures.Future[Ack] = concurrent.futures.Future()
        parts = encode_command(command)
        with self._lock:  # checked and tagged together: a loss in between would let it out on the next connection
            if self._stop.is_set() or not self._connected.is_set():
                raise Disconnected(f"instrument server at {self.endpoint} is not connected{self._for_good()}")
            if command.id in self._waiters:
                raise ValueError(f"command {command.id} is already waiting for its ack: ids are unique per command")
            self._waiters[command.id] = pending
            connection = self._connection
        self._post(parts, connection)
        return pending

    def _forget(self, command_id: str) -> None:
        with self._lock:
            self._waiters.pop(command_id, None)

    def next_frame(self, timeout_s: float) -> Frame:
        """The next frame for this client.

        Raises
        ------
        DriverTimeout
            Nothing within ``timeout_s``.
        ProtocolError
            Code ``acquisition``: an accepted scan produced no frame.
        Disconnected
            The server is gone and no reconnection is attempted.
        """
        if not math.isfinite(timeout_s):
            raise ValueError(f"timeout_s must be a finite number of seconds, not {timeout_s!r}")
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                item = self._frames.get(timeout=min(0.05, max(deadline - time.monotonic(), 0.0)))
            except queue.Empty:
                item = None
            if isinstance(item, Frame):
                return item
            if isinstance(item, ProtocolError):
                raise item
            gone = not self._connected.is_set() and self._frames.empty() and self._caps is not None
            if gone and (not self.reconnect or self._stop.is_set() or self._fatal is not None):
                raise Disconnected(f"instrument server at {self.endpoint} is gone{self._for_good()}")
            if time.monotonic() >= deadline:
                raise DriverTimeout(f"no frame within {timeout_s} s")

    def _for_good(self) -> str:
        """Why no reconnection is tried any more (a server of another protocol version), if that is so."""
        return f" and will not be reconnected to: {self._fatal}" if self._fatal is not None else ""

    def close(self) -> None:
        """Say goodbye, stop the I/O thread and release the sockets (idempotent)."""
        if self._stop.is_set():
            return
        self._post([envelope("bye")], None)
        self._connected.clear()
        self._stop.set()
        self._wake()
        self._thread.join(timeout=5.0)
        self._fail_waiting(Disconnected("the driver was closed before the ack arrived"))  # nobody will answer them
        with self._lock:
            self._wake_tx.close(linger=0)
        self._wake_rx.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> RemoteDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
