"""A chaos proxy for the command path: ZeroMQ messages between clients and an instrument server, delayed,
dropped, duplicated and (through random delays) reordered, in both directions, over loopback.

Each client connecting to :attr:`ChaosProxy.endpoint` gets its own upstream connection, so the server
sees distinct clients as it would without the proxy.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import zmq


@dataclass(frozen=True)
class Chaos:
    """What happens to each message: ``loss`` and ``duplicate`` probabilities, delay ``delay_s`` ± ``jitter_s``."""

    loss: float = 0.05
    duplicate: float = 0.01
    delay_s: float = 0.2
    jitter_s: float = 0.1


class ChaosProxy:
    """Forward messages between ``upstream`` and the clients of :attr:`endpoint` with :class:`Chaos` applied."""

    def __init__(self, upstream: str, chaos: Chaos, seed: int = 0) -> None:
        self.chaos = chaos
        self.stats: Counter[str] = Counter()
        self._rng = np.random.default_rng(seed)
        self._ctx = zmq.Context()
        self._front = self._ctx.socket(zmq.ROUTER)
        self._front.setsockopt(zmq.LINGER, 0)
        self._front.bind("tcp://127.0.0.1:0")
        self.endpoint = self._front.getsockopt_string(zmq.LAST_ENDPOINT)
        self._upstream = upstream
        self._backs: dict[bytes, zmq.Socket[bytes]] = {}
        self._owner: dict[zmq.Socket[bytes], bytes] = {}
        self._queue: list[tuple[float, int, zmq.Socket[bytes], list[bytes]]] = []
        self._order = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-proxy", daemon=True)
        self._thread.start()

    def _back(self, identity: bytes) -> zmq.Socket[bytes]:
        if identity not in self._backs:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self._upstream)
            self._backs[identity], self._owner[sock] = sock, identity
        return self._backs[identity]

    def _schedule(self, target: zmq.Socket[bytes], parts: list[bytes], direction: str) -> None:
        c = self.chaos
        if self._rng.random() < c.loss:
            self.stats[f"dropped_{direction}"] += 1
            return
        copies = 2 if self._rng.random() < c.duplicate else 1
        self.stats[f"duplicated_{direction}"] += copies - 1
        for _ in range(copies):
            delay = max(0.0, c.delay_s + self._rng.uniform(-c.jitter_s, c.jitter_s))
            heapq.heappush(self._queue, (time.monotonic() + delay, next(self._order), target, parts))

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._front, zmq.POLLIN)
        while not self._stop.is_set():
            wait_ms = 10 if not self._queue else max(0, min(10, int(1000 * (self._queue[0][0] - time.monotonic()))))
            for sock, _ in poller.poll(wait_ms):
                if sock is self._front:
                    identity, *parts = self._front.recv_multipart()
                    back = self._back(identity)
                    if back not in dict(poller.sockets):
                        poller.register(back, zmq.POLLIN)
                    self._schedule(back, parts, "to_server")
                else:
                    parts = sock.recv_multipart()
                    self._schedule(self._front, [self._owner[sock], *parts], "to_client")
            while self._queue and self._queue[0][0] <= time.monotonic():
                _, _, target, parts = heapq.heappop(self._queue)
                try:
                    target.send_multipart(parts, zmq.NOBLOCK)
                    self.stats["forwarded"] += 1
                except zmq.ZMQError:
                    self.stats["undeliverable"] += 1

    def close(self) -> None:
        """Stop forwarding and close every socket."""
        self._stop.set()
        self._thread.join(5.0)
        for sock in [self._front, *self._backs.values()]:
            sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> ChaosProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
