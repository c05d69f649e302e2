"""Re-running the agent on a recorded session: strict (a regression test) or what-if (another policy).

Strict replay serves the recorded frames in order and compares every new decision with the recorded
one; with the same model, policy configuration and seed, nothing may differ.  What-if replay lets
another policy ask for any field and answers from the recorded image data where it can.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from agent.config import RunConfig
from agent.experiment import Experiment
from agent.policies import Region
from agent.recorder import SessionRecorder
from drivers.replay import Mode, ReplayDriver

#: Fields compared between a recorded and a new decision, and the tolerance on numbers (relative).
COMPARED = ("kind", "x_nm", "y_nm", "fov_nm", "rows", "cols", "dwell_us", "rotation_deg", "tilt_deg")
_TOLERANCE = 1e-6


def recorded_config(start: dict[str, Any] | None, overrides: dict[str, Any]) -> RunConfig:
    """The configuration a session was recorded with (defaults for an imported session), plus overrides.

    Raises
    ------
    agent.config.ConfigError
        When an override is invalid.
    """
    from agent.config import load_config

    data = dict((start or {}).get("config") or {})
    for key in ("record", "json", "instrument"):  # the replay writes its own outputs and is its own instrument
        data.pop(key, None)
    flat = {**_flatten(data), **{k: v for k, v in overrides.items() if v is not None}}
    return load_config(None, flat)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("specimen",):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif value is not None:
            out[f"{prefix}{key}"] = value
    return out


def compare_decisions(recorded: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Divergences between two decision logs, step by step: ``step``, ``recorded``, ``new``, ``why``."""
    out = []
    for i in range(max(len(recorded), len(new))):
        old = recorded[i] if i < len(recorded) else None
        now = new[i] if i < len(new) else None
        if old is None or now is None:
            why = "the recorded session has no decision here" if old is None else "the replay made no decision here"
            out.append({"step": i, "recorded": _brief(old), "new": _brief(now), "why": why})
            continue
        reasons = [r for name in COMPARED if (r := _differs(name, old.get(name), now.get(name)))]
        if reasons:
            rationale = _rationale_change(old.get("rationale") or {}, now.get("rationale") or {})
            out.append({"step": i, "recorded": _brief(old), "new": _brief(now), "why": "; ".join(reasons + rationale)})
    return out


def _differs(name: str, a: Any, b: Any) -> str | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if math.isclose(a, b, rel_tol=_TOLERANCE, abs_tol=_TOLERANCE):
            return None
        return f"{name} {a:g} -> {b:g}"
    return None if a == b else f"{name} {a!r} -> {b!r}"


