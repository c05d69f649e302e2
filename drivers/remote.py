"""``RemoteDriver``: a :class:`Driver` talking to an instrument server over ZeroMQ (DEALER).

An I/O thread owns the socket: it sends heartbeats, watches the server's, and
after three missed intervals declares the server gone, fails every pending call
with :class:`Disconnected`, and reconnects with exponential backoff on a fresh
socket.  ``LINGER=0``, ``IMMEDIATE=1`` and a small send high-water mark mean a
command is never queued for a dead peer and delivered late: sending while
disconnected fails at once, and a command still waiting for the I/O thread when
the connection is lost is dropped (its caller gets :class:`Disconnected`), never
sent on a later connection.  Frames carry a per-client delivery sequence; gaps
are counted in ``stats["frames_lost"]``, never hidden.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import queue
import threading
import time
from collections import Counter, deque
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import parse_monitor_message

from drivers.base import (
    Ack,
    Capabilities,
    Command,
    CommandRefused,
    Disconnected,
    DriverTimeout,
    Frame,
    ProtocolError,
)
from drivers.codec import (
    ACK_IN_FRAME,
    MAX_SERVER_HEARTBEAT_S,
    MIN_KEEPALIVE_S,
    decode_ack,
    decode_capabilities,
    decode_envelope,
    decode_frame,
    encode_command,
    envelope,
    finite_number,
    keepalive_s,
    liveness_s,
)
from drivers.security import CurveClientKeys, apply_client_keys
from drivers.sockets import NOBLOCK, discard_waiting, readable, send_parts

logger = logging.getLogger(__name__)

_HELLO_RETRY_S = 0.05  # until welcomed, hello is repeated this often (it is dropped while TCP connects)
# Connection events the client watches: a drop, and a handshake the server refused (CURVE keys, security).
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class RemoteDriver:
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

    # -- I/O thread ---------------------------------------------------------------------------------
    def _post(self, parts: list[bytes], connection: int | None) -> None:
        """Queue ``parts`` for the I/O thread; tagged with a connection, they go out on that one or never."""
        self._outbox.put((connection, parts))
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            if not self._wake_tx.closed:
                try:
                    self._wake_tx.send(b"", NOBLOCK)
                except zmq.Again:  # wake-ups the I/O thread has not read yet: one waiting is enough
                    pass

    def _new_socket(self) -> zmq.Socket[bytes]:
        sock = self._ctx.socket(zmq.DEALER)
        for opt, value in (
            (zmq.LINGER, 0),
            (zmq.IMMEDIATE, 1),
            (zmq.SNDHWM, 16),
            (zmq.RCVHWM, 64),
            # No size limit on the socket: one there drops the connection (and the dead-man blanks the
            # beam); frames over max_frame_bytes are refused after reading, each one counted and reported.
            (zmq.MAXMSGSIZE, -1),
        ):
            sock.setsockopt(opt, value)
        if self._curve is not None:
            apply_client_keys(sock, self._curve)
        sock.connect(self.endpoint)
        return sock

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            welcomes = self.stats["welcomes"]
            sock = self._new_socket()
            try:
                self._session(sock)
            finally:
                sock.close(linger=0)
            if self._stop.is_set() or not self.reconnect or self._fatal is not None:
                break
            if self.stats["welcomes"] > welcomes:  # a session that worked: the next outage starts afresh
                backoff = 0.1
            self.stats["reconnects"] += 1
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 2.0)

    def _session(self, sock: zmq.Socket[bytes]) -> None:
        """One connection: hello, then serve until the peer is silent for three heartbeats or drops.

        A dropped TCP connection ends the session at once: a killed server is noticed in milliseconds,
        and a restarted one never inherits the session (ZeroMQ would reconnect underneath; a drop
        always means a fresh socket and a fresh hello).
        """
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | _HANDSHAKE_FAILED)
        try:
            self._serve_session(sock, monitor)
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)

    def _serve_session(self, sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes]) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)  # (and POLLOUT while commands are held back: set in the loop)
        poller.register(self._wake_rx, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        self._expected_seq = 0
        hello = [envelope("hello", client="autoscope.RemoteDriver", accepts=[ACK_IN_FRAME])]
        last_in, last_out = time.monotonic(), 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            welcomed = self._connected.is_set()
            if not welcomed and now - last_out >= min(self.heartbeat_s, _HELLO_RETRY_S):
                self._try_send(sock, hello)  # (re)introduce ourselves until welcomed (IMMEDIATE drops it
                last_out = now  # while the TCP connection is still being made: retry soon)
            elif self._connected.is_set() and now - last_out >= self._keepalive_s:
                self._try_send(sock, [envelope("heartbeat", t=time.time())])
                last_out = now
            if now - last_in > self._liveness_s:
                if self._connected.is_set():
                    self._lost("server missed three heartbeats")
                    return
                if self._caps is not None:
                    return  # a reconnect attempt that got no welcome: back off and retry
            if welcomed:  # wake for the next heartbeat due, and at least four times per interval
                wait_s = min(self._keepalive_s / 4, max(last_out + self._keepalive_s - now, 0.001))
            else:
                wait_s = min(self.heartbeat_s / 4, _HELLO_RETRY_S)
            poller.modify(sock, zmq.POLLIN | (zmq.POLLOUT if self._held_back else 0))
            events = dict(poller.poll(timeout=int(1000 * wait_s)))
            if self._wake_rx in events:
                discard_waiting(self._wake_rx)
                self._flush_outbox(sock)
            if events.get(sock, 0) & zmq.POLLOUT:
                self._flush_outbox(sock)
            if events.get(sock, 0) & zmq.POLLIN:
                while readable(sock):
                    self._receive(sock)
                    last_in = time.monotonic()
                if self._forgotten:  # a fresh connection and hello: its session on the server is gone
                    self._forgotten = False
                    self._lost("the server forgot this client (hello_first)")
                    return
                if self._fatal is not None:
                    return
            if monitor in events:
                event = parse_monitor_message(monitor.recv_multipart())["event"]
                if event & zmq.EVENT_HANDSHAKE_FAILED_AUTH and self._caps is None:  # never welcomed: the keys
                    self._refuse(
                        Disconnected(
                            f"the server at {self.endpoint} refused this client's CURVE keys (not on its allow-list)"
                        )
                    )
                    return
                if event & _HANDSHAKE_FAILED:  # (a peer closing mid-handshake, a restarting server): retry
                    if event & zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # welcomed before: the allow-list may have changed
                        self._auth_refused_again()
                    if self._connected.is_set():
                        self._lost("the connection to the server dropped during a handshake")
                    return
                if self._connected.is_set():
                    self._lost("the connection to the server dropped")
                    return
                if self._caps is not None:
                    return  # a reconnect attempt whose connection dropped before the welcome
        self._flush_outbox(sock)

    def _auth_refused_again(self) -> None:
        """A server that welcomed this client before refuses its CURVE keys now: counted, and said once per outage."""
        self.stats["auth_refused"] += 1
        if self.stats["auth_refused"] == self._auth_refused_said + 1:
            logger.warning(
                "the server at %s refuses this client's CURVE keys on reconnection (was its allow-list changed?);"
                " still retrying", self.endpoint,
            )  # fmt: skip

    def _try_send(self, sock: zmq.Socket[bytes], parts: list[bytes]) -> bool:
        try:
            send_parts(sock, parts, NOBLOCK)
            return True
        except zmq.Again:  # IMMEDIATE: no live connection, so nothing is queued for later
            return False

    def _flush_outbox(self, sock: zmq.Socket[bytes]) -> None:
        """Send what waits, in order; a full send queue holds the rest back until the socket has room."""
        while True:
            if self._held_back:
                connection, parts = self._held_back.popleft()
            else:
                try:
                    connection, parts = self._outbox.get_nowait()
                except queue.Empty:
                    return
            if connection is not None and connection != self._connection:
                self.stats["unsent_connection_lost"] += 1  # posted before a loss: never on a later connection
                self._fail_waiter(parts, Disconnected("the connection was lost before the command went out; not sent"))
            elif not self._try_send(sock, parts):
                if self._connected.is_set():
                    # A burst: the send queue is full, not the link gone (a drop ends the session, failing these).
                    self._held_back.appendleft((connection, parts))
                    self.stats["held_back"] += 1
                    return
                self._fail_waiter(parts, Disconnected("no connection to the instrument server; command not sent"))

    def _refuse(self, error: Exception) -> None:
        """The server will never accept this client (version, keys): stop trying and tell the constructor."""
        logger.error("instrument server at %s: %s", self.endpoint, error)
        self._fatal = error
        self._settled.set()

    def _fail_waiter(self, parts: list[bytes], error: Exception) -> None:
        try:
            command_id = decode_envelope(parts).get("command", {}).get("id")
        except ProtocolError:
            return
        self._answer(command_id, error)

    def _answer(self, command_id: Any, answer: Ack | Exception) -> bool:
        with self._lock:
            pending = self._waiters.pop(command_id, None) if isinstance(command_id, str) else None
        if pending is None or pending.done():
            return False
        try:
            if isinstance(answer, Exception):
                pending.set_exception(answer)
            else:
                pending.set_result(answer)
        except concurrent.futures.InvalidStateError:  # cancelled by its caller meanwhile
            return False
        return True

    def _lost(self, why: str) -> None:
        logger.warning("instrument server at %s lost: %s", self.endpoint, why)
        self.stats["disconnects"] += 1
        with self._lock:
            self._connected.clear()
            self._connection += 1
        self._held_back.clear()  # tagged with the lost connection: their waiters fail below
        self._fail_waiting(Disconnected(f"instrument server lost ({why}) before the ack arrived"))

    def _fail_waiting(self, error: Exception) -> None:
        """Fail every call still waiting for its ack with ``error``."""
        with self._lock:
            waiting = list(self._waiters)
        for command_id in waiting:
            self._answer(command_id, error)

    def _receive(self, sock: zmq.Socket[bytes]) -> None:
        """Read and handle one message; the caller has seen ``sock`` readable."""
        parts = sock.recv_multipart(copy=False)
        try:
            self._dispatch([p.buffer for p in parts])
        except ProtocolError as exc:
            self.stats[f"error_{exc.code}"] += 1
            if exc.code == "version" and not self._connected.is_set():
                self._refuse(exc)
                return
            logger.warning("dropped a message from %s: %s", self.endpoint, exc)
            if exc.code == "too_large":  # a frame that will not come: its reader hears so now, not at a timeout
                self._frames.put(exc)

    def _note_round_trip(self, echo_t: Any, held_s: Any) -> None:
        """A heartbeat's round trip from our own stamp it echoes, less the time the server held it."""
        stamp, held = finite_number(echo_t), finite_number(held_s)
        if stamp is None or held is None:
            return  # a beat without an echo (its first, or an older server)
        rtt_s = time.time() - stamp - held
        if 0.0 <= rtt_s < 60.0:  # a wall-clock step makes nonsense: left out
            self._rtts_ms.append(1e3 * rtt_s)

    def heartbeat_rtt_ms(self) -> dict[str, float] | None:
        """Heartbeat round trips (the last 1000): count, median, 99th percentile and maximum, in ms."""
        rtts = np.asarray(list(self._rtts_ms))
        if rtts.size == 0:
            return None
        p50, p99 = np.percentile(rtts, [50, 99])
        return {
            "n": int(rtts.size),
            "p50": round(float(p50), 3),
            "p99": round(float(p99), 3),
            "max": round(float(rtts.max()), 3),
        }

    def _take_ack(self, ack: Ack) -> None:
        if not self._answer(ack.command_id, ack):
            self.stats["stale_acks"] += 1  # its caller timed out or gave up: ignored, counted

    def _dispatch(self, parts: list[memoryview]) -> None:
        obj = decode_envelope([bytes(parts[0]), *parts[1:]])  # type: ignore[list-item]
        kind = obj["type"]
        if kind == "welcome":
            if self._connected.is_set():  # the answer to a repeated hello of this same connection
                self.stats["extra_welcomes"] += 1
                return
            self._caps = decode_capabilities(obj)
            self._keepalive_s = keepalive_s(obj, self.heartbeat_s)
            self._liveness_s = liveness_s(obj, self.heartbeat_s)
            if (finite_number(obj.get("heartbeat_s")) or 0.0) > MAX_SERVER_HEARTBEAT_S:
                logger.warning(
                    "the server announces a heartbeat every %s s; it is declared gone after %g s of silence",
                    obj.get("heartbeat_s"), self._liveness_s,
                )  # fmt: skip
            self._expected_seq = 0
            self.stats["welcomes"] += 1
            self._auth_refused_said = self.stats["auth_refused"]  # a later refusal is a new outage: said again
            self._connected.set()
            self._settled.set()
        elif kind == "ack":
            self._take_ack(decode_ack(obj))
        elif kind == "frame":
            if "ack" in obj:  # its scan's ack, sent with it (we accept ack_in_frame): as if it came just before,
                self._take_ack(decode_ack(obj))  # so a frame dropped below still leaves its scan acknowledged
            frame, seq = decode_frame(obj, parts[1], self.max_frame_bytes)
            if seq > self._expected_seq:
                self.stats["frames_lost"] += seq - self._expected_seq
                logger.warning("%d frame(s) lost before delivery %d", seq - self._expected_seq, seq)
            self._expected_seq = seq + 1
            self.stats["frames"] += 1
            self._frames.put(frame)
        elif kind == "error":
            self.stats[f"server_error_{obj.get('code')}"] += 1
            error = ProtocolError(str(obj.get("code")), str(obj.get("reason")))
            self._forgotten |= obj.get("code") == "hello_first"
            if obj.get("code") == "version" and not self._connected.is_set():
                self._refuse(error)
                return
            if not self._answer(obj.get("command_id"), error):
                logger.warning("server reported %s", error)
                if obj.get("code") == "acquisition":  # an accepted scan failed: its frame will not come
                    self._frames.put(error)
        elif kind == "heartbeat":
            self.stats["heartbeats_in"] += 1
            self._note_round_trip(obj.get("echo_t"), obj.get("held_s"))
        else:  # hello, command, bye: what a client sends, never a server
            raise ProtocolError("type", f"a server may not send {kind!r} messages")
