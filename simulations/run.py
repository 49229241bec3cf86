"""Run a simulated federation in this process (``fedaug simulate``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from client.app import app as client_app
from server.app import run_server
from server.strategy import FedAugStrategy
from shared import keys
from shared.config import RunConfig
from simulations.engine import InProcessGrid

__all__ = ["simulate", "DEFAULT_SCENARIO"]

DEFAULT_SCENARIO = Path(__file__).with_name("default.toml")
log = logging.getLogger("fedaug.simulation")


def simulate(run: RunConfig, *, num_sites: int, capture: list | None = None,
             progress: bool = True, node_overrides: dict[int, dict[str, Any]] | None = None,
             grid_hook: Any = None) -> FedAugStrategy:
    """Simulate ``num_sites`` sites on this machine with the real Client and Server apps.

    Site ``i`` trains on partition ``i`` of ``run.data`` and keeps its privacy ledger in
    ``OUT/sites/site-i``. ``node_overrides`` adds node config per site (e.g. a smaller
    ``epsilon-budget`` for one site).
    """
    node_configs = {
        1000 + i: {keys.NODE_PARTITION_ID: i, keys.NODE_NUM_PARTITIONS: num_sites,
                **(node_overrides or {}).get(i, {})}
        for i in range(num_sites)
    }
    grid = InProcessGrid(client_app, node_configs, run.to_mapping(), capture=capture,
                         progress=progress)
    if grid_hook is not None:
        grid_hook(grid)
    log.info("simulating %d sites on %s (%s, alpha=%s), %d rounds, epsilon budget %.2f per "
             "site", num_sites, run.data, run.partition, run.alpha, run.num_server_rounds,
             run.epsilon)
    return run_server(grid, run)
