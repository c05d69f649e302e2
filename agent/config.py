"""The configuration of ``autoscope run``: a TOML file validated by pydantic, overridden by flags.

Unknown keys are rejected with the key named, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from agent.guard import CHECKED_LIMITS, GuardConfig
from drivers.base import Range

# strict: TOML says what type a value is, so `steps = true`, `steps = "3"` or `keep_featureless = "yes"` are
# mistakes to name, not values to coerce (they ran 1 step, 3 steps, and kept featureless frames)
_STRICT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=True)
_PATH = Annotated[Path, Strict(False)]  # (a path is written as a string)


class ConfigError(ValueError):
    """A configuration that cannot be used, naming the offending key."""


# Limits an agent must be given before it may drive a real instrument: it never learns where it may go
# from the instrument alone (the simulator's own limits stand in for them with ``instrument = "sim"``).
REQUIRED_LIMITS = CHECKED_LIMITS[:-1]  # all but tilt: a scan-only instrument has none


class FieldConfig(BaseModel):
    """The high-resolution field every scan uses."""

    model_config = _STRICT
    fov_nm: float = Field(10.24, gt=0.0, description="Field of view; 512 px at 0.02 nm/px by default.")
    pixels: int = Field(512, ge=16, le=4096)
    dwell_us: float = Field(10.0, gt=0.0)
    rotation_deg: float = Field(0.0, ge=-360.0, le=360.0)


class SimulatorConfig(BaseModel):
    """The simulated instrument used with ``instrument = "sim"``."""

    model_config = _STRICT
    specimen_seed: int = Field(0, ge=0)
    lattice: Literal["MoS2", "WS2", "graphene", "SrTiO3"] = "MoS2"
    probe_current_pa: float = Field(20.0, gt=0.0, le=1e4)  # (the simulator's own bound: named here, by its key)
    specimen: dict[str, Any] = Field(default_factory=dict, description="Extra SpecimenConfig fields.")


class PolicyConfig(BaseModel):
    """Options of the adaptive policies (each uses those that concern it)."""

    model_config = _STRICT
    # Defaults chosen on specimen seeds 100-102, which the policy benchmark (seeds 0-4) never uses: new
    # defects per field are heavy-tailed (a hot spot's centre holds a hundred, most fields a few), and the
    # GP fits their logarithm better; a small beta exploits the hot spots it finds within 20-50 fields.
    reward: str = Field("log1p(new_defects)", description="Reward expression of bayes and dkl (see agent.reward).")
    acquisition: Literal["ucb", "ei", "thompson"] = "ucb"
    beta: float = Field(0.5, ge=0.0, description="UCB exploration weight.")
    travel_cost: float = Field(0.02, ge=0.0)
    revisit_penalty: float = Field(1.0, ge=0.0)
    refit_every: int = Field(5, ge=1)
    initial_fields: int = Field(3, ge=1)
    length_nm: float = Field(
        25.0, gt=0.0, description="Smoothing length of uncertainty and defects (chosen on seeds 100-102, like beta)."
    )
    spacing_nm: float | None = Field(None, gt=0.0, description="Candidate pitch (the field of view if unset).")
    centres_nm: list[Annotated[tuple[float, float], Strict(False)]] | None = Field(
        None,
        min_length=1,
        description="Candidate field centres [[x, y], ...] in nm, in place of a grid over the region (a replay of "
        "an imported session visits its recorded positions so).",
    )
    survey_pixels: int = Field(512, ge=16, le=4096)
    survey_dwell_us: float = Field(2.0, gt=0.0)


class RunConfig(BaseModel):
    """Everything ``autoscope run`` needs."""

    model_config = _STRICT
    instrument: str = Field("sim", description="'sim' or a tcp://HOST:PORT instrument server.")
    instrument_is_replay: bool = Field(
        False,
        description="The tcp:// instrument is a strict replay ('autoscope instrument --replay DIR --replay-mode "
        "strict'): its frames are the recorded fields, not checked against the commanded ones.  Never for a "
        "microscope; without it, an instrument that claims to be a strict replay is refused.",
    )
    policy: Literal["raster", "random", "uncertainty", "defects", "bayes", "dkl"] = "bayes"
    steps: int = Field(20, ge=1, le=1_000_000)
    seed: int = Field(0, ge=0, le=2**63 - 1)  # (torch seeds are 64-bit)
    record: _PATH | None = None
    json_summary: _PATH | None = Field(None, alias="json")
    model: _PATH | None = None
    providers: str = "auto"
    region_x_nm: Range | None = Field(None, description="Where field centres may lie (default: the whole stage).")
    region_y_nm: Range | None = None
    dedup_radius_nm: float = Field(0.1, gt=0.0, description="Detections closer than this are one defect.")
    max_defect_uncertainty: float = Field(0.06, gt=0.0, description="Defects more uncertain (nats) are not counted.")
    keep_featureless: bool = Field(
        False, description="Locate columns in featureless frames too (models.input_check; by default they have none)."
    )
    frame_timeout_s: float = Field(30.0, gt=0.0)
    readback_tolerance_nm: float = Field(0.5, gt=0.0, description="Readback further from the command: safe hold.")
    max_frame_age_s: float = Field(60.0, gt=0.0, description="Older frames are skipped, never analysed.")
    perception_timeout_s: float = Field(60.0, gt=0.0, description="A model slower on one frame is hung: safe hold.")
    heartbeat_s: float = Field(
        1.0,
        ge=0.01,
        le=60.0,
        description="Heartbeat period to a tcp:// instrument (three missed: gone); keep it "
        "under a third of the server's dead-man time.",
    )
    field: FieldConfig = FieldConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    policy_options: PolicyConfig = Field(PolicyConfig(), alias="policies")
    guard: GuardConfig = GuardConfig()

    @field_validator("instrument")
    @classmethod
    def _instrument(cls, value: str) -> str:
        if value != "sim" and not value.startswith(("tcp://", "ipc://")):
            raise ValueError("must be 'sim' or an endpoint such as tcp://127.0.0.1:5555")
        return value

    @model_validator(mode="after")
    def _limits_for_real_instruments(self) -> RunConfig:
        missing = [f"guard.{name}" for name in REQUIRED_LIMITS if getattr(self.guard, name) is None]
        current_given = "probe_current_pa" in self.guard.model_fields_set
        if not current_given:  # the guard's dose is only as right as the current it is computed from
            missing.append("guard.probe_current_pa")
        if self.instrument != "sim" and missing:
            raise ValueError(
                f"driving {self.instrument} needs its limits configured; missing: {', '.join(missing)} "
                "(set them in the [guard] table, within what the instrument reports, and the probe current "
                "the instrument runs at)"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _simulators_current_for_the_guard(cls, data: Any) -> Any:
        """With the simulator, the guard counts the dose at the simulator's probe current unless given one.

        (Written into the configuration, so a session's record holds the current its guard used, and its
        replay uses that again.  A given one that differs from the simulator's is refused where the
        simulator is opened: :func:`agent.experiment.open_instrument`.)
        """
        if not isinstance(data, dict) or data.get("instrument", "sim") != "sim":
            return data
        guard, simulator = data.get("guard"), data.get("simulator")
        if not (guard is None or isinstance(guard, dict)) or "probe_current_pa" in (guard or {}):
            return data
        if isinstance(simulator, SimulatorConfig):
            current = simulator.probe_current_pa
        else:  # (a table, or nothing: the simulator's default)
            default = SimulatorConfig.model_fields["probe_current_pa"].default
            current = (simulator if isinstance(simulator, dict) else {}).get("probe_current_pa", default)
        return {**data, "guard": {**(guard or {}), "probe_current_pa": current}}


def load_config(path: Path | None, overrides: dict[str, Any]) -> RunConfig:
    """Read ``path`` (TOML) if given, apply ``overrides`` (dotted keys allowed: ``simulator.specimen_seed``).

    Raises
    ------
    ConfigError
        Unreadable TOML, unknown keys, or invalid values; the message names the key.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read configuration {path}: {exc}") from None
    for key, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = key.split(".")
        node = data
        for depth, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                where = ".".join(parents[: depth + 1])
                raise ConfigError(f"'{where}' must be a table to set '{key}' (it is {node!r})")
        node[leaf] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = [_named(e) for e in exc.errors()]
        source = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{source}: " + "; ".join(problems)) from None


