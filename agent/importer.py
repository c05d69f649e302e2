"""Build a session from images recorded elsewhere, so replay and the agent can use them.

Each image becomes one frame record: float32 image, header with the stage position (from a CSV), the
pixel size (from the file's metadata, else the CSV) and the field of view it implies.  A start record
names the source and derives capabilities spanning the fields.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from drivers.base import Frame
from drivers.recording import SessionWriter
from models.io import read_image

REQUIRED = ("image", "x_nm", "y_nm")
OPTIONAL = ("pixel_size_nm", "rotation_deg", "dwell_us", "tilt_deg", "detector")


class SessionImportError(ValueError):
    """A set of images and positions that cannot become a session (the problem is named)."""


def read_positions(path: Path) -> dict[str, dict[str, str]]:
    """Rows of a positions CSV keyed by image file name.

    Columns: ``image`` (file name), ``x_nm``, ``y_nm``; optional ``pixel_size_nm`` (used when the file
    records none), ``rotation_deg``, ``dwell_us``, ``tilt_deg``, ``detector``.

    Raises
    ------
    SessionImportError
        Missing columns, unknown columns, or an image listed twice.
    """
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or ())
        missing = [c for c in REQUIRED if c not in columns]
        unknown = sorted(columns - set(REQUIRED) - set(OPTIONAL))
        if missing or unknown:
            raise SessionImportError(f"{path}: missing columns {missing}, unknown columns {unknown}; expected "
                               f"{', '.join(REQUIRED)} and optionally {', '.join(OPTIONAL)}")  # fmt: skip
        rows: dict[str, dict[str, str]] = {}
        for line, row in enumerate(reader, start=2):
            name = Path(row["image"]).name
            if name in rows:
                raise SessionImportError(f"{path} line {line}: {name} is listed twice")
            rows[name] = row
    return rows


def _number(row: dict[str, str], key: str, default: float | None, where: str) -> float | None:
    text = (row.get(key) or "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise SessionImportError(f"{where}: {key}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise SessionImportError(f"{where}: {key}={text!r} is not finite")
    return value


def frame_of(path: Path, row: dict[str, str], sequence: int) -> Frame:
    """The frame of one image and its CSV row."""
    loaded = read_image(path)
    where = f"{path.name}"
    csv_px = _number(row, "pixel_size_nm", None, where)
    px = loaded.pixel_size_nm or csv_px
    if px is None or px <= 0:
        raise SessionImportError(f"{where}: the file records no pixel size and the CSV gives none (pixel_size_nm)")
    image = np.asarray(loaded.image, dtype=np.float32)
    x, y = _number(row, "x_nm", None, where), _number(row, "y_nm", None, where)
    assert x is not None and y is not None  # required columns; empty cells fail here
    now = time.time()
    metadata: dict[str, Any] = {"imported_from": path.name, "rotation_deg": _number(row, "rotation_deg", 0.0, where)}
    if loaded.pixel_size_nm and csv_px and not math.isclose(loaded.pixel_size_nm, csv_px, rel_tol=1e-3):
        metadata["csv_pixel_size_nm_ignored"] = csv_px
    return Frame.of(
        image, px, sequence=sequence, x_nm=x, y_nm=y, acquisition_start_unix_s=now, acquisition_end_unix_s=now,
        dwell_us=_number(row, "dwell_us", 1.0, where), tilt_deg=_number(row, "tilt_deg", 0.0, where),
        detector=(row.get("detector") or "imported").strip() or "imported", metadata=metadata,
    )  # fmt: skip


def import_session(images: list[Path], positions: Path, out: Path) -> int:
    """Write a session directory ``out`` from ``images`` placed by ``positions``; returns the frame count.

    Raises
    ------
    SessionImportError
        An image not listed in the CSV, or any problem with a row or a file (nothing is written then).
    models.io.ImageReadError
        An image that cannot be read.
    """
    rows = read_positions(positions)
    unlisted = [p.name for p in images if p.name not in rows]
    if unlisted:
        raise SessionImportError(f"not in {positions.name}: {', '.join(unlisted)}")
    frames = [frame_of(p, rows[p.name], i) for i, p in enumerate(images)]  # all checked before writing
    with SessionWriter(out) as writer:
        writer.write({"type": "start", "t_unix_s": time.time(), "imported": True,
                      "sources": [p.name for p in images], "positions": positions.name})  # fmt: skip
        for i, frame in enumerate(frames):
            writer.write_frame(frame, step=i)
        writer.write({"type": "stop", "t_unix_s": time.time(), "status": "imported", "reason": "import complete"})
    return len(frames)
