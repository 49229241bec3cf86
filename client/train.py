"""One site's round: release the count, plan the privacy spend, train with DP, record, reply."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedaug import keys
from fedaug.atomic import atomic_write_bytes, atomic_write_json
from fedaug.augment import BatchAugmenter, Policy
from fedaug.client.count import released_count
from fedaug.client.site import SiteContext, check_fits, load_site_data, open_ledger
from fedaug.config import RunConfig, TrainSettings
from fedaug.generator import GeneratorConfig, build_train_scheduler, build_unet, train_dp
from fedaug.generator.train import sample_rate_for
from fedaug.privacy import BudgetPlanner, PrivacyLedger

__all__ = ["RoundPlan", "RoundResult", "plan_round", "run_round", "images_to_tensor"]

log = logging.getLogger("fedaug.client")
PLAN_FILE = "privacy-plan.json"
OPTIMIZER_FILE = "optimizer.pt"
CHOICE_FILE = "policy-choice.json"


@dataclass(frozen=True)
class RoundPlan:
    """What this round may spend: ``steps`` at ``noise_multiplier`` and ``sample_rate``.

    ``count`` is the site's released (noisy) count: the rate, the steps and the expected
    batch size ``sample_rate * count`` derive from it, never from the exact count.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    count: float
    reason: str = ""

    @property
    def expected_batch_size(self) -> float:
        return max(self.sample_rate * self.count, 1.0)


@dataclass(frozen=True)
class RoundResult:
    """What leaves the site: parameters, the policy it used, metrics that are DP releases
    (or post-processings of them and of the site's own settings), and its status."""

    state_dict: dict[str, torch.Tensor]
    policy_json: str
    metrics: dict[str, float | int]
    status: str


def plan_round(site: SiteContext, ledger: PrivacyLedger, planner: BudgetPlanner,
               settings: TrainSettings, *, count: float, run_id: str, server_round: int,
               num_rounds: int) -> RoundPlan:
    """Decide sigma and steps so that the whole history stays within the site's budget.

    Sigma is fixed once per run for all the run's planned steps (from what is left of the
    budget, so a restarted site never plans as if nothing was spent) and kept in the site's
    state folder; a fixed ``noise-multiplier`` from the server is honoured, but the number of
    steps is then cut to what the budget allows.
    """
    q = sample_rate_for(count, settings.batch_size)
    per_round = settings.steps_per_round(q)
    plan_path = site.state_dir / PLAN_FILE
    sigma: float | None = settings.noise_multiplier or None
    if sigma is None:
        stored = _read_json(plan_path)
        if stored and stored.get("run") == run_id and stored.get("sample-rate") == q:
            sigma = float(stored["noise-multiplier"])
        else:
            remaining = max(1, num_rounds - server_round + 1) * per_round
            sigma = planner.noise_multiplier(sample_rate=q, steps=remaining)
            if sigma is None:
                return RoundPlan(0.0, q, 0, count, reason="budget exhausted")
            atomic_write_json(plan_path, {"run": run_id, "noise-multiplier": sigma,
                                          "sample-rate": q, "planned-steps": remaining,
                                          "budget": site.epsilon_budget, "delta": site.delta})
            log.info("%s: planned sigma=%.3f for %d steps at q=%.4f (budget eps=%.2f, spent "
                     "%.3f)", site.name, sigma, remaining, q, site.epsilon_budget,
                     planner.spent)
    steps = planner.max_steps(noise_multiplier=sigma, sample_rate=q, max_steps=per_round)
    if steps == 0:
        return RoundPlan(sigma, q, 0, count, reason="budget exhausted")
    reason = "" if steps == per_round else "steps cut to stay within budget"
    return RoundPlan(sigma, q, steps, count, reason=reason)


