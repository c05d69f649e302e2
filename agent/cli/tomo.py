"""``autoscope tomo``: reconstruct a tilt series, or run a tilt-series experiment."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agent.cli import tomo_run, tomo_train


def register(sub: Any) -> None:
    """Add ``tomo`` to ``sub``."""
    p = sub.add_parser("tomo", help="electron tomography: reconstruct a tilt series, or run a tilt experiment")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    rec = actions.add_parser("reconstruct", help="reconstruct a tilt series (wbp or sart)")
    rec.add_argument("series", type=Path, help=".dm3/.dm4, .mrc (+ .rawtlt), .npy (+ --angles), .npz or HDF5")
    rec.add_argument("--angles", type=Path, help="tilt angles, one per line, in degrees (overrides the file)")
    rec.add_argument("--method", choices=("wbp", "sart"), default="wbp")
    rec.add_argument(
        "--tilt-axis", choices=("rows", "cols"), default="rows",
        help="rows: the axis is vertical in the images (each row is a sinogram); cols: it is horizontal",
    )  # fmt: skip
    rec.add_argument("--axis-shift-px", type=float, default=0.0, help="move the tilt axis to the centre by this")
    rec.add_argument("--range-deg", type=float, nargs=2, metavar=("LOW", "HIGH"), help="use only these tilts")
    rec.add_argument("--out", type=Path, required=True, help="volume path: writes .npy and .mrc, and a .png")
    rec.set_defaults(handler=_reconstruct)
    tomo_run.register(actions)
    tomo_train.register(actions)


def _reconstruct(args: argparse.Namespace) -> int:
    import numpy as np
    from scipy.ndimage import shift

    from models.tilt_io import read_tilt_series, save_central_slices, write_volume
    from models.tomo import check_series, reconstruct

    _refuse_overwriting_inputs(args)
    loaded = read_tilt_series(args.series, args.angles)
    series, angles = loaded.series, loaded.angles_deg
    if args.range_deg:
        low, high = args.range_deg
        keep = (angles >= low) & (angles <= high)
        if not low < high or keep.sum() < 2:
            raise ValueError(f"--range-deg {low:g} {high:g} keeps {int(keep.sum())} of the {len(angles)} tilts "
                             f"({angles.min():g} to {angles.max():g} deg): at least 2 are needed")  # fmt: skip
        series, angles = series[keep], angles[keep]
    if args.tilt_axis == "cols":
        series = series.transpose(0, 2, 1)
    series, angles = check_series(series, angles)  # (reconstruct checks too: here, before the shift is checked)
    if not abs(args.axis_shift_px) < series.shape[2]:  # (NaN too)
        raise ValueError(
            f"--axis-shift-px {args.axis_shift_px:g} is not a shift within the {series.shape[2]} px projections"
        )
    if args.axis_shift_px:
        series = np.stack([shift(p, (0, args.axis_shift_px), order=1, mode="nearest") for p in series])
    volume = reconstruct(series, angles, args.method)
    written = write_volume(volume, args.out, loaded.pixel_size_nm)
    png = args.out.with_suffix(".png")
    title = f"{args.series.name}: {args.method}, {len(angles)} tilts {angles.min():g}..{angles.max():g} deg"
    save_central_slices(volume, png, title)
    print(f"volume {volume.shape} -> {', '.join(map(str, written))}, slices -> {png}", file=sys.stderr)
    return 0


def _refuse_overwriting_inputs(args: argparse.Namespace) -> None:
    """``--out`` writes STEM.npy, STEM.mrc and STEM.png: none may be the series or its angles."""
    inputs = {Path(args.series).resolve()}
    inputs |= {Path(args.series).with_suffix(ext).resolve() for ext in (".rawtlt", ".tlt")}
    if args.angles is not None:
        inputs.add(Path(args.angles).resolve())
    clash = [str(p) for ext in (".npy", ".mrc", ".png") if (p := args.out.with_suffix(ext)).resolve() in inputs]
    if clash:
        raise ValueError(f"--out {args.out} would overwrite the input {', '.join(clash)}: choose another --out")
