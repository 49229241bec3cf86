"""The one place that decides whether a spending fits a site's budget."""

from __future__ import annotations

import math
from collections.abc import Sequence

from fedaug.privacy.accounting import (
    MAX_NOISE_MULTIPLIER,
    Spend,
    compose_epsilon,
    max_steps_within_budget,
    plan_noise_multiplier,
)
from fedaug.privacy.ledger import PrivacyLedger

__all__ = ["BudgetPlanner", "count_noise_multiplier", "warmup_noise_multiplier",
           "WARMUP_MAX_SHARE", "WARMUP_MAX_SIGMA", "SPREAD_NOISE_RATIO",
           "warmup_noise_multipliers"]

#: The warm-up release takes at most this share of what is left of a site's budget; a site
#: that cannot afford the server's noise multiplier releases with more noise instead.
WARMUP_MAX_SHARE = 0.5
#: Above this noise multiplier the warm-up release is worthless and the site declines it.
WARMUP_MAX_SIGMA = 100.0
#: The warm start's spread release (the classes' second moments) has this many times the
#: class sums' noise multiplier (a site's constant, not the server's).
SPREAD_NOISE_RATIO = 1.0


def count_noise_multiplier(budget: float) -> float:
    """The count release's noise multiplier, ``max(5, 20 / sqrt(budget))``: composed with a
    run that spends the rest, the count costs about 2% of a budget of 1 and under 1% of a
    budget of 10 (RDP)."""
    return max(5.0, 20.0 / budget ** 0.5)


class BudgetPlanner:
    """What a site may still spend, composed over its whole ledger (RDP accountant).

    Every mechanism asks here before it spends: the count release, the warm-start release,
    the private policy choice and DP-SGD. Nothing is spent by asking; the mechanism records
    its spending in the ledger before its output leaves the site.

    Parameters
    ----------
    ledger : PrivacyLedger
        The site's history (and its delta).
    budget : float
        The site's epsilon budget (its own node config; never the server's).
    """

    def __init__(self, ledger: PrivacyLedger, budget: float) -> None:
        self.ledger = ledger
        self.budget = float(budget)

    @property
    def spent(self) -> float:
        """Epsilon of everything recorded so far."""
        return self.ledger.epsilon()

    def epsilon_after(self, gaussian: Sequence[Spend] = (), pure: Sequence[float] = ()) -> float:
        """Epsilon of the ledger plus these spendings."""
        return compose_epsilon([*self.ledger.history(), *gaussian], delta=self.ledger.delta,
                               pure=[*self.ledger.pure_epsilons(), *pure])

    def fits(self, gaussian: Sequence[Spend] = (), pure: Sequence[float] = ()) -> bool:
        """Whether the ledger plus these spendings stays within the budget."""
        return self.epsilon_after(gaussian, pure) <= self.budget

    def limit(self, share: float = 1.0) -> float:
        """The epsilon a spending of ``share`` of what is left may bring the site to."""
        spent = self.spent
        return spent + share * max(0.0, self.budget - spent)

    def noise_multiplier(self, *, sample_rate: float, steps: int, share: float = 1.0,
                         at_least: float = 0.0,
                         max_noise_multiplier: float = MAX_NOISE_MULTIPLIER) -> float | None:
        """The smallest noise multiplier (>= ``at_least``) for ``steps`` Gaussian steps at
        ``sample_rate`` that spends at most ``share`` of what is left; None if even
        ``max_noise_multiplier`` would spend more."""
        history, pure = self.ledger.history(), self.ledger.pure_epsilons()
        limit = self.limit(share)

        def after(sigma: float) -> float:
            return compose_epsilon([*history, (sigma, sample_rate, steps)],
                                   delta=self.ledger.delta, pure=pure)

        if at_least > 0 and after(at_least) <= limit:
            return at_least
        if after(max_noise_multiplier) > limit:
            return None
        sigma = plan_noise_multiplier(history, delta=self.ledger.delta, budget=limit,
                                      sample_rate=sample_rate, steps=steps, pure=pure)
        return None if sigma is None else max(sigma, at_least)

    def max_steps(self, *, noise_multiplier: float, sample_rate: float, max_steps: int) -> int:
        """How many of ``max_steps`` Gaussian steps at this sigma and rate still fit."""
        return max_steps_within_budget(self.ledger.history(), delta=self.ledger.delta,
                                       budget=self.budget, noise_multiplier=noise_multiplier,
                                       sample_rate=sample_rate, max_steps=max_steps,
                                       pure=self.ledger.pure_epsilons())


def warmup_noise_multiplier(requested: float, planner: BudgetPlanner) -> float | None:
    """The warm-up release's noise multiplier: the smallest one >= ``requested`` that spends
    at most :data:`WARMUP_MAX_SHARE` of the budget left; None if even
    :data:`WARMUP_MAX_SIGMA` would spend more."""
    return planner.noise_multiplier(sample_rate=1.0, steps=1, share=WARMUP_MAX_SHARE,
                                    at_least=requested, max_noise_multiplier=WARMUP_MAX_SIGMA)


def warmup_noise_multipliers(requested: float, planner: BudgetPlanner, *, spread: bool
                             ) -> tuple[float, float | None] | None:
    """The noise multipliers of the class sums and of the spread (None without ``spread``),
    or None where the budget forbids the release.

    Without ``spread``: :func:`warmup_noise_multiplier` of
    ``requested``. With it, the two Gaussian mechanisms (multipliers ``s`` and
    ``SPREAD_NOISE_RATIO * s``) compose exactly like one of multiplier ``s / j``, ``j =
    sqrt(1 + SPREAD_NOISE_RATIO^-2)``; the cap on the budget's share applies to that one."""
    joint = math.sqrt(1 + SPREAD_NOISE_RATIO ** -2) if spread else 1.0
    sigma = warmup_noise_multiplier(requested / joint, planner)
    if sigma is None:
        return None
    return sigma * joint, SPREAD_NOISE_RATIO * sigma * joint if spread else None
