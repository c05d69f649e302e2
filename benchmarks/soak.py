"""The long reliability runs (issue 8), one after another, each in its own pytest process; prints and
writes a JSON report.

    python benchmarks/soak.py [--scale 1.0] [--only NAME ...] [--out benchmarks/results/soak.json]

At ``--scale 1`` (about 3 hours on a 2-core machine): the 1-hour soak with a random fault every minute,
1000 agent kills with the default 2 s dead-man, 200 instrument kills with a 5 s restart, 10 minutes of
a 100 Hz 256 x 256 frame stream, 5 minutes of a chaotic command path, 100 dead-man kills, 10 000
hostile decision sequences and the P1 state machine over 200 examples of 30 steps.  ``--scale``
shortens the durations and trial counts that can be shortened (the figures say which ran).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from report import emit

ROOT = Path(__file__).resolve().parents[1]

_R = "tests/reliability/"
#: name -> (pytest node, {environment variable: full-scale value}).
SCENARIOS: dict[str, tuple[str, dict[str, float]]] = {
    "soak_random_faults": (
        _R + "test_soak.py::test_an_hour_of_sessions_with_a_random_fault_every_minute",
        {"AUTOSCOPE_SOAK_S": 3600},
    ),
    "F5_agent_kills": (
        _R + "test_agent_killed.py::test_the_agent_killed_at_a_thousand_random_points_with_the_default_dead_man",
        {"AUTOSCOPE_F5_KILLS": 1000},
    ),
    "F1_instrument_kills": (
        _R + "test_instrument_killed.py::test_two_hundred_kill_points",
        {"AUTOSCOPE_F1_KILLS": 200},
    ),
    "L1_stream_256": (
        _R + "test_frame_stream.py::test_ten_minutes_of_a_256_x_256_stream",
        {"AUTOSCOPE_L1_S": 600},
    ),
    "F3_chaos": (_R + "test_chaotic_command_path.py::test_five_minutes_of_chaos", {"AUTOSCOPE_F3_S": 300}),
    "F2_F4_frozen_60s": (
        _R + "test_frozen_instrument.py::test_an_instrument_frozen_for_a_minute_gets_nothing_sent_before_the_freeze",
        {},
    ),
    "deadman_kills": ("tests/drivers/test_deadman.py", {}),
    "B2_decisions": (_R + "test_decisions_reach_no_unsafe_command.py::test_ten_thousand_decision_sequences", {}),
    "P1_state_machine": (_R + "test_state_machine.py::test_invariants_hold_over_200_examples_of_30_steps", {}),
}


def run(name: str, scale: float) -> dict[str, object]:
    """One scenario in its own pytest process; its outcome, duration and any figures it printed."""
    node, knobs = SCENARIOS[name]
    env = {**os.environ, **{k: str(max(1, round(v * scale))) for k, v in knobs.items()}}
    command = [sys.executable, "-m", "pytest", node, "-m", "slow", "-q", "-s", "-p", "no:logging", "--timeout", "14400"]
    t0 = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    figures = {}
    for tag in ("SOAK", "L1", "F3", "F1"):
        found = re.findall(rf"^{tag} (\{{.*\}})$", done.stdout, re.MULTILINE)
        if found:
            figures = json.loads(found[-1])
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
    return {
        "passed": done.returncode == 0,
        "duration_s": round(time.monotonic() - t0, 1),
        "settings": {k: env[k] for k in knobs},
        "pytest": summary,
        "figures": figures,
        "failure": None if done.returncode == 0 else _failure(done.stdout),
    }


def _failure(output: str) -> str:
    """The assertion lines of a failed run (what broke), at most 2000 characters."""
    lines = [line for line in output.splitlines() if line.startswith(("E ", ">", "FAILED"))]
    return "\n".join(lines)[-2000:]


def main() -> None:
    """Run the scenarios and write the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply durations and trial counts")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), help="run only these")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    args = parser.parse_args()
    results = {}
    for name in args.only or list(SCENARIOS):
        results[name] = run(name, args.scale)
        print(f"{name}: {'passed' if results[name]['passed'] else 'FAILED'} in {results[name]['duration_s']} s",
              file=sys.stderr)  # fmt: skip
    report = {
        "benchmark": "soak",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "scale": args.scale,
        "date_unix_s": round(time.time()),
        "all_passed": all(r["passed"] for r in results.values()),
        "scenarios": results,
    }
    emit(report, args.out)
    sys.exit(0 if report["all_passed"] else 1)


if __name__ == "__main__":
    main()