def check_specimen_fields(simulator: SimulatorConfig) -> None:
    """Check the extra specimen fields as the simulator will take them.

    Called where the simulator is opened, not when a configuration is read: a tcp:// run or a replay
    never opens it, and must not be refused for fields it does not use.

    Raises
    ------
    ConfigError
        Naming each key (``simulator.specimen.KEY``) ``SpecimenConfig`` refuses.
    """
    from simulators import SpecimenConfig

    if "seed" in simulator.specimen or "lattice" in simulator.specimen:
        raise ConfigError(
            "invalid configuration: simulator.specimen: set the seed and lattice with simulator.specimen_seed "
            "and simulator.lattice"
        )
    try:
        SpecimenConfig(seed=simulator.specimen_seed, lattice=simulator.lattice, **simulator.specimen)
    except ValidationError as exc:
        problems = "; ".join(_named(e, "simulator", "specimen") for e in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from None


def _named(error: Any, *prefix: str) -> str:
    """One pydantic error as ``key.path: message`` (an unknown key as such)."""
    where = ".".join([*prefix, *(str(p) for p in error["loc"])])
    if error["type"] == "extra_forbidden":
        return f"unknown key '{where}'"
    message = str(error["msg"]).removeprefix("Value error, ")
    if not where or message.startswith(f"{where}.") or f"'{where}." in message:  # (it names the key itself)
        return message
    return f"{where}: {message}"