def _read_json(path: Any) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def run_round(*, site: SiteContext, run: RunConfig, settings: TrainSettings,
              gen_config: GeneratorConfig, global_state: dict[str, torch.Tensor],
              policy: Policy, run_id: str, server_round: int, num_rounds: int,
              device: str | torch.device = "cpu") -> RoundResult:
    """Train the global generator on this site's data for one round, within budget."""
    data = load_site_data(site, run)
    check_fits(site, data, channels=gen_config.channels, num_classes=gen_config.num_classes)
    ledger, planner = open_ledger(site, data)
    unet = build_unet(gen_config).to(device)
    unet.load_state_dict(global_state)
    count = released_count(site, ledger, planner, num_examples=len(data), run_id=run_id,
                           server_round=server_round)
    if count is None:
        return _decline(site, ledger, planner, unet, policy, server_round,
                        reason="budget exhausted")
    reply_policy = policy
    if settings.policy_search_epsilon > 0:
        reply_policy = _searched_policy(site, ledger, planner, data, policy, settings,
                                        run_id=run_id, server_round=server_round)
    plan = plan_round(site, ledger, planner, settings, count=count, run_id=run_id,
                      server_round=server_round, num_rounds=num_rounds)
    metrics_base: dict[str, float | int] = {
        keys.NUM_EXAMPLES: max(count, 1.0),  # a tiny site's noisy count can fall below 1
        keys.DELTA: site.delta,
        keys.BUDGET: site.epsilon_budget,
        keys.NOISE_MULTIPLIER: plan.noise_multiplier,
        keys.SAMPLE_RATE: plan.sample_rate,
    }
    if plan.steps == 0:
        return _decline(site, ledger, planner, unet, reply_policy, server_round,
                        reason=plan.reason, metrics=metrics_base)
    if plan.reason:
        log.warning("%s: round %d: %s (%d of %d).", site.name, server_round, plan.reason,
                    plan.steps, settings.steps_per_round(plan.sample_rate))
    augmenter = BatchAugmenter(policy) if settings.augment else None
    augment = None if augmenter is None else (lambda x, g: augmenter(x, generator=g))
    opt_path = site.state_dir / OPTIMIZER_FILE
    outcome = train_dp(
        unet,
        build_train_scheduler(gen_config),
        images_to_tensor(data.images).to(device),
        torch.from_numpy(data.labels).long().to(device),
        steps=plan.steps,
        sample_rate=plan.sample_rate,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=settings.max_grad_norm,
        learning_rate=settings.learning_rate,
        expected_batch_size=plan.expected_batch_size,
        noise=site.noise_source(),
        noise_multiplicity=settings.noise_multiplicity,
        noise_levels=settings.noise_levels,
        augment=augment,
        optimizer_state=_load_optimizer(opt_path, run_id),
        label_dropout=gen_config.label_dropout,
        null_label=gen_config.null_label,
    )
    # The spending is on disk before anything leaves the site.
    ledger.append(mechanism="dp-sgd", noise_multiplier=plan.noise_multiplier,
                  sample_rate=plan.sample_rate, steps=outcome.steps, run=run_id,
                  round=server_round, release="dp-sgd")
    _save_optimizer(opt_path, run_id, outcome.optimizer_state)
    log.debug("%s: round %d: %d steps, loss %.4f (stays at the site)", site.name, server_round,
              outcome.steps, outcome.loss)
    metrics = {**metrics_base, keys.STEPS: outcome.steps, keys.EPSILON: ledger.epsilon()}
    state = {k: v.detach().cpu() for k, v in unet.state_dict().items()}
    return RoundResult(state, reply_policy.to_json(), metrics, keys.STATUS_TRAINED)


def _decline(site: SiteContext, ledger: PrivacyLedger, planner: BudgetPlanner,
             unet: torch.nn.Module, policy: Policy, server_round: int, *, reason: str,
             metrics: dict[str, float | int] | None = None) -> RoundResult:
    """The reply of a site that spends nothing this round: the global model back unchanged."""
    log.warning("%s: declines round %d: %s (epsilon spent %.3f of %.3f).", site.name,
                server_round, reason, planner.spent, site.epsilon_budget)
    base = {keys.NUM_EXAMPLES: 0.0, keys.DELTA: site.delta, keys.BUDGET: site.epsilon_budget,
            keys.NOISE_MULTIPLIER: 0.0, keys.SAMPLE_RATE: 0.0, **(metrics or {})}
    metrics = {**base, keys.NUM_EXAMPLES: 0.0, keys.STEPS: 0, keys.EPSILON: ledger.epsilon()}
    return RoundResult(unet.state_dict(), policy.to_json(), metrics, keys.STATUS_EXHAUSTED)


def _searched_policy(site: SiteContext, ledger: PrivacyLedger, planner: BudgetPlanner,
                     data: Any, policy: Policy, settings: TrainSettings, *, run_id: str,
                     server_round: int) -> Policy:
    """The site's private policy choice for this run: made once (exponential mechanism,
    charged to the ledger before it leaves), then returned in every reply of the run."""
    from fedaug.client.policy_search import search_site_policy

    path = site.state_dir / CHOICE_FILE
    stored = _read_json(path)
    if stored and stored.get("run") == run_id:
        return Policy.from_json(stored["policy"])
    eps = settings.policy_search_epsilon
    if not planner.fits(pure=[eps]):
        log.warning("%s: skips policy search: epsilon %.2f would pass the budget.", site.name, eps)
        return policy
    index, candidates = search_site_policy(data.images, data.labels, policy,
                                           num_classes=data.num_classes, epsilon=eps,
                                           seed=settings.seed, noise=site.noise_source())
    ledger.append(mechanism="exponential", epsilon=eps, run=run_id, round=server_round,
                  release="policy-choice")
    atomic_write_json(path, {"run": run_id, "index": index,
                             "policy": candidates[index].to_json()})
    log.info("%s: private policy choice %d of %d (epsilon %.2f charged)", site.name, index,
             len(candidates), eps)
    return candidates[index]


def _load_optimizer(path: Any, run_id: str) -> dict | None:
    """The site's Adam state from its previous round of the same run (stays at the site)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError):
        return None
    return saved.get("state") if saved.get("run") == run_id else None


def _save_optimizer(path: Any, run_id: str, state: dict | None) -> None:
    if state is None:
        return
    buf = io.BytesIO()
    torch.save({"run": run_id, "state": state}, buf)
    atomic_write_bytes(path, buf.getvalue())
