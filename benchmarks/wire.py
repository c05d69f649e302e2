"""Wire speed: command round trips, and 1024 x 1024 float32 frames through our server and RemoteDriver
against raw pyzmq moving the same bytes, in the same run, over TCP loopback.

Prints JSON.  Target: our frame throughput within 80 % of raw pyzmq.

    python benchmarks/wire.py [--frames 100] [--commands 500]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time

import numpy as np
import zmq
from report import emit

from drivers.base import BlankCommand, ScanCommand, UnblankCommand
from drivers.codec import envelope
from drivers.memory import InMemoryDriver
from drivers.remote import RemoteDriver
from drivers.server import InstrumentServer

SIDE = 1024


class _FixedFrameDriver(InMemoryDriver):
    """Returns one preallocated frame, so the benchmark measures the wire, not image making."""

    def __init__(self) -> None:
        super().__init__()
        self._image = np.random.default_rng(0).random((SIDE, SIDE), dtype=np.float32)
        self._rng = _Fixed(self._image)  # type: ignore[assignment]


class _Fixed:
    def __init__(self, image: np.ndarray) -> None:
        self.image = image

    def random(self, shape: tuple[int, int], dtype: object = None) -> np.ndarray:
        return self.image


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    return {"p50_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


def ours(frames: int, commands: int) -> dict[str, object]:
    server = InstrumentServer(_FixedFrameDriver(), "tcp://127.0.0.1:0").start()
    try:
        with RemoteDriver(server.endpoint) as remote:
            rtt = []
            for _ in range(commands):
                t0 = time.perf_counter()
                remote.send(BlankCommand())
                rtt.append(time.perf_counter() - t0)
            remote.send(UnblankCommand())
            scan = {"x_nm": 0.0, "y_nm": 0.0, "fov_nm": 10.0, "rows": SIDE, "cols": SIDE, "dwell_us": 1.0}
            per_frame = []
            t_start = time.perf_counter()
            for _ in range(frames):
                t0 = time.perf_counter()
                remote.send(ScanCommand(**scan))
                frame = remote.next_frame(10.0)
                per_frame.append(time.perf_counter() - t0)
            total = time.perf_counter() - t_start
            assert frame.image.shape == (SIDE, SIDE)
            lost = remote.stats["frames_lost"]
    finally:
        server.stop()
    return {
        "command_round_trip": _stats(rtt),
        "frame_transfer": _stats(per_frame),
        "fps": frames / total,
        "frames_lost": lost,
    }


def raw(frames: int) -> dict[str, object]:
    """A DEALER asks, a ROUTER answers with [JSON header, 4 MiB buffer] zero-copy: nothing else."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:0")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    image = np.random.default_rng(0).random((SIDE, SIDE), dtype=np.float32)
    header = envelope("frame", header={"shape": [SIDE, SIDE], "dtype": "float32"}, delivery_seq=0)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if router.poll(50):
                identity, _ = router.recv_multipart()
                router.send_multipart([identity, header, memoryview(image).cast("B")], copy=False)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    per_frame = []
    t_start = time.perf_counter()
    for _ in range(frames):
        t0 = time.perf_counter()
        dealer.send(b"scan")
        head, buf = dealer.recv_multipart(copy=False)
        shape = json.loads(head.bytes)["header"]["shape"]  # the minimum any receiver must do
        np.frombuffer(buf.buffer, dtype=np.float32).reshape(shape)
        per_frame.append(time.perf_counter() - t0)
    total = time.perf_counter() - t_start
    stop.set()
    thread.join(2)
    dealer.close(linger=0)
    router.close(linger=0)
    ctx.term()
    return {"frame_transfer": _stats(per_frame), "fps": frames / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--commands", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of raw and ours")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    # Alternate the order round by round: this machine's speed drifts, and both sides should see the same drift.
    raws, ourses = [], []
    for r in range(args.rounds):
        pair = [lambda: raws.append(raw(args.frames)), lambda: ourses.append(ours(args.frames, args.commands))]
        for run in pair if r % 2 == 0 else pair[::-1]:
            run()
    baseline = raws[int(np.argsort([b["fps"] for b in raws])[len(raws) // 2])]
    result = ourses[int(np.argsort([o["fps"] for o in ourses])[len(ourses) // 2])]
    out = {
        "benchmark": "wire",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(),
        },
        "frame": f"{SIDE}x{SIDE} float32 ({SIDE * SIDE * 4 / 2**20:.0f} MiB), tcp loopback",
        "ours": result,
        "raw_pyzmq": baseline,
        "throughput_ratio_ours_over_raw": result["fps"] / baseline["fps"],  # type: ignore[operator]
        "per_round_fps": {"ours": [o["fps"] for o in ourses], "raw": [b["fps"] for b in raws]},
        "note": "ours and raw are the median-fps round of each, rounds alternating which runs first",
        "target": "ratio >= 0.8",
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()
