"""An experiment assembled from a :class:`~agent.config.RunConfig`.

Instrument, perception, policy, guard, recorder and loop, with the session's start and summary records.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.config import ConfigError, RunConfig, check_specimen_fields
from agent.guard import Guard, half_extent_nm, intersect, limits_beyond_instrument
from agent.live import LiveView
from agent.loop import Loop
from agent.perception import Perception
from agent.policies import AcquisitionConfig, FieldTemplate, Policy, PolicyContext, Region, ScoreWeights, make_policy
from agent.recorder import SessionRecorder, claim_session_dir
from agent.reward import Reward
from agent.run_state import LoopConfig, RunState
from agent.summary import run_summary
from drivers.base import Capabilities, Driver, Range
from drivers.recording import RecordingError
from drivers.security import CurveClientKeys
from models.segmenter import Segmenter

logger = logging.getLogger(__name__)


def open_instrument(config: RunConfig, curve: CurveClientKeys | None = None) -> Driver:
    """The simulated instrument, or a connection to an instrument server (with CURVE keys when it needs them).

    Raises
    ------
    ConfigError
        CURVE keys for the in-process simulator, which has no connection to protect.
    Disconnected
        No server answered (without keys, the message says a CURVE server would not).
    """
    if config.instrument == "sim":
        if curve is not None:
            raise ConfigError("CURVE keys (--client-key, --server-public) are for a tcp:// instrument, not 'sim'")
        from drivers.simulated import SimulatedDriver

        sim = config.simulator
        if config.guard.probe_current_pa != sim.probe_current_pa:
            raise ConfigError(
                f"guard.probe_current_pa={config.guard.probe_current_pa:g} differs from the simulator's "
                f"simulator.probe_current_pa={sim.probe_current_pa:g}: the guard would count the dose of another "
                "beam (leave guard.probe_current_pa out to take the simulator's)"
            )
        check_specimen_fields(sim)
        return SimulatedDriver(
            specimen_seed=sim.specimen_seed,
            lattice=sim.lattice,
            noise_seed=config.seed,
            probe_current_pa=sim.probe_current_pa,
            specimen_config=sim.specimen,
        )
    from agent.connect import connect_remote

    return connect_remote(config.instrument, curve, heartbeat_s=config.heartbeat_s)


def field_region(cap: Capabilities, config: RunConfig) -> Region:
    """Where field centres may lie.

    The stage range (narrowed by the guard's stage limits and the configured region), less half a field
    (of the configured rotation: a rotated field reaches further) so every field stays within it.

    Raises
    ------
    ValueError
        When nothing is left.
    """
    pixels = config.field.pixels
    margin = max(half_extent_nm(config.field.fov_nm, pixels, pixels, config.field.rotation_deg)) + 1e-3

    def side(stage: Range | None, wanted: Range | None, axis: str) -> tuple[float, float]:
        if stage is None:
            raise ValueError(f"the instrument reports no stage {axis} range")
        low, high = stage.low + margin, stage.high - margin
        if wanted is not None:
            low, high = max(low, wanted.low), min(high, wanted.high)
        if low > high:
            raise ValueError(f"no room for a {config.field.fov_nm:g} nm field along {axis} in the allowed region")
        return low, high

    x0, x1 = side(intersect(cap.stage_x_nm, config.guard.stage_x_nm), config.region_x_nm, "x")
    y0, y1 = side(intersect(cap.stage_y_nm, config.guard.stage_y_nm), config.region_y_nm, "y")
    return Region(x0, x1, y0, y1)


def _template(config: RunConfig) -> FieldTemplate:
    """The field every scan of the run uses (``[field]``)."""
    f = config.field
    return FieldTemplate(f.fov_nm, f.pixels, f.dwell_us, f.rotation_deg)


def _context(config: RunConfig, region: Region) -> PolicyContext:
    o = config.policy_options
    template = _template(config)
    centres = None if o.centres_nm is None else tuple(o.centres_nm)
    return PolicyContext(region, template, config.seed, o.spacing_nm, config.guard.max_step_nm, centres)


def build_fallback(config: RunConfig, region: Region) -> Policy | None:
    """The model-free policy that decides when the model fails on a frame: a raster of the same fields."""
    return None if config.policy == "raster" else make_policy("raster", _context(config, region))


def build_policy(config: RunConfig, region: Region, perception: Perception) -> Policy:
    """The configured policy (its reward expression is checked against the model's variables)."""
    o = config.policy_options
    context = _context(config, region)
    reward = Reward(o.reward, perception.variable_names())
    acquisition = AcquisitionConfig(
        o.acquisition, o.beta, travel_cost=o.travel_cost, revisit_penalty=o.revisit_penalty,
        refit_every=o.refit_every, initial_fields=o.initial_fields,
    )  # fmt: skip
    weights = ScoreWeights(o.length_nm, travel_cost=o.travel_cost, revisit_penalty=o.revisit_penalty)
    policy = make_policy(config.policy, context, reward, acquisition, weights)
    if config.policy == "dkl":
        policy.survey_pixels, policy.survey_dwell_us = o.survey_pixels, o.survey_dwell_us  # type: ignore[attr-defined]
    return policy


class Experiment:
    """Open everything a run needs; ``with Experiment(config) as e: e.run()`` closes it all.

    ``curve``: CURVE client keys for a ``tcp://`` instrument whose server requires them.
    """

    def __init__(
        self,
        config: RunConfig,
        live: bool = False,
        segmenter: Segmenter | None = None,
        driver: Driver | None = None,
        region: Region | None = None,
        max_failures: int = 20,
        recorder: SessionRecorder | None = None,
        curve: CurveClientKeys | None = None,
    ) -> None:
        self.config = config
        self.segmenter = segmenter or Segmenter(config.model, config.providers)
        self.perception = Perception(
            self.segmenter,
            config.dedup_radius_nm,
            max_defect_uncertainty=config.max_defect_uncertainty,
            keep_featureless=config.keep_featureless,
        )
        # a driver handed over in process (a replay's) is this program's own; a connection must be told
        trust_recorded_fields = driver is not None or config.instrument_is_replay
        self.driver = driver or open_instrument(config, curve)
        try:
            cap = self.driver.capabilities()
            if cap.serves_recorded_fields and not trust_recorded_fields:
                raise ConfigError(
                    f"{config.instrument} says it is a strict replay (it serves recorded fields, whose readback and "
                    "age the agent would not check); if it is one, run with --instrument-is-replay "
                    "(instrument_is_replay = true); a microscope's bridge must never say so"
                )
            beyond = limits_beyond_instrument(config.guard, cap)
            if beyond:  # checked on the handshake alone: no command has been sent
                raise ConfigError("the configuration does not fit the instrument: " + "; ".join(beyond))
            self.region = region or field_region(cap, config)
            self.policy = build_policy(config, self.region, self.perception)
            self.guard = Guard(cap, config.guard)
            field = _template(config).at(*self.region.center_nm)
            problem = self.guard.field_problem(field)
            if problem:  # checked on the handshake alone: no command has been sent
                raise ConfigError(f"the configured [field] cannot be scanned here: {problem}")
            self.previous_session: dict[str, Any] | None = None
            self.record_dir = config.record
            if recorder is None and config.record is not None:
                self.record_dir, self.previous_session = claim_session_dir(config.record)
            self.recorder = recorder or SessionRecorder(self.record_dir)
        except BaseException:
            self.driver.close()
            raise
        loop_config = LoopConfig(
            config.steps, frame_timeout_s=config.frame_timeout_s, max_failures=max_failures,
            readback_tolerance_nm=config.readback_tolerance_nm, max_frame_age_s=config.max_frame_age_s,
            perception_timeout_s=config.perception_timeout_s, trust_recorded_fields=trust_recorded_fields,
        )  # fmt: skip
        self.loop = Loop(self.driver, self.perception, self.policy, self.guard, loop_config, self.recorder,
                         LiveView() if live else None, build_fallback(config, self.region))  # fmt: skip
        self.summary: dict[str, Any] = {}

    def run(self) -> RunState:
        """Write the start record, run the loop, write the summary record."""
        from agent.cli.run import versions

        m = self.segmenter.manifest
        self.recorder.write(
            "start",
            config=self.config.model_dump(mode="json", by_alias=True),
            model={"name": m.name, "sha256": m.onnx_sha256, "providers": self.segmenter.providers},
            versions=versions(),
            capabilities=self.driver.capabilities().model_dump(mode="json"),
            region_nm=[self.region.x_min_nm, self.region.x_max_nm, self.region.y_min_nm, self.region.y_max_nm],
            class_names=list(self.perception.class_names),
            previous_session=self.previous_session,
        )
        state = self.loop.run()
        self.summary = run_summary(self.loop, self.config.policy)
        catalog = self.perception.catalog
        defects = {"x_nm": catalog.x_nm, "y_nm": catalog.y_nm, "class_id": catalog.class_id, "step": catalog.first_step}
        try:
            self.recorder.write("summary", summary=self.summary, defects=defects)
        except RecordingError as exc:  # the run itself ended safely; say what could not be kept
            logger.error("the summary record could not be written: %s", exc)
        return state

    def close(self) -> None:
        """Close the recorder and the instrument connection (the connection even if the recorder fails)."""
        try:
            self.recorder.close()
        finally:
            self.driver.close()

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
