"""The run configuration: TOML, flags overriding it, unknown keys named."""

from __future__ import annotations

import pytest

from agent.config import ConfigError, load_config
from agent.experiment import open_instrument


def test_toml_is_read_and_flags_override_it(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'policy = "defects"\nsteps = 7\n[field]\npixels = 256\nfov_nm = 5.12\n'
        '[simulator]\nspecimen_seed = 4\n[policies]\nacquisition = "ei"\n[guard]\nmax_step_nm = 50.0\n'
    )
    config = load_config(path, {"steps": 9, "simulator.specimen_seed": None})
    assert (config.policy, config.steps, config.field.pixels, config.simulator.specimen_seed) == ("defects", 9, 256, 4)
    assert config.policy_options.acquisition == "ei" and config.guard.max_step_nm == 50.0


def test_what_toml_cannot_say_otherwise_is_taken_as_written(tmp_path):
    """Strict types, but paths are strings, field centres arrays, and a whole number is a float too."""
    path = tmp_path / "run.toml"
    path.write_text('record = "r/s"\n[field]\nfov_nm = 5\n[policies]\ncentres_nm = [[1, 2.5]]\n')
    config = load_config(path, {})
    assert (
        str(config.record) == "r/s" and config.field.fov_nm == 5.0 and config.policy_options.centres_nm == [(1.0, 2.5)]
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("stpes = 3\n", "unknown key 'stpes'"),
        ("[field]\npixel = 3\n", "unknown key 'field.pixel'"),
        ("[guard]\nmax_step = 3.0\n", "unknown key 'guard.max_step'"),
        ('policy = "greedy"\n', "policy"),
        ('instrument = "http://x"\n', "instrument"),
        ("steps = 0\n", "steps"),
        ("[field]\nfov_nm = nan\n", "fov_nm"),
        ("steps = \n", "cannot read"),
        ("steps = true\n", "steps: Input should be a valid integer"),  # (it ran one step)
        ('steps = "3"\n', "steps: Input should be a valid integer"),
        ("steps = 3.5\n", "steps: Input should be a valid integer"),
        ('keep_featureless = "yes"\n', "keep_featureless: Input should be a valid boolean"),
        ('[guard]\nallow_revisits = "on"\n', "guard.allow_revisits: Input should be a valid boolean"),
        ('[field]\npixels = "512"\n', "field.pixels: Input should be a valid integer"),
        ("[simulator]\nprobe_current_pa = 1e300\n", "simulator.probe_current_pa: Input should be less than"),
    ],
)
def test_bad_configuration_names_the_key(tmp_path, toml, message):
    path = tmp_path / "run.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path, {})


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[simulator.specimen]\nbogus = 1\n", r"unknown key 'simulator\.specimen\.bogus'"),
        ("[simulator.specimen]\nwidth_nm = -5\n", r"simulator\.specimen\.width_nm: Input should be greater than 0"),
        ("[simulator.specimen]\nseed = 3\n", r"simulator\.specimen: set the seed and lattice with"),
    ],
)
def test_specimen_fields_the_simulator_refuses_are_named_before_it_opens(tmp_path, toml, message):
    from agent.experiment import open_instrument

    path = tmp_path / "run.toml"
    path.write_text(toml)
    config = load_config(path, {})  # read: a tcp:// run or a replay never opens the simulator
    with pytest.raises(ConfigError, match=message):
        open_instrument(config)


def test_a_configuration_file_that_is_not_text_is_named(tmp_path):
    path = tmp_path / "run.toml"
    path.write_bytes(b"\x9e\x80 steps = 3\n")
    with pytest.raises(ConfigError, match=r"cannot read configuration .*run\.toml: 'utf-8' codec"):
        load_config(path, {})


def test_a_scalar_where_a_table_is_needed_is_a_config_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('policies = "bayes"\n')
    with pytest.raises(ConfigError, match=r"'policies' must be a table to set 'policies\.acquisition'"):
        load_config(path, {"policies.acquisition": "ei"})


def test_a_seed_beyond_64_bits_is_refused_at_start():
    with pytest.raises(ConfigError, match="seed"):
        load_config(None, {"seed": 2**64})


_LIMITS = (
    "[guard]\nstage_x_nm = { low = -100.0, high = 100.0 }\nstage_y_nm = { low = -100.0, high = 100.0 }\n"
    "fov_nm = { low = 0.5, high = 20.0 }\npixels = { low = 16, high = 1024 }\ndwell_us = { low = 0.1, high = 100.0 }\n"
)


def test_a_real_instrument_needs_the_probe_current_the_dose_is_counted_at(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('instrument = "tcp://127.0.0.1:5555"\n' + _LIMITS)
    with pytest.raises(ConfigError, match=r"missing: guard\.probe_current_pa"):
        load_config(path, {})
    path.write_text('instrument = "tcp://127.0.0.1:5555"\n' + _LIMITS + "probe_current_pa = 150.0\n")
    assert load_config(path, {}).guard.probe_current_pa == 150.0


def test_with_the_simulator_the_guard_counts_the_dose_of_the_simulators_beam(tmp_path):
    from agent.guard import Decision, Guard
    from drivers.base import ScanCommand
    from drivers.simulated import SimulatedDriver

    config = load_config(None, {"simulator.probe_current_pa": 200.0})
    driver = SimulatedDriver(probe_current_pa=config.simulator.probe_current_pa)
    guard = Guard(driver.capabilities(), config.guard)
    scan = ScanCommand(x_nm=0.0, y_nm=0.0, fov_nm=2.56, rows=128, cols=128, dwell_us=10.0)
    decision = Decision("scan", 0.0, 0.0, 2.56, 128, 128, 10.0)
    assert guard.frame_dose_e_per_a2(decision) == pytest.approx(driver._dose(scan), rel=1e-9)  # (what it delivers)
    mismatched = load_config(None, {"simulator.probe_current_pa": 200.0, "guard.probe_current_pa": 20.0})
    with pytest.raises(ConfigError, match="differs from the simulator's"):
        open_instrument(mismatched)


@pytest.mark.parametrize(
    ("recorded", "current_pa"),
    [
        ({"instrument": "tcp://127.0.0.1:5555", "guard": {"probe_current_pa": 150.0}}, 150.0),  # a real instrument
        ({"simulator": {"probe_current_pa": 200.0}, "guard": {"probe_current_pa": 200.0}}, 200.0),  # recorded now
        ({"simulator": {"probe_current_pa": 200.0}, "guard": {"probe_current_pa": 20.0}}, 20.0),  # before: as it ran
        ({"simulator": {"probe_current_pa": 200.0}}, 200.0),  # an imported session: the simulator's
    ],
)
def test_a_replay_counts_the_dose_at_the_current_its_session_was_recorded_with(recorded, current_pa):
    from agent.replay import recorded_config

    assert recorded_config({"config": recorded}, {}).guard.probe_current_pa == current_pa
