"""FedAug strategy: FedAvg over generator parameters, policy merging, per-site accounting."""

from __future__ import annotations

import logging
import os
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
from fedaug.augment import Policy, merge_policies
from fedaug.errors import PolicyError
from fedaug.wire import cast_record, record_nbytes

__all__ = ["FedAugStrategy", "SiteRecord", "RoundSummary", "combine_policies"]

log = logging.getLogger("fedaug.server")
_REQUIRED_METRICS = (keys.NUM_EXAMPLES, keys.LOSS, keys.EPSILON, keys.DELTA)


@dataclass
class SiteRecord:
    """What the server knows of a site: only aggregate metrics it reported."""

    site: str
    node_id: int
    num_examples: int = 0
    epsilon: float = 0.0
    delta: float = 0.0
    budget: float = 0.0
    status: str = "selected"
    last_round: int = 0

    def card(self) -> dict[str, Any]:
        return {"site": self.site, "num-examples": self.num_examples, "epsilon": self.epsilon,
                "delta": self.delta, "budget": self.budget, "status": self.status,
                "last-round": self.last_round}


@dataclass
class RoundSummary:
    """One round as the server saw it (for progress lines and the model card)."""

    server_round: int
    selected: int
    replied: int
    aggregated: int
    excluded: dict[str, str] = field(default_factory=dict)
    loss: float = float("nan")
    seconds: float = 0.0
    bytes_down_per_site: int = 0
    bytes_up_per_site: float = 0.0


