"""The run configuration: TOML, flags overriding it, unknown keys named."""

from __future__ import annotations

import pytest

from agent.config import ConfigError, load_config


def test_toml_is_read_and_flags_override_it(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'policy = "defects"\nsteps = 7\n[field]\npixels = 256\nfov_nm = 5.12\n'
        '[simulator]\nspecimen_seed = 4\n[policies]\nacquisition = "ei"\n[guard]\nmax_step_nm = 50.0\n'
    )
    config = load_config(path, {"steps": 9, "simulator.specimen_seed": None})
    assert (config.policy, config.steps, config.field.pixels, config.simulator.specimen_seed) == ("defects", 9, 256, 4)
    assert config.policy_options.acquisition == "ei" and config.guard.max_step_nm == 50.0


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
    ],
)
def test_bad_configuration_names_the_key(tmp_path, toml, message):
    path = tmp_path / "run.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path, {})


def test_a_scalar_where_a_table_is_needed_is_a_config_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('policies = "bayes"\n')
    with pytest.raises(ConfigError, match=r"'policies' must be a table to set 'policies\.acquisition'"):
        load_config(path, {"policies.acquisition": "ei"})


def test_a_seed_beyond_64_bits_is_refused_at_start():
    with pytest.raises(ConfigError, match="seed"):
        load_config(None, {"seed": 2**64})
