"""The instrument server's replies: acks, errors, frames and heartbeats to its clients, never waiting.

The server (:class:`drivers.server.InstrumentServer`) is built in layers, one module each:
``_Replies`` (here: what the server holds of its clients, and everything it sends them),
``_Reading`` (:mod:`drivers.server_reading`: the command socket read and each message handled),
``InstrumentServer`` (:mod:`drivers.server`: its sockets, threads and the driver's worker).
Every method here runs under the server's lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

import zmq

from drivers.base import Ack, Driver, Frame, ProtocolError
from drivers.codec import encode_ack, encode_error, encode_frame, envelope, finite_number
from drivers.job_queue import Answer, JobQueue
from drivers.server_clients import Client
from drivers.sockets import NOBLOCK, send_parts

logger = logging.getLogger("drivers.server")  # (one logger for the whole server, whichever layer speaks)


class _Replies:
    """What the server holds of its clients, and what it sends them (set up by ``InstrumentServer``)."""

    driver: Driver
    heartbeat_s: float
    max_frame_bytes_per_client: int
    stats: Counter[str]
    _router: zmq.Socket[bytes]
    _pub: zmq.Socket[bytes] | None
    _pub_seq: int  # the delivery number of the next frame published to observers
    _wake_tx: zmq.Socket[bytes]
    _worker_ident: int | None
    _clients: dict[bytes, Client]
    _queue: JobQueue

    def _reply(self, identity: bytes, parts: list[Any], track: bool = False) -> zmq.MessageTracker | None:
        """Send to one client without ever waiting (the lock is held): a client that reads nothing loses replies.

        A full queue to the client (its high-water mark reached) drops the message and counts it in
        ``stats["dropped_client_not_reading"]``; a lost frame also shows as a gap in its delivery sequence.
        ``track``: return the tracker of the last part (done once ZeroMQ has written it out), if sent.
        """
        try:
            return send_parts(self._router, [identity, *parts], NOBLOCK, copy=False, track=track)
        except zmq.Again:
            self.stats["dropped_client_not_reading"] += 1
        except zmq.ZMQError:  # EHOSTUNREACH: the client vanished
            self.stats["undeliverable"] += 1
            self._forget(identity)
        return None

    def _send_answers(self, answers: list[Answer]) -> None:
        """Send the queue's refusals, now that it is whole (a reply that fails forgets its client, re-entrantly).

        A client forgotten meanwhile (an earlier reply to it failed) is not tried again.
        """
        for identity, ack in answers:
            if identity in self._clients:
                self._reply(identity, encode_ack(ack))

    def _forget(self, identity: bytes) -> None:
        """A client gone (silent, said bye, unreachable): its queued moves are dropped, its blanks and stops kept."""
        self._clients.pop(identity, None)
        self._send_answers(self._queue.client_gone(identity))

    def _wake_worker(self) -> None:
        if threading.get_ident() != self._worker_ident and not self._wake_tx.closed:
            try:
                self._wake_tx.send(b"", NOBLOCK)
            except zmq.Again:  # wake-ups are already waiting to be read
                pass

    def _answer(self, identity: bytes, command_id: str, items: tuple[Ack | Frame | ProtocolError, ...]) -> None:
        client = self._clients.get(identity)
        match items:
            case (Ack() as ack, Frame() as frame) if client is not None and client.ack_in_frame:
                self._send_frame(identity, frame, ack)  # a scan's ack and its frame, ready together: one message
                return
        for item in items:  # (an ack and an acquisition error that came at once go as two messages)
            if isinstance(item, Ack):
                self._reply(identity, encode_ack(item))
            elif isinstance(item, Frame):
                self._send_frame(identity, item)
            else:  # an accepted scan whose frame never came: say so, naming the scan
                self._reply(identity, encode_error(item.code, str(item), command_id))

    def _send_frame(self, identity: bytes, frame: Frame, ack: Ack | None = None) -> None:
        """Send a frame (and the ack it carries) to its client, unless it holds too many bytes of frames already.

        A frame that is not sent (the byte bound, or one that cannot be encoded) still takes its delivery
        number, so the client sees the gap, and a carried ack then goes on its own.
        """
        client = self._clients.get(identity)
        if client is not None:
            seq = client.delivery_seq
            client.delivery_seq += 1
            held, nbytes = client.frame_bytes_held(), frame.image.nbytes
            if held and held + nbytes > self.max_frame_bytes_per_client:  # it has not taken what is held for it
                self.stats["dropped_client_not_reading"] += 1
            elif (parts := self._encoded(frame, seq, ack)) is not None:
                tracker = self._reply(identity, parts, track=True)
                if tracker is not None and not tracker.done:
                    client.hold(tracker, nbytes)
                ack = None  # (sent with the frame, or lost with it to a full queue, which is counted)
        if ack is not None:  # a frame not sent, or no client to number it for: the ack still goes
            self._reply(identity, encode_ack(ack))
        self.stats["frames"] += 1
        if self._pub is not None:
            if (parts := self._encoded(frame, self._pub_seq, None)) is not None:
                self._pub.send_multipart([b"frame", *parts], copy=False)
            self._pub_seq += 1

    def _encoded(self, frame: Frame, seq: int, ack: Ack | None) -> list[Any] | None:
        """The frame's message, or None (counted per message, logged) if its free-form metadata cannot go in JSON.

        (A numpy integer in the metadata, say: the header's own fields are validated.)
        """
        try:
            return encode_frame(frame, seq, ack)
        except (ValueError, TypeError, UnicodeError) as exc:  # (pydantic's serialisation error is a ValueError)
            self.stats["frames_unencodable"] += 1
            logger.error("frame %d could not be encoded, not sent: %s", frame.header.sequence, exc)
            return None

    def _heartbeat(self) -> None:
        now = time.monotonic()
        for identity, client in list(self._clients.items()):
            if now - client.last_seen > 3 * self.heartbeat_s:
                self.stats["clients_lost"] += 1
                self._forget(identity)
            else:
                self._reply(identity, [envelope("heartbeat", t=time.time(), **client.take_echo(now))])

    def _keep_echo(self, identity: bytes, t: object) -> None:
        """Keep a client's heartbeat time stamp (a finite number, else ignored) to echo back."""
        client, stamp = self._clients.get(identity), finite_number(t)
        if client is not None and stamp is not None:
            client.echo = (stamp, time.monotonic())
