"""FedAug strategy: FedAvg over generator parameters, policy merging, per-site accounting."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedaug import keys
from fedaug.augment import Policy, aggregate_policies
from fedaug.privacy import NoiseSource
from fedaug.server.aggregate import AGGREGATIONS, aggregate_arrays
from fedaug.server.central_dp import central_dp_mean
from fedaug.server.replies import check_train_reply
from fedaug.wire import cast_record, record_nbytes

__all__ = ["FedAugStrategy", "SiteRecord", "RoundSummary"]

log = logging.getLogger("fedaug.server")


@dataclass
class SiteRecord:
    """What the server knows of a site: only what it released (its noisy count, its
    epsilon) and its own settings (budget, delta). Every site that spent any budget on this
    model has one, warm-start-only sites included."""

    site: str
    node_id: int
    num_examples: float = 0.0
    epsilon: float = 0.0
    delta: float = 0.0
    budget: float = 0.0
    status: str = "selected"
    last_round: int = 0
    warm_start: bool = False

    def card(self) -> dict[str, Any]:
        return {"site": self.site, "num-examples": round(self.num_examples, 1),
                "num-examples-is": "noisy count (a DP release)", "epsilon": self.epsilon,
                "delta": self.delta, "budget": self.budget, "status": self.status,
                "last-round": self.last_round, "warm-start": self.warm_start}


@dataclass
class RoundSummary:
    """One round as the server saw it (for progress lines and the model card)."""

    server_round: int
    selected: int
    replied: int
    aggregated: int
    excluded: dict[str, str] = field(default_factory=dict)
    update_norm: float = float("nan")
    seconds: float = 0.0
    bytes_down_per_site: int = 0
    bytes_up_per_site: float = 0.0


class FedAugStrategy(FedAvg):
    """FedAvg for fedaug's generator, with policy merging and fault isolation.

    Parameters
    ----------
    policy : Policy
        The initial global augmentation policy, sent to sites each round.
    min_sites : int (default: 2)
        Fewest sites a round needs. Sites whose budget is exhausted are no longer selected;
        when fewer than ``min_sites`` remain the run ends cleanly with a message.
    fraction_train : float (default: 1.0)
        Fraction of eligible sites selected per round.
    aggregation : str (default: "mean")
        ``"mean"`` (weighted by ``num-examples``), or the robust ``"median"`` /
        ``"trimmed-mean"`` (coordinate-wise; trims 20% at each end) for untrusted federations.
    max_update_norm : float (default: 1000.0)
        Replies farther than this (L2 over all parameters) from the global model are excluded.
    ema_decay : float (default: 0.0)
        EMA of the global weights over rounds for the published model (0 = off). Post-
        processing: it costs no privacy.
    server_momentum : float (default: 0.0)
        FedAvgM: the server keeps ``m = beta m + (aggregate - global)`` over rounds and moves
        the global model by ``m`` instead of the round's update alone (0 = plain FedAvg).
        Post-processing of the sites' released parameters: it costs no privacy.
    on_round : callable, optional
        ``on_round(summary, published_arrays, strategy)`` after each aggregated round
        (the server app writes the checkpoint there).
    seed : int (default: 0)
        Seeds site selection.
    wait_for_sites_s : float (default: 0.0)
        How long to wait for enough sites to connect before ending the run.
    central_noise_multiplier : float (default: 0.0)
        Institution-level (central) DP at the server (see :mod:`fedaug.server.central_dp`):
        each site's update is clipped to ``central_clip_norm``, the sum gets Gaussian noise
        with this multiplier and is divided by ``central_denominator``; each round is
        recorded in ``central_ledger`` (0 = off).
    central_clip_norm : float (default: 1.0)
        L2 bound of one site's update under central DP.
    central_denominator : float (default: 2.0)
        The fixed expected number of sites per round that divides the noisy sum.
    central_ledger : PrivacyLedger, optional
        The server's own ledger for central DP releases.
    run_id : str
        Recorded in the central ledger.
    transfer_dtype : str (default: "float32")
        Parameters travel in this dtype both ways ("float16" halves the traffic); the
        server aggregates in float64 and keeps float32 weights.
    """

    def __init__(self, *, policy: Policy, min_sites: int = 2, fraction_train: float = 1.0,
                 aggregation: str = "mean", max_update_norm: float = 1000.0,
                 ema_decay: float = 0.0,
                 server_momentum: float = 0.0,
                 on_round: Callable[[RoundSummary, ArrayRecord, FedAugStrategy], None] | None = None,
                 seed: int = 0, wait_for_sites_s: float = 0.0,
                 transfer_dtype: str = "float32", central_noise_multiplier: float = 0.0,
                 central_clip_norm: float = 1.0, central_denominator: float = 2.0,
                 central_ledger: Any = None, run_id: str = "") -> None:
        super().__init__(fraction_train=fraction_train, fraction_evaluate=1.0,
                         min_train_nodes=min_sites, min_evaluate_nodes=0,
                         min_available_nodes=min_sites, weighted_by_key=keys.NUM_EXAMPLES,
                         arrayrecord_key=keys.ARRAYS, configrecord_key=keys.CONFIG)
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        self.policy = policy
        self.min_sites = min_sites
        self.aggregation = aggregation
        self.max_update_norm = max_update_norm
        self.ema_decay = ema_decay
        if not 0.0 <= server_momentum < 1.0:
            raise ValueError(f"server_momentum must lie in [0, 1), got {server_momentum!r}")
        self.server_momentum = server_momentum
        self.on_round = on_round
        self.wait_for_sites_s = wait_for_sites_s
        self.transfer_dtype = transfer_dtype
        self.central_noise_multiplier = central_noise_multiplier
        self.central_clip_norm = central_clip_norm
        self.central_denominator = float(central_denominator)
        self.central_ledger = central_ledger
        self.run_id = run_id
        self.round_offset = 0  # rounds completed before a restart (see resume_from)
        self._bytes_down = 0
        self.sites: dict[int, SiteRecord] = {}
        self.exhausted: set[int] = set()
        self.ended: str | None = None
        self.rounds: list[RoundSummary] = []
        self._rng = random.Random(seed)
        self._current: ArrayRecord | None = None
        self._ema: dict[str, np.ndarray] | None = None
        self._momentum: dict[str, np.ndarray] | None = None
        self.published: ArrayRecord | None = None
        #: class proportions from the warm-up's noised class counts (None without a warm start)
        self.class_prior: list[float] | None = None
        self.latest_raw: ArrayRecord | None = None
        self._t0 = 0.0
        self._selected = 0
        self._chosen: list[int] = []

    # -- selection ---------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Select eligible sites and send them the global model, policy and settings."""
        server_round += self.round_offset
        self._t0 = time.perf_counter()
        self._current = arrays
        if self.ended:  # Flower still calls every planned round: ask nobody
            self._chosen, self._selected = [], 0
            return []
        eligible = self._eligible(grid)
        if len(eligible) < self.min_sites:
            self.ended = (f"only {len(eligible)} site(s) with privacy budget left, fewer than "
                          f"min-sites={self.min_sites}; the run ends after round "
                          f"{server_round - 1}")
            log.warning("Ending the run: %s.", self.ended)
            return []
        size = max(self.min_sites, int(len(eligible) * self.fraction_train))
        chosen = sorted(self._rng.sample(eligible, min(size, len(eligible))))
        self._selected = len(chosen)
        self._chosen = chosen
        config[keys.SERVER_ROUND] = server_round
        config[keys.POLICY] = self.policy.to_json()
        wire = arrays if self.transfer_dtype == "float32" else cast_record(arrays,
                                                                           self.transfer_dtype)
        self._bytes_down = record_nbytes(wire)
        record = RecordDict({keys.ARRAYS: wire, keys.CONFIG: config})
        return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=n)
                for n in chosen]

    def wait_for_sites(self, grid: Grid) -> list[int]:
        """The connected sites, after waiting up to ``wait_for_sites_s`` for min-sites."""
        return self._eligible(grid)

    def _eligible(self, grid: Grid) -> list[int]:
        deadline = time.monotonic() + self.wait_for_sites_s
        while True:
            eligible = [n for n in grid.get_node_ids() if n not in self.exhausted]
            if len(eligible) >= self.min_sites or time.monotonic() >= deadline:
                return eligible
            time.sleep(1.0)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """No federated evaluation: quality is measured on the global generator."""
        return []

    # -- aggregation -------------------------------------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check each reply alone, exclude bad ones with a log line, aggregate the rest."""
        server_round += self.round_offset
        replies = list(replies)
        if self.ended and not self._chosen and not replies:
            return None, None  # a round after the run ended: nothing was asked
        summary = RoundSummary(server_round, self._selected, len(replies), 0,
                               bytes_down_per_site=self._bytes_down)
        up = [record_nbytes(m.content[keys.ARRAYS]) for m in replies
              if not m.has_error() and keys.ARRAYS in m.content.array_records]
        summary.bytes_up_per_site = float(np.mean(up)) if up else 0.0
        good: list[tuple[RecordDict, Policy, SiteRecord]] = []
        for msg in replies:
            node = msg.metadata.src_node_id
            name = self.sites[node].site if node in self.sites else f"node-{node}"
            if msg.has_error():
                summary.excluded[name] = f"site error: {msg.error.reason}"
                continue
            problem, policy = check_train_reply(msg.content, self._current,
                                                max_update_norm=self.max_update_norm)
            cfg = msg.content.config_records.get(keys.CONFIG, ConfigRecord())
            name = str(cfg.get(keys.SITE, name))
            if problem:
                summary.excluded[name] = problem
                continue
            metrics = msg.content[keys.METRICS]
            rec = self.sites.setdefault(node, SiteRecord(site=name, node_id=node))
            rec.site, rec.last_round = name, server_round
            rec.epsilon = float(metrics[keys.EPSILON])
            rec.delta = float(metrics[keys.DELTA])
            rec.budget = float(metrics.get(keys.BUDGET, 0.0))
            rec.status = str(cfg.get(keys.STATUS, keys.STATUS_TRAINED))
            if rec.status == keys.STATUS_EXHAUSTED:
                self.exhausted.add(node)
                summary.excluded[name] = "privacy budget exhausted (site declined)"
                continue
            rec.num_examples = float(metrics[keys.NUM_EXAMPLES])
            good.append((msg.content, policy, rec))
        answered = {m.metadata.src_node_id for m in replies if not m.has_error()}
        for node in self._chosen:
            if node not in answered and node in self.sites and \
                    self.sites[node].site not in summary.excluded:
                summary.excluded[self.sites[node].site] = "no reply this round (died or timed out)"
        for name, why in summary.excluded.items():
            log.warning("Round %d: excluding %s from aggregation: %s", server_round, name, why)
        remaining = [n for n in self.sites if n not in self.exhausted]
        if self.exhausted and len(remaining) < self.min_sites and not self.ended:
            self.ended = (f"only {len(remaining)} site(s) with privacy budget left, fewer than "
                          f"min-sites={self.min_sites}; the run ends after round {server_round}")
            log.warning("Ending the run: %s.", self.ended)
        if 0 < len(good) < self.min_sites:  # never publish fewer sites than promised
            if not self.ended:
                why = "; ".join(f"{n}: {r}" for n, r in summary.excluded.items()) or "none"
                self.ended = (f"round {server_round} had {len(good)} usable update(s), fewer "
                              f"than min-sites={self.min_sites} (left out: {why}); it was not "
                              "aggregated and the run ends")
                log.warning("Ending the run: %s.", self.ended)
            good = []
        summary.aggregated = len(good)
        if not good:
            summary.seconds = time.perf_counter() - self._t0
            self.rounds.append(summary)
            return None, None
        records = [c[keys.ARRAYS] for c, _, _ in good]
        weights = [float(r.num_examples) for _, _, r in good]
        if self.central_noise_multiplier > 0:
            arrays = self._central_dp_aggregate(records, server_round)
        else:
            arrays = aggregate_arrays(records, weights, rule=self.aggregation)
        arrays = self._apply_momentum(arrays)
        metrics = MetricRecord({keys.NUM_EXAMPLES: float(sum(weights))})
        self.policy = aggregate_policies([p for _, p, _ in good], weights)
        summary.update_norm = _distance(arrays, self._current)
        self.latest_raw = arrays
        published = self.published = self._update_ema(arrays)
        summary.seconds = time.perf_counter() - self._t0
        self.rounds.append(summary)
        if self.on_round is not None:
            self.on_round(summary, published, self)
        return arrays, metrics

    def _central_dp_aggregate(self, records: list[ArrayRecord], server_round: int
                              ) -> ArrayRecord:
        """Institution-level DP (see :mod:`fedaug.server.central_dp`), recorded in the
        server's ledger before the model is published."""
        arrays = central_dp_mean(records, self._current, clip_norm=self.central_clip_norm,
                                 noise_multiplier=self.central_noise_multiplier,
                                 denominator=self.central_denominator, noise=NoiseSource())
        if self.central_ledger is not None:
            self.central_ledger.append(mechanism="gaussian",
                                       noise_multiplier=self.central_noise_multiplier,
                                       sample_rate=1.0, steps=1, run=self.run_id,
                                       round=server_round, release="central-update")
        return arrays

    def _apply_momentum(self, arrays: ArrayRecord) -> ArrayRecord:
        """The global model after this round: the aggregate itself, or (FedAvgM) the
        current global model moved by the momentum of the aggregates' updates."""
        if self.server_momentum <= 0 or self._current is None:
            return arrays
        beta, moved = self.server_momentum, {}
        momentum = self._momentum or {}
        for name in arrays.keys():
            new = arrays[name].numpy()
            if not np.issubdtype(new.dtype, np.floating):
                moved[name] = Array(new)
                continue
            current = self._current[name].numpy().astype(np.float64)
            m = beta * momentum.get(name, 0.0) + (new.astype(np.float64) - current)
            momentum[name] = m
            moved[name] = Array((current + m).astype(new.dtype))
        self._momentum = momentum
        return ArrayRecord(moved)

    def _update_ema(self, arrays: ArrayRecord) -> ArrayRecord:
        if self.ema_decay <= 0:
            return arrays
        current = {k: v.numpy().astype(np.float64) for k, v in arrays.items()}
        if self._ema is None:
            self._ema = current
        else:
            d = self.ema_decay
            self._ema = {k: d * self._ema[k] + (1 - d) * v for k, v in current.items()}
        return ArrayRecord({k: Array(v.astype(np.float32)) for k, v in self._ema.items()})

    def checkpoint(self) -> dict[str, Any]:
        """What a restarted server needs to continue (no site data, only what sites sent)."""
        return {
            "run-id": self.run_id,
            "rounds-done": self.round_offset + sum(1 for r in self.rounds if r.aggregated),
            "policy": self.policy.to_json(),
            "sites": {str(n): vars(r) for n, r in self.sites.items()},
            "exhausted": sorted(self.exhausted),
            "ema": self._ema,
            "momentum": self._momentum,
            "class-prior": self.class_prior,
        }

    def resume_from(self, state: dict[str, Any]) -> None:
        """Continue after a restart from :meth:`checkpoint`'s output."""
        self.round_offset = int(state["rounds-done"])
        self.policy = Policy.from_json(state["policy"])
        self.sites = {int(n): SiteRecord(**r) for n, r in state["sites"].items()}
        self.exhausted = {int(n) for n in state["exhausted"]}
        self._ema = state.get("ema")
        self._momentum = state.get("momentum")
        self.class_prior = state.get("class-prior")

    def site_cards(self) -> list[dict[str, Any]]:
        """Per-site entries of the model card, sorted by site name."""
        return [r.card() for r in sorted(self.sites.values(), key=lambda r: r.site)]

    def record_warm_start(self, node: int, *, site: str, epsilon: float, delta: float,
                          budget: float, released: bool) -> None:
        """A site's warm-start reply: it spent budget on this model even if it never trains."""
        rec = self.sites.setdefault(node, SiteRecord(site=site, node_id=node))
        rec.site, rec.epsilon, rec.delta, rec.budget = site, epsilon, delta, budget
        rec.warm_start = released
        if rec.status == "selected":
            rec.status = "warm-start only" if released else "declined the warm start"


def _distance(arrays: ArrayRecord, reference: ArrayRecord | None) -> float:
    """L2 distance between two models (the round's aggregate update; post-processing)."""
    if reference is None:
        return float("nan")
    return float(np.sqrt(sum(
        float(np.sum((arrays[k].numpy().astype(np.float64)
                      - reference[k].numpy().astype(np.float64)) ** 2))
        for k in reference.keys())))
