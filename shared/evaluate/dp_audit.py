"""Empirical differential-privacy audit of a site's training: canaries in, one run, a
lower bound on epsilon out.

The accountant (:func:`fedaug.privacy.compose_epsilon`) gives an *upper* bound on what a
site's DP-SGD run can leak, assuming the code does what the analysis says. This module
checks the code: it runs the site's exact DP training configuration once on the site's
data with ``m`` canaries, each included independently with probability 1/2 (inclusion bits
from a seeded numpy generator the auditor keeps), lets an adversary score every canary
from what it observes, and turns the guesses into a lower bound on epsilon with the
one-run method of Steinke, Nasr & Jagielski (NeurIPS 2023; :mod:`fedaug.privacy.auditing`).
A lower bound above the accounted epsilon proves, at the stated confidence, that the
mechanism is not as private as it claims: a bug. A lower bound below it proves nothing
(one-run audits are loose, see docs/audit.md).

Three audits:

* :func:`audit_gradient_canaries`, white-box DP-SGD (audits the implementation): each
  canary is a :class:`~fedaug.generator.train.GradientCanaries` direction ``u_j`` (a random
  unit vector over the trainable parameters) with a gradient norm well above the clipping
  norm C; included canaries are Poisson-sampled, clipped and noised with the records by
  :func:`~fedaug.generator.train.train_dp` itself. The adversary sees every step's noisy
  gradient sum ``g_t`` (the ``observe`` hook) and scores ``sum_t <g_t, u_j>``. DP-SGD's
  guarantee is a guarantee on exactly this sequence of noisy sums (the model the site
  sends is a post-processing of it), so this adversary is at least as strong as the
  server, who only sees the site's update.
* :func:`audit_input_canaries`, black-box (audits what a user of the model could learn):
  canaries are out-of-distribution records (inverted images with a wrong label, or fixed
  random-noise images with random labels) added to the site's data; the adversary scores
  each by how much training lowered its diffusion loss (its loss under the initial model
  minus its loss under the trained one, averaged over fixed noise and timestep draws).
* :func:`audit_central_dp`, institution-level DP at the server: canary "sites" whose update
  is a fixed direction with norm above the clip norm go through the server's aggregator
  (``fedaug.server.central_dp.central_dp_mean``, passed in) round after round; the score
  is the inner product of each direction with the published model's change.

``runs`` > 1 repeats a run with fresh canaries and fresh secret noise and pools the
canaries: the runs are independent, each canary affects only its own run, so the pooled
mechanism is as private in each canary as one run is, and more canaries make the bound
tighter (the one-run theorem needs no more than that).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedaug.config import AUTO, RunConfig
from fedaug.data import ImageDataset, load_image_source, partition
from fedaug.errors import ConfigError, DataError
from fedaug.generator import GeneratorConfig, build_train_scheduler, build_unet, train_dp
from fedaug.generator.model import diffusion_target, forward_diffuse
from fedaug.generator.train import GradientCanaries, TrainOutcome, sample_rate_for
from fedaug.privacy import (
    NoiseSource,
    Spend,
    compose_epsilon,
    max_steps_within_budget,
    plan_noise_multiplier,
)
from fedaug.privacy.auditing import AuditResult, audit_from_scores, plot_score_distributions

__all__ = [
    "CANARY_KINDS",
    "DPAuditReport",
    "DPTrainingPlan",
    "GradientObservation",
    "InputObservation",
    "audit_central_dp",
    "audit_gradient_canaries",
    "audit_input_canaries",
    "loss_drop_scorer",
    "make_input_canaries",
    "plan_site_training",
    "site_release_history",
    "site_augmenter",
    "site_dataset",
    "site_generator",
    "sum_scorer",
]

#: Input-space canary kinds (see :func:`make_input_canaries`).
CANARY_KINDS = ("mislabelled", "noise")
#: Default gradient norm of a gradient canary, in units of the clipping norm C.
CANARY_NORM_FACTOR = 100.0
#: File names :meth:`DPAuditReport.write` uses.
REPORT_JSON, REPORT_PNG, REPORT_SCORES = "dp-audit.json", "dp-audit.png", "dp-audit-scores.npz"

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


# --- the training plan ---------------------------------------------------------------------


@dataclass(frozen=True)
class DPTrainingPlan:
    """The DP-SGD configuration a site runs: everything the audit replays.

    ``steps`` is the whole run's (all rounds), ``expected_batch_size`` what the noisy
    gradient sum is divided by (q times the site's count). ``budget`` is the epsilon the plan
    was derived for (None for an explicit plan); the accounted epsilon of the audited
    mechanism is :meth:`accounted_epsilon`, the RDP accountant on ``(sigma, q, steps)``.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    learning_rate: float
    expected_batch_size: float
    delta: float
    noise_multiplicity: int = 1
    noise_levels: str = "uniform"
    augment: bool = False
    rounds: int = 1
    budget: float | None = None
    label_dropout: float = 0.0
    null_label: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            problems.append(f"noise multiplier {self.noise_multiplier!r} (must be > 0)")
        if not 0 < self.sample_rate <= 1:
            problems.append(f"sample rate {self.sample_rate!r} (must be in (0, 1])")
        if self.steps < 1:
            problems.append(f"steps {self.steps!r} (must be >= 1)")
        if not self.max_grad_norm > 0:
            problems.append(f"clipping norm {self.max_grad_norm!r} (must be > 0)")
        if not 0 < self.delta < 1:
            problems.append(f"delta {self.delta!r} (must be in (0, 1))")
        if not self.expected_batch_size > 0:
            problems.append(f"expected batch size {self.expected_batch_size!r} (must be > 0)")
        if self.noise_multiplicity < 1:
            problems.append(f"noise multiplicity {self.noise_multiplicity!r} (must be >= 1)")
        if problems:
            raise ConfigError("Invalid DP training plan: " + "; ".join(problems) + ".",
                              fix="Give a positive noise multiplier, a sample rate in (0, 1], "
                              "at least one step and a delta in (0, 1).")

    def accounted_epsilon(self) -> float:
        """Epsilon of this DP-SGD run at ``delta`` (the site's RDP accountant)."""
        return compose_epsilon([(self.noise_multiplier, self.sample_rate, self.steps)],
                               delta=self.delta)

    def to_dict(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}


def site_release_history(run: RunConfig, *, epsilon: float | None = None,
                         delta: float | None = None) -> list[Spend]:
    """What a site spends before its first DP-SGD step of a run, by the site's own rules: the
    warm-start release (when the run has one) and the count release. Passed as ``history``
    to :func:`plan_site_training`, it reproduces the site's sigma exactly."""
    import tempfile

    from fedaug.privacy import BudgetPlanner, PrivacyLedger
    from fedaug.privacy.planner import count_noise_multiplier, warmup_noise_multipliers

    budget = float(run.epsilon if epsilon is None else epsilon)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = PrivacyLedger(tmp, site="audit", delta=float(run.delta if delta is None
                                                               else delta))
        planner = BudgetPlanner(ledger, budget)
        if run.warmup_noise_multiplier > 0 and run.warmup_steps != 0:  # auto is never 0
            sigmas = warmup_noise_multipliers(run.warmup_noise_multiplier, planner,
                                              spread=run.warmup_spread not in (0, AUTO))
            for sigma in sigmas or ():  # the class sums and, where asked, the spread
                if sigma is not None:
                    ledger.append(mechanism="gaussian", noise_multiplier=sigma,
                                  sample_rate=1.0, steps=1, run="audit", round=0)
        ledger.append(mechanism="gaussian", noise_multiplier=count_noise_multiplier(budget),
                      sample_rate=1.0, steps=1, run="audit", round=1)
        return ledger.history()


def plan_site_training(run: RunConfig, num_examples: int, *, epsilon: float | None = None,
                       delta: float | None = None, rounds: int | None = None,
                       noise_multiplier: float | None = None,
                       sample_rate: float | None = None, steps: int | None = None,
                       history: Sequence[Spend] = ()) -> DPTrainingPlan:
    """The DP-SGD plan of a site with ``num_examples`` records, derived as a site derives it.

    As ``fedaug.client.train.plan_round`` does at a run's first round: the Poisson rate
    ``q = min(1, batch-size / count)``, ``steps-per-round(q)`` steps in each of ``rounds``
    rounds, and the smallest sigma that keeps ``history`` plus all those steps within
    ``epsilon`` (RDP accountant). A fixed sigma (argument or run config
    ``noise-multiplier``) is honoured and the steps are cut to what the budget allows.
    Explicit ``sample_rate``/``steps`` override the derived ones.

    The site derives q from its *released* noisy count and also spends a little of its
    budget on that count (and on the warm-start release, if any): pass those spendings as
    ``history`` to reproduce its sigma exactly; without them the whole ``epsilon`` goes to
    DP-SGD (a slightly smaller sigma). Either way the audit compares against the accounted
    epsilon of the DP-SGD run alone, the mechanism it observes.

    Raises
    ------
    ConfigError
        When the budget cannot pay for a single step, or delta is not below 1 / count.
    """
    if num_examples < 1:
        raise DataError("The site has no records to audit.", value=num_examples,
                        fix="Pass the site's training data.")
    settings = run.train_settings()
    delta = float(run.delta if delta is None else delta)
    if delta >= 1.0 / num_examples:
        raise ConfigError(f"delta must be below 1 / (number of examples) = "
                          f"{1.0 / num_examples:.2g}, as a site requires.", value=delta,
                          fix="Pass a smaller --delta, e.g. 1e-5.")
    q = float(sample_rate) if sample_rate else sample_rate_for(num_examples, settings.batch_size)
    rounds = int(rounds or run.num_server_rounds)
    planned = int(steps) if steps else rounds * settings.steps_per_round(q)
    budget = float(run.epsilon if epsilon is None else epsilon)
    sigma = noise_multiplier or settings.noise_multiplier or None
    if sigma is None:
        sigma = plan_noise_multiplier(list(history), delta=delta, budget=budget, sample_rate=q,
                                      steps=planned)
        if sigma is None:
            raise ConfigError(f"An epsilon budget of {budget:g} cannot pay for {planned} steps "
                              f"at sample rate {q:.3g}.", value=budget,
                              fix="Give a larger --epsilon, fewer --rounds, or an explicit "
                              "--noise-multiplier.")
    elif not steps:
        planned = max_steps_within_budget(list(history), delta=delta, budget=budget,
                                          noise_multiplier=sigma, sample_rate=q,
                                          max_steps=planned)
        if planned == 0:
            raise ConfigError(f"Noise multiplier {sigma:g} does not fit one step in an epsilon "
                              f"budget of {budget:g}.", value=sigma,
                              fix="Give a larger noise multiplier or budget.")
    return DPTrainingPlan(
        noise_multiplier=float(sigma), sample_rate=q, steps=planned,
        max_grad_norm=settings.max_grad_norm, learning_rate=settings.learning_rate,
        expected_batch_size=max(q * num_examples, 1.0), delta=delta,
        noise_multiplicity=settings.noise_multiplicity, noise_levels=settings.noise_levels,
        augment=settings.augment, rounds=rounds, budget=None if (noise_multiplier and steps) else budget)


# --- the site: data, model, augmentation -----------------------------------------------------


def site_dataset(run: RunConfig, *, source: str | None = None, site: int | None = None,
                 num_sites: int | None = None, max_records: int | None = None) -> ImageDataset:
    """A site's training data as a simulated site loads it.

    The run's data source (or ``source``), training split, resized to ``image-size``; with
    ``site``/``num_sites`` the site's partition (the run's scheme, alpha and seed, as in
    ``fedaug simulate``), else the whole source. ``max_records`` keeps the first records
    (a faster, smaller audit).
    """
    data = load_image_source(source or run.data, split="train", size=run.image_size or None,
                             seed=run.seed, labels=run.labels or None)
    if site is not None:
        n = int(num_sites or 1)
        if not 0 <= site < n:
            raise ConfigError(f"Site {site} does not exist among {n} sites.", value=site,
                              fix=f"Pass a site index in 0..{n - 1}.")
        parts = partition(data.labels, n, scheme=run.partition, alpha=run.alpha, seed=run.seed)
        data = data.subset(parts[site])
    if max_records is not None and max_records < len(data):
        data = data.subset(np.arange(max_records))
    if len(data) == 0:
        raise DataError("The site holds no records.", value=source or run.data,
                        fix="Pick another site or data source.")
    return data


def site_generator(run: RunConfig, data: ImageDataset, model_dir: str | Path | None = None
                   ) -> tuple[Any, Any, GeneratorConfig]:
    """The model a site trains from: a global model folder, or the run's initial model
    (the server's architecture from the run config, initialised with the run seed)."""
    if model_dir:
        from fedaug.generator import load_generator

        unet, scheduler, config = load_generator(model_dir)
        h, _, c = data.image_shape
        if (config.image_size, config.channels, config.num_classes) != (h, c, data.num_classes):
            raise DataError(
                f"The data ({h}x{h}, {c} channel(s), {data.num_classes} classes) does not match "
                f"the model ({config.image_size}x{config.image_size}, {config.channels}, "
                f"{config.num_classes}).", value=str(model_dir),
                fix="Audit a model with the data it was trained on.")
        return unet, scheduler, config
    h, _, c = data.image_shape
    config = GeneratorConfig(image_size=h, channels=c, num_classes=data.num_classes,
                             block_out_channels=run.channels_tuple,
                             layers_per_block=run.layers_per_block,
                             prediction_type=run.prediction_type,
                             label_dropout=run.label_dropout)
    torch.manual_seed(run.seed)
    return build_unet(config), build_train_scheduler(config), config


def site_augmenter(run: RunConfig) -> Augment | None:
    """The augmentation a site applies to each view (``augment`` on: the run's policy)."""
    if not run.augment:
        return None
    from fedaug.augment import BatchAugmenter, Policy

    if run.policy:
        path = Path(run.policy)
        if not path.is_file():
            raise ConfigError("Policy file not found.", value=run.policy,
                              fix="Pass a JSON policy file, or leave `policy` empty.")
        policy = Policy.from_json(path.read_text(encoding="utf-8"))
    else:
        policy = Policy.default("image")
    augmenter = BatchAugmenter(policy)
    return lambda x, g: augmenter(x, generator=g)


# --- the report -------------------------------------------------------------------------------


@dataclass
class DPAuditReport:
    """One audit: the accounted epsilon, the empirical lower bound, the verdict.

    ``scores`` and ``included`` (one entry per canary, all runs pooled; ``run`` says which
    run) are kept for the picture and for re-analysis; the JSON holds their summary.
    """

    mechanism: str
    adversary: str
    accounted_epsilon: float
    result: AuditResult
    seconds: float
    config: dict[str, Any]
    scores: np.ndarray = field(repr=False)
    included: np.ndarray = field(repr=False)
    run: np.ndarray = field(repr=False)

    @property
    def epsilon_lower(self) -> float:
        return self.result.epsilon_lower

    @property
    def violation(self) -> bool:
        """The lower bound exceeds the accounted epsilon: the mechanism is broken."""
        return self.result.epsilon_lower > self.accounted_epsilon

    @property
    def verdict(self) -> str:
        return "VIOLATION" if self.violation else "consistent"

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        inc = self.included.astype(bool)

        def stats(s: np.ndarray) -> dict[str, float]:
            return {"mean": float(np.mean(s)) if s.size else float("nan"),
                    "std": float(np.std(s)) if s.size else float("nan")}

        return {
            "mechanism": self.mechanism,
            "adversary": self.adversary,
            "accounted-epsilon": self.accounted_epsilon,
            "delta": r.delta,
            "epsilon-lower-bound": r.epsilon_lower,
            "confidence": r.confidence,
            "num-canaries": r.num_canaries,
            "num-guesses": r.num_guesses,
            "num-correct": r.num_correct,
            "k-plus": r.k_plus,
            "k-minus": r.k_minus,
            "num-tests": r.num_tests,
            "num-included": int(inc.sum()),
            "verdict": self.verdict,
            "seconds": self.seconds,
            "scores": {"included": stats(self.scores[inc]), "excluded": stats(self.scores[~inc])},
            "config": self.config,
        }

    def table(self) -> str:
        """A printable summary."""
        r = self.result
        rows = [
            ("mechanism", self.mechanism),
            ("adversary", self.adversary),
            ("accounted epsilon", f"{self.accounted_epsilon:.3f} (delta {r.delta:g})"),
            ("empirical lower bound", f"{r.epsilon_lower:.3f} ({100 * r.confidence:g}% "
                                      f"confidence, {r.num_tests} test(s))"),
            ("canaries", f"{r.num_canaries} ({int(self.included.sum())} included)"),
            ("guesses", f"{r.num_guesses} (k+ {r.k_plus}, k- {r.k_minus}), "
                        f"{r.num_correct} correct"),
            ("verdict", self.verdict),
            ("run time", f"{self.seconds:.1f} s"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write the JSON report, the score picture and the raw scores into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / REPORT_JSON, "png": out / REPORT_PNG, "scores": out / REPORT_SCORES}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        title = (f"{self.mechanism}: accounted eps {self.accounted_epsilon:.2f}, lower bound "
                 f"{self.epsilon_lower:.2f} ({self.verdict})")
        plot_score_distributions(self.scores, self.included, paths["png"], title=title)
        np.savez_compressed(paths["scores"], scores=self.scores, included=self.included,
                            run=self.run)
        return paths


def _finish(mechanism: str, adversary: str, accounted: float, delta: float,
            scores: list[np.ndarray], included: list[np.ndarray], *, confidence: float,
            guess_counts: Sequence[int | tuple[int, int]] | None, t0: float,
            config: dict[str, Any]) -> DPAuditReport:
    s = np.concatenate(scores).astype(float)
    inc = np.concatenate(included).astype(bool)
    run = np.concatenate([np.full(len(x), i) for i, x in enumerate(scores)])
    if not np.all(np.isfinite(s)):
        s = np.nan_to_num(s, nan=0.0, posinf=1e300, neginf=-1e300)
    result = audit_from_scores(s, inc, delta=delta, confidence=confidence,
                               guess_counts=guess_counts)
    return DPAuditReport(mechanism=mechanism, adversary=adversary,
                         accounted_epsilon=float(accounted), result=result,
                         seconds=time.perf_counter() - t0, config=config, scores=s,
                         included=inc, run=run)


def _grid_config(guess_counts: Sequence[int | tuple[int, int]] | None) -> list | None:
    if guess_counts is None:
        return None
    return [[int(k) for k in np.atleast_1d(g)] for g in guess_counts]


def _check_audit_args(num_canaries: int, runs: int, confidence: float) -> None:
    if num_canaries < 2:
        raise ConfigError("An audit needs at least 2 canaries (hundreds for a useful bound).",
                          value=num_canaries, fix="Pass e.g. --num-canaries 1000.")
    if runs < 1:
        raise ConfigError("An audit needs at least one run.", value=runs, fix="Pass --runs 1.")
    if not 0 < confidence < 1:
        raise ConfigError("The confidence must lie in (0, 1).", value=confidence,
                          fix="Pass e.g. --confidence 0.95.")


def _inclusion(seed: int, run: int, m: int) -> tuple[np.ndarray, np.random.Generator]:
    """The auditor's secret coin flips for one run, and its generator for the canaries."""
    rng = np.random.default_rng([int(seed), int(run)])
    return rng.random(m) < 0.5, rng


def _site_noise_source(run: int) -> NoiseSource:
    """The secret noise source of a site's training call (one per run), as a site makes it."""
    return NoiseSource()


def _images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [-1, 1], as a site feeds its records."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def _train(unet: Any, scheduler: Any, x: torch.Tensor, y: torch.Tensor, plan: DPTrainingPlan,
           *, noise: NoiseSource, augment: Augment | None,
           observe: Callable[[list[torch.Tensor]], None] | None = None,
           canaries: GradientCanaries | None = None) -> TrainOutcome:
    return train_dp(unet, scheduler, x, y, steps=plan.steps, sample_rate=plan.sample_rate,
                    noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
                    learning_rate=plan.learning_rate,
                    expected_batch_size=plan.expected_batch_size, noise=noise,
                    noise_multiplicity=plan.noise_multiplicity,
                    noise_levels=plan.noise_levels, augment=augment, observe=observe,
                    canaries=canaries, label_dropout=plan.label_dropout,
                    null_label=plan.null_label)


# --- white-box gradient canaries ---------------------------------------------------------------


@dataclass(frozen=True)
class GradientObservation:
    """What the white-box adversary of one run holds.

    Attributes
    ----------
    directions : Tensor (m, P)
        The canaries' unit directions (public: the adversary chose them).
    total : Tensor (P,)
        The sum over steps of the noisy gradient sums the site computed.
    steps : Tensor (T, P) or None
        Every step's noisy gradient sum (``keep_steps=True``).
    run : int
        Which run.
    plan : DPTrainingPlan
        The mechanism's public parameters.
    """

    directions: torch.Tensor
    total: torch.Tensor
    steps: torch.Tensor | None
    run: int
    plan: DPTrainingPlan


def sum_scorer(obs: GradientObservation) -> np.ndarray:
    """``score_j = sum_t <g_t, u_j>``: the canary's direction against the summed noisy
    gradients (the likelihood-ratio statistic at q = 1)."""
    return (obs.directions @ obs.total).double().numpy()


def audit_gradient_canaries(unet: Any, scheduler: Any, data: ImageDataset, plan: DPTrainingPlan,
                            *, num_canaries: int = 1000, runs: int = 1,
                            canary_norm: float | None = None, seed: int = 0,
                            confidence: float = 0.95,
                            guess_counts: Sequence[int | tuple[int, int]] | None = None,
                            augment: Augment | None = None,
                            scorer: Callable[[GradientObservation], np.ndarray] | None = None,
                            keep_steps: bool = False,
                            noise_source: Callable[[int], NoiseSource] | None = None,
                            progress: Callable[[int, int], None] | None = None
                            ) -> DPAuditReport:
    """White-box audit of the site's DP-SGD implementation with gradient canaries.

    Parameters
    ----------
    unet, scheduler : the model the site trains from (copied for every run; not modified).
    data : the site's records.
    plan : the site's DP-SGD configuration (:func:`plan_site_training`).
    num_canaries : canaries per run (``m``); their directions take ``4 m P`` bytes.
    runs : independent runs whose canaries are pooled.
    canary_norm : each canary's gradient norm before clipping (default 100 C).
    seed : seeds the auditor's inclusion bits and the canary directions.
    guess_counts : the (k+, k-) grid of :func:`~fedaug.privacy.auditing.audit_from_scores`;
        it must be fixed before the run (it may depend on ``m`` only).
    augment : the site's augmentation (:func:`site_augmenter`).
    scorer : turns a run's :class:`GradientObservation` into ``m`` scores (default
        :func:`sum_scorer`).
    keep_steps : keep every step's noisy sum for the scorer (``4 T P`` bytes); also on when
        the scorer has a true ``needs_steps`` attribute.
    noise_source : ``run -> NoiseSource`` of the site's training (default: a fresh secret
        source, as a site uses; tests inject other sources here).
    progress : called with (run, runs) after each run.
    """
    _check_audit_args(num_canaries, runs, confidence)
    scorer = scorer or sum_scorer
    keep_steps = keep_steps or bool(getattr(scorer, "needs_steps", False))
    noise_source = noise_source or _site_noise_source
    norm = float(canary_norm or CANARY_NORM_FACTOR * plan.max_grad_norm)
    x, y = _images_to_tensor(data.images), torch.from_numpy(data.labels).long()
    n_params = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    t0 = time.perf_counter()
    # One set of public directions serves every run (each run's coin flips and noise are
    # its own, so the runs stay independent mechanisms).
    gen = torch.Generator().manual_seed(int(np.random.default_rng([int(seed), 2**31]).integers(
        2**62)))
    directions = torch.randn((num_canaries, n_params), generator=gen)
    directions /= directions.norm(dim=1, keepdim=True)
    all_scores, all_included = [], []
    for r in range(runs):
        included, _ = _inclusion(seed, r, num_canaries)
        total = torch.zeros(n_params)
        kept: list[torch.Tensor] = []

        def observe(grads: list[torch.Tensor], total=total, kept=kept) -> None:
            flat = torch.cat([g.detach().reshape(-1).float().cpu() for g in grads])
            total.add_(flat)
            if keep_steps:
                kept.append(flat)

        model = copy.deepcopy(unet)
        _train(model, scheduler, x, y, plan, noise=noise_source(r), augment=augment,
               observe=observe,
               canaries=GradientCanaries(directions=directions,
                                         included=torch.from_numpy(included), norm=norm))
        obs = GradientObservation(directions=directions, total=total,
                                  steps=torch.stack(kept) if kept else None, run=r, plan=plan)
        scores = np.asarray(scorer(obs), dtype=float).reshape(-1)
        if scores.shape != (num_canaries,):
            raise ValueError(f"the scorer returned {scores.shape} scores for {num_canaries} "
                             "canaries")
        all_scores.append(scores)
        all_included.append(included)
        del model, obs, kept
        if progress is not None:
            progress(r + 1, runs)
    config = {"plan": plan.to_dict(), "canaries-per-run": num_canaries, "runs": runs,
              "canary-norm": norm, "records": len(data), "parameters": n_params, "seed": seed,
              "guess-counts": _grid_config(guess_counts)}
    return _finish("DP-SGD, white-box gradient canaries",
                   "sees every step's noisy gradient sum; score = sum_t <g_t, u_j>",
                   plan.accounted_epsilon(), plan.delta, all_scores, all_included,
                   confidence=confidence, guess_counts=guess_counts, t0=t0, config=config)


# --- input-space canaries -----------------------------------------------------------------------


def make_input_canaries(data: ImageDataset, num: int, kind: str, rng: np.random.Generator
                        ) -> ImageDataset:
    """``num`` out-of-distribution records for the site's data.

    ``"mislabelled"``: real images of the site, inverted (255 - x), with a wrong label
    (needs 2 classes or more); ``"noise"``: fixed uniform random-noise images with random
    labels. Drawn from ``rng`` (the auditor's generator).
    """
    if kind not in CANARY_KINDS:
        raise ConfigError("Unknown input canary kind.", value=kind,
                          fix=f"Use one of {', '.join(CANARY_KINDS)}.")
    c = data.num_classes
    if kind == "mislabelled" and c < 2:
        raise ConfigError("Mislabelled canaries need at least two classes.", value=c,
                          fix="Use --input-canary noise.")
    if kind == "mislabelled":
        idx = rng.integers(0, len(data), num)
        images = 255 - data.images[idx]
        labels = (data.labels[idx] + rng.integers(1, c, num)) % c
    else:
        images = rng.integers(0, 256, (num, *data.images.shape[1:])).astype(np.uint8)
        labels = rng.integers(0, c, num)
    return ImageDataset(np.ascontiguousarray(images, dtype=np.uint8),
                        np.asarray(labels, dtype=np.int64), data.class_names,
                        f"{data.name}-canaries")


@dataclass(frozen=True)
class InputObservation:
    """What the black-box adversary of one run may use.

    ``initial`` is the model the site trained from, ``final`` the trained model (the
    site's DP release), ``canaries`` this run's ``m`` candidate records. ``outcome`` is what
    ``train_dp`` returned: its ``loss`` is the un-noised mean training loss, which a site
    keeps to itself; a scorer that reads it audits a site that would send it.
    """

    initial: Any
    final: Any
    scheduler: Any
    canaries: ImageDataset
    outcome: TrainOutcome
    run: int
    plan: DPTrainingPlan


@torch.no_grad()
def _per_example_loss(unet: Any, scheduler: Any, images: np.ndarray, labels: np.ndarray, *,
                      draws: int, seed: int, chunk: int = 1024) -> np.ndarray:
    """Each record's diffusion loss averaged over ``draws`` fixed (timestep, noise) draws:
    timesteps evenly spread over the schedule, noise from a generator seeded with ``seed``
    (so two models scored with the same seed see the same draws)."""
    unet.eval()
    x0 = _images_to_tensor(images)
    n = len(x0)
    y = torch.from_numpy(np.asarray(labels)).long()
    alphas = scheduler.alphas_cumprod.float()
    prediction = scheduler.config.prediction_type
    gen = torch.Generator().manual_seed(int(seed))
    ts = torch.linspace(0, scheduler.config.num_train_timesteps - 1, draws).long()
    # every (draw, record) pair as one row, scored a chunk of rows at a time
    t_rows = ts.repeat_interleave(n)
    noise = torch.randn((draws * n, *x0.shape[1:]), generator=gen)
    losses = torch.empty(draws * n, dtype=torch.float64)
    for s in range(0, draws * n, chunk):
        rows = slice(s, s + chunk)
        idx = torch.arange(s, min(s + chunk, draws * n)) % n
        a = alphas[t_rows[rows]].view(-1, 1, 1, 1)
        x, eps = x0[idx], noise[rows]
        pred = unet(forward_diffuse(x, eps, a), t_rows[rows], class_labels=y[idx]).sample
        losses[rows] = ((pred - diffusion_target(prediction, x, eps, a)) ** 2).mean(
            dim=(1, 2, 3)).double()
    return losses.view(draws, n).mean(0).numpy()


def loss_drop_scorer(obs: InputObservation, *, draws: int = 32) -> np.ndarray:
    """``score_j`` = the canary's diffusion loss under the initial model minus under the
    trained one, with the same fixed draws for both: how much training fitted it."""
    c = obs.canaries
    before = _per_example_loss(obs.initial, obs.scheduler, c.images, c.labels, draws=draws,
                               seed=obs.run)
    after = _per_example_loss(obs.final, obs.scheduler, c.images, c.labels, draws=draws,
                              seed=obs.run)
    return before - after


def audit_input_canaries(unet: Any, scheduler: Any, data: ImageDataset, plan: DPTrainingPlan,
                         *, num_canaries: int = 200, kind: str = "mislabelled", runs: int = 1,
                         seed: int = 0, confidence: float = 0.95,
                         guess_counts: Sequence[int | tuple[int, int]] | None = None,
                         augment: Augment | None = None,
                         canaries: Callable[[np.random.Generator, int], ImageDataset] | None = None,
                         scorer: Callable[[InputObservation], np.ndarray] | None = None,
                         noise_source: Callable[[int], NoiseSource] | None = None,
                         progress: Callable[[int, int], None] | None = None) -> DPAuditReport:
    """Black-box audit: input-space canaries added to the site's data, scored on the model.

    Each run draws ``num_canaries`` canaries (:func:`make_input_canaries` of ``kind``, or
    ``canaries(rng, run)``), adds the included ones to the site's records, trains the
    site's plan with ``train_dp`` from ``unet`` and scores the canaries with ``scorer``
    (default :func:`loss_drop_scorer`). The plan (q, steps, sigma, expected batch size) is
    the site's for its own records and does not depend on which canaries are in.
    """
    _check_audit_args(num_canaries, runs, confidence)
    scorer = scorer or loss_drop_scorer
    noise_source = noise_source or _site_noise_source
    t0 = time.perf_counter()
    all_scores, all_included = [], []
    for r in range(runs):
        included, rng = _inclusion(seed, r, num_canaries)
        cans = (canaries(rng, r) if canaries is not None
                else make_input_canaries(data, num_canaries, kind, rng))
        if len(cans) != num_canaries or cans.image_shape != data.image_shape:
            raise DataError("The canaries must be num_canaries records shaped like the site's.",
                            value=(len(cans), cans.image_shape),
                            fix="Return one record per canary from the canaries callable.")
        images = np.concatenate([data.images, cans.images[included]])
        labels = np.concatenate([data.labels, cans.labels[included]])
        model = copy.deepcopy(unet)
        outcome = _train(model, scheduler, _images_to_tensor(images),
                         torch.from_numpy(labels).long(), plan, noise=noise_source(r),
                         augment=augment)
        obs = InputObservation(initial=unet, final=model, scheduler=scheduler, canaries=cans,
                               outcome=outcome, run=r, plan=plan)
        scores = np.asarray(scorer(obs), dtype=float).reshape(-1)
        if scores.shape != (num_canaries,):
            raise ValueError(f"the scorer returned {scores.shape} scores for {num_canaries} "
                             "canaries")
        all_scores.append(scores)
        all_included.append(included)
        if progress is not None:
            progress(r + 1, runs)
    config = {"plan": plan.to_dict(), "canaries-per-run": num_canaries, "runs": runs,
              "kind": "custom" if canaries is not None else kind, "records": len(data),
              "seed": seed,
              "guess-counts": _grid_config(guess_counts)}
    return _finish(f"DP-SGD, input-space canaries ({config['kind']})",
                   "sees the trained model; score = loss drop of each canary",
                   plan.accounted_epsilon(), plan.delta, all_scores, all_included,
                   confidence=confidence, guess_counts=guess_counts, t0=t0, config=config)


# --- central DP at the server ----------------------------------------------------------------------


def audit_central_dp(aggregate: Callable[..., Any], reference: Mapping[str, Any], *,
                     noise_multiplier: float, clip_norm: float, denominator: float,
                     rounds: int, delta: float, num_canaries: int = 500, runs: int = 1,
                     canary_norm: float | None = None, seed: int = 0,
                     confidence: float = 0.95,
                     guess_counts: Sequence[int | tuple[int, int]] | None = None,
                     noise_source: Callable[[int], NoiseSource] | None = None,
                     progress: Callable[[int, int], None] | None = None) -> DPAuditReport:
    """Audit the server's institution-level DP aggregation with canary sites.

    Each canary site's update, every round, is ``canary_norm * u_j`` (default 100 C, so it is
    clipped to C) added to the current global model; the included ones are the round's
    replies, aggregated by ``aggregate(records, reference, clip_norm=, noise_multiplier=,
    denominator=, noise=)`` (``fedaug.server.central_dp.central_dp_mean``; this package does
    not import the server layer). The next round starts from the published model. The
    adversary sees every published model and scores ``sum_r <model_r - model_(r-1), u_j>``.
    The accounted epsilon is ``compose_epsilon([(sigma, 1, rounds)])``: the server chooses
    its sites, so no sampling amplification is claimed.

    Parameters
    ----------
    reference : mapping name -> array
        The initial global model's floating parameters (a state dict).
    """
    from flwr.app import Array, ArrayRecord

    _check_audit_args(num_canaries, runs, confidence)
    if not (noise_multiplier > 0 and clip_norm > 0 and denominator > 0 and rounds >= 1):
        raise ConfigError("Central DP needs a positive noise multiplier, clip norm and "
                          "denominator, and at least one round.",
                          value=(noise_multiplier, clip_norm, denominator, rounds),
                          fix="Pass the run's central-noise-multiplier, central-clip-norm and "
                          "central-denominator.")
    noise_source = noise_source or _site_noise_source
    norm = float(canary_norm or CANARY_NORM_FACTOR * clip_norm)
    ref = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
           for k, v in reference.items()}
    ref = {k: v.astype(np.float32) for k, v in ref.items() if np.issubdtype(v.dtype, np.floating)}
    keys = list(ref)
    shapes = [ref[k].shape for k in keys]
    sizes = [int(np.prod(s)) for s in shapes]
    n_params = sum(sizes)

    def flat(record: Any) -> np.ndarray:
        return np.concatenate([record[k].numpy().astype(np.float64).ravel() for k in keys])

    def unflat(vec: np.ndarray) -> dict[str, np.ndarray]:
        out, offset = {}, 0
        for k, shape, size in zip(keys, shapes, sizes, strict=True):
            out[k] = vec[offset:offset + size].reshape(shape)
            offset += size
        return out

    t0 = time.perf_counter()
    rng = np.random.default_rng([int(seed), 2**31])
    directions = rng.standard_normal((num_canaries, n_params), dtype=np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    all_scores, all_included = [], []
    for r in range(runs):
        included, _ = _inclusion(seed, r, num_canaries)
        noise = noise_source(r)
        current = ArrayRecord({k: Array(v.copy()) for k, v in ref.items()})
        total = np.zeros(n_params)
        for _ in range(rounds):
            base = flat(current)
            records = []
            for j in np.flatnonzero(included):
                update = unflat((base + norm * directions[j]).astype(np.float32))
                records.append(ArrayRecord({k: Array(v) for k, v in update.items()}))
            published = aggregate(records, current, clip_norm=clip_norm,
                                  noise_multiplier=noise_multiplier, denominator=denominator,
                                  noise=noise)
            total += flat(published) - base
            current = published
            del records
        all_scores.append(directions @ total.astype(np.float32))
        all_included.append(included)
        if progress is not None:
            progress(r + 1, runs)
    accounted = compose_epsilon([(noise_multiplier, 1.0, rounds)], delta=delta)
    config = {"noise-multiplier": noise_multiplier, "clip-norm": clip_norm,
              "denominator": denominator, "rounds": rounds, "delta": delta,
              "canaries-per-run": num_canaries, "runs": runs, "canary-norm": norm,
              "parameters": n_params, "seed": seed, "guess-counts": _grid_config(guess_counts)}
    return _finish("central DP at the server (canary sites)",
                   "sees every published model; score = sum_r <model change, u_j>",
                   accounted, delta, all_scores, all_included, confidence=confidence,
                   guess_counts=guess_counts, t0=t0, config=config)


# --- the command line ------------------------------------------------------------------------------


def _scenario(path: str | None, sets: Sequence[str], epsilon: float | None
              ) -> tuple[RunConfig, int | None]:
    """The run config of a scenario TOML (:func:`fedaug.scenario.load_scenario`: its
    ``[fedaug]`` table, then its ``[per-epsilon.<budget>]`` table for the audited budget)
    with ``KEY=VALUE`` overrides, and the scenario's ``num-sites``."""
    from fedaug.scenario import load_scenario

    overrides: dict[str, Any] = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set takes KEY=VALUE.", value=item,
                              fix="e.g. --set batch-size=256")
        overrides[key.strip()] = value.strip()
    if epsilon is not None:
        overrides["epsilon"] = epsilon
    mapping = load_scenario(path, overrides) if path else overrides
    num_sites = mapping.pop("num-sites", None)
    run = RunConfig.from_mapping(mapping, source=path or "--set")
    return run, None if num_sites is None else int(num_sites)


