"""Run-config defaults live in one place and pyproject.toml mirrors them; errors list all."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from shared.config import RunConfig, load_scenario
from shared.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_run_config_mirrors_the_defaults():
    flwr_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert flwr_config == RunConfig().to_mapping()


def test_scenarios_are_valid_run_configs():
    for path in (ROOT / "simulations").glob("*.toml"):
        scenario = load_scenario(path)
        scenario.pop("num-sites", None)
        RunConfig.from_mapping(scenario, source=str(path))
        # the quality benchmark's per-budget tables (simulations/benchmarks/quality.py)
        for budget, extra in tomllib.loads(path.read_text()).get("per-epsilon", {}).items():
            RunConfig.from_mapping({**scenario, **extra, "epsilon": float(budget)},
                                   source=f"{path} [per-epsilon.{budget}]")


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
    from shared.cli import main

    # Execute: a digit-only string setting and a malformed number, both via --set
    rc = main(["simulate", "--set", "model-channels=16", "--set", "learning-rate=fast"])
    # Assert: only the number is refused (the run never starts), with the value and the fix
    err = capsys.readouterr().err
    assert rc == 2
    assert "learning-rate: must be a number, got 'fast'" in err
    assert "model-channels" not in err
