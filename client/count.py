"""A site's example count, released once per run under the Gaussian mechanism.

Under the add/remove-one-record neighbouring relation the data set's size is exactly what
differs, so the exact count never leaves the site. Each run, before its first training
step, the site releases ``N + N(0, s^2)`` (sensitivity 1) and records it in its ledger;
the sample rate, the steps, the gradient's scale and the server's averaging weight all
derive from this noisy count.
"""

from __future__ import annotations

import logging

import torch

from fedaug.client.site import SiteContext
from fedaug.errors import ConfigError
from fedaug.privacy import BudgetPlanner, PrivacyLedger
from fedaug.privacy.planner import count_noise_multiplier

__all__ = ["count_noise_multiplier", "released_count"]

log = logging.getLogger("fedaug.client")


def released_count(site: SiteContext, ledger: PrivacyLedger, planner: BudgetPlanner, *,
                   num_examples: int, run_id: str, server_round: int) -> float | None:
    """The noisy count of this run (released now if it was not yet), or None when the
    budget cannot pay for it.

    Raises
    ------
    ConfigError
        When the site's delta is not below 1 / (noisy count): such a delta would allow
        releasing a record in the clear.
    """
    for entry in ledger.entries:
        if entry.release == "count" and entry.run == run_id and entry.value is not None:
            check_delta(site, entry.value)
            return entry.value
    sigma = count_noise_multiplier(site.epsilon_budget)
    if not planner.fits([(sigma, 1.0, 1)]):
        return None
    noise = site.noise_source()
    value = float(num_examples + noise.normal(1, std=sigma, dtype=torch.float64).item())
    ledger.append(mechanism="gaussian", noise_multiplier=sigma, sample_rate=1.0, steps=1,
                  run=run_id, round=server_round, release="count", value=value)
    log.info("%s: released its example count with noise (sigma %.1f): %.0f", site.name, sigma,
             value)
    check_delta(site, value)
    return value


def check_delta(site: SiteContext, count: float) -> None:
    """Refuse a delta of 1 / (noisy count) or more."""
    if site.delta >= 1.0 / max(count, 1.0):
        raise ConfigError(
            f"{site.name}: delta must be below 1 / (number of examples), about "
            f"{1.0 / max(count, 1.0):.2g} for this site's {count:.0f} (noisy count).",
            value=site.delta, fix="Set a smaller delta in the node config, e.g. 1e-5.")