def _guesses(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError as err:
        raise ConfigError("--guesses takes comma-separated whole numbers.", value=text,
                          fix="e.g. --guesses 50,100") from err
    if not ks or any(k < 1 for k in ks):
        raise ConfigError("--guesses takes positive counts.", value=text, fix="e.g. --guesses 100")
    return ks


def run_dp_audit_command(args: Any) -> int:
    """``fedaug audit --dp``: audit one site's DP training; exit status 1 when the empirical
    lower bound exceeds the accounted epsilon (the mechanism is broken), else 0."""
    import logging
    import sys

    from fedaug.generator.recipe import resolve_for_data

    log = logging.getLogger("fedaug.evaluate")
    run, scenario_sites = _scenario(args.config, args.set or [], args.epsilon)
    num_sites = args.num_sites or scenario_sites
    data = site_dataset(run, source=args.data, site=args.site,
                        num_sites=num_sites if args.site is not None else None,
                        max_records=args.max_records)
    run = resolve_for_data(run, data)
    unet, scheduler, config = site_generator(run, data, args.model)
    history = site_release_history(run, epsilon=args.epsilon, delta=args.delta)
    plan = plan_site_training(run, len(data), epsilon=args.epsilon, delta=args.delta,
                              rounds=args.rounds, noise_multiplier=args.noise_multiplier,
                              sample_rate=args.sample_rate, steps=args.steps, history=history)
    # the loss the sites train, with the generator's null class (its sensitivity is the same)
    plan = replace(plan, label_dropout=config.label_dropout, null_label=config.null_label)
    log.info("auditing %d records: sigma %.3f, q %.4f, %d steps, C %g, accounted epsilon %.3f",
             len(data), plan.noise_multiplier, plan.sample_rate, plan.steps,
             plan.max_grad_norm, plan.accounted_epsilon())
    augment = site_augmenter(run) if plan.augment else None

    def progress(done: int, total: int) -> None:
        log.info("audit run %d of %d done", done, total)

    common = dict(runs=args.runs, seed=args.seed, confidence=args.confidence,
                  guess_counts=_guesses(args.guesses), augment=augment, progress=progress)
    if args.canaries == "input":
        report = audit_input_canaries(unet, scheduler, data, plan,
                                      num_canaries=args.num_canaries or 200,
                                      kind=args.input_canary, **common)
    else:
        report = audit_gradient_canaries(unet, scheduler, data, plan,
                                         num_canaries=args.num_canaries or 1000,
                                         canary_norm=args.canary_norm, **common)
    report.config.update({"data": args.data or run.data, "site": args.site,
                          "num-sites": num_sites if args.site is not None else None,
                          "model": args.model or "initial model of the run config"})
    print(report.table())
    if args.out:
        paths = report.write(args.out)
        print(f"report: {paths['json']}, figure: {paths['png']}")
    if report.violation:
        print(f"fedaug audit: error: the empirical lower bound {report.epsilon_lower:.3f} "
              f"exceeds the accounted epsilon {report.accounted_epsilon:.3f} at "
              f"{100 * report.result.confidence:g}% confidence: this training leaks more than "
              "its privacy accounting allows, so the mechanism is broken (clipping, noise, "
              "sampling or what the site releases). Do not deploy it.", file=sys.stderr)
        return 1
    return 0
