"""SUMMARY.json: what a run did and found."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.loop import Loop


def run_summary(loop: Loop, policy: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary of a finished run.

    Keys: ``policy``, ``status``, ``reason``, ``steps``, ``fields`` (x_nm, y_nm, fov_nm of every scan
    sent), ``atoms_found``, ``featureless_frames`` (analysed frames with nothing above their noise, so no
    atoms), ``defects_found`` (distinct), ``latency_ms`` (p50/p99 per stage, ``total`` =
    frame to next command), ``refusals``, ``travel_nm``, ``dose``; ``true_defects_found`` when the
    instrument is a simulator that reports its ground truth.
    """
    s, g = loop.state, loop.guard
    latency = loop.timings.summary()
    if "frame_to_command" in latency:
        latency["total"] = latency["frame_to_command"]
    fields = [{"x_nm": x, "y_nm": y, "fov_nm": f} for x, y, f in s.fields]
    doses = g.doses_e_per_a2
    out: dict[str, Any] = {
        "policy": policy,
        "status": s.status,
        "reason": s.reason,
        "steps": s.steps_done,
        "fields": fields,
        "atoms_found": s.atoms_found,
        "featureless_frames": s.featureless_frames,
        "defects_found": len(loop.perception.catalog),
        "defects_found_by_class": _by_class(loop),
        "latency_ms": latency,
        "refusals": s.refusal_count,
        "refusal_reasons": s.refusals[-20:],
        "errors": s.errors,
        "travel_nm": round(s.travel_nm, 3),
        "dose": {
            "per_field_e_per_a2": [round(d, 3) for d in doses],
            "total_e_per_a2": round(sum(doses), 3),
            "budget_e_per_a2": g.config.dose_budget_e_per_a2,
        },
    }
    if loop.scorer.available:
        out.update(loop.scorer.summary())
    out.update(extra or {})
    return out


def _by_class(loop: Loop) -> dict[str, int]:
    names = loop.perception.class_names
    counts: dict[str, int] = {}
    for c in loop.perception.catalog.class_id:
        counts[names[c]] = counts.get(names[c], 0) + 1
    return counts
