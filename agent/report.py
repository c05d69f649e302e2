"""``autoscope report``: a self-contained HTML page of a recorded session.

Specimen map (the visited fields numbered, the path, the defects found, over a mosaic of the frames or
the survey), the discovery curve, latency histograms, frames with their atoms, and the decision table
with each decision's rationale.  Figures are PNGs embedded as data URIs: the page needs no other file.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from drivers.base import Frame
from drivers.recording import read_session

_CLASS_COLOURS = ("#777777", "#35b7ff", "#ff3030", "#ffd000", "#a0ff60", "#ff70ff")


@dataclass
class Session:
    """The parts of a recorded session a report shows."""

    start: dict[str, Any]
    stop: dict[str, Any] | None
    summary: dict[str, Any] | None
    defects: dict[str, list[Any]] | None
    observations: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    refusals: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    frames: list[Frame]
    problem: str | None


def load(directory: Path) -> Session:
    """Read a session directory (a damaged log gives its valid prefix and says so)."""
    result = read_session(directory)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in result.records:
        by_type.setdefault(str(r.get("type")), []).append(r)
    summary_record = by_type["summary"][-1] if by_type.get("summary") else None
    return Session(
        start=(by_type.get("start") or [{}])[0],
        stop=by_type["stop"][-1] if by_type.get("stop") else None,
        summary=summary_record["summary"] if summary_record else None,
        defects=summary_record.get("defects") if summary_record else None,
        observations=by_type.get("observation", []),
        decisions=by_type.get("decision", []),
        refusals=by_type.get("refusal", []),
        errors=by_type.get("error", []),
        frames=result.frames,
        problem=result.problem,
    )


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _block_mean(image: np.ndarray, size: int) -> np.ndarray:
    """Shrink ``image`` to about ``size`` pixels a side by averaging blocks (no aliasing, less noise)."""
    k = max(1, min(image.shape) // size)
    rows, cols = image.shape[0] // k * k, image.shape[1] // k * k
    return image[:rows, :cols].reshape(rows // k, k, cols // k, k).mean(axis=(1, 3))


def specimen_map(s: Session) -> str:
    """Fields (numbered, with the path) and defects over the survey or a mosaic of the frames."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 8), constrained_layout=True)
    fields = [o for o in s.observations if o.get("atoms_resolved")]
    for f in s.frames:
        h = f.header
        half = h.fov_nm / 2
        thumb = _block_mean(f.image, 128 if h.fov_nm > 50 else 64)
        lo, hi = np.percentile(thumb, [1, 99])
        ax.imshow(thumb, cmap="gray", vmin=lo, vmax=hi, origin="upper", zorder=0 if h.fov_nm > 50 else 1,
                  extent=(h.x_nm - half, h.x_nm + half, h.y_nm + half, h.y_nm - half))  # fmt: skip
    xy = np.array([(o["x_nm"], o["y_nm"]) for o in fields]).reshape(-1, 2)
    if len(xy):
        ax.plot(xy[:, 0], xy[:, 1], "-", color="#00c0ff", lw=1, alpha=0.7, zorder=2)
        for i, o in enumerate(fields):
            half = o["fov_nm"] / 2
            ax.add_patch(plt.Rectangle((o["x_nm"] - half, o["y_nm"] - half), o["fov_nm"], o["fov_nm"],
                                       fill=False, ec="#00c0ff", lw=0.8, zorder=3))  # fmt: skip
            ax.annotate(str(i + 1), (o["x_nm"], o["y_nm"]), color="white", fontsize=7, ha="center", va="center",
                        zorder=4)  # fmt: skip
    if s.defects and s.defects["x_nm"]:
        names = s.start.get("class_names", [])
        cls = np.array(s.defects["class_id"])
        for c in np.unique(cls):
            sel = cls == c
            label = names[c] if c < len(names) else str(c)
            ax.scatter(np.array(s.defects["x_nm"])[sel], np.array(s.defects["y_nm"])[sel], s=6, zorder=5,
                       color=_CLASS_COLOURS[c % len(_CLASS_COLOURS)], label=f"{label} ({sel.sum()})")  # fmt: skip
        ax.legend(loc="upper right", fontsize=8)
    region = s.start.get("region_nm")
    if region:
        pad = 10
        ax.set_xlim(region[0] - pad, region[1] + pad)
        ax.set_ylim(region[3] + pad, region[2] - pad)  # y down, as in the frames
    ax.set_xlabel("x (nm)")
    ax.set_ylabel("y (nm)")
    ax.set_title("Specimen map: fields visited (numbered), path, distinct defects found")
    ax.set_aspect("equal")
    return _png(fig)


def discovery_curve(s: Session) -> str:
    """Distinct defects (and planted defects detected, for a simulator) against fields visited."""
    plt = _pyplot()
    fields = [o for o in s.observations if o.get("atoms_resolved")]
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    n = np.arange(1, len(fields) + 1)
    ax.plot(n, np.cumsum([o["new_defects"] for o in fields]), "o-", label="distinct defects detected")
    if fields and "true_new_defects" in fields[0]:
        ax.plot(n, np.cumsum([o.get("true_new_defects", 0) for o in fields]), "s--", label="planted defects detected")
    ax.set_xlabel("fields visited")
    ax.set_ylabel("defects")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Discovery curve")
    return _png(fig)


