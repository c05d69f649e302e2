"""What replay adds per frame, on top of inference, against reading the same frames straight from disk.

Records a simulated session (512 x 512 fields), then in one run, alternating: (a) read the session
log and touch every frame's pixels; (b) open a ReplayDriver at maximum speed and, for each frame,
send a scan and receive the frame (strict mode); (c) the same in instrument mode asking for each
recorded field again, and (d) asking for the central 80 % of each at 512 x 512 (every pixel
resampled).  Inference is the same in all and is left out.  Prints JSON.  Goal: under 5 ms per frame at ``--speed max``.

    python benchmarks/replay.py [--frames 40] [--rounds 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from report import emit, machine

from drivers.base import ScanCommand, UnblankCommand
from drivers.recording import SessionWriter, read_session
from drivers.replay import ReplayDriver
from drivers.simulated import SimulatedDriver


def record(directory: Path, frames: int) -> None:
    """A session of ``frames`` simulated 512 x 512 fields in a row."""
    sim = SimulatedDriver(specimen_seed=0)
    with SessionWriter(directory) as writer:
        writer.write({"type": "start", "capabilities": sim.capabilities().model_dump(mode="json")})
        for i in range(frames):
            sim.send(
                ScanCommand(
                    x_nm=-100 + 10.24 * (i % 20),
                    y_nm=-100 + 10.24 * (i // 20),
                    fov_nm=10.24,
                    rows=512,
                    cols=512,
                    dwell_us=10,
                )
            )
            writer.write_frame(sim.next_frame(5.0), step=i)


def from_disk(directory: Path) -> float:
    """Seconds to read the log and sum every frame (the floor any replay pays)."""
    t0 = time.perf_counter()
    total = sum(float(f.image.sum()) for f in read_session(directory).frames)
    assert np.isfinite(total)
    return time.perf_counter() - t0


def through_replay(directory: Path, mode: str) -> float:
    """Seconds to open a replay and receive every frame through the Driver protocol.

    ``instrument``: each recorded field asked for again (its pixels are served as they are);
    ``interpolated``: the central 80 % of each field at 512 x 512 (bilinear resampling of every pixel).
    """
    t0 = time.perf_counter()
    driver = ReplayDriver(directory, mode="strict" if mode == "strict" else "instrument")
    driver.send(UnblankCommand())
    scale = 0.8 if mode == "interpolated" else 1.0
    for f in list(driver.frames):
        h = f.header
        driver.send(ScanCommand(x_nm=h.x_nm, y_nm=h.y_nm, fov_nm=scale * h.fov_nm, rows=512, cols=512, dwell_us=10))
        assert np.isfinite(float(driver.next_frame(5.0).image.sum()))
    driver.close()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        session = Path(tmp) / "session"
        record(session, args.frames)
        times: dict[str, list[float]] = {"disk": [], "strict": [], "instrument": [], "interpolated": []}
        for r in range(args.rounds):  # alternate the order: this machine's speed drifts
            order = list(times) if r % 2 == 0 else list(times)[::-1]
            for name in order:
                times[name].append(from_disk(session) if name == "disk" else through_replay(session, name))
        size_mb = (session / "session.log").stat().st_size / 2**20
    per_frame = {k: 1e3 * float(np.median(v)) / args.frames for k, v in times.items()}
    out = {
        "benchmark": "replay",
        "machine": machine(),
        "setup": f"{args.frames} simulated 512 x 512 float32 frames ({size_mb:.0f} MiB log), median of {args.rounds}"
        " alternating rounds, inference left out",
        "per_frame_ms": {k: round(v, 3) for k, v in per_frame.items()},
        "added_per_frame_ms": {k: round(v - per_frame["disk"], 3) for k, v in per_frame.items() if k != "disk"},
        "goal": "added_per_frame_ms < 5 at --speed max",
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()
