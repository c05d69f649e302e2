"""Tomography baselines on held-out phantoms: reconstruction methods under a missing wedge, tilt schemes.

1. The TomoFillNet convention: 128 angles at 1.40625 degrees over 180, the central 32 removed (a 45
   degree missing wedge around +-90... here the wedge sits at high tilt, as in a real holder: the 32
   angles nearest +-90 are missing), WBP against SART, PSNR and SSIM against the phantom.
2. Equal numbers of tilts (20 within -70..70) for each tilt scheme, reconstructed by WBP and SART.

Phantom seeds start at 1000 (training will use lower seeds).  Prints JSON.  The inpainting network and
the adaptive scheme of issue 7 are to be measured against these numbers.

    python benchmarks/tomo.py [--phantoms 10] [--size 64] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from report import emit
from skimage.metrics import structural_similarity

from agent.policies.tilt import TILT_SCHEMES, tilt_plan
from models.tomo import psnr_db, reconstruct
from simulators.phantom import PhantomConfig, make_phantom
from simulators.tilt import TiltImaging, record_projection, to_projected_density

SEED0 = 1000


def measured(volume: np.ndarray, angles: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noisy projections at ``angles``, converted back to projected density."""
    imaging = TiltImaging(reachable_deg=(-90.0, 90.0))
    return np.stack([to_projected_density(record_projection(volume, a, imaging, rng)[0], imaging) for a in angles])


def scores(volume: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    data_range = float(truth.max() - truth.min()) or 1.0
    return psnr_db(volume, truth), float(structural_similarity(volume, truth, data_range=data_range))


def _mean(values: list[float]) -> dict[str, float]:
    return {"mean": round(float(np.mean(values)), 3), "sd": round(float(np.std(values)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phantoms", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    full = -90.0 + 1.40625 * np.arange(128)
    wedge = full[np.abs(full) <= 90.0 - 22.5 + 1e-9]  # the 32 angles nearest +-90 removed: a 45-degree wedge
    wedge_results: dict[str, dict[str, list[float]]] = {m: {"psnr": [], "ssim": []} for m in ("wbp", "sart")}
    scheme_results: dict[str, dict[str, list[float]]] = {
        f"{s}/{m}": {"psnr": [], "ssim": []} for s in TILT_SCHEMES for m in ("wbp", "sart")
    }
    t0 = time.perf_counter()
    for k in range(args.phantoms):
        truth = make_phantom(PhantomConfig(seed=SEED0 + k, size_px=args.size)).volume.astype(np.float64)
        rng = np.random.default_rng(k)
        series = measured(truth, wedge, rng)
        for m in wedge_results:
            p, s = scores(reconstruct(series, wedge, m), truth)  # type: ignore[arg-type]
            wedge_results[m]["psnr"].append(p)
            wedge_results[m]["ssim"].append(s)
        for scheme in TILT_SCHEMES:
            angles = np.array(tilt_plan(scheme, 20, -70.0, 70.0))
            series = measured(truth, angles, rng)
            for m in ("wbp", "sart"):
                p, s = scores(reconstruct(series, angles, m), truth)  # type: ignore[arg-type]
                scheme_results[f"{scheme}/{m}"]["psnr"].append(p)
                scheme_results[f"{scheme}/{m}"]["ssim"].append(s)
    out = {
        "benchmark": "tomo",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "setup": f"{args.phantoms} phantoms (seeds {SEED0}..{SEED0 + args.phantoms - 1}), {args.size}^3 voxels, "
        "2000 e/px per projection",
        "missing_wedge_45deg": {
            "angles": f"{len(wedge)} of 128 at 1.40625 deg (|tilt| <= 67.5)",
            **{m: {"psnr_db": _mean(r["psnr"]), "ssim": _mean(r["ssim"])} for m, r in wedge_results.items()},
        },
        "schemes_20_tilts_70deg": {
            k: {"psnr_db": _mean(r["psnr"]), "ssim": _mean(r["ssim"])} for k, r in scheme_results.items()
        },
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()
