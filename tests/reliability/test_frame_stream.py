"""L1: a person scans at 100 Hz while the agent watches the server's frame stream for 1 minute.

64 x 64 frames of the simulated instrument.  Frames received = analysed + skipped, exactly; frames the
publisher dropped are counted by sequence number; memory grows by less than 50 MB after warm-up.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from agent.perception import Perception
from agent.policies import FieldTemplate, PolicyContext, Region, make_policy
from agent.watch import Watcher
from drivers.base import ScanCommand, UnblankCommand
from drivers.observer import FrameSubscriber
from drivers.remote import RemoteDriver
from drivers.server import InstrumentServer
from drivers.simulated import SimulatedDriver


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _person(endpoint: str, rate_hz: float, stop: threading.Event, done: list[int]) -> None:
    """Someone at the microscope: a 64 x 64 field every 1/rate_hz seconds, here and there."""
    rng = np.random.default_rng(0)
    with RemoteDriver(endpoint, heartbeat_s=0.5) as remote:
        remote.send(UnblankCommand())
        next_at = time.monotonic()
        while not stop.is_set():
            x, y = rng.uniform(-100.0, 100.0, 2)
            remote.send(ScanCommand(x_nm=x, y_nm=y, fov_nm=1.28, rows=64, cols=64, dwell_us=1.0))
            remote.next_frame(2.0)
            done[0] += 1
            next_at += 1.0 / rate_hz
            time.sleep(max(0.0, next_at - time.monotonic()))


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from /proc")
def test_watching_a_100_hz_stream_counts_every_frame_and_keeps_memory_flat(segmenter):
    driver = SimulatedDriver(specimen_seed=2)
    with InstrumentServer(driver, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", heartbeat_s=0.5) as server:
        subscriber = FrameSubscriber(server.pub_endpoint)  # type: ignore[arg-type]
        time.sleep(0.3)  # let the subscription reach the publisher
        stop, done = threading.Event(), [0]
        person = threading.Thread(target=_person, args=(server.endpoint, 100.0, stop, done), daemon=True)
        person.start()
        field = FieldTemplate(fov_nm=1.28, pixels=64, dwell_us=1.0)
        policy = make_policy("defects", PolicyContext(Region(-100.0, 100.0, -100.0, 100.0), field, seed=0))
        watcher = Watcher(subscriber, Perception(segmenter), policy)
        try:
            watcher.run(10.0)  # warm-up
            warm_mb = _rss_mb()
            warm = watcher.state.frames_received
            state = watcher.run(50.0)
            grown_mb = _rss_mb() - warm_mb
        finally:
            stop.set()
            person.join(10.0)
            subscriber.close()
    rate_hz = (state.frames_received - warm) / 50.0
    assert rate_hz > 50.0, rate_hz  # the stream really ran fast
    assert state.frames_received == state.frames_analysed + sum(state.frames_skipped.values())
    assert subscriber.stats["frames"] == state.frames_received
    assert state.frames_received + subscriber.stats["frames_lost"] <= done[0]  # nothing invented
    assert state.frames_analysed > 100 and state.suggestions == state.frames_analysed
    assert grown_mb < 50.0, grown_mb


def test_autoscope_watch_reads_a_stream_and_records_suggestions(tmp_path, capsys):
    import json

    from agent.cli import main
    from drivers.recording import read_session

    with InstrumentServer(SimulatedDriver(specimen_seed=2), "tcp://127.0.0.1:0", "tcp://127.0.0.1:0") as server:
        stop, done = threading.Event(), [0]
        person = threading.Thread(target=_person, args=(server.endpoint, 20.0, stop, done), daemon=True)
        person.start()
        try:
            argv = ["watch", "--frames", server.pub_endpoint, "--duration-s", "4", "--fov-nm", "1.28", "--pixels", "64"]
            assert main([*argv, "--providers", "cpu", "--record", str(tmp_path / "w")]) == 0
        finally:
            stop.set()
            person.join(10.0)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["analysed"] > 0 and summary["received"] == summary["analysed"] + sum(summary["skipped"].values())
    kinds = [r["type"] for r in read_session(tmp_path / "w").records]
    assert kinds.count("suggestion") == summary["suggestions"] > 0 and kinds[-1] == "watch_stop"
    assert done[0] > 0
