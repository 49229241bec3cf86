"""Who a site is, where its data and state live, and its privacy ledger, from its node config."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fedaug.config import NodeConfig, RunConfig
from fedaug.data import ImageDataset, load_image_source, partition
from fedaug.errors import ConfigError
from fedaug.privacy import BudgetPlanner, NoiseSource, PrivacyLedger
from fedaug.privacy.registry import (
    SpendingRegistry,
    data_fingerprint,
    default_registry_dir,
    source_fingerprint,
)

__all__ = ["SiteContext", "resolve_site", "load_site_data", "simulated_site_data",
           "open_ledger", "spent_epsilon", "check_fits"]


@dataclass(frozen=True)
class SiteContext:
    """A site's identity, data and privacy limits (all set by the site, not the server).

    Parameters
    ----------
    name : str
        The site's name (node config ``site-name``; ``site-<partition-id>`` in simulation).
    state_dir : Path
        Folder holding the privacy ledger and plans (node config ``state-dir``).
    data : str
        Data source (node config ``data-path``; the run's ``data`` in simulation).
    partition_id, num_partitions : int or None
        The simulated partition; ``None`` in a real deployment (the site uses all its data).
    epsilon_budget, delta : float
        The site's own privacy budget.
    registry_dir : Path
        Where the second record of its spending lives (outside the state folder).
    secure_noise : bool
        Whether its mechanisms draw from ChaCha20 (see :class:`~fedaug.privacy.NoiseSource`).
    labels : str
        Labels CSV of a DICOM folder ("" otherwise).
    """

    name: str
    state_dir: Path
    data: str
    partition_id: int | None
    num_partitions: int | None
    epsilon_budget: float
    delta: float
    registry_dir: Path
    secure_noise: bool = True
    labels: str = ""
    torch_threads: int = 0

    def noise_source(self) -> NoiseSource:
        """A fresh secret source for one mechanism call."""
        return NoiseSource(secure=self.secure_noise)


def resolve_site(node_config: dict[str, Any], run: RunConfig) -> SiteContext:
    """The site context from its node config (validated: unknown keys and bad values are a
    ConfigError before anything is read or sent).

    A deployed site must state its data, state folder, budget and delta; a simulated site
    (a partition of the simulation's data) takes budget and delta from the run config of
    the researcher who owns every simulated site.
    """
    node = NodeConfig.from_node_config(node_config)
    if node.simulated:
        name = node.site_name or f"site-{node.partition_id}"
        out = Path(run.out_dir)
        state = Path(node.state_dir) if node.state_dir else out / "sites" / name
        registry = Path(node.spending_registry) if node.spending_registry else out / "spending"
        return SiteContext(name=name, state_dir=state, data=run.data,
                           partition_id=node.partition_id,
                           num_partitions=node.num_partitions or 1,
                           epsilon_budget=node.epsilon_budget or run.epsilon,
                           delta=node.delta or run.delta, registry_dir=registry,
                           secure_noise=node.secure_noise, labels=run.labels,
                           torch_threads=node.torch_threads)
    state = Path(node.state_dir)
    registry = Path(node.spending_registry) if node.spending_registry else default_registry_dir()
    if registry.resolve() == state.resolve() or state.resolve() in registry.resolve().parents:
        raise ConfigError("The spending registry must live outside the site's state folder, "
                          "or a wiped state folder takes it along.", value=str(registry),
                          fix="Set spending-registry to another folder (default "
                          "~/.fedaug/spending).")
    return SiteContext(name=node.site_name or state.name or "site", state_dir=state,
                       data=node.data_path, partition_id=None, num_partitions=None,
                       epsilon_budget=node.epsilon_budget, delta=node.delta,
                       registry_dir=registry, secure_noise=node.secure_noise,
                       labels=node.labels, torch_threads=node.torch_threads)


@lru_cache(maxsize=4)
def _partitions(source: str, labels: str, size: int | None, num_sites: int, scheme: str,
                alpha: float, seed: int) -> tuple[ImageDataset, tuple[np.ndarray, ...]]:
    full = load_image_source(source, split="train", size=size, seed=seed, labels=labels)
    parts = partition(full.labels, num_sites, scheme=scheme, alpha=alpha, seed=seed)
    return full, tuple(parts)


def simulated_site_data(run: RunConfig, partition_id: int, num_partitions: int
                        ) -> ImageDataset:
    """The training data of simulated site ``partition_id`` of ``num_partitions`` (what the
    researcher who runs the simulation holds anyway)."""
    full, parts = _partitions(run.data, run.labels, run.image_size or None, num_partitions,
                              run.partition, run.alpha, run.seed)
    return full.subset(parts[partition_id])


def load_site_data(site: SiteContext, run: RunConfig) -> ImageDataset:
    """The site's training data: its partition in simulation, its whole source otherwise.

    In simulation every site process loads the same source and takes its own partition
    (cached per process, so 100 simulated sites keep one copy of the data).
    """
    if site.partition_id is None:
        return load_image_source(site.data, split="train", size=run.image_size or None,
                                 seed=run.seed, labels=site.labels)
    full, parts = _partitions(site.data, site.labels, run.image_size or None,
                              int(site.num_partitions or 1), run.partition, run.alpha, run.seed)
    return full.subset(parts[site.partition_id])


def open_ledger(site: SiteContext, data: ImageDataset) -> tuple[PrivacyLedger, BudgetPlanner]:
    """The site's ledger, held against the spending record of this very data set, and the
    planner every mechanism asks before it spends."""
    if site.partition_id is None and Path(site.data).exists():  # a deployed site's files
        fingerprint = source_fingerprint(site.data, site.labels)
    else:  # a simulated partition (or the built-in digits): its records
        fingerprint = data_fingerprint(data.images, data.labels)
    registry = SpendingRegistry(site.registry_dir, fingerprint)
    ledger = PrivacyLedger(site.state_dir, site=site.name, delta=site.delta, registry=registry)
    return ledger, BudgetPlanner(ledger, site.epsilon_budget)


def spent_epsilon(site: SiteContext) -> float:
    """Epsilon of the site's ledger as it stands (0 before its first spending)."""
    return PrivacyLedger(site.state_dir, site=site.name, delta=site.delta).epsilon()


def check_fits(site: SiteContext, data: ImageDataset, *, channels: int, num_classes: int) -> None:
    """Refuse, before anything is spent, data that cannot train the server's model.

    The check reads the data set's format (channels, declared classes), not its records, and
    the answer leaves the site only as this error.
    """
    have = data.image_shape[2]
    problems = []
    if have != channels:
        problems.append(f"its images have {have} channel(s), the model {channels}")
    if data.num_classes > num_classes:
        problems.append(f"it declares {data.num_classes} classes, the model {num_classes}")
    if problems:
        raise ConfigError(f"{site.name}: this site's data does not fit the federation's model: "
                          + "; ".join(problems) + ". Nothing was spent.",
                          value=site.data, fix="Point data-path at data of the federation's "
                          "image format and classes, or ask the server which it trains.")
