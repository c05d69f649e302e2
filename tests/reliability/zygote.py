"""A pre-imported ``autoscope`` that forks agent processes on request, so a kill loop can start a hundred
agents in the time a few cold starts take (importing the stack costs about a second each).

Run as a script; it reads one JSON list of ``autoscope`` arguments per line on stdin, forks a child
that runs ``agent.cli.main(arguments)`` with its output discarded, and answers the child's pid on
stdout.  The child is a real, separate agent process: its own sockets, model session and recorder,
killed with SIGKILL by the test.  Only imports happen before the fork (no threads, sockets or model
sessions exist yet), which keeps forking safe.  Children are reaped as they die; EOF on stdin ends it.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def _child(arguments: list[str]) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    code = 1
    try:
        from agent.cli import main

        code = main(arguments)
    finally:
        os._exit(code)


def main() -> None:
    """Serve fork requests until stdin closes."""
    import agent.cli
    import agent.cli.run
    import agent.experiment  # noqa: F401
    import drivers.remote  # noqa: F401
    import models.segmenter  # noqa: F401

    signal.signal(signal.SIGCHLD, lambda *_: _reap())
    print("ready", flush=True)
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            _child(json.loads(line))
        print(pid, flush=True)


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


if __name__ == "__main__":
    main()
