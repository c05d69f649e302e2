"""Reading tilt series and writing volumes.

Series: ``.dm3``/``.dm4`` stacks (angles from the stack axis calibration), ``.mrc``/``.st``/``.ali``
(angles from a ``.rawtlt``/``.tlt`` file of the same stem or ``--angles``), ``.npy`` (angles from a
file), ``.npz`` (arrays ``series`` and ``angles``), HDF5 (the first 3-D dataset; angles from a dataset
named ``angles``, ``theta`` or ``tilt_angles``, DXchange's ``exchange/theta`` included).  Angles
files hold one angle in degrees per line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.tomo import TomoError, require_real


@dataclass(frozen=True)
class TiltSeriesFile:
    """A tilt series as read: ``series`` (n, rows, cols) float32, ``angles_deg`` (n,), pixel size or None."""

    series: np.ndarray
    angles_deg: np.ndarray
    pixel_size_nm: float | None


def read_angles(path: Path) -> np.ndarray:
    """One angle (degrees) per non-empty line.

    Raises
    ------
    TomoError
        A missing file or a line that is not a number.
    """
    try:
        lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
        return np.array([float(ln.split()[0]) for ln in lines])
    except (OSError, ValueError) as exc:
        raise TomoError(f"cannot read tilt angles from {path}: {exc}") from None


def _sidecar(path: Path) -> np.ndarray | None:
    for ext in (".rawtlt", ".tlt"):
        candidate = path.with_suffix(ext)
        if candidate.is_file():
            return read_angles(candidate)
    return None


def _dm(path: Path) -> TiltSeriesFile:
    from rsciio.digitalmicrograph import file_reader

    rec = file_reader(str(path))[0]
    data = np.asarray(rec["data"], dtype=np.float32)
    if data.ndim != 3:
        raise TomoError(f"{path} holds a {data.ndim}-D array, not a tilt series")
    axis = rec["axes"][0]
    angles = axis.get("offset", 0.0) + axis.get("scale", 1.0) * np.arange(data.shape[0])
    scale = rec["axes"][-1].get("scale")
    units = str(rec["axes"][-1].get("units", "")).lower()
    px = float(scale) * {"nm": 1.0, "µm": 1e3, "um": 1e3, "a": 0.1, "å": 0.1}.get(units, float("nan"))
    return TiltSeriesFile(data, angles.astype(np.float64), px if np.isfinite(px) else None)


def _hdf5(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    import h5py

    found: dict[str, np.ndarray] = {}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            if obj.ndim == 3 and "series" not in found and "dark" not in name and "white" not in name:
                found["series"] = np.asarray(obj, dtype=np.float32)
            if obj.ndim == 1 and name.split("/")[-1] in ("angles", "theta", "tilt_angles"):
                found["angles"] = np.asarray(obj, dtype=np.float64)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    if "series" not in found:
        raise TomoError(f"{path} holds no 3-D dataset")
    return found["series"], found.get("angles")


def read_tilt_series(path: str | Path, angles_file: str | Path | None = None) -> TiltSeriesFile:
    """Read a tilt series and its angles (``angles_file`` overrides what the file says).

    Raises
    ------
    TomoError
        A missing or unreadable file, no angles anywhere, or angles not matching the projections.
    """
    path = Path(path)
    if path.is_dir():
        raise TomoError(f"{path} is a directory, not a tilt-series file")
    if not path.is_file():
        raise TomoError(f"no such file: {path}")
    try:
        series, angles, px = _read_series(path)
    except TomoError:
        raise
    except Exception as exc:  # readers raise many types on truncated or corrupt files: name the file and the cause
        raise TomoError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    if angles_file is not None:
        angles = read_angles(Path(angles_file))
    if angles is None:
        raise TomoError(f"{path} records no tilt angles: give them with --angles FILE (one per line)")
    angles = np.asarray(angles, dtype=np.float64)
    if series.ndim != 3:
        raise TomoError(
            f"{path}: a tilt series is (n_tilts, rows, cols); this holds a {series.ndim}-D array {series.shape}"
        )
    if angles.ndim != 1 or len(angles) != series.shape[0]:
        raise TomoError(f"{path}: {series.shape[0]} projections but {angles.size} angles")
    return TiltSeriesFile(series, angles, px)


def _read_series(path: Path) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """The projections, the angles the file (or its sidecar) records, and the pixel size (nm)."""
    ext = path.suffix.lower()
    px: float | None = None
    angles: np.ndarray | None = None
    if ext in (".dm3", ".dm4"):
        loaded = _dm(path)
        series, angles, px = loaded.series, loaded.angles_deg, loaded.pixel_size_nm
    elif ext in (".mrc", ".st", ".ali", ".mrcs"):
        from models.io import ImageReadError, read_mrc

        try:
            data, px = read_mrc(path)
        except ImageReadError as exc:
            raise TomoError(str(exc)) from None
        series = _real_float32(data, path)
        angles = _sidecar(path)
    elif ext == ".npy":
        series = _real_float32(np.load(path, allow_pickle=False), path)
        angles = _sidecar(path)
    elif ext == ".npz":
        with path.open("rb") as fh, np.load(fh, allow_pickle=False) as z:  # fh closes even if np.load fails
            if "series" not in z.files:
                raise TomoError(f"{path} has no array named 'series' (found {', '.join(z.files)})")
            series = _real_float32(z["series"], path)
            angles = z["angles"].astype(np.float64) if "angles" in z.files else None
    elif ext in (".h5", ".hdf5", ".hdf", ".nxs"):
        series, angles = _hdf5(path)
    else:
        raise TomoError(f"unknown tilt-series format {ext!r} ({path})")
    return series, angles, px


def _real_float32(array: np.ndarray, path: Path) -> np.ndarray:
    """``array`` as float32 if it holds real numbers (integers or floats), else a :class:`TomoError`."""
    require_real(array.dtype, f"{path}: ")
    return array.astype(np.float32, copy=False)


def write_volume(volume: np.ndarray, out: Path, voxel_nm: float | None) -> list[Path]:
    """Write ``out`` as .npy and .mrc (whatever suffix ``out`` has); returns the files written."""
    import mrcfile

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    npy, mrc = out.with_suffix(".npy"), out.with_suffix(".mrc")
    np.save(npy, volume.astype(np.float32))
    with mrcfile.new(mrc, overwrite=True) as m:
        m.set_data(volume.astype(np.float32))
        if voxel_nm:
            m.voxel_size = voxel_nm * 10.0
    return [npy, mrc]


def save_central_slices(volume: np.ndarray, png: Path, title: str) -> None:
    """A PNG with the three central orthogonal slices of ``volume`` (z, y, x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nz, ny, nx = volume.shape
    views = {"xz (y = centre): the tilt plane": volume[:, ny // 2, :], "xy (z = centre)": volume[nz // 2],
             "yz (x = centre)": volume[:, :, nx // 2]}  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6), constrained_layout=True)
    lo, hi = np.percentile(volume, [0.5, 99.8])
    for ax, (name, img) in zip(axes, views.items(), strict=True):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.savefig(png, dpi=90)
    plt.close(fig)
