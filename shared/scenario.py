"""Scenario files: run-config keys and per-budget recipe tables, read by ``fedaug simulate``,
the benchmarks and ``fedaug audit --dp`` (which audits a scenario's site)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedaug.config import RunConfig
from fedaug.errors import ConfigError

__all__ = ["load_scenario"]

def load_scenario(path: str | Path, overrides: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Read a scenario TOML file into one mapping of run-config keys (and ``num-sites``).

    Three layers, each over the one before: the ``[fedaug]`` table (or the whole file if it
    has none); the ``[per-epsilon.<budget>]`` table for the run's epsilon, if the file has
    one (the budget written as ``f"{epsilon:g}"``, e.g. ``[per-epsilon.1]``): what a recipe
    changes at that budget; then ``overrides`` (command-line flags and ``--set``). The
    run's epsilon is the one in ``overrides``, else the table's, else the default.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("Scenario file not found.", value=str(path),
                          fix="Pass an existing TOML file, e.g. simulations/default.toml.")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"Scenario file {path} is not valid TOML: {err}.",
                          fix="Fix the syntax; see simulations/default.toml.") from err
    table = dict(data.get("fedaug", data))
    per_budget = table.pop("per-epsilon", None) or data.get("per-epsilon", {})
    overrides = dict(overrides or {})
    epsilon = overrides.get("epsilon", table.get("epsilon", RunConfig.epsilon))
    try:
        key = f"{float(epsilon):g}"
    except (TypeError, ValueError):  # a bad epsilon: RunConfig.from_mapping names it
        key = None
    extra = per_budget.get(key, {}) if isinstance(per_budget, dict) else per_budget
    if not isinstance(extra, dict):
        raise ConfigError(f"Scenario file {path}: per-epsilon must hold one table of "
                          "run-config keys per budget.", value=extra,
                          fix="e.g. [per-epsilon.1] followed by warmup-size = 14")
    return {**table, **extra, **overrides}