def _rationale_change(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What the policy believed differently (the first few rationale entries that changed)."""
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return [f"rationale {k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:3]]


def _brief(d: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if d is None else {k: d.get(k) for k in ("kind", "x_nm", "y_nm", "fov_nm") if k in d}


def recorded_region(driver: ReplayDriver, config: RunConfig) -> Region | None:
    """The recorded region of the session (its start record), so a strict replay sees the same candidates."""
    region = (driver.start or {}).get("region_nm")
    if isinstance(region, list) and len(region) == 4:
        return Region(*map(float, region))
    return None


def data_region(driver: ReplayDriver, config: RunConfig) -> Region:
    """For what-if replay: the bounding box of recorded fields where a field of the configured size fits."""
    half = config.field.fov_nm / 2
    # (x, y, half width, half height): fov_nm is a frame's width; its height is rows x pixel size
    boxes = [
        (f.header.x_nm, f.header.y_nm, f.header.fov_nm / 2, f.header.pixel_size_nm * f.header.shape[0] / 2)
        for f in driver.frames
    ]
    x0 = min(x - w for x, _, w, _ in boxes) + half
    x1 = max(x + w for x, _, w, _ in boxes) - half
    y0 = min(y - h for _, y, _, h in boxes) + half
    y1 = max(y + h for _, y, _, h in boxes) - half
    if x0 > x1 or y0 > y1:
        raise ValueError(f"no recorded frame is large enough for a {config.field.fov_nm:g} nm field")
    return Region(x0, x1, y0, y1)


def has_no_recorded_run(start: dict[str, Any] | None) -> bool:
    """Whether a session's start record holds no run configuration: an imported one (or one without a start)."""
    return not (start or {}).get("config")


def visiting_recorded_fields(driver: ReplayDriver, config: RunConfig, region: Region) -> RunConfig:
    """``config`` with the candidates at the recorded frames' centres, revisits allowed: an imported session.

    It holds no decisions: its strict replay runs the agent over its frames, each served once in order.
    A grid over their bounding box held too few fields for frames that overlap (a drift series) or
    share a position (two detectors), and the replay stopped after the first.  Centres are brought
    inside ``region`` (a strict replay serves its frames wherever a scan asks).
    """
    centres = [
        (
            min(max(f.header.x_nm, region.x_min_nm), region.x_max_nm),
            min(max(f.header.y_nm, region.y_min_nm), region.y_max_nm),
        )
        for f in driver.frames
    ]
    options = config.policy_options.model_copy(update={"centres_nm": centres})
    guard = config.guard.model_copy(update={"allow_revisits": True})
    return config.model_copy(update={"policy_options": options, "guard": guard})


def _comparable(
    driver: ReplayDriver, recorded: list[dict[str, Any]], made: int, status: str, steps: int
) -> list[dict[str, Any]]:
    """The recorded decisions a strict replay can be held to.

    All of them, but for two cases where the recording holds decisions the replay was never meant to
    make: fewer steps asked for than the recording holds frames (a completed replay is compared with the
    first as many recorded decisions as it made), and a log cut short (the decisions recorded after its
    last frame, whose frames were lost in the cut, are left out).
    """
    if status == "interrupted" or (status == "completed" and steps < len(driver.frames) and made < len(recorded)):
        return recorded[:made]  # (stopped by an operator: held to the decisions it made, no others)
    if driver.problem is None and any(r.get("type") == "stop" for r in driver.records):
        return recorded
    last_frame = max((i for i, r in enumerate(driver.records) if r.get("type") == "frame"), default=-1)
    kept = {id(r) for r in driver.records[:last_frame]}
    return [r for r in recorded if id(r) in kept]


def replay(
    directory: Path,
    config: RunConfig,
    mode: Mode,
    speed: float | None = None,
    record: Path | None = None,
    live: bool = False,
) -> dict[str, Any]:
    """Replay ``directory`` with ``config``.

    Returns the run summary, the driver's report and, for a strict replay, the divergences from the
    recorded decisions.
    """
    driver = ReplayDriver(directory, mode=mode, speed=speed)
    recorded = [r for r in driver.records if r.get("type") == "decision"]
    # The recorded region gives the same candidate grid as the recorded run, so a what-if policy's
    # candidates coincide with the recorded fields; an imported session has none: its data's bounding box.
    region = recorded_region(driver, config) or data_region(driver, config)
    if mode == "strict" and has_no_recorded_run(driver.start):
        config = visiting_recorded_fields(driver, config, region)
    recorder = SessionRecorder(record, keep_decisions=True)
    # what-if: fields without data are expected refusals, not failures that should end the run
    max_failures = 20 if mode == "strict" else 10_000
    try:
        experiment = Experiment(config, live=live, driver=driver, region=region, max_failures=max_failures,
                                recorder=recorder)  # fmt: skip
    except BaseException:  # (refused at the start: the replay's own record is closed, not left open)
        recorder.close()
        raise
    with experiment:
        state = experiment.run()
        summary = experiment.summary
        model_sha = experiment.segmenter.manifest.onnx_sha256
    report: dict[str, Any] = {"summary": summary, "replay": driver.report, "status": state.status}
    requested = driver.stats["served"] + driver.stats["refused_no_data"]
    report["replay"]["served_fraction"] = round(driver.stats["served"] / requested, 4) if requested else None
    if mode == "strict":
        compared = _comparable(driver, recorded, len(recorder.decisions), state.status, config.steps)
        divergences = compare_decisions(compared, recorder.decisions) if compared else []
        recorded_sha = ((driver.start or {}).get("model") or {}).get("sha256")
        report["divergences"] = divergences
        report["recorded_decisions"] = len(compared)
        report["recorded_decisions_not_replayed"] = len(recorded) - len(compared)
        report["model_matches_recording"] = recorded_sha in (None, model_sha)
    return report
