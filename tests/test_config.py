"""Run-config defaults live in one place and pyproject.toml mirrors them; errors list all."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedaug.config import RunConfig
from fedaug.errors import ConfigError
from fedaug.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_run_config_mirrors_the_defaults():
    flwr_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert flwr_config == RunConfig().to_mapping()


def test_scenarios_are_valid_run_configs():
    paths = sorted((ROOT / "simulations").glob("*.toml"))
    assert ROOT / "simulations" / "default.toml" in paths  # the test cannot pass on nothing
    for path in paths:
        budgets = [None, *tomllib.loads(path.read_text()).get("per-epsilon", {})]
        for budget in budgets:  # the file's own epsilon, then each [per-epsilon.<budget>]
            scenario = load_scenario(path, None if budget is None else {"epsilon": budget})
            scenario.pop("num-sites", None)
            RunConfig.from_mapping(scenario, source=f"{path} at epsilon {budget}")


def test_scenario_layers_per_epsilon_table_then_overrides(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[fedaug]\nepsilon = 10.0\nwarmup-size = 0\nseed = 3\n\n'
                    '[per-epsilon.1]\nwarmup-size = 14\n\n[per-epsilon."0.5"]\nseed = 4\n')
    assert load_scenario(path)["warmup-size"] == 0
    assert load_scenario(path, {"epsilon": 1.0})["warmup-size"] == 14
    assert load_scenario(path, {"epsilon": "1"})["warmup-size"] == 14  # as --set gives it
    assert load_scenario(path, {"epsilon": 0.5}) == {"epsilon": 0.5, "warmup-size": 0, "seed": 4}
    assert load_scenario(path, {"epsilon": 1.0, "warmup-size": "7"})["warmup-size"] == "7"
    assert load_scenario(path, {"epsilon": "x"})["warmup-size"] == 0  # RunConfig names it
    path.write_text("[fedaug]\nepsilon = 1.0\n\n[per-epsilon]\n1 = 14\n")
    with pytest.raises(ConfigError, match="one table of run-config keys per budget"):
        load_scenario(path)


def test_bad_settings_are_all_listed():
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({"alpha": 0, "num-server-rounds": "x", "partition": "nope",
                                "bogus": 1}, source="test")
    msg = str(err.value)
    for part in ("alpha: must be > 0.0, got 0", "num-server-rounds: must be a whole number",
                 "partition: must be one of iid, dirichlet, quantity", "unknown key 'bogus'",
                 "4 problem(s)"):
        assert part in msg


def test_bad_model_channels_names_the_fix():
    with pytest.raises(ConfigError, match="model-channels must be comma-separated multiples of 4"):
        _ = RunConfig(model_channels="8,x").channels_tuple


def test_simulate_set_values_are_coerced_by_the_setting_they_name(capsys):
    # Prepare
    from fedaug.cli import main

    # Execute: a digit-only string setting and a malformed number, both via --set
    rc = main(["simulate", "--set", "model-channels=16", "--set", "learning-rate=fast"])
    # Assert: only the number is refused (the run never starts), with the value and the fix
    err = capsys.readouterr().err
    assert rc == 2
    assert "learning-rate: must be a number, got 'fast'" in err
    assert "model-channels" not in err
