"""Reading images and their pixel sizes from microscope and generic file formats.

Supported: .npy, .npz, .tif/.tiff, .png, .dm3/.dm4 (Gatan), .emd (Velox/Berkeley),
.ser/.emi (FEI TIA), .mrc, and HDF5 (.h5/.hdf5/.hspy; HyperSpy layout through
RosettaSciIO, otherwise the first 2-D dataset).  Vendor formats go through
RosettaSciIO, which keeps the axis calibration.
"""

from __future__ import annotations

import json
import math
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_NM_PER_UNIT = {
    **dict.fromkeys(("nm", "nanometer", "nanometre", "nanometers", "nanometres"), 1.0),
    **dict.fromkeys(("å", "a", "angstrom", "ångström", "angstroms"), 0.1),
    "pm": 1e-3,
    **dict.fromkeys(("µm", "μm", "um", "micron", "micrometer", "micrometre", "microns"), 1e3),
    "mm": 1e6,
    **dict.fromkeys(("m", "meter", "metre", "meters", "metres"), 1e9),
}
#: Keys of an .npz that hold metadata, never the image.
_NPZ_META_KEYS = frozenset({"pixel_size_nm", "pixel_size_A", "meta"})


class ImageReadError(ValueError):
    """A file cannot be read as a 2-D image."""


@dataclass(frozen=True)
class LoadedImage:
    """A 2-D image with its pixel size when the file records one."""

    image: np.ndarray
    pixel_size_nm: float | None
    source: str


def _to_nm(scale: Any, units: Any) -> float | None:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):  # numpy scalars are Real too
        return None
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        return None
    u = str(units or "").strip().lower()
    if u in _NM_PER_UNIT:
        return float(scale) * _NM_PER_UNIT[u]
    # Uncalibrated axes report scale 1; unset units with another scale are in nm (HyperSpy's habit).
    return None if scale == 1.0 or u not in ("", "<undefined>", "none") else float(scale)


def _from_rsciio(records: list[dict[str, Any]], path: Path) -> LoadedImage:
    """The first 2-D numeric record (a file may also hold spectra or stacks), with its pixel size."""
    shapes = []
    for rec in records:
        data = np.asarray(rec["data"])
        while data.ndim > 2 and data.shape[0] == 1:  # a stack of one: its image (as for MRC)
            data = data[0]
        if data.ndim == 2 and np.issubdtype(data.dtype, np.number):
            axes = rec.get("axes", [])
            sizes = [_to_nm(a.get("scale", 1.0), a.get("units")) for a in axes[-2:]]
            return LoadedImage(data, _square_pixel_nm(sizes, path), str(path))
        shapes.append(data.shape)
    stacks = [shape for shape in shapes if len(shape) == 3]
    if stacks:
        raise ImageReadError(f"{path} holds a stack of shape {stacks[0]}, not a 2-D image")
    raise ImageReadError(f"{path} holds no 2-D image (shapes {shapes})")


def _square_pixel_nm(sizes: list[float | None], path: Path) -> float | None:
    """The pixel size of (row size, col size), the last known one; refused where the two differ.

    Raises
    ------
    ImageReadError
        The pixels are not square (beyond 1 %): the model, and every position reported, take one size.
    """
    known = [s for s in sizes if s]
    if len(known) == 2 and abs(known[0] - known[1]) > 0.01 * max(known):
        raise ImageReadError(
            f"{path}: its pixels are {known[1]:.4g} nm wide and {known[0]:.4g} nm tall; square pixels are "
            "needed (resample the image to one pixel size first)"
        )
    return known[-1] if known else None


def _npz_image_key(path: Path, z: Any) -> str:
    """``image`` when present, else the one 2-D array that is not metadata."""
    if "image" in z.files:
        return "image"
    candidates = [k for k in z.files if k not in _NPZ_META_KEYS and z[k].ndim == 2]
    if len(candidates) != 1:
        which = "no 2-D array" if not candidates else f"several 2-D arrays ({', '.join(candidates)})"
        raise ImageReadError(f"{path} holds {which} and none named 'image' (arrays: {', '.join(z.files)})")
    return candidates[0]


def _npz_pixel_size(path: Path, z: Any) -> float | None:
    try:
        if "pixel_size_nm" in z.files:
            return float(z["pixel_size_nm"])
        if "pixel_size_A" in z.files:
            return float(z["pixel_size_A"]) / 10.0
        if "meta" in z.files:
            meta = json.loads(str(z["meta"]))
            size = meta.get("pixel_size_nm") if isinstance(meta, dict) else None
            return None if size is None else float(size)
    except (TypeError, ValueError) as exc:
        raise ImageReadError(f"{path}: the recorded pixel size is not a number ({exc})") from exc
    return None


def _read_npz(path: Path) -> LoadedImage:
    with path.open("rb") as fh, np.load(fh, allow_pickle=False) as z:  # fh closes even if np.load fails
        return LoadedImage(z[_npz_image_key(path, z)], _npz_pixel_size(path, z), str(path))


