"""``autoscope report DIR --out report.html``: a self-contained page of a recorded session."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add ``report`` to ``sub``."""
    p = sub.add_parser("report", help="write an HTML report of a recorded session")
    p.add_argument("directory", type=Path, help="a session directory written by autoscope run --record (or its log)")
    p.add_argument("--out", type=Path, help="the HTML file (default: report.html in the session directory)")
    p.set_defaults(handler=_report)


def default_out(session: Path) -> Path:
    """``report.html`` beside the session log: in the session directory, whether the directory or its log is given."""
    return (session.parent if session.is_file() else session) / "report.html"


def _report(args: argparse.Namespace) -> int:
    from agent.cli.options import check_output_file
    from agent.report import render
    from drivers.recording import log_path

    out = args.out or default_out(args.directory)
    check_output_file(out, "--out", keep=[log_path(args.directory)])
    page = render(args.directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    print(f"report of {args.directory} written to {out} ({len(page) / 1e6:.1f} MB)", file=sys.stderr)
    return 0
