"""Who a site is and where its data and state live, from node config and run config."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fedaug import keys
from fedaug.config import RunConfig
from fedaug.data import ImageDataset, load_image_source, partition
from fedaug.errors import ConfigError

__all__ = ["SiteContext", "resolve_site", "load_site_data"]


@dataclass(frozen=True)
class SiteContext:
    """A site's identity, data and privacy limits (all set by the site, not the server).

    Parameters
    ----------
    name : str
        The site's name (node config ``site-name``; ``site-<partition-id>`` in simulation).
    state_dir : Path
        Folder holding the privacy ledger and plan (node config ``state-dir``).
    data : str
        Data source (node config ``data-path``; the run's ``data`` in simulation).
    partition_id, num_partitions : int or None
        The simulated partition; ``None`` in a real deployment (the site uses all its data).
    epsilon_budget, delta : float
        The site's own privacy budget.
    """

    name: str
    state_dir: Path
    data: str
    partition_id: int | None
    num_partitions: int | None
    epsilon_budget: float
    delta: float


def resolve_site(node_config: dict[str, Any], run: RunConfig) -> SiteContext:
    """Build the site context; simulation (partition-id) and deployment (data-path) both work."""
    pid = node_config.get(keys.NODE_PARTITION_ID)
    nparts = node_config.get(keys.NODE_NUM_PARTITIONS)
    simulated = pid is not None and keys.NODE_DATA_PATH not in node_config
    if simulated:
        name = str(node_config.get(keys.NODE_SITE_NAME, f"site-{int(pid)}"))
        state = node_config.get(keys.NODE_STATE_DIR, str(Path(run.out_dir) / "sites" / name))
        data = run.data
    else:
        missing = [k for k in (keys.NODE_DATA_PATH, keys.NODE_STATE_DIR) if k not in node_config]
        if missing:
            raise ConfigError(
                "This site's node config lacks " + ", ".join(missing) + ".",
                value=dict(node_config),
                fix="Start the SuperNode with --node-config \"data-path='/data/site.npz' "
                "state-dir='/var/lib/fedaug' epsilon-budget=10.0\" (see README, Deploy).",
            )
        data = str(node_config[keys.NODE_DATA_PATH])
        state = str(node_config[keys.NODE_STATE_DIR])
        name = str(node_config.get(keys.NODE_SITE_NAME, Path(state).name or "site"))
        pid, nparts = None, None
    budget = float(node_config.get(keys.NODE_EPSILON_BUDGET, run.epsilon))
    delta = float(node_config.get(keys.NODE_DELTA, run.delta))
    if not budget > 0 or not 0 < delta < 1:
        raise ConfigError("A site's epsilon-budget must be > 0 and its delta in (0, 1).",
                          value={"epsilon-budget": budget, "delta": delta},
                          fix="Set node config epsilon-budget (e.g. 10.0) and delta (e.g. 1e-5).")
    return SiteContext(
        name=name,
        state_dir=Path(state),
        data=data,
        partition_id=None if pid is None else int(pid),
        num_partitions=None if nparts is None else int(nparts),
        epsilon_budget=budget,
        delta=delta,
    )


@lru_cache(maxsize=4)
def _partitions(source: str, size: int | None, num_sites: int, scheme: str, alpha: float,
                seed: int) -> tuple[ImageDataset, tuple[np.ndarray, ...]]:
    full = load_image_source(source, split="train", size=size, seed=seed)
    parts = partition(full.labels, num_sites, scheme=scheme, alpha=alpha, seed=seed)
    return full, tuple(parts)


def load_site_data(site: SiteContext, run: RunConfig) -> ImageDataset:
    """The site's training data: its partition in simulation, its whole source otherwise.

    In simulation every site process loads the same source and takes its own partition
    (cached per process, so 100 simulated sites keep one copy of the data).
    """
    if site.partition_id is None:
        return load_image_source(site.data, split="train", size=run.image_size or None,
                                 seed=run.seed)
    full, parts = _partitions(site.data, run.image_size or None, int(site.num_partitions or 1),
                              run.partition,
                              run.alpha, run.seed)
    return full.subset(parts[site.partition_id])