def latency_histograms(s: Session) -> str:
    """Histograms of the per-step stage latencies."""
    plt = _pyplot()
    stages: dict[str, list[float]] = {}
    for o in s.observations:
        for k, v in {
            **o.get("loop_ms", {}),
            **{f"perceive.{k}": v for k, v in o.get("timings_ms", {}).items()},
        }.items():
            stages.setdefault(k, []).append(v)
    shown = [k for k in ("frame_to_command", "perceive", "perceive.ensemble", "perceive.localize", "suggest", "send")
             if stages.get(k)]  # fmt: skip
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(3.2 * max(1, len(shown)), 3), constrained_layout=True)
    for ax, k in zip(np.atleast_1d(axes), shown, strict=False):
        v = np.array(stages[k])
        ax.hist(v, bins=20, color="#4080c0")
        ax.set_title(f"{k}\np50 {np.median(v):.1f} ms, p99 {np.percentile(v, 99):.1f} ms", fontsize=9)
        ax.set_xlabel("ms")
    return _png(fig)


def frame_overlays(s: Session, count: int = 6) -> list[str]:
    """The first ``count`` high-resolution frames with their atoms coloured by class (defects as squares)."""
    plt = _pyplot()
    names = s.start.get("class_names", [])
    by_id = {o["command_id"]: o for o in s.observations}
    out = []
    for f in [f for f in s.frames if by_id.get(f.header.command_id, {}).get("atoms_resolved")][:count]:
        o = by_id[f.header.command_id]
        fig, ax = plt.subplots(figsize=(4, 4), constrained_layout=True)
        lo, hi = np.percentile(f.image, [0.5, 99.5])
        ax.imshow(f.image, cmap="gray", vmin=lo, vmax=hi)
        a = o["atoms"]
        cls, defect = np.array(a["class_id"], dtype=int), np.array(a.get("defect", []), dtype=bool)
        row, col = np.array(a["row"]), np.array(a["col"])
        if len(defect) == len(cls) and len(cls):
            ax.scatter(col[~defect], row[~defect], s=2, c="#35b7ff", alpha=0.5)
            for c in np.unique(cls[defect]):
                sel = defect & (cls == c)
                ax.scatter(col[sel], row[sel], s=40, marker="s", facecolors="none", linewidths=1.2,
                           edgecolors=_CLASS_COLOURS[c % len(_CLASS_COLOURS)],
                           label=names[c] if c < len(names) else str(c))  # fmt: skip
            if defect.any():
                ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"step {o['step']} at ({o['x_nm']:.1f}, {o['y_nm']:.1f}) nm: "
                     f"{o['n_atoms']} atoms, {o['n_defects']} defects", fontsize=8)  # fmt: skip
        ax.axis("off")
        out.append(_png(fig))
    return out


def _rationale(r: dict[str, Any]) -> str:
    parts = []
    for k, v in r.items():
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def decision_table(s: Session) -> str:
    """HTML rows: each decision, its rationale, and what became of it."""
    refused = {(r.get("step"), r.get("reason")) for r in s.refusals}
    rows = []
    for d in s.decisions:
        why = next((reason for step, reason in refused if step == d["step"]), "")
        rows.append(
            f"<tr><td>{d['step']}</td><td>{d['x_nm']:.2f}</td><td>{d['y_nm']:.2f}</td><td>{d['fov_nm']:.3g}</td>"
            f"<td>{html.escape(_rationale(d.get('rationale') or {}))}</td><td>{html.escape(str(why or ''))}</td></tr>"
        )
    head = "<tr><th>step</th><th>x (nm)</th><th>y (nm)</th><th>fov (nm)</th><th>rationale</th><th>refused</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
td:nth-child(5),td:nth-child(6){text-align:left}.frames img{margin:4px}.note{color:#a00}
pre{background:#f4f4f4;padding:8px;font-size:12px;overflow:auto}
"""


def render(directory: Path) -> str:
    """The report page of the session in ``directory``."""
    s = load(directory)
    summary = s.summary or {}
    config = s.start.get("config", {})
    title = (
        f"autoscope session: {config.get('policy', '?')} on {s.start.get('capabilities', {}).get('instrument', '?')}"
    )
    stop = s.stop or {}
    facts = {
        "status": f"{stop.get('status', 'no stop record: the session was cut short')} {stop.get('reason', '')}",
        "frames": len(s.frames),
        "distinct defects found": summary.get("defects_found", "?"),
        "planted defects detected": summary.get(
            "true_defects_found",
            "n/a (not a simulator)" if s.summary else "n/a (no summary record: the session was cut)",
        ),
        "travel (nm)": summary.get("travel_nm", "?"),
        "refusals": summary.get("refusals", len(s.refusals)),
        "model": f"{s.start.get('model', {}).get('name')} sha256 {str(s.start.get('model', {}).get('sha256'))[:12]}...",
    }
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]  # fmt: skip
    if s.problem:
        parts.append(f"<p class='note'>The log is damaged: {html.escape(s.problem)}; showing its valid part.</p>")
    parts.append("<table>" + "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items()))
    parts.append("</table>")
    parts.append(f"<h2>Specimen map</h2><img alt='specimen map' src='{specimen_map(s)}'>")
    parts.append(f"<h2>Discovery curve</h2><img alt='discovery curve' src='{discovery_curve(s)}'>")
    parts.append(f"<h2>Latency</h2><img alt='latency histograms' src='{latency_histograms(s)}'>")
    overlays = "".join(f"<img alt='frame overlay' src='{src}'>" for src in frame_overlays(s))
    parts.append(f"<h2>Frames</h2><div class='frames'>{overlays}</div>")
    parts.append(f"<h2>Decisions</h2>{decision_table(s)}")
    latency = json.dumps(summary.get("latency_ms", {}), indent=1)
    parts.append(f"<h2>Latency by stage (ms)</h2><pre>{html.escape(latency)}</pre>")
    parts.append(f"<h2>Configuration</h2><pre>{html.escape(json.dumps(config, indent=1))}</pre></body></html>")
    return "".join(parts)
