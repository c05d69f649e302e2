"""The instrument server's reading: the command socket read in bounded batches, each message handled.

A layer of :class:`drivers.server.InstrumentServer` (see :mod:`drivers.server_replies`); every method
here runs under the server's lock.
"""

from __future__ import annotations

import logging
import time

from drivers.base import Command, ProtocolError
from drivers.codec import (
    ACK_IN_FRAME,
    client_options,
    decode_command,
    decode_envelope,
    encode_error,
    encode_welcome,
    finite_number,
)
from drivers.job_queue import SERVER_ID_PREFIX
from drivers.server_clients import Client, command_id_of
from drivers.server_replies import _Replies, logger
from drivers.sockets import readable

_DRAIN_BATCH = 64  # messages read in a row before the reader keeps time (heartbeats, dead-man)


class _Reading(_Replies):
    """Reading and handling the clients' messages, keeping time between batches."""

    _next_beat: float  # when the next heartbeat to the clients is due (monotonic)
    _unread: bool  # the last read of the command socket stopped before it was empty

    @property
    def deadman_s(self) -> float | None:
        """The dead-man time, s (``None``: off)."""
        return self._queue.deadman_s

    def _keep_time(self) -> None:
        """The dead-man check, and the heartbeats when due (under the lock)."""
        self._check_deadman()
        if time.monotonic() >= self._next_beat:
            self._heartbeat()
            self._next_beat = time.monotonic() + self.heartbeat_s

    def _drain_router(self) -> None:
        """Handle the messages waiting on the command socket, at most ``_DRAIN_BATCH`` (under the lock).

        The socket's descriptor signals only new arrivals, so a reader that stops before the socket is
        empty says so in ``_unread``: a thread about to wait on the descriptor reads again instead, and
        the idle worker is woken too.  Bounded batches let a client sending faster than messages are
        handled hold no one up: between batches the lock is let go (the worker runs the commands read
        so far) and time is kept (the other clients' heartbeats, the dead-man).
        """
        for _ in range(_DRAIN_BATCH):
            if not readable(self._router):
                self._unread = False
                return
            self._take(self._router.recv_multipart())
        self._unread = True
        self._wake_worker()

    def _take(self, parts: list[bytes]) -> None:
        """Handle one message read from the command socket (under the lock)."""
        if len(parts) < 2:
            self.stats["malformed"] += 1
            return
        identity, body = parts[0], parts[1:]
        self._clients.setdefault(identity, Client(time.monotonic())).last_seen = time.monotonic()
        self._queue.heard(identity)
        try:
            self._handle(identity, body)
        except Exception:  # a bug must not end the thread reading: log it, count it, keep serving
            self.stats["internal_errors"] += 1
            logger.exception("message from client %s could not be handled", identity.hex()[:8])

    def _handle(self, identity: bytes, body: list[bytes]) -> None:
        try:
            obj = decode_envelope(body)
            kind = obj["type"]
            if kind == "hello":
                client = self._clients[identity]  # (registered on arrival, just before)
                client.ack_in_frame = ACK_IN_FRAME in client_options(obj)
                client.welcomed = True
                client.delivery_seq = 0  # (frames are numbered from 0 after each welcome: PROTOCOL.md)
                caps = self.driver.capabilities()
                self._reply(identity, encode_welcome(caps, self.heartbeat_s, time.time(), self.deadman_s))
            elif kind == "heartbeat":
                self.stats["heartbeats_in"] += 1
                if not self._clients[identity].welcomed:  # forgotten (a stall): its session and commands are gone
                    raise ProtocolError("hello_first", "this client was forgotten (silent too long): say hello again")
                if "t" in obj and finite_number(obj["t"]) is None:  # (it still counts as a sign of life)
                    raise ProtocolError(
                        "invalid", f"heartbeat t must be a finite number of seconds, not {obj['t']!r:.40}"
                    )
                self._keep_echo(identity, obj.get("t"))
            elif kind == "bye":
                self._said_bye(identity)
            elif kind == "command":
                if not self._clients[identity].welcomed:  # a client must learn the limits first
                    raise ProtocolError("hello_first", "no hello on this connection (or forgotten since): not accepted")
                command = decode_command(obj)
                if command.id.startswith(SERVER_ID_PREFIX):
                    raise ProtocolError("reserved_id", f"ids starting {SERVER_ID_PREFIX!r} are the server's own")
                self._accept(identity, command)
            else:
                raise ProtocolError("type", f"a client may not send {kind!r} messages")
        except ProtocolError as exc:
            self.stats[f"error_{exc.code}"] += 1
            self._warn_bad(identity, exc)
            self._reply(identity, encode_error(exc.code, str(exc), command_id_of(body)))

    def _warn_bad(self, identity: bytes, exc: ProtocolError) -> None:
        """Log a bad message (a few per client and window: :meth:`Client.warn_bad`)."""
        client = self._clients.get(identity)
        if client is not None:  # (forgotten meanwhile: nothing to count against)
            client.warn_bad(identity.hex()[:8], exc)

    def _accept(self, identity: bytes, command: Command) -> None:
        self.stats["commands"] += 1
        if logger.isEnabledFor(logging.INFO):  # (the hex is worth skipping on every frame)
            logger.info("command %s %s from %s", command.kind, command.id, identity.hex()[:8])
        self._send_answers(self._queue.offer(identity, command))

    def _check_deadman(self) -> None:
        for identity, why in self._queue.check_deadman():
            self._send_answers(self._queue.deadman(identity, why))

    def _said_bye(self, identity: bytes) -> None:
        """A client said ``bye``: forget it, and blank the beam if its commands may have left it on."""
        self._forget(identity)
        self._send_answers(self._queue.said_bye(identity))