def _colour_mean(image: np.ndarray) -> np.ndarray:
    """Grey + alpha, RGB or RGBA (channels last): the colour channels' mean, never the alpha."""
    return image[..., :1].mean(axis=-1) if image.shape[-1] == 2 else image[..., :3].mean(axis=-1)


def _read_tiff(path: Path) -> LoadedImage:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        image = tif.asarray()
        size = None
        page = tif.pages[0]
        if getattr(page, "photometric", None) == tifffile.PHOTOMETRIC.RGB and image.ndim == 3:
            if getattr(page, "planarconfig", None) == tifffile.PLANARCONFIG.SEPARATE:
                image = np.moveaxis(image, 0, -1)  # colour planes first: channels last, as _colour_mean takes them
            image = _colour_mean(image)  # a colour rendering of a grey image, as PNGs often are
        ij = tif.imagej_metadata or {}
        tags = getattr(page, "tags", {})
        if ij.get("unit"):
            sizes = [_tiff_pixel_nm(tags.get(name), ij["unit"]) for name in ("YResolution", "XResolution")]
            size = _square_pixel_nm(sizes, path)
    return LoadedImage(image, size, str(path))


def _tiff_pixel_nm(tag: Any, unit: str) -> float | None:
    """A TIFF resolution tag (pixels per unit, a fraction) as nm per pixel; None where unset or zero."""
    if tag is None:
        return None
    num, den = tag.value
    return _to_nm(den / num, unit) if num else None


def read_mrc(path: Path) -> tuple[np.ndarray, float | None]:
    """An MRC file's data and voxel size (nm; None when unset), for images and tilt series alike.

    Raises
    ------
    ImageReadError
        The file is truncated or corrupt (mrcfile's permissive mode reads odd headers with a warning,
        but leaves no data for a short data block).
    """
    import mrcfile

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with mrcfile.open(path, permissive=True) as mrc:
            if mrc.data is None:
                detail = "; ".join(str(w.message) for w in caught) or "no data block"
                raise ImageReadError(f"{path} is truncated or corrupt: {detail}")
            data = np.asarray(mrc.data)
            voxel_a = float(mrc.voxel_size.x)  # MRC voxel sizes are in angstrom
    return data, voxel_a / 10.0 if voxel_a > 0 else None


def _read_mrc(path: Path) -> LoadedImage:
    data, voxel_nm = read_mrc(path)
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    return LoadedImage(data, voxel_nm, str(path))


def _read_hdf5(path: Path) -> LoadedImage:
    layout_error = None  # what the HyperSpy layout reader found wrong, when the file has that layout
    try:
        from rsciio.hspy import file_reader

        return _from_rsciio(file_reader(str(path)), path)
    except ImageReadError as exc:
        layout_error = exc
    except (KeyError, OSError, ValueError, TypeError, AttributeError):
        pass
    import h5py

    found: list[tuple[int, str]] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.ndim == 2 and np.issubdtype(obj.dtype, np.number):
            if min(obj.shape) >= 16:  # an image, not a table of positions
                found.append((int(obj.size), name))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
        if not found:
            raise layout_error or ImageReadError(f"{path} holds no 2-D numeric dataset of at least 16 x 16")
        return LoadedImage(f[max(found)[1]][()], None, str(path))


def read_image(path: str | Path) -> LoadedImage:
    """Read a 2-D image and, when the file records it, its pixel size in nm.

    Raises
    ------
    ImageReadError
        For a missing file, an unknown extension, or content that is not a 2-D image.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageReadError(f"{path} is a directory, not an image file")
    if not path.is_file():
        raise ImageReadError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path} is empty (0 bytes)")
    ext = path.suffix.lower()
    try:
        if ext == ".npy":
            return LoadedImage(np.load(path, allow_pickle=False), None, str(path))
        if ext == ".npz":
            return _read_npz(path)
        if ext in (".tif", ".tiff"):
            return _read_tiff(path)
        if ext == ".png":
            import imageio.v3 as iio

            img = np.asarray(iio.imread(path))
            return LoadedImage(_colour_mean(img) if img.ndim == 3 else img, None, str(path))
        if ext == ".mrc":
            return _read_mrc(path)
        if ext in (".h5", ".hdf5", ".hspy"):
            return _read_hdf5(path)
        readers = {
            ".dm3": "digitalmicrograph",
            ".dm4": "digitalmicrograph",
            ".emd": "emd",
            ".ser": "tia",
            ".emi": "tia",
        }
        if ext in readers:
            import importlib

            module = importlib.import_module(f"rsciio.{readers[ext]}")
            return _from_rsciio(module.file_reader(str(path)), path)
    except ImageReadError:
        raise
    except Exception as exc:  # readers raise many types for corrupt files; name the file and the cause
        raise ImageReadError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    raise ImageReadError(f"unsupported image format {ext!r} for {path}")
