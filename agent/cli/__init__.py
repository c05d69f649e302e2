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
    except ValueError as exc:  # bad parameters: say which and why, no traceback
        print(f"autoscope {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        # Instrument-side failures (a server that is gone, a refused command) are reported, not dumped.
        if type(exc).__module__.startswith("drivers"):
            print(f"autoscope {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
