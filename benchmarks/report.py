"""Shared output of the benchmark scripts: JSON on stdout, and optionally in a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(result: dict[str, Any], out: str | Path | None) -> None:
    """Print ``result`` as indented JSON and, when ``out`` is given, write the same text there."""
    text = json.dumps(result, indent=2)
    if out:
        Path(out).write_text(text)
    print(text)
