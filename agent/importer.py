"""Build a session from images recorded elsewhere, so replay and the agent can use them.

Each image becomes one frame record: float32 image, header with the stage position (from a CSV), the
pixel size (from the file's metadata, else the CSV) and the field of view it implies.  A start record
names the source and derives capabilities spanning the fields.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from drivers.base import FRAME_DTYPES, Frame
from drivers.recording import SessionWriter
from models.io import LoadedImage, read_image
from models.preprocess import ImageError, validate_image

REQUIRED = ("image", "x_nm", "y_nm")
OPTIONAL = ("pixel_size_nm", "rotation_deg", "dwell_us", "tilt_deg", "detector")


class SessionImportError(ValueError):
    """A set of images and positions that cannot become a session (the problem is named)."""


@dataclass(frozen=True)
class PositionRow:
    """One row of a positions CSV: its cells by column, and where it is (for messages)."""

    cells: dict[str, str]
    where: str


def read_positions(path: Path) -> dict[str, PositionRow]:
    """Rows of a positions CSV keyed by image file name.

    Columns: ``image`` (file name), ``x_nm``, ``y_nm``; optional ``pixel_size_nm`` (used when the file
    records none), ``rotation_deg``, ``dwell_us``, ``tilt_deg``, ``detector``.  UTF-8, with or without
    the byte-order mark spreadsheet programs write.

    Raises
    ------
    SessionImportError
        A file that cannot be read, missing or unknown columns, a row with missing or extra cells, or an
        image listed twice.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except OSError as exc:
        raise SessionImportError(f"cannot read the positions CSV {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SessionImportError(f"{path} is not a UTF-8 text CSV: {exc}") from None
    try:
        return _rows(csv.DictReader(io.StringIO(text, newline="")), path)
    except csv.Error as exc:
        raise SessionImportError(f"{path}: not a readable CSV: {exc}") from None


def _rows(reader: csv.DictReader[str], path: Path) -> dict[str, PositionRow]:
    columns = list(reader.fieldnames or ())
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:  # (DictReader would keep the last column of a name and say nothing)
        raise SessionImportError(f"{path}: the columns {', '.join(twice)} appear more than once")
    missing = [c for c in REQUIRED if c not in columns]
    unknown = sorted(set(columns) - set(REQUIRED) - set(OPTIONAL))
    if missing or unknown:
        raise SessionImportError(f"{path}: missing columns {missing}, unknown columns {unknown}; expected "
                                 f"{', '.join(REQUIRED)} and optionally {', '.join(OPTIONAL)}")  # fmt: skip
    rows: dict[str, PositionRow] = {}
    for line, row in enumerate(reader, start=2):
        where = f"{path.name} line {line}"
        short = [c for c in columns if row.get(c) is None]  # DictReader fills a short row with None
        if short:
            raise SessionImportError(f"{where}: the row has no cell for {', '.join(short)}")
        if row.get(None):  # cells beyond the header go under None
            raise SessionImportError(f"{where}: the row has more cells than the header's {len(columns)} columns")
        name = Path(row["image"].strip()).name
        if not name:
            raise SessionImportError(f"{where}: the image cell is empty")
        if name in rows:
            raise SessionImportError(f"{where}: {name} is listed twice")
        rows[name] = PositionRow(row, f"{where} ({name})")
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


def _required(row: dict[str, str], key: str, where: str) -> float:
    value = _number(row, key, None, where)
    if value is None:
        raise SessionImportError(f"{where}: {key} is empty (every image needs its stage position)")
    return value


#: Pixel sizes a recorded frame may have: a hundredth of a picometre to ten micrometres.
MIN_PIXEL_NM, MAX_PIXEL_NM = 1e-5, 1e4


def _pixel_size_nm(loaded: LoadedImage, row: PositionRow) -> tuple[float, float | None]:
    """The pixel size (the file's, else the CSV's) and the CSV's own value."""
    csv_px = _number(row.cells, "pixel_size_nm", None, row.where)
    if csv_px is not None and csv_px <= 0:
        raise SessionImportError(f"{row.where}: pixel_size_nm={csv_px:g} must be positive")
    px = loaded.pixel_size_nm or csv_px
    if px is None:
        raise SessionImportError(f"{row.where}: the file records no pixel size and the CSV gives none (pixel_size_nm)")
    if not MIN_PIXEL_NM <= px <= MAX_PIXEL_NM:  # (1e300 overflowed the replay's dose arithmetic)
        source = "the file's" if loaded.pixel_size_nm else "the CSV's"
        raise SessionImportError(
            f"{row.where}: {source} pixel size {px:g} nm is outside {MIN_PIXEL_NM:g} to {MAX_PIXEL_NM:g} nm"
        )
    return px, csv_px


def recordable(image: np.ndarray) -> np.ndarray:
    """``image`` in a pixel type a frame can hold, every value as it was.

    Its own type where a frame takes it; other integers as int32 where they fit, else as float64
    (exact to 2**53: a uint32 frame offset by 2**31 keeps its few counts of contrast, which float32
    would round away); other floats as float32 (float16) or float64.
    """
    if not image.dtype.isnative:  # (a big-endian file: the same values in this machine's byte order)
        image = image.astype(image.dtype.newbyteorder("="))
    if image.dtype.name in FRAME_DTYPES:
        return image
    if np.issubdtype(image.dtype, np.integer):
        i32 = np.iinfo(np.int32)
        fits = image.size == 0 or (int(image.min()) >= i32.min and int(image.max()) <= i32.max)
        return image.astype(np.int32 if fits else np.float64)
    return image.astype(np.float32 if image.dtype.itemsize < 4 else np.float64)


def frame_of(path: Path, row: PositionRow, sequence: int) -> Frame:
    """The frame of one image and its CSV row.

    Raises
    ------
    SessionImportError
        A bad cell, or an image that is not 2-D, finite and at least ``MIN_SIDE_PX`` a side.
    """
    loaded = read_image(path)
    px, csv_px = _pixel_size_nm(loaded, row)
    try:
        validate_image(loaded.image, px)
    except ImageError as exc:
        raise SessionImportError(f"{path}: {exc}") from None
    image = recordable(loaded.image)  # the recorded values as they are, not rescaled
    cells, where = row.cells, row.where
    x, y = _required(cells, "x_nm", where), _required(cells, "y_nm", where)
    now = time.time()
    metadata: dict[str, Any] = {"imported_from": path.name, "rotation_deg": _number(cells, "rotation_deg", 0.0, where)}
    if loaded.pixel_size_nm and csv_px and not math.isclose(loaded.pixel_size_nm, csv_px, rel_tol=1e-3):
        metadata["csv_pixel_size_nm_ignored"] = csv_px
    try:
        return Frame.of(
            image, px, sequence=sequence, x_nm=x, y_nm=y, acquisition_start_unix_s=now, acquisition_end_unix_s=now,
            dwell_us=_number(cells, "dwell_us", 1.0, where), tilt_deg=_number(cells, "tilt_deg", 0.0, where),
            detector=(cells.get("detector") or "imported").strip() or "imported", metadata=metadata,
        )  # fmt: skip
    except ValidationError as exc:  # a value the frame header cannot hold (a field of view beyond float range...)
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SessionImportError(f"{where}: {problems}") from None


def _refuse_same_names(images: list[Path]) -> None:
    """The CSV matches images by file name: two images of one name (or one given twice) are ambiguous."""
    by_name: dict[str, list[Path]] = {}
    for p in images:
        by_name.setdefault(p.name, []).append(p)
    for name, paths in by_name.items():
        if len(paths) > 1:
            raise SessionImportError(
                f"{name} is given {len(paths)} times ({', '.join(map(str, paths))}); the positions CSV names "
                "images by file name, so each image must have its own name"
            )


def import_session(images: list[Path], positions: Path, out: Path) -> int:
    """Write a session directory ``out`` from ``images`` placed by ``positions``; returns the frame count.

    Raises
    ------
    SessionImportError
        An image not listed in the CSV, two images of one name, or any problem with a row or a file
        (nothing is written then).
    models.io.ImageReadError
        An image that cannot be read.
    """
    _refuse_same_names(images)
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