def combine_policies(policies: list[Policy], weights: list[float]) -> Policy:
    """The global policy: the example-weighted merge of the sites' policies, or, where they
    cannot be merged (e.g. different sampling kinds after a private policy search), the
    weighted vote: the policy with the most examples behind it."""
    try:
        return merge_policies(policies, weights)
    except PolicyError:
        votes: dict[str, float] = {}
        for p, w in zip(policies, weights, strict=True):
            votes[p.to_json()] = votes.get(p.to_json(), 0.0) + w
        best = max(votes.items(), key=lambda kv: kv[1])[0]
        log.info("site policies cannot be merged; weighted vote picks %s", best)
        return Policy.from_json(best)


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
    on_round : callable, optional
        ``on_round(summary, published_arrays, strategy)`` after each aggregated round
        (the server app writes the checkpoint there).
    seed : int (default: 0)
        Seeds site selection.
    wait_for_sites_s : float (default: 0.0)
        How long to wait for enough sites to connect before ending the run.
    central_noise_multiplier : float (default: 0.0)
        Institution-level (central) DP at the server: each site's update is clipped to
        ``central_clip_norm`` and Gaussian noise with this multiplier is added to the
        equal-weight mean; each round is recorded in ``central_ledger`` (0 = off).
    central_clip_norm : float (default: 1.0)
        L2 bound of one site's update under central DP.
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
                 on_round: Callable[[RoundSummary, ArrayRecord, FedAugStrategy], None] | None = None,
                 seed: int = 0, wait_for_sites_s: float = 0.0,
                 transfer_dtype: str = "float32", central_noise_multiplier: float = 0.0,
                 central_clip_norm: float = 1.0, central_ledger: Any = None,
                 run_id: str = "") -> None:
        super().__init__(fraction_train=fraction_train, fraction_evaluate=1.0,
                         min_train_nodes=min_sites, min_evaluate_nodes=0,
                         min_available_nodes=min_sites, weighted_by_key=keys.NUM_EXAMPLES,
                         arrayrecord_key=keys.ARRAYS, configrecord_key=keys.CONFIG)
        if aggregation not in ("mean", "median", "trimmed-mean"):
            raise ValueError(f"aggregation must be mean, median or trimmed-mean, got {aggregation!r}")
        self.policy = policy
        self.min_sites = min_sites
        self.aggregation = aggregation
        self.max_update_norm = max_update_norm
        self.ema_decay = ema_decay
        self.on_round = on_round
        self.wait_for_sites_s = wait_for_sites_s
        self.transfer_dtype = transfer_dtype
        self.central_noise_multiplier = central_noise_multiplier
        self.central_clip_norm = central_clip_norm
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
        self.published: ArrayRecord | None = None
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
        if self.ended:
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
            problem, policy = self._check_reply(msg.content)
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
            rec.status = str(cfg.get(keys.STATUS, "trained"))
            if rec.status == "budget-exhausted":
                self.exhausted.add(node)
                summary.excluded[name] = "privacy budget exhausted (site declined)"
                continue
            rec.num_examples = int(metrics[keys.NUM_EXAMPLES])
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
        summary.aggregated = len(good)
        if not good:
            summary.seconds = time.perf_counter() - self._t0
            self.rounds.append(summary)
            return None, None
        contents = [c for c, _, _ in good]
        weights = [float(r.num_examples) for _, _, r in good]
        if self.central_noise_multiplier > 0:
            arrays = self._central_dp_aggregate(contents, server_round)
        else:
            arrays = self._aggregate_arrays(contents, weights)
        metrics = self.train_metrics_aggr_fn(contents, keys.NUM_EXAMPLES)
        self.policy = combine_policies([p for _, p, _ in good], weights)
        summary.loss = float(metrics.get(keys.LOSS, float("nan")))
        self.latest_raw = arrays
        published = self.published = self._update_ema(arrays)
        summary.seconds = time.perf_counter() - self._t0
        self.rounds.append(summary)
        if self.on_round is not None:
            self.on_round(summary, published, self)
        return arrays, metrics

    def _check_reply(self, content: RecordDict) -> tuple[str | None, Policy | None]:
        """A reason to exclude this reply, or None; and its parsed policy."""
        if keys.ARRAYS not in content.array_records or len(content.array_records) != 1:
            return "expected exactly one ArrayRecord named 'arrays'", None
        if keys.METRICS not in content.metric_records:
            return "no MetricRecord named 'metrics'", None
        metrics = content[keys.METRICS]
        missing = [k for k in _REQUIRED_METRICS if k not in metrics]
        if missing:
            return f"metrics lack {missing}", None
        values = [metrics[k] for k in _REQUIRED_METRICS]
        if any(isinstance(v, list) or not np.isfinite(float(v)) for v in values):
            return "metrics are not finite scalars", None
        cfg = content.config_records.get(keys.CONFIG)
        if cfg is None or keys.POLICY not in cfg:
            return "no policy in the reply's config record", None
        try:
            policy = Policy.from_json(str(cfg[keys.POLICY]))
        except PolicyError as err:
            return f"malformed policy: {err}", None
        if cfg.get(keys.STATUS) == "budget-exhausted":
            return None, policy
        if int(metrics[keys.NUM_EXAMPLES]) <= 0:
            return f"num-examples must be > 0, got {metrics[keys.NUM_EXAMPLES]}", None
        reference = self._current
        arrays = content[keys.ARRAYS]
        if reference is not None:
            if set(arrays.keys()) != set(reference.keys()):
                extra = sorted(set(arrays.keys()) - set(reference.keys()))[:3]
                lacking = sorted(set(reference.keys()) - set(arrays.keys()))[:3]
                return f"parameter names differ (unexpected {extra}, missing {lacking})", None
            sq = 0.0
            for k, ref in reference.items():
                a, r = arrays[k].numpy(), ref.numpy()
                if a.shape != r.shape:
                    return f"parameter {k} has shape {a.shape}, expected {r.shape}", None
                if not np.all(np.isfinite(a)):
                    return f"parameter {k} holds NaN or Inf", None
                sq += float(np.sum((a.astype(np.float64) - r.astype(np.float64)) ** 2))
            if np.sqrt(sq) > self.max_update_norm:
                return (f"update norm {np.sqrt(sq):.3g} exceeds max-update-norm "
                        f"{self.max_update_norm:g}"), None
        return None, policy

    def _aggregate_arrays(self, contents: list[RecordDict], weights: list[float]) -> ArrayRecord:
        names = list(contents[0][keys.ARRAYS].keys())
        out: dict[str, Array] = {}
        w = np.asarray(weights, dtype=np.float64)
        w = w / w.sum()
        for name in names:
            stack = np.stack([c[keys.ARRAYS][name].numpy() for c in contents])
            if self.aggregation == "mean":
                agg = np.tensordot(w, stack.astype(np.float64), axes=1)
            elif self.aggregation == "median":
                agg = np.median(stack, axis=0)
            else:
                k = int(len(stack) * 0.2)
                srt = np.sort(stack, axis=0)
                agg = srt[k:len(stack) - k].mean(axis=0)
            out[name] = Array(np.asarray(agg, dtype=np.float32 if np.issubdtype(
                stack.dtype, np.floating) else stack.dtype))
        return ArrayRecord(out)

    def _central_dp_aggregate(self, contents: list[RecordDict], server_round: int
                              ) -> ArrayRecord:
        """Institution-level DP: clip each site's update to ``central_clip_norm`` (L2 over all
        parameters), average with equal weights, add N(0, (sigma * C / m)^2) to the mean.

        Adding or removing one whole site changes the mean by at most C / m, so each round is
        a Gaussian mechanism with noise multiplier sigma, recorded in the server's ledger.
        """
        ref = {k: v.numpy().astype(np.float64) for k, v in self._current.items()}
        m = len(contents)
        total = {k: np.zeros_like(v) for k, v in ref.items()}
        for c in contents:
            delta = {k: c[keys.ARRAYS][k].numpy().astype(np.float64) - ref[k] for k in ref}
            norm = float(np.sqrt(sum(float(np.sum(d * d)) for d in delta.values())))
            scale = min(1.0, self.central_clip_norm / max(norm, 1e-12))
            for k in ref:
                total[k] += delta[k] * scale
        std = self.central_noise_multiplier * self.central_clip_norm / m
        rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
        out = {}
        for k, v in ref.items():
            mean = total[k] / m
            if np.issubdtype(self._current[k].numpy().dtype, np.floating):
                mean = mean + rng.normal(0.0, std, size=mean.shape)
            out[k] = Array((v + mean).astype(self._current[k].numpy().dtype))
        if self.central_ledger is not None:
            self.central_ledger.append(mechanism="gaussian",
                                       noise_multiplier=self.central_noise_multiplier,
                                       sample_rate=1.0, steps=1, run=self.run_id,
                                       round=server_round)
        return ArrayRecord(out)

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
            "rounds-done": self.round_offset + sum(1 for r in self.rounds if r.aggregated),
            "policy": self.policy.to_json(),
            "sites": {str(n): vars(r) for n, r in self.sites.items()},
            "exhausted": sorted(self.exhausted),
            "ema": self._ema,
        }

    def resume_from(self, state: dict[str, Any]) -> None:
        """Continue after a restart from :meth:`checkpoint`'s output."""
        self.round_offset = int(state["rounds-done"])
        self.policy = Policy.from_json(state["policy"])
        self.sites = {int(n): SiteRecord(**r) for n, r in state["sites"].items()}
        self.exhausted = {int(n) for n in state["exhausted"]}
        self._ema = state.get("ema")

    def site_cards(self) -> list[dict[str, Any]]:
        """Per-site entries of the model card, sorted by site name."""
        return [r.card() for r in sorted(self.sites.values(), key=lambda r: r.site)]
