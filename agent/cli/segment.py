"""``autoscope segment``: atoms, defects and uncertainty in microscope images.

Writes a JSON array with one object per image (in input order) and, optionally,
a PNG per image showing the image, the atoms coloured by class with defects
marked, and the uncertainty map.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add ``segment`` to ``sub``."""
    p = sub.add_parser("segment", help="find atoms and defects, with uncertainty, in images")
    p.add_argument("images", nargs="+", type=Path, help=".npy .npz .tif .png .dm3 .dm4 .emd .ser .mrc .h5/.hdf5")
    p.add_argument("--pixel-size-nm", type=float, default=None, help="used when a file records no pixel size")
    p.add_argument("--model", type=Path, default=None, help="manifest (.json) or .onnx (default: bundled)")
    p.add_argument("--providers", default="auto", help="auto, cpu, cuda or tensorrt (comma-separated list allowed)")
    p.add_argument("--out", type=Path, required=True, help="output JSON")
    p.add_argument(
        "--png", type=Path, default=None, help="overlay PNG; with several images, IMAGE-stem is appended to the name"
    )
    p.add_argument(
        "--refine",
        action="store_true",
        help="refine column positions by a local 2-D Gaussian fit on the image (bright columns, e.g. HAADF)",
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
            "timings_ms": timings,
        },
    }


def _png_path(png: Path, image: Path, many: bool) -> Path:
    return png.with_name(f"{png.stem}-{image.stem}{png.suffix}") if many else png


def _run(args: argparse.Namespace) -> int:
    from models.io import read_image
    from models.overlay import save_overlay
    from models.segmenter import Segmenter
    from simulators.allocator import tune_allocator

    tune_allocator()  # as autoscope run does: localisation's per-pixel temporaries then cost no page faults
    providers = args.providers.split(",") if "," in args.providers else args.providers
    loaded = [read_image(p) for p in args.images]  # read everything first: fail before any work
    for item in loaded:
        if item.pixel_size_nm is None and args.pixel_size_nm is None:
            raise ValueError(f"{item.source} records no pixel size: pass --pixel-size-nm")
    segmenter = Segmenter(args.model, providers)
    results = []
    for path, item in zip(args.images, loaded, strict=True):
        size = item.pixel_size_nm if item.pixel_size_nm is not None else args.pixel_size_nm
        seg = segmenter.segment(item.image, size)
        t0 = time.perf_counter()
        atoms = segmenter.atoms(seg)
        timings = {"localize": 1e3 * (time.perf_counter() - t0)}
        if args.refine:
            t0 = time.perf_counter()
            atoms = segmenter.refine(seg, item.image, atoms)
            timings["refine"] = 1e3 * (time.perf_counter() - t0)
        results.append(result_record(path, float(size), segmenter, seg, atoms, timings))
        if args.png is not None:
            save_overlay(item.image, seg, atoms, segmenter.manifest, _png_path(args.png, path, len(loaded) > 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    for r in results:
        s = r["summary"]
        print(f"{r['image']}: {s['n_atoms']} atoms, {s['n_defects']} defects, OOD {s['ood_score']}")
    return 0
