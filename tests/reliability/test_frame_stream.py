"""L1: a person scans at 100 Hz while the agent watches the server's frame stream for 1 minute.

64 x 64 frames of the simulated instrument.  Frames received = analysed + skipped, exactly; frames the
publisher dropped are counted by sequence number; memory grows by less than 50 MB after warm-up.

The 10-minute run at 256 x 256 (slow) serves a bank of fields the simulator rendered beforehand: its
renderer takes about 20 ms per 256 x 256 field on one core, too slow for 100 Hz next to the model on a
2-core machine, and what L1 tests is the agent keeping up with (or counting what it skips of) a fast
stream, not the simulator's speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.perception import Perception
from agent.policies import FieldTemplate, PolicyContext, Region, make_policy
from agent.watch import Watcher
from drivers.base import Frame, ScanCommand, UnblankCommand
from drivers.observer import FrameSubscriber
from drivers.remote import RemoteDriver
from drivers.server import InstrumentServer
from drivers.simulated import SimulatedDriver

ROOT = Path(__file__).resolve().parents[2]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _person(endpoint: str, rate_hz: float, stop: threading.Event, done: list[int], pixels: int) -> None:
    """Someone at the microscope: a pixels x pixels field (0.02 nm/px) every 1/rate_hz seconds, here and there."""
    rng = np.random.default_rng(0)
    with RemoteDriver(endpoint, heartbeat_s=0.5) as remote:
        remote.send(UnblankCommand())
        next_at = time.monotonic()
        while not stop.is_set():
            x, y = rng.uniform(-100.0, 100.0, 2)
            fov_nm = 0.02 * pixels
            remote.send(ScanCommand(x_nm=x, y_nm=y, fov_nm=fov_nm, rows=pixels, cols=pixels, dwell_us=1.0))
            remote.next_frame(2.0)
            done[0] += 1
            next_at += 1.0 / rate_hz
            time.sleep(max(0.0, next_at - time.monotonic()))


class _BankedDriver(SimulatedDriver):
    """The simulated instrument, rendering its first ``bank`` fields and then serving them again in turn.

    Each served frame gets the header of the scan that asked for it (position, command id, times,
    sequence); ground truth is left out of re-served frames, since it belongs to another position.
    """

    def __init__(self, bank: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._bank: list[np.ndarray] = []
        self._bank_size = bank

    def _scan(self, command: ScanCommand) -> Frame:
        if len(self._bank) < self._bank_size:
            frame = super()._scan(command)
            self._bank.append(frame.image)
            return frame
        start = time.time()
        image = self._bank[self.commands_executed % self._bank_size]
        metadata = {"rotation_deg": command.rotation_deg, "simulated": True, "banked": True}
        return Frame(self.state.scan_header(command, start, metadata), image)


def _scenario(warm_up_s: float, watch_s: float, pixels: int = 64, bank: int = 0) -> dict[str, object]:
    """The L1 scenario; run in a fresh process so that the memory figure is this scenario's alone.

    ``bank`` > 0 serves that many pre-rendered fields in turn (see the module's note).
    """
    from models.segmenter import Segmenter

    driver = _BankedDriver(bank, specimen_seed=2) if bank else SimulatedDriver(specimen_seed=2)
    with InstrumentServer(driver, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", heartbeat_s=0.5) as server:
        subscriber = FrameSubscriber(server.pub_endpoint)  # type: ignore[arg-type]
        time.sleep(0.3)  # let the subscription reach the publisher
        stop, done = threading.Event(), [0]
        person = threading.Thread(target=_person, args=(server.endpoint, 100.0, stop, done, pixels), daemon=True)
        person.start()
        field = FieldTemplate(fov_nm=0.02 * pixels, pixels=pixels, dwell_us=1.0)
        policy = make_policy("defects", PolicyContext(Region(-100.0, 100.0, -100.0, 100.0), field, seed=0))
        watcher = Watcher(subscriber, Perception(Segmenter(providers="cpu", threads=1)), policy)
        try:
            watcher.run(warm_up_s)
            warm_mb, warm = _rss_mb(), watcher.state.frames_received
            state = watcher.run(watch_s)
            grown_mb = _rss_mb() - warm_mb
        finally:
            stop.set()
            person.join(10.0)
            subscriber.close()
    return {
        "rate_hz": (state.frames_received - warm) / watch_s, "received": state.frames_received,
        "analysed": state.frames_analysed, "skipped": state.frames_skipped, "suggestions": state.suggestions,
        "stream": dict(subscriber.stats), "sent": done[0], "grown_mb": grown_mb,
    }  # fmt: skip


def _in_fresh_process(warm_up_s: float, watch_s: float, pixels: int, bank: int = 0) -> dict:
    code = (
        "import json; from tests.reliability.test_frame_stream import _scenario as s; "
        f"print(json.dumps(s({warm_up_s}, {watch_s}, {pixels}, {bank})))"
    )
    timeout_s = warm_up_s + watch_s + 120
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print("L1", json.dumps(report))  # the soak report picks this line up
    return report


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from /proc")
def test_watching_a_100_hz_stream_counts_every_frame_and_keeps_memory_flat():
    r = _in_fresh_process(10.0, 50.0, 64)
    assert r["rate_hz"] > 50.0, r  # the stream really ran fast
    _check_stream(r)


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from /proc")
def test_ten_minutes_of_a_256_x_256_stream():
    r = _in_fresh_process(30.0, float(os.environ.get("AUTOSCOPE_L1_S", "600")), 256, bank=64)
    assert r["rate_hz"] > 50.0, r  # the stream really ran fast
    _check_stream(r)


def _check_stream(r: dict) -> None:
    assert r["received"] == r["analysed"] + sum(r["skipped"].values())
    assert r["stream"]["frames"] == r["received"]
    assert r["received"] + r["stream"].get("frames_lost", 0) <= r["sent"]  # nothing invented
    assert r["analysed"] > 100 and r["suggestions"] == r["analysed"]
    assert r["grown_mb"] < 50.0, r


def test_autoscope_watch_reads_a_stream_and_records_suggestions(tmp_path, capsys):
    from agent.cli import main
    from drivers.recording import read_session

    with InstrumentServer(SimulatedDriver(specimen_seed=2), "tcp://127.0.0.1:0", "tcp://127.0.0.1:0") as server:
        stop, done = threading.Event(), [0]
        person = threading.Thread(target=_person, args=(server.endpoint, 20.0, stop, done, 64), daemon=True)
        person.start()
        try:
            argv = ["watch", "--frames", server.pub_endpoint, "--duration-s", "4", "--fov-nm", "1.28", "--pixels", "64"]
            region = ["--region-nm", "-0.64", "0.64", "-0.64", "0.64"]  # 4 candidates: advice must not use them up
            assert main([*argv, *region, "--providers", "cpu", "--record", str(tmp_path / "w")]) == 0
        finally:
            stop.set()
            person.join(10.0)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["analysed"] > 0 and summary["received"] == summary["analysed"] + sum(summary["skipped"].values())
    kinds = [r["type"] for r in read_session(tmp_path / "w").records]
    assert kinds.count("suggestion") == summary["suggestions"] == summary["analysed"] > 4 and kinds[-1] == "watch_stop"
    assert done[0] > 0
