"""What the remote driver receives: the server's welcome, acks, frames, errors and heartbeats.

:class:`drivers.remote.RemoteDriver` is built in layers, one module each: ``_Inbox`` (here: what the
driver holds of its connection, each message from the server handled, the callers waiting for acks
answered), ``_Session`` (:mod:`drivers.remote_session`: the I/O thread, one connection at a time),
``RemoteDriver`` (:mod:`drivers.remote`: the public driver).  The methods here run on the I/O thread.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections import Counter, deque
from typing import Any

import numpy as np
import zmq

from drivers.base import Ack, Capabilities, Disconnected, Frame, ProtocolError
from drivers.codec import (
    MAX_SERVER_HEARTBEAT_S,
    decode_ack,
    decode_capabilities,
    decode_envelope,
    decode_frame,
    finite_number,
    keepalive_s,
    liveness_s,
)

logger = logging.getLogger("drivers.remote")  # (one logger for the whole driver, whichever layer speaks)


class _Inbox:
    """The connection's state (set up by ``RemoteDriver``) and the handling of what the server sends."""

    endpoint: str
    heartbeat_s: float
    max_frame_bytes: int
    stats: Counter[str]
    _keepalive_s: float  # how often to send while idle: less if the server (beat, dead-man) asks
    _liveness_s: float  # silence after which the server is gone: longer if it beats slower
    _forgotten: bool  # the server answered hello_first: it forgot this client; say hello again
    _auth_refused_said: int  # stats["auth_refused"] when the last welcome came: a warning per outage
    _rtts_ms: deque[float]
    _connection: int  # bumped (under _lock) each time a connection is lost
    _waiters: dict[str, concurrent.futures.Future[Ack]]
    _frames: queue.SimpleQueue[Frame | ProtocolError]
    _lock: threading.Lock
    _connected: threading.Event
    _settled: threading.Event  # connected, or refused for good (_fatal)
    _fatal: Exception | None
    _held_back: deque[tuple[int | None, list[bytes]]]  # waiting for room in the send queue
    _caps: Capabilities | None
    _expected_seq: int  # the next frame's delivery number on this connection

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

    def _take_ack(self, ack: Ack) -> None:
        if not self._answer(ack.command_id, ack):
            self.stats["stale_acks"] += 1  # its caller timed out or gave up: ignored, counted

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

    def _fail_waiting(self, error: Exception) -> None:
        """Fail every call still waiting for its ack with ``error``."""
        with self._lock:
            waiting = list(self._waiters)
        for command_id in waiting:
            self._answer(command_id, error)

    def _lost(self, why: str) -> None:
        logger.warning("instrument server at %s lost: %s", self.endpoint, why)
        self.stats["disconnects"] += 1
        with self._lock:
            self._connected.clear()
            self._connection += 1
        self._held_back.clear()  # tagged with the lost connection: their waiters fail below
        self._fail_waiting(Disconnected(f"instrument server lost ({why}) before the ack arrived"))

    def _refuse(self, error: Exception) -> None:
        """The server will never accept this client (version, keys): stop trying and tell the constructor."""
        logger.error("instrument server at %s: %s", self.endpoint, error)
        self._fatal = error
        self._settled.set()
