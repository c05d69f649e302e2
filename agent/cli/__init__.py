"""The ``autoscope`` command line: one entry point, one module per subcommand.

Each subcommand module exposes ``register(subparsers)``, which adds its parser
and sets ``handler`` (a function taking the parsed namespace and returning an
exit status).  Heavy imports happen inside the handlers, so ``autoscope --help``
stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from agent.cli import instrument, replay, report, run, segment, sessions, simulate, tomo, train, watch
from agent.run_state import Interrupted

#: Exit status for bad input (arguments, parameters, files).
EXIT_USAGE = 2
#: Exit status when the instrument fails (gone, refused, timed out).
EXIT_FAILURE = 1

_SUBCOMMANDS = (run, replay, report, tomo, simulate, train, segment, instrument, sessions, watch)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="autoscope",
        description="Instrument-side automated-experiment agent for electron microscopy.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args))
    except (KeyboardInterrupt, Interrupted):  # Ctrl-C (or SIGTERM) outside a handler's own handling: no traceback
        print(f"autoscope {args.command}: interrupted", file=sys.stderr)
        return run.EXIT_INTERRUPTED
    except Exception as exc:
        status, message = _reported(exc)
        if status is None:
            raise
        print(f"autoscope {args.command}: error: {message}", file=sys.stderr)
        return status


def _reported(exc: Exception) -> tuple[int | None, str]:
    """The exit status and message of an error reported without a traceback (``None``: not one of them).

    Instrument-side failures (a server that is gone, a refused command) exit 1; bad parameters, files that
    cannot be read or written, and ZeroMQ endpoints that cannot be bound or connected exit 2.
    """
    if isinstance(exc, ValueError):  # bad parameters: say which and why
        return EXIT_USAGE, str(exc)
    if type(exc).__module__.startswith("drivers"):
        return EXIT_FAILURE, f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError):  # a missing file, a directory where a file is expected, a file as a parent
        return EXIT_USAGE, os_error_message(exc)
    if type(exc).__module__.startswith("zmq"):  # e.g. "Address already in use (addr='tcp://...')"
        return EXIT_USAGE, f"ZeroMQ: {exc}"
    return None, ""


def os_error_message(exc: OSError) -> str:
    """``PATH: reason`` (both paths for a rename), or the error's own text when it names no file."""
    if exc.filename is None:
        return str(exc)
    paths = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
    return f"{paths}: {exc.strerror or exc}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
