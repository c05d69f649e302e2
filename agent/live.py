"""The live terminal view of a run: one status line per analysed frame."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from agent.loop import Loop


class LiveView:
    """Prints step, position, atoms, defects, uncertainty, per-stage latency and refusals.

    On a terminal the line is redrawn in place; otherwise (a log file, CI) one line per step.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()

    def __call__(self, loop: Loop) -> None:
        """Show the loop's latest step."""
        s, obs = loop.state, loop.state.last
        if obs is None:
            return
        t = loop.timings
        h = obs.header
        stages = " ".join(
            f"{name} {t.last(stage):.0f}"
            for name, stage in (("frame", "wait_frame"), ("perceive", "perceive"), ("policy", "suggest"))
            if t.counts.get(stage)
        )
        line = (
            f"step {s.steps_done}/{loop.config.steps}  ({h.x_nm:8.1f}, {h.y_nm:8.1f}) nm"
            f"  atoms {obs.n_atoms:4d}  defects {obs.n_defects:3d} (distinct {len(loop.perception.catalog)})"
            f"  MI {1e3 * obs.uncertainty['mean_mutual_info']:.1f} mnat  ms: {stages}"
            f"  refusals {s.refusal_count}"
        )
        if self.tty:
            self.stream.write("\r\033[K" + line)
            if s.steps_done >= loop.config.steps:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
