"""Policies compared on simulated specimens: planted defects found after 10, 20, 30 and 50 fields.

Every policy runs the full loop (simulator, bundled segmentation ensemble, guard) on the same specimen
seeds; a planted defect counts once it is detected (within half the nearest-neighbour spacing).  Also
reports travel and dose, and the time per decision of ``bayes`` and ``dkl`` with 1000 past observations
and 4096 candidates.  Prints JSON.  Goal: the best adaptive policy finds at least 2x as many planted
defects as raster at 30 fields; decisions under 0.5 s on CPU.

Spreads are sample standard deviations over seeds (ddof=1).  The headline ratio (best adaptive policy
over raster at 30 fields, or at ``--fields`` if fewer) comes with a 95 % paired bootstrap interval over
seeds: one resample of seeds serves both policies (the best policy is chosen once, on all seeds).  With
``--fields`` under 50 the checkpoints are those of 10, 20, 30, 50 up to it, and ``--fields`` itself.

    python benchmarks/policies.py [--seeds 5] [--fields 50] [--policies raster,random,...] [--out FILE]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from report import emit, machine, provenance

from agent.config import load_config
from agent.experiment import Experiment
from agent.loop import Loop
from agent.policies import POLICY_NAMES, AcquisitionConfig, FieldTemplate, PolicyContext, Region, make_policy
from models.segmenter import Segmenter

CHECKPOINTS = (10, 20, 30, 50)


def checkpoints(fields: int) -> tuple[int, ...]:
    """Field counts reported for a run of ``fields`` fields: those of :data:`CHECKPOINTS` up to it, and itself."""
    return tuple(sorted({n for n in CHECKPOINTS if n <= fields} | {fields}))


def headline_at(fields: int) -> int:
    """The checkpoint of the headline ratio: 30 fields, or all of them where fewer were run."""
    return min(30, fields)


def run_once(policy: str, seed: int, fields: int, segmenter: Segmenter) -> dict[str, object]:
    """One run; the planted defects found after each high-resolution field."""
    curve: list[int] = []

    def after_step(loop: Loop) -> None:
        if loop.state.last is not None and loop.state.last.atoms_resolved:
            curve.append(len(loop.scorer.found))

    steps = fields + (1 if policy == "dkl" else 0)  # dkl's survey is a frame but not a field
    config = load_config(None, {"policy": policy, "steps": steps, "seed": seed, "simulator.specimen_seed": seed})
    t0 = time.perf_counter()
    with Experiment(config, segmenter=segmenter) as experiment:
        experiment.loop.on_step = after_step
        experiment.run()
        summary = experiment.summary
    return {
        "found_after": {n: curve[n - 1] for n in checkpoints(fields) if n <= len(curve)},
        "detected": summary["defects_found"],
        "in_fields": summary.get("true_defects_in_fields"),
        "travel_nm": summary["travel_nm"],
        "dose_total_e_per_a2": summary["dose"]["total_e_per_a2"],
        "suggest_ms_p50": summary["latency_ms"].get("suggest", {}).get("p50"),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def _mean_sd(values: list[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation (ddof=1; None from one value)."""
    sd = round(float(np.std(values, ddof=1)), 2) if len(values) > 1 else None
    return {"mean": round(float(np.mean(values)), 2), "sd": sd}


