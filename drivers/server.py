"""The instrument server: any :class:`Driver` behind ZeroMQ (ROUTER for commands, PUB for observers).

One worker thread calls the driver and sends its answers itself; while it has
nothing to do it also reads the command socket, so a command is read, checked,
executed and answered by one thread, with no hand-off between threads on the way
(each hand-off costs a wake-up, which on a loaded machine is most of a frame's
time).  A second thread keeps time (heartbeats, the dead-man timer) and reads the
command socket whenever the worker has been inside the driver for a while, so a
long acquisition never stops heartbeats.  The sockets and the server's state are
shared under one lock that is never held while waiting: the threads wait on the
command socket's descriptor, outside it.

Commands are checked on arrival: bad messages get an ``error`` reply naming the
violation, duplicates (by id) and expired commands (past their deadline; never a
``blank`` or ``stop``) get a refusing ``ack``; none of them reaches the driver.  An accepted scan is answered
by an ``ack`` and then its frame, sent zero-copy, also published on the PUB
socket for passive observers.

A dead-man timer protects the specimen from an agent that dies or freezes: once
a client has commanded anything but ``blank``/``stop``, it must be heard from
(heartbeats count) at least every ``deadman_s``; if it falls silent or says
``bye``, its queued commands but its blanks and stops are dropped and the beam is blanked.  Each
such client is watched on its own until a blank or stop taken after its last command has worked, or
another client's unblank taken after it has.  A
``blank`` or ``stop`` never expires.

The worker's calls into the driver are :class:`drivers.server_driver.DriverCalls`; what the server keeps
of each client is :class:`drivers.server_clients.Client`; the queue of commands waiting for the driver,
with the dead-man watches, is :class:`drivers.job_queue.JobQueue`.  The server itself is built in
layers: its replies to clients (:mod:`drivers.server_replies`), its reading of their messages
(:mod:`drivers.server_reading`), and here its sockets, threads and the worker.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from typing import Any

import zmq

from drivers.base import Ack, BlankCommand, Command, Driver, Frame, ProtocolError, ScanCommand, new_command_id
from drivers.codec import MAX_SERVER_HEARTBEAT_S, MIN_KEEPALIVE_S
from drivers.job_queue import NEVER_UNIX_S, SERVER_ID_PREFIX, URGENT, JobQueue
from drivers.security import CurveServerKeys, apply_server_keys, check_bind, start_authenticator
from drivers.server_clients import Client, held
from drivers.server_driver import DriverCalls
from drivers.server_reading import _Reading
from drivers.server_replies import logger
from drivers.sockets import discard_waiting

__all__ = ["MIN_DEADMAN_S", "SERVER_ID_PREFIX", "InstrumentServer"]

# Between batches of a flood, the reader pauses this long: threading.Lock is not fair, and a thread that
# lets it go and takes it again at once would keep a waiting thread out for as long as the flood lasts.
_YIELD_S = 0.001
_TAKE_OVER_S = 0.05  # the timekeeper reads the command socket once the worker has been this long in the driver
_TICK_S = 0.05  # the timekeeper's period (heartbeats due, the dead-man timer, commands during long calls)
# Why a command queued before a blank or stop that was carried out first is not executed.
_SUPERSEDED = "a stop or blank sent after it was carried out first: not executed"
# A client beats at most every MIN_KEEPALIVE_S: a dead-man time shorter than four beats and a tick would
# blank the beam under a healthy client.
MIN_DEADMAN_S = 4 * MIN_KEEPALIVE_S + _TICK_S


def _check_settings(heartbeat_s: float, deadman_s: float | None, max_jobs_per_client: int, max_jobs_total: int) -> None:
    """Refuse timings and bounds under which the server could not work (a ``ValueError`` naming the setting)."""
    for name, value in (("heartbeat_s", heartbeat_s), ("deadman_s", deadman_s)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number of seconds (got {value!r})")
    if heartbeat_s < MIN_KEEPALIVE_S:  # clients beat at most this often: they would all be forgotten
        raise ValueError(f"heartbeat_s={heartbeat_s:g} is shorter than clients beat ({MIN_KEEPALIVE_S:g} s at least)")
    if heartbeat_s > MAX_SERVER_HEARTBEAT_S:  # clients would declare the server gone between its beats
        raise ValueError(
            f"heartbeat_s={heartbeat_s:g} is longer than clients wait ({MAX_SERVER_HEARTBEAT_S:g} s at most)"
        )
    if deadman_s is not None and deadman_s < MIN_DEADMAN_S:
        raise ValueError(
            f"deadman_s={deadman_s:g} is shorter than a client can keep alive ({MIN_DEADMAN_S:g} s at least)"
        )
    for name, bound in (("max_jobs_per_client", max_jobs_per_client), ("max_jobs_total", max_jobs_total)):
        if bound < 1:
            raise ValueError(f"{name} must be at least 1 (got {bound!r})")


class InstrumentServer(_Reading):
    """Serve ``driver`` on ``endpoint`` (and stream frames on ``pub_endpoint``).

    Parameters
    ----------
    driver
        Any driver; the server is its only user while it runs.
    endpoint
        ROUTER endpoint; ``tcp://127.0.0.1:0`` picks a free port (see :attr:`endpoint`).
    pub_endpoint
        Optional PUB endpoint for observers.
    heartbeat_s
        Heartbeat interval; a client silent for three intervals is forgotten.
    max_message_bytes
        Larger incoming messages are dropped by ZeroMQ and the peer disconnected.
    frame_timeout_s
        How long to wait for the frame of an accepted scan beyond its nominal scan time.
    curve, insecure
        CURVE keys (required to bind a non-loopback address unless ``insecure``).
    deadman_s
        Blank the beam when a client whose commands may have left it on has been silent this long
        (``None``: never).  Each such client is watched until a blank or stop taken after its last
        command has worked, or another client's unblank taken after it has.
    max_queued_per_client
        Replies (acks, heartbeats, frames) held for one client before further ones are dropped and
        counted (the ROUTER's send high-water mark; libzmq's default).  It counts messages, not bytes:
        a small value would bound a stalled client's frames, but also drops replies in a burst the server's
        own I/O thread has not yet written out (15 of 10 000 error replies lost in a test, at 64, on a
        loaded 2-core machine), so it stays at libzmq's 1 000 and frames have a bound of their own.
    max_frame_bytes_per_client
        Bytes of frames held for one client (handed to ZeroMQ, not yet written to its connection) beyond
        which its next frames are dropped and counted (``dropped_client_not_reading``), their delivery
        numbers skipped so the client sees the gap.  A frame is always sent when none is held, however
        large.  Default 256 MiB: 64 frames of 1024 x 1024 float32.  Frames under 64 KiB are copied by
        ZeroMQ and bounded by ``max_queued_per_client`` only.  A client forgotten and heard from again
        starts from nothing held, even while its old frames are still queued (bounded by the message count).
    max_queued_per_observer
        Frames held for each observer on the PUB socket (its send high-water mark, per subscriber) before
        further ones are dropped for that observer alone, which sees the gap in the stream's sequence.
        libzmq's default of 1 000 would let one stalled dashboard hold 4 GB of 1024 x 1024 frames.
    max_jobs_per_client
        Commands of one client waiting for the driver; beyond that its commands are refused with
        ``busy``, so a client sending faster than the instrument works cannot grow the server's memory
        without bound.  A ``blank`` or ``stop`` beyond it is always taken: where it waits beside the
        client's own waiting one of the same kind (only blanks and stops between them), the two become
        one in the earlier place, holding the newer command, and the older is answered ``busy``; so
        again when the commands that kept them apart are dropped, while the client holds more than the
        bound.  Those of gone clients (and the server's own) fold likewise.  So a client holds at most
        ``max_jobs_per_client`` commands plus one blank and one stop between any two other waiting
        commands, and one within the bound is answered ``busy`` only beyond ``max_jobs_total``.
    max_jobs_total
        Commands of all clients waiting for the driver, beyond which any client's (but a ``blank`` or
        ``stop``) are refused with ``busy``: every new connection is a client of its own.
    """

    def __init__(
        self,
        driver: Driver,
        endpoint: str = "tcp://127.0.0.1:5555",
        pub_endpoint: str | None = None,
        heartbeat_s: float = 1.0,
        max_message_bytes: int = 64 * 1024,
        frame_timeout_s: float = 30.0,
        curve: CurveServerKeys | None = None,
        insecure: bool = False,
        deadman_s: float | None = 2.0,
        max_queued_per_client: int = 1000,
        max_frame_bytes_per_client: int = 256 * 2**20,
        max_queued_per_observer: int = 16,
        max_jobs_per_client: int = 1024,
        max_jobs_total: int = 8192,
    ) -> None:
        _check_settings(heartbeat_s, deadman_s, max_jobs_per_client, max_jobs_total)
        for ep in filter(None, (endpoint, pub_endpoint)):
            check_bind(ep, curve, insecure)
        self.driver = driver
        self.heartbeat_s = heartbeat_s
        self.max_frame_bytes_per_client = max_frame_bytes_per_client
        self.stats: Counter[str] = Counter()
        self._calls = DriverCalls(driver, self.stats, frame_timeout_s)
        self._ctx = zmq.Context()
        self._auth: Any = None
        self._pub: zmq.Socket[bytes] | None = None
        self.pub_endpoint: str | None = None
        try:
            self._bind(endpoint, pub_endpoint, curve, max_queued_per_client, max_message_bytes, max_queued_per_observer)
        except BaseException:  # (a port in use, a bad address): nothing of the server is left open
            if self._auth is not None:
                self._auth.stop()
            self._ctx.destroy(linger=0)
            raise
        # Everything below, the ROUTER and the PUB socket are used under this lock, never held while waiting.
        # Whoever reads the ROUTER reads it until it is empty, or says in _unread that it stopped short
        # (see _drain_router): its descriptor, which the threads wait on, signals only new arrivals.
        self._lock = threading.Lock()
        self._router_fd = int(self._router.getsockopt(zmq.FD))
        self._wake_rx = self._ctx.socket(zmq.PAIR)  # wakes the worker waiting for work (read by the worker only)
        self._wake_rx.bind(f"inproc://wake-{id(self)}")
        self._wake_tx = self._ctx.socket(zmq.PAIR)
        self._wake_tx.connect(f"inproc://wake-{id(self)}")
        self._worker_ident: int | None = None
        self._busy_since: float | None = None  # when the worker went into the driver; None while it is not
        self._clients: dict[bytes, Client] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pub_seq = 0
        #: The commands waiting for the driver and the clients' dead-man watches (used under the lock).
        self._queue = JobQueue(
            max_jobs_per_client, max_jobs_total, deadman_s, self._clients.__contains__, self.stats, self._wake_worker
        )
        self._next_beat = time.monotonic() + heartbeat_s  # the next heartbeat to the clients is due
        self._unread = False  # the last read of the command socket stopped before it was empty

    @property
    def max_jobs_per_client(self) -> int:
        """Commands of one client that may wait for the driver (blanks and stops beyond it fold)."""
        return self._queue.max_per_client

    @property
    def max_jobs_total(self) -> int:
        """Commands of all clients that may wait for the driver."""
        return self._queue.max_total

    def _socket(self, kind: int, curve: CurveServerKeys | None) -> zmq.Socket[bytes]:
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if curve:
            apply_server_keys(sock, curve)
        return sock

    def _bind(
        self, endpoint: str, pub_endpoint: str | None, curve: CurveServerKeys | None,
        max_queued_per_client: int, max_message_bytes: int, max_queued_per_observer: int,
    ) -> None:  # fmt: skip
        """Create and bind the ROUTER (and the PUB socket), with CURVE when keys are given."""
        self._auth = start_authenticator(self._ctx, curve) if curve else None
        self._router = self._socket(zmq.ROUTER, curve)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._router.setsockopt(zmq.SNDHWM, max_queued_per_client)  # (set before bind: the listener copies it)
        self._router.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self._router.bind(endpoint)
        self.endpoint: str = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        if pub_endpoint:
            self._pub = self._socket(zmq.PUB, curve)
            self._pub.setsockopt(zmq.SNDHWM, max_queued_per_observer)  # (before bind, as for the ROUTER)
            self._pub.bind(pub_endpoint)
            self.pub_endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> InstrumentServer:
        """Start the I/O and worker threads; returns self."""
        self._threads = [
            threading.Thread(target=self._worker, name="instrument-worker", daemon=True),
            threading.Thread(target=self._timekeeper, name="instrument-timekeeper", daemon=True),
        ]
        for t in self._threads:
            t.start()
        logger.info("instrument server on %s (observers: %s)", self.endpoint, self.pub_endpoint)
        return self

    def stop(self) -> None:
        """Drop queued commands, blank the beam, stop the threads and close the sockets (the driver stays open).

        A worker stuck in the driver (an acquisition that never ends) is left behind after 5 s rather
        than waited for, so that the caller can go on and close the driver.
        """
        if not self._threads:  # never started: no worker to run the blank, so it runs here
            self._stop.set()
            own = BlankCommand(id=f"{SERVER_ID_PREFIX}stop:{new_command_id()}", deadline_unix_s=NEVER_UNIX_S)
            self._calls.execute(own)
        with held(self._lock, timeout_s=5.0):
            self._queue.close()  # the worker runs the server's blank, then ends at the marker after it
            self._stop.set()
        for t in self._threads:
            t.join(timeout=5.0)
        stuck = any(t.is_alive() for t in self._threads)
        with held(self._lock, timeout_s=1.0):  # a stuck worker that comes back finds the sockets closed
            for sock in (self._router, self._pub, self._wake_rx, self._wake_tx):
                if sock is not None:
                    sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        if stuck:  # its inproc socket is still open: terminating the context would wait for it forever
            logger.error("the instrument worker is stuck in the driver; leaving it behind")
        else:
            self._ctx.term()

    def __enter__(self) -> InstrumentServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- worker: the only caller of the driver; it answers, and reads commands while idle -----------
    def _worker(self) -> None:
        self._worker_ident = threading.get_ident()
        # The descriptor, not the socket: the timekeeper may use the socket meanwhile (under the lock).
        items: list[tuple[Any, int]] = [(self._router_fd, zmq.POLLIN), (self._wake_rx, zmq.POLLIN)]
        while True:
            with self._lock:
                if not self._queue:
                    self._drain_router()  # its commands become jobs
                    if self._unread:  # a flood: heartbeats and the dead-man between batches
                        self._keep_time()
                idle = not self._queue
                job = None if idle else self._queue.popleft()
                self._busy_since = None if idle else time.monotonic()
                stopped = self._stop.is_set()  # (read here: stop() queues its blank before it sets the flag)
                unread = self._unread
            if not idle and job is None:  # the end of the queue at stop
                return
            if job is not None:
                self._run(*job)
            elif stopped:
                return
            elif unread:  # the descriptor will not signal what is already waiting: read on, after a pause
                self._stop.wait(_YIELD_S)  # in which a thread waiting for the lock (stop()) can take it
            elif any(item is self._wake_rx for item, _ in zmq.zmq_poll(items, 100)):
                discard_waiting(self._wake_rx)

    def _run(self, identity: bytes | None, command: Command) -> None:
        """Execute one job on the driver (outside the lock) and answer it.

        Before a scan, a ``blank`` or ``stop`` queued behind it is carried out first, and the scan, queued
        before it, is refused as superseded (as during an acquisition): a driver that acquires inside
        ``send`` would otherwise run every scan queued before a stop, the beam on, one after another.
        (Other commands are quick: they keep their order.)
        """
        if isinstance(command, ScanCommand) and self._run_urgent_jobs():
            self.stats["superseded_by_stop"] += 1
            self._post(identity, command.id, Ack.refusal(command, "refused", _SUPERSEDED))
            return
        ack = self._calls.execute(command)
        if command.kind in (*URGENT, "unblank"):
            with self._lock:
                self._queue.carried_out(command, ack.accepted)
        if not (ack.accepted and isinstance(command, ScanCommand)):
            self._post(identity, command.id, ack)
            return
        # A frame already there goes out with its ack; otherwise the ack goes out at once and the
        # frame follows when the acquisition ends.
        ready = self._calls.acquire(command, self._run_urgent_jobs, wait_s=0.0)
        if ready is not None:
            self._post(identity, command.id, ack, ready)
            return
        self._post(identity, command.id, ack)
        outcome = self._calls.acquire(command, self._run_urgent_jobs)
        self._post(identity, command.id, outcome if outcome is not None else ProtocolError("acquisition", "no frame"))

    def _post(self, identity: bytes | None, command_id: str, *items: Ack | Frame | ProtocolError) -> None:
        """Send the answers to a job (the worker, between driver calls)."""
        if identity is None:  # the server's own blank (dead-man or stop): nobody to answer
            logger.warning("the server's own blank: %s", items[0])
            return
        with self._lock:
            if self._stop.is_set():  # the sockets are being closed
                return
            try:
                self._answer(identity, command_id, items)
            except Exception:  # as for a message: a bug must not end the worker
                self.stats["internal_errors"] += 1
                logger.exception("the answer to %s could not be sent", command_id)
            self._drain_router()  # sending may have taken the descriptor's signal of what came meanwhile

    def _run_urgent_jobs(self) -> bool:
        """Carry out the queued ``blank`` and ``stop`` jobs now, during an acquisition (the worker).

        The commands queued before the last of them would have run before it in order; run after it
        they could leave the beam on after a client's or the operator's last blank, so they are
        refused instead (``superseded_by_stop``), and their senders told.  Commands queued after it
        keep their place.
        """
        with self._lock:
            urgent, superseded = self._queue.take_urgent_run()
        if not urgent:
            return False
        for identity, command in urgent:
            self._run(identity, command)
        for identity, command in superseded:
            self._post(identity, command.id, Ack.refusal(command, "refused", _SUPERSEDED))
        return True

    # -- timekeeper: heartbeats, the dead-man, and commands while the worker is in the driver ------
    def _timekeeper(self) -> None:
        watch = zmq.Poller()
        watch.register(self._router_fd, zmq.POLLIN)
        while True:
            with self._lock:
                if self._stop.is_set():
                    return
                self._drain_router()  # first: the commander's last heartbeat may be waiting for the dead-man
                self._keep_time()
                # And last, so that the descriptor signals the next arrival (a heartbeat sent may have taken
                # its signal); mostly nothing is there: the idle worker reads on arrival.
                self._drain_router()
                busy = self._busy_since is not None and time.monotonic() - self._busy_since > _TAKE_OVER_S
                unread = self._unread
            if busy and unread:  # the worker is in the driver and more is waiting: read on, after a pause
                self._stop.wait(_YIELD_S)  # in which the worker, back with a frame, can take the lock
                continue
            if busy:  # the worker is in the driver: read for it as messages come
                watch.poll(timeout=int(1000 * _TICK_S))  # wakes on the next arrival
            else:
                self._stop.wait(_TICK_S)

    @property
    def clients(self) -> int:
        """Clients heard from within the last three heartbeats."""
        return len(self._clients)
