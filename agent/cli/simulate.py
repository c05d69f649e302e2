"""``autoscope simulate``: render simulated STEM frames with their ground truth.

``simulate stem`` renders one frame; ``simulate demo`` renders a
low-magnification survey and an atomic-resolution frame on a defect hot spot.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _add_specimen_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("specimen")
    g.add_argument("--seed", type=int, default=0, help="specimen seed (default 0)")
    g.add_argument("--lattice", default="MoS2", help="MoS2, WS2, graphene or SrTiO3 (default MoS2)")
    g.add_argument("--lattice-rotation-deg", type=float, default=None, help="in-plane rotation (default: from seed)")
    g.add_argument("--specimen-size-nm", type=float, default=256.0, help="edge of the square specimen (default 256)")
    g.add_argument(
        "--feature-correlation",
        type=float,
        default=0.7,
        help="fraction of defect hot spots on low-magnification features (default 0.7)",
    )


def _add_imaging_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("imaging")
    g.add_argument("--dwell-us", type=float, default=10.0, help="pixel dwell time (default 10)")
    g.add_argument("--probe-current-pa", type=float, default=20.0, help="probe current (default 20)")
    g.add_argument("--dose-e-per-a2", type=float, default=None, help="frame dose; overrides the probe current")
    g.add_argument("--probe-fwhm-nm", type=float, default=0.10, help="probe FWHM (default 0.10)")
    g.add_argument("--noise-seed", type=int, default=None, help="seed of noise and distortion (default: --seed)")


def register(sub: Any) -> None:
    """Add ``simulate`` and its subcommands to ``sub``."""
    p = sub.add_parser("simulate", help="render simulated frames with ground truth")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)

    stem = kinds.add_parser("stem", help="one HAADF-STEM frame of a simulated specimen")
    _add_specimen_args(stem)
    _add_imaging_args(stem)
    g = stem.add_argument_group("field of view")
    g.add_argument("--x-nm", type=float, default=0.0, help="field centre x (default 0)")
    g.add_argument("--y-nm", type=float, default=0.0, help="field centre y (default 0)")
    g.add_argument("--fov-nm", type=float, default=10.24, help="field of view (default 10.24)")
    g.add_argument("--pixels", type=int, default=512, help="pixels per side (default 512)")
    g.add_argument("--rotation-deg", type=float, default=0.0, help="scan rotation (default 0)")
    stem.add_argument("--out", type=Path, required=True, help="output .npz (image + ground truth; .npz is added)")
    stem.add_argument("--png", type=Path, default=None, help="optional preview (a .png file)")
    stem.set_defaults(handler=_run_stem)

    demo = kinds.add_parser("demo", help="a survey and an atomic-resolution frame on a defect hot spot")
    _add_specimen_args(demo)
    _add_imaging_args(demo)
    demo.add_argument("--out", type=Path, required=True, help="output directory")
    demo.set_defaults(handler=_run_demo)


def _specimen(args: argparse.Namespace) -> Any:
    from simulators import Specimen, SpecimenConfig
    from simulators.errors import checked

    size = args.specimen_size_nm
    config = checked(
        SpecimenConfig,
        seed=args.seed,
        lattice=args.lattice,
        rotation_deg=args.lattice_rotation_deg,
        width_nm=size,
        height_nm=size,
        feature_correlation=args.feature_correlation,
    )
    return Specimen(config)


def _imaging(args: argparse.Namespace, scan: Any) -> Any:
    from simulators import ImagingParams
    from simulators.errors import checked

    imaging = checked(ImagingParams, probe_current_pa=args.probe_current_pa, probe_fwhm_nm=args.probe_fwhm_nm)
    return imaging if args.dose_e_per_a2 is None else imaging.with_dose(args.dose_e_per_a2, scan)


def _render(args: argparse.Namespace, specimen: Any, stream: int, **field: Any) -> Any:
    import numpy as np

    from simulators import ScanRequest, render_frame
    from simulators.errors import checked

    field.setdefault("dwell_us", args.dwell_us)
    scan = checked(ScanRequest, **field)
    seed = args.seed if args.noise_seed is None else args.noise_seed
    rng = np.random.default_rng([seed, stream])
    return render_frame(specimen, scan, _imaging(args, scan), rng)


def _summary(frame: Any, out: Path) -> dict[str, Any]:
    cols = frame.truth.columns
    return {
        "file": str(out),
        "lattice": frame.lattice,
        "pixel_size_nm": frame.pixel_size_nm,
        "dose_e_per_a2": frame.dose_e_per_a2,
        "atoms_resolved": frame.truth.atoms_resolved,
        "n_columns": len(cols),
        "defects": cols.defect_counts(),
        "expected_defects": float(
            frame.truth.defect_density_per_nm2.mean() * frame.scan.fov_nm * frame.scan.fov_rows_nm
        ),
    }


def _npz_path(out: Path) -> Path:
    """The file ``--out`` names: ``.npz`` added when missing, as numpy would add it.

    Raises
    ------
    ValueError
        ``out`` is a directory, or lies under a file.
    """
    from agent.cli.options import check_output_file

    check_output_file(out, "--out")
    npz = out if out.suffix.lower() == ".npz" else out.with_name(out.name + ".npz")
    check_output_file(npz, "--out")
    return npz


def _png_path(png: Path | None) -> Path | None:
    """``--png``, checked before anything is written: a .png file name (``.png`` added when it has none)."""
    from agent.cli.options import png_output

    return png_output(png)


def _run_stem(args: argparse.Namespace) -> int:
    from simulators.preview import save_preview

    out, png = _npz_path(args.out), _png_path(args.png)
    specimen = _specimen(args)
    frame = _render(
        args,
        specimen,
        0,
        x_nm=args.x_nm,
        y_nm=args.y_nm,
        fov_nm=args.fov_nm,
        rows=args.pixels,
        cols=args.pixels,
        rotation_deg=args.rotation_deg,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.save_npz(out)
    if png is not None:
        png.parent.mkdir(parents=True, exist_ok=True)
        save_preview(frame, png)
    print(json.dumps(_summary(frame, out), indent=2))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from simulators.allocator import tune_allocator
    from simulators.preview import save_preview

    tune_allocator()
    specimen = _specimen(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    x0, x1, y0, y1 = specimen.bounds_nm
    survey_fov = 0.8 * min(x1 - x0, y1 - y0)
    survey = _render(args, specimen, 0, fov_nm=survey_fov, rows=512, cols=512, dwell_us=8.0)
    # Aim the atomic-resolution frame at the densest defects the survey's ground truth knows of.
    density = survey.truth.defect_density_per_nm2
    r, c = np.unravel_index(int(np.argmax(density)), density.shape)
    px, half = survey.pixel_size_nm, (density.shape[0] - 1) / 2
    cx, cy = float((c - half) * px), float((r - half) * px)
    atomic = _render(args, specimen, 1, x_nm=cx, y_nm=cy, fov_nm=10.24, rows=512, cols=512)
    report = {}
    for name, frame in (("survey", survey), ("hotspot", atomic)):
        frame.save_npz(out / f"{name}.npz")
        save_preview(frame, out / f"{name}.png")
        report[name] = _summary(frame, out / f"{name}.npz")
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0
