"""B1: 10 000 malformed messages against the instrument server and against the remote driver.

Real sockets on loopback.  Every message is rejected and counted by reason, nothing crashes, nothing
reaches the instrument, and the next valid message is served.
"""

from __future__ import annotations

import json
import pickle
import threading
from collections import Counter
from collections.abc import Iterator

import numpy as np
import zmq

from drivers.base import PROTOCOL_VERSION, Capabilities, ScanCommand, UnblankCommand
from drivers.codec import encode_command, encode_frame, encode_welcome, envelope
from drivers.memory import DEFAULT_CAPABILITIES, InMemoryDriver
from drivers.remote import RemoteDriver
from drivers.server import InstrumentServer

N_MESSAGES = 10_000
GOOD = encode_command(ScanCommand(x_nm=0.0, y_nm=0.0, fov_nm=4.0, rows=16, cols=16, dwell_us=1.0))[0]


def _command(**change: object) -> bytes:
    obj = json.loads(GOOD)
    obj["command"].update(change)
    return json.dumps(obj).encode()


def _malformed(rng: np.random.Generator, for_client: bool) -> Iterator[tuple[str, list[bytes]]]:
    """(category, message parts) for N_MESSAGES malformed messages, the categories in turn."""
    frame_parts = encode_frame(_a_frame(), 0)
    makers = {
        "truncated_json": lambda: [GOOD[: int(rng.integers(1, len(GOOD) - 1))]],
        "wrong_types": lambda: [_command(rows=str(rng.integers(1, 9)) + "px", x_nm=[1.0], id=int(rng.integers(9)))],
        "missing_fields": lambda: [json.dumps({"v": PROTOCOL_VERSION, "type": "command"}).encode()],
        "extra_parts": lambda: [GOOD, b"extra", b"more"],
        "non_utf8": lambda: [bytes(rng.integers(128, 256, int(rng.integers(1, 64)), dtype=np.uint8))],
        "nan_literal": lambda: [GOOD.replace(b'"x_nm":0.0', rng.choice([b'"x_nm":NaN', b'"x_nm":Infinity']))],
        "huge_number": lambda: [
            GOOD.replace(b'"x_nm":0.0', b'"x_nm":1e999').replace(b'"rows":16', b'"rows":' + b"9" * 500)
        ],
        "deep_nesting": lambda: [b'{"v":1,"type":"command","command":' + b"[" * 20_000 + b"]" * 20_000 + b"}"],
        "unknown_kind": lambda: [_command(kind="teleport")],
        "wrong_version": lambda: [GOOD.replace(f'"v":{PROTOCOL_VERSION}'.encode(), b'"v":99')],
        "pickle_payload": lambda: [pickle.dumps({"type": "command", "kind": "scan"})],
        "size_mismatch": lambda: [frame_parts[0], bytes(frame_parts[1])[: -int(rng.integers(1, 64))]],
    }
    if not for_client:
        del makers["size_mismatch"]  # a client may not send frames at all: covered by 'wrong type' below
        makers["client_sends_frame"] = lambda: [frame_parts[0], bytes(frame_parts[1])]
    names = list(makers)
    for i in range(N_MESSAGES):
        name = names[i % len(names)]
        yield name, makers[name]()


def _a_frame():
    driver = InMemoryDriver()
    driver.send(ScanCommand(x_nm=0.0, y_nm=0.0, fov_nm=4.0, rows=16, cols=16, dwell_us=1.0))
    return driver.next_frame(1.0)


def _rejections(stats: Counter[str]) -> int:
    return sum(v for k, v in stats.items() if k.startswith("error_") or k == "malformed")


def test_the_server_rejects_and_counts_every_malformed_message_and_keeps_serving():
    driver = InMemoryDriver()
    ctx = zmq.Context()
    with InstrumentServer(driver, "tcp://127.0.0.1:0", heartbeat_s=0.5, max_message_bytes=256 * 1024) as server:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(server.endpoint)
        sock.send_multipart([envelope("hello")])  # a welcomed client: its commands reach the checks
        assert sock.poll(5000) and json.loads(sock.recv_multipart()[0])["type"] == "welcome"
        sent: Counter[str] = Counter()
        replies = 0
        try:
            for i, (category, parts) in enumerate(_malformed(np.random.default_rng(0), for_client=False)):
                sock.send_multipart(parts)
                sent[category] += 1
                if i % 50 == 49:  # keep the reply queue short: a client that never reads is another test
                    while sock.poll(0 if replies >= i - 100 else 2000):
                        if json.loads(sock.recv_multipart()[0]).get("type") == "error":
                            replies += 1
            while replies < N_MESSAGES and sock.poll(3000):
                if json.loads(sock.recv_multipart()[0]).get("type") == "error":
                    replies += 1
        finally:
            sock.close(linger=0)
            ctx.term()
        assert sum(sent.values()) == N_MESSAGES and len(sent) == 12
        assert _rejections(server.stats) == N_MESSAGES, dict(server.stats)
        assert replies == N_MESSAGES  # each got an error reply naming the problem
        assert driver.commands == []  # no state changed
        with RemoteDriver(server.endpoint, heartbeat_s=0.5) as remote:  # the next valid message is served
            remote.send(UnblankCommand())
            remote.send(ScanCommand(x_nm=0.0, y_nm=0.0, fov_nm=4.0, rows=16, cols=16, dwell_us=1.0))
            assert remote.next_frame(5.0).header.shape == (16, 16)


def _answer_first_hello(router: zmq.Socket, capabilities: Capabilities, identities: list[bytes]) -> None:
    """Read the driver's hello and welcome it (RemoteDriver's constructor waits for this)."""
    while router.poll(5000):
        identity, body = router.recv_multipart()
        if json.loads(body).get("type") == "hello":
            router.send_multipart([identity, *encode_welcome(capabilities, 5.0, 0.0)])
            identities.append(identity)
            return


def test_the_remote_driver_drops_and_counts_every_malformed_message_from_a_server():
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:0")
    identities: list[bytes] = []
    welcome = threading.Thread(target=_answer_first_hello, args=(router, DEFAULT_CAPABILITIES, identities))
    welcome.start()
    try:
        with RemoteDriver(
            router.getsockopt_string(zmq.LAST_ENDPOINT), heartbeat_s=30.0, max_frame_bytes=64 * 1024
        ) as remote:  # the raw router sends no heartbeats: on a loaded machine the 10 000 take a while
            welcome.join(10.0)  # the socket is the test thread's again
            # A plain ROUTER drops what a slow peer's full queue cannot take; these must all arrive.
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full queue now blocks the send instead
            router.setsockopt(zmq.SNDTIMEO, 30_000)
            for _, parts in _malformed(np.random.default_rng(1), for_client=True):
                router.send_multipart([identities[0], *parts])
            frame = _a_frame()
            router.send_multipart([identities[0], *encode_frame(frame, 0)], copy=True)
            got = remote.next_frame(30.0)  # queued behind all 10 000: every one was dealt with first
            assert np.array_equal(got.image, frame.image)
            assert _rejections(remote.stats) == N_MESSAGES, dict(remote.stats)
            assert remote.connected and remote.stats["frames"] == 1
    finally:
        welcome.join(10.0)
        router.close(linger=0)
        ctx.term()
