"""Run a simulated federation in this process (``fedaug simulate``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from fedaug import keys
from fedaug.client.app import app as client_app
from fedaug.config import RunConfig
from fedaug.server.app import run_server
from fedaug.server.strategy import FedAugStrategy
from fedaug.simulations.engine import InProcessGrid

__all__ = ["simulate"]

log = logging.getLogger("fedaug.simulation")


def simulate(run: RunConfig, *, num_sites: int, capture: list | None = None,
             progress: bool = True, node_overrides: dict[int, dict[str, Any]] | None = None,
             grid_hook: Any = None, audit: bool = True) -> FedAugStrategy:
    """Simulate ``num_sites`` sites on this machine with the real Client and Server apps.

    Site ``i`` trains on partition ``i`` of ``run.data`` and keeps its privacy ledger in
    ``OUT/sites/site-i``. ``node_overrides`` adds node config per site (e.g. a smaller
    ``epsilon-budget`` for one site). With ``audit`` the model card gets a privacy audit
    (memorization rate, membership-inference AUC) against the data's test split.
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
    strategy = run_server(grid, run)
    if audit and strategy.rounds and (Path(run.out_dir) / "global").is_dir():
        _audit_into_card(run)
    return strategy


def _audit_into_card(run: RunConfig) -> None:
    """In simulation the researcher holds all the data: audit the global generator against
    the sites' training records (members) and the test split (never trained on)."""
    from fedaug.data import load_image_source
    from fedaug.errors import FedaugError
    from fedaug.evaluate.report import privacy_audit
    from fedaug.generator.card import update_model_card

    try:
        train = load_image_source(run.data, split="train", size=run.image_size or None,
                                  seed=run.seed, labels=run.labels)
        test = load_image_source(run.data, split="test", size=run.image_size or None,
                                 seed=run.seed, labels=run.labels)
    except FedaugError as err:  # e.g. an image folder without a test split
        log.warning("privacy audit skipped: %s", err)
        return
    result = privacy_audit(Path(run.out_dir) / "global", train, test, steps=run.sample_steps,
                           seed=run.seed, num_samples=min(500, 50 * train.num_classes),
                           progress=sys.stderr.isatty())
    update_model_card(Path(run.out_dir) / "global", {"privacy-audit": result})
    log.info("privacy audit: memorization rate %.3f, membership-inference AUC %.3f",
             result["memorization-rate"], result["membership-inference-auc"])
