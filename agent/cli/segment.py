"""``autoscope segment``: atoms, defects and uncertainty in microscope images.

Writes a JSON array with one object per image (in input order) and, optionally,
a PNG per image showing the image, the atoms coloured by class with defects
marked, and the uncertainty map.  Every image is read and checked before any is
segmented: a file that cannot be read, or an image that cannot be segmented as
given, is reported with every other such file and nothing is written (exit 2).
An image whose ensemble output is unusable gets ``{"image", "pixel_size_nm",
"error"}`` in place of its result, the others are kept, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

#: Exit status when the model failed on some images (agent.cli.EXIT_FAILURE; this module may not import
#: agent.cli, which reaches torch through the other commands).
_EXIT_SOME_FAILED = 1


def register(sub: Any) -> None:
    """Add ``segment`` to ``sub``."""
    p = sub.add_parser("segment", help="find atoms and defects, with uncertainty, in images")
    p.add_argument("images", nargs="+", type=Path, help=".npy .npz .tif .png .dm3 .dm4 .emd .ser .mrc .h5/.hdf5")
    p.add_argument("--pixel-size-nm", type=float, default=None, help="used when a file records no pixel size")
    p.add_argument("--model", type=Path, default=None, help="manifest (.json) or .onnx (default: bundled)")
    p.add_argument("--providers", default="auto", help="auto, cpu, cuda or tensorrt (comma-separated list allowed)")
    p.add_argument("--out", type=Path, required=True, help="output JSON")
    p.add_argument(
        "--png",
        type=Path,
        default=None,
        help="overlay PNG; with several images, -IMAGE-stem is appended to the name (-N-IMAGE-stem, N from 1,"
        " where two images share a stem)",
    )
    p.add_argument(
        "--invert",
        action="store_true",
        help="negate the images first: for dark columns on a bright background (ABF, bright field); the model "
        "takes bright columns (ADF, HAADF)",
    )
    p.add_argument(
        "--refine",
        action="store_true",
        help="refine column positions by a local 2-D Gaussian fit on the image (bright columns, e.g. HAADF)",
    )
    p.add_argument(
        "--keep-featureless",
        action="store_true",
        help="locate columns in featureless images too (nothing at atomic scales above the noise: by default"
        " they get no atoms, as the ensemble places columns even in pure noise)",
    )
    p.set_defaults(handler=_run)


def result_record(
    path: Path, pixel_size_nm: float, segmenter: Any, seg: Any, atoms: Any, timings_ms: dict[str, float]
) -> dict[str, Any]:
    """The JSON object of one segmented image; ``timings_ms``: stages after the ensemble (localize, refine)."""
    classes = segmenter.manifest.classes
    items = [
        {
            "row": float(r),
            "col": float(c),
            "class": classes[int(k)].name,
            "defect": classes[int(k)].defect,
            "confidence": float(conf),
            "uncertainty": float(u),
            "presence_entropy": float(b),
        }
        for r, c, k, conf, u, b in zip(
            atoms.row,
            atoms.col,
            atoms.class_id,
            atoms.confidence,
            atoms.uncertainty,
            atoms.presence_entropy,
            strict=True,
        )
    ]
    timings = {**seg.timings_ms, **timings_ms}
    return {
        "image": str(path),
        "pixel_size_nm": pixel_size_nm,
        "model": {"name": segmenter.manifest.name, "sha256": segmenter.manifest.onnx_sha256},
        "providers": segmenter.providers,
        "atoms": items,
        "summary": {
            "n_atoms": len(items),
            "n_defects": sum(a["defect"] for a in items),
            "ood_score": seg.ood_score if seg.ood_score == seg.ood_score else None,
            "input_check": seg.input_check.summary() if seg.input_check is not None else None,
            "timings_ms": timings,
        },
    }


def _png_paths(png: Path, images: list[Path]) -> list[Path]:
    """One overlay path per image, no two alike.

    ``png`` itself for one image, else the image's stem appended (and its index where two images
    share a stem).
    """
    if len(images) == 1:
        return [png]
    stems = [image.stem for image in images]
    unique = len(set(stems)) == len(stems)
    return [
        png.with_name(f"{png.stem}-{stem}{png.suffix}" if unique else f"{png.stem}-{i}-{stem}{png.suffix}")
        for i, stem in enumerate(stems, start=1)
    ]


def _check_outputs(out: Path, pngs: list[Path | None], images: list[Path]) -> None:
    """Refuse, before any work, outputs that cannot be written or would overwrite an input or each other.

    Raises
    ------
    ValueError
        Naming the output and what it would overwrite (or why it cannot be written).
    """
    from agent.cli.options import check_output_file, same_file

    check_output_file(out, "--out")
    for png in pngs:
        check_output_file(png, "--png")
    written: dict[Path, str] = {}
    for flag, path in [("--out", out), *(("--png", png) for png in pngs if png is not None)]:
        where = path.resolve()
        image = next((i for i in images if same_file(path, i)), None)  # (hard links too)
        if image is not None:
            raise ValueError(f"{flag} {path} would overwrite the input image {image}: choose another name")
        if where in written:
            raise ValueError(f"{flag} {path} and {written[where]} name the same file: choose another name")
        written[where] = f"{flag} {path}"


def _image_problems(image: Any) -> list[str]:
    """What is wrong with the image itself (shape, dtype, NaN...), whatever its pixel size."""
    from models.preprocess import ImageError, validate_image

    try:
        validate_image(image, 1.0)
    except ImageError as exc:
        return [str(exc)]
    return []


def _load_all(args: argparse.Namespace, native_nm: float) -> list[tuple[Any, float]]:
    """Every image read and checked, with its pixel size, before any is segmented.

    Raises
    ------
    ValueError
        Naming every file that cannot be segmented and why; nothing has been written.
    """
    from models.io import read_image
    from models.preprocess import check_native_shape, validate_image

    loaded, problems = [], []
    for path in args.images:
        try:
            item = read_image(path)
            size = item.pixel_size_nm if item.pixel_size_nm is not None else args.pixel_size_nm
            given = args.pixel_size_nm
            if item.pixel_size_nm is not None and given is not None and abs(given - size) > 0.01 * size:
                print(f"{path}: the file records {size:.4g} nm per pixel; --pixel-size-nm {given:g} is for files "
                      "that record none, and is not used for it", file=sys.stderr)  # fmt: skip
            if size is None:  # said with whatever is wrong with the image itself, so one pass names it all
                said = [*_image_problems(item.image), "records no pixel size: pass --pixel-size-nm"]
                raise ValueError("; ".join(said))
            check_native_shape(validate_image(item.image, size).shape, size, native_nm)
            loaded.append((item, float(size)))
        except ValueError as exc:  # ImageReadError and ImageError are ValueErrors
            problems.append(f"{path}: {exc}")
    if problems:
        raise ValueError(
            f"{len(problems)} of {len(args.images)} images cannot be segmented (nothing was written):\n  "
            + "\n  ".join(problems)
        )
    return loaded


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from agent.cli.options import png_output
    from models.overlay import save_overlay
    from models.segmenter import ModelOutputError, Segmenter
    from simulators.allocator import tune_allocator

    png = png_output(args.png)  # (".png" added when it has no suffix, as matplotlib would)
    pngs: list[Path | None] = [*_png_paths(png, args.images)] if png is not None else [None] * len(args.images)
    _check_outputs(args.out, pngs, args.images)  # before any work
    tune_allocator()  # as autoscope run does: localisation's per-pixel temporaries then cost no page faults
    names = [p.strip().lower() for p in args.providers.split(",")]  # "cpu, CUDA" as "cpu,cuda"
    providers = names if len(names) > 1 else names[0]
    segmenter = Segmenter(args.model, providers, keep_featureless=args.keep_featureless)
    loaded = _load_all(args, segmenter.manifest.native_pixel_size_nm)  # fail before any work
    for folder in {p.parent for p in pngs if p is not None}:
        folder.mkdir(parents=True, exist_ok=True)  # (as --out's folder is made: not found after all the work)
    results: list[dict[str, Any]] = []
    for path, (item, size), png in zip(args.images, loaded, pngs, strict=True):
        image = -np.asarray(item.image, dtype=np.float64) if args.invert else item.image  # (the model's contrast)
        try:
            seg = segmenter.segment(image, size)
        except ModelOutputError as exc:  # this image's result is unusable; the others' are kept
            results.append({"image": str(path), "pixel_size_nm": size, "error": str(exc)})
            continue
        t0 = time.perf_counter()
        atoms = segmenter.atoms(seg)
        timings = {"localize": 1e3 * (time.perf_counter() - t0)}
        if args.refine:
            t0 = time.perf_counter()
            atoms = segmenter.refine(seg, image, atoms)
            timings["refine"] = 1e3 * (time.perf_counter() - t0)
        results.append({**result_record(path, size, segmenter, seg, atoms, timings), "inverted": bool(args.invert)})
        if png is not None:
            save_overlay(item.image, seg, atoms, segmenter.manifest, png)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    for r in results:
        if "error" in r:
            print(f"{r['image']}: error: {r['error']}", file=sys.stderr)
            continue
        s = r["summary"]
        flags = (s["input_check"] or {}).get("flags") or []
        said = f" ({', '.join(flags)}: see input_check)" if flags else ""
        print(f"{r['image']}: {s['n_atoms']} atoms, {s['n_defects']} defects, OOD {s['ood_score']}{said}")
    return _EXIT_SOME_FAILED if any("error" in r for r in results) else 0