def paired_ratio_interval(
    numerator: list[float], denominator: list[float], resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> list[float] | None:
    """Percentile bootstrap interval of ``mean(numerator) / mean(denominator)``, resampling seeds paired.

    ``numerator[i]`` and ``denominator[i]`` come from the same seed; one resample of seeds serves both.
    Resamples whose denominator mean is zero are left out.  None with fewer than two seeds.
    """
    num, den = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if len(num) != len(den):
        raise ValueError(f"{len(num)} and {len(den)} values: pair them by seed")
    if len(num) < 2:
        return None
    pick = np.random.default_rng(seed).integers(0, len(num), (resamples, len(num)))
    top, bottom = num[pick].mean(axis=1), den[pick].mean(axis=1)
    ratios = top[bottom > 0] / bottom[bottom > 0]
    if not len(ratios):
        return None
    tail = 100 * (1 - level) / 2
    return [round(float(v), 2) for v in np.percentile(ratios, [tail, 100 - tail])]


def compare(policies: list[str], seeds: int, fields: int) -> dict[str, object]:
    """Every policy on every seed; means and spreads at each checkpoint."""
    segmenter = Segmenter(providers="cpu")
    runs = {p: [run_once(p, s, fields, segmenter) for s in range(seeds)] for p in policies}
    table: dict[str, object] = {}
    for p, rs in runs.items():
        table[p] = {
            "found_after": {str(n): _mean_sd([r["found_after"][n] for r in rs]) for n in checkpoints(fields)},  # type: ignore[index]
            "travel_nm": _mean_sd([r["travel_nm"] for r in rs]),  # type: ignore[misc]
            "dose_total_e_per_a2": _mean_sd([r["dose_total_e_per_a2"] for r in rs]),  # type: ignore[misc]
            "detected": _mean_sd([r["detected"] for r in rs]),  # type: ignore[misc]
            "per_seed": rs,
        }
    return table


def decision_time(name: str, observations: int = 1000, side: int = 64, repeats: int = 10) -> dict[str, float]:
    """Seconds per decision with ``observations`` past fields and ``side**2`` candidates (synthetic rewards).

    Hyperparameters are refitted every 5 observations, so the timed decisions include two refits; the
    first fit of the session (cold start) is reported apart.
    """
    from agent.observation import Observation
    from drivers.base import Frame

    def observation(x: float, y: float, new_defects: int) -> Observation:
        frame = Frame.of(np.zeros((16, 16), np.float32), 10.0 / 16, x_nm=x, y_nm=y, fov_nm=10.0)
        return Observation.without_atoms(frame.header, new_defects)

    region = Region(-315.0, 315.0, -315.0, 315.0)  # 64 x 64 candidates at a 10 nm pitch
    context = PolicyContext(region, FieldTemplate(fov_nm=10.0), seed=0)
    policy = make_policy(name, context, acquisition=AcquisitionConfig(refit_every=5))
    assert len(policy.xy) == side * side  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    if name == "dkl":
        survey = rng.normal(0, 1, (512, 512)).astype(np.float32)
        policy.suggest(1)
        policy.ingest(Observation.without_atoms(Frame.of(survey, 1.3, fov_nm=665.6).header, image=survey))
    for i in rng.choice(side * side, observations, replace=False):
        x, y = policy.xy[i]  # type: ignore[attr-defined]
        policy.ingest(observation(x, y, int(rng.poisson(3 + 3 * np.sin(x / 50)))))
    t0 = time.perf_counter()
    policy.suggest(1)  # the session's first fit
    cold = time.perf_counter() - t0
    refit: list[float] = []
    plain: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        (d,) = policy.suggest(1)
        (refit if d.rationale["refitted"] else plain).append(time.perf_counter() - t0)
        policy.ingest(observation(d.x_nm, d.y_nm, 2))
    return {
        "first_fit_s": round(cold, 3),
        "with_refit_s_median": round(float(np.median(refit)), 3),
        "without_refit_s_median": round(float(np.median(plain)), 3),
        "mean_s_refit_every_5": round(float(np.mean(refit + plain)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--fields", type=int, default=50)
    parser.add_argument("--policies", default=",".join(POLICY_NAMES))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    policies = args.policies.split(",")
    table = compare(policies, args.seeds, args.fields)
    at = headline_at(args.fields)
    found = {p: [r["found_after"][at] for r in t["per_seed"]] for p, t in table.items()}  # type: ignore[index]
    adaptive = {p: float(np.mean(v)) for p, v in found.items() if p not in ("raster", "random")}
    best = max(adaptive, key=adaptive.__getitem__) if adaptive else None
    raster = float(np.mean(found["raster"])) if "raster" in found else None
    ratio, interval = None, None
    if best and raster:
        ratio = round(adaptive[best] / raster, 2)
        interval = paired_ratio_interval(found[best], found["raster"])
    out = {
        "benchmark": "policies",
        **provenance(),
        "machine": machine(),
        "setup": f"MoS2 specimens 256 x 256 nm (seeds 0..{args.seeds - 1}), 512 x 512 fields of 10.24 nm, "
        "bundled ensemble on CPU; dkl's survey (512 px over the region) is not counted as a field; "
        "sd: sample standard deviation over seeds (ddof=1)",
        "planted_defects_found": table,
        f"ratio_best_adaptive_over_raster_at_{at}": ratio,
        f"ratio_best_adaptive_over_raster_at_{at}_ci95": interval,
        "ratio_interval": f"paired percentile bootstrap over the {args.seeds} seeds (10000 resamples; "
        "the best policy chosen once, on all seeds)",
        "best_adaptive": best,
        "decision_time_1000_observations_4096_candidates": {p: decision_time(p) for p in ("bayes", "dkl")},
        "goals": "best adaptive >= 2x raster at 30 fields; decisions < 0.5 s",
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()
