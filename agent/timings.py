"""Per-stage latencies of the loop, in bounded memory."""

from __future__ import annotations

from collections import deque

import numpy as np


class StageTimings:
    """The most recent ``keep`` durations of each stage (ms); percentiles are over those.

    Parameters
    ----------
    keep
        Samples kept per stage: memory stays bounded however long the session runs.
    """

    def __init__(self, keep: int = 10_000) -> None:
        self.keep = keep
        self._samples: dict[str, deque[float]] = {}
        self.counts: dict[str, int] = {}

    def add(self, stage: str, ms: float) -> None:
        """Record one duration of ``stage``."""
        self._samples.setdefault(stage, deque(maxlen=self.keep)).append(float(ms))
        self.counts[stage] = self.counts.get(stage, 0) + 1

    def last(self, stage: str) -> float:
        """The latest duration of ``stage`` (NaN if none)."""
        samples = self._samples.get(stage)
        return samples[-1] if samples else float("nan")

    def summary(self) -> dict[str, dict[str, float]]:
        """``{stage: {"p50": ms, "p99": ms, "n": count}}``."""
        out = {}
        for stage, samples in self._samples.items():
            arr = np.fromiter(samples, dtype=np.float64)
            out[stage] = {
                "p50": round(float(np.percentile(arr, 50)), 3),
                "p99": round(float(np.percentile(arr, 99)), 3),
                "n": self.counts[stage],
            }
        return out
