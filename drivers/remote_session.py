"""The remote driver's I/O thread: one connection at a time, hello and heartbeats, the outbox sent in order.

A layer of :class:`drivers.remote.RemoteDriver` (see :mod:`drivers.remote_inbox`).
"""

from __future__ import annotations

import queue
import threading
import time

import zmq
from zmq.utils.monitor import parse_monitor_message

from drivers.base import Disconnected, ProtocolError
from drivers.codec import ACK_IN_FRAME, decode_envelope, envelope
from drivers.remote_inbox import _Inbox, logger
from drivers.security import CurveClientKeys, apply_client_keys
from drivers.sockets import NOBLOCK, discard_waiting, readable, send_parts

_HELLO_RETRY_S = 0.05  # until welcomed, hello is repeated this often (it is dropped while TCP connects)
# Connection events the client watches: a drop, and a handshake the server refused (CURVE keys, security).
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class _Session(_Inbox):
    """The I/O thread: it alone uses the socket (see :mod:`drivers.remote_inbox` for the layers)."""

    reconnect: bool
    _curve: CurveClientKeys | None
    _ctx: zmq.Context[zmq.Socket[bytes]]
    _outbox: queue.SimpleQueue[tuple[int | None, list[bytes]]]  # (connection posted on, or None: any; parts)
    _stop: threading.Event
    _wake_rx: zmq.Socket[bytes]
    _wake_tx: zmq.Socket[bytes]

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

    def _fail_waiter(self, parts: list[bytes], error: Exception) -> None:
        try:
            command_id = decode_envelope(parts).get("command", {}).get("id")
        except ProtocolError:
            return
        self._answer(command_id, error)
