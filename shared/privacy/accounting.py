"""Pure privacy math on a spending history: compose epsilon, plan sigma, cap steps."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from opacus.accountants.analysis import rdp as _rdp

__all__ = [
    "Spend",
    "MAX_NOISE_MULTIPLIER",
    "compose_epsilon",
    "pure_dp_rdp",
    "plan_noise_multiplier",
    "max_steps_within_budget",
]

#: (noise_multiplier, sample_rate, steps) of one Gaussian-mechanism spending, Opacus's layout.
Spend = tuple[float, float, int]

#: Above this the update is pure noise; a plan that needs more counts as "budget exhausted".
MAX_NOISE_MULTIPLIER = 200.0


def compose_epsilon(history: Sequence[Spend], *, delta: float,
                    pure: Sequence[float] = ()) -> float:
    """Epsilon of the whole history at ``delta`` (RDP accountant, as Opacus computes it).

    Parameters
    ----------
    history : sequence of (noise_multiplier, sample_rate, steps)
        Every Gaussian spending of the site, in order; heterogeneous entries compose.
    delta : float
        The site's delta.
    pure : sequence of float
        Epsilons of pure-DP releases (e.g. an exponential-mechanism policy choice), added
        to the RDP curve as ``min(eps, alpha * eps**2 / 2)`` at each order alpha (pure
        eps-DP implies eps^2/2-zCDP, Bun & Steinke 2016).
    """
    steps = [(float(s), float(q), int(n)) for s, q, n in history if int(n) > 0]
    pure = [float(e) for e in pure if e > 0]
    if not steps and not pure:
        return 0.0
    total = sum((n * _unit_rdp(s, q) for s, q, n in steps), np.zeros(len(_ORDERS)))
    if pure:
        total = total + sum(pure_dp_rdp(e) for e in pure)
    eps = _rdp_to_dp(total, delta)
    if pure:
        # Basic composition is also valid; report the tighter of the two bounds.
        gaussian = sum((n * _unit_rdp(s, q) for s, q, n in steps), np.zeros(len(_ORDERS)))
        basic = (_rdp_to_dp(gaussian, delta) if steps else 0.0) + sum(pure)
        eps = min(eps, basic)
    return float(eps)


def _rdp_to_dp(rdp: np.ndarray, delta: float) -> float:
    with warnings.catch_warnings():
        # "Optimal order is the largest alpha": the bound stays valid, only less tight.
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = _rdp.get_privacy_spent(orders=_ORDERS, rdp=rdp, delta=delta)
    return float(eps)


#: Integer RDP orders only. At integer orders the subsampled Gaussian's RDP has an exact
#: closed form (Mironov et al. 2019), on which Opacus and Google's dp-accounting agree to
#: the last digit; at fractional orders the two libraries differ (dp-accounting's bound is
#: up to 2% higher), so a figure optimised over fractional orders could sit below an
#: independent accountant's. These are dp-accounting's default integer orders.
_ORDERS = tuple(float(a) for a in [*range(2, 64), 128, 256, 512])


def pure_dp_rdp(epsilon: float, orders: Sequence[float] | None = None) -> np.ndarray:
    """RDP of a pure epsilon-DP mechanism at each order: min(eps, alpha * eps**2 / 2)
    (pure eps-DP implies eps^2/2-zCDP, Bun & Steinke 2016). Orders default to Opacus's."""
    a = np.asarray(_ORDERS if orders is None else orders, dtype=np.float64)
    return np.minimum(float(epsilon), a * float(epsilon) ** 2 / 2.0)


@lru_cache(maxsize=4096)
def _unit_rdp(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one step at each order (RDP composes linearly in steps), cached."""
    out = _rdp.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                           orders=list(_ORDERS))
    out.setflags(write=False)
    return out


def plan_noise_multiplier(
    history: Sequence[Spend],
    *,
    delta: float,
    budget: float,
    sample_rate: float,
    steps: int,
    pure: Sequence[float] = (),
    tolerance: float = 0.005,
) -> float | None:
    """Smallest sigma such that ``history`` plus ``steps`` more steps stays within ``budget``.

    Unlike ``PrivacyEngine.make_private_with_epsilon``, what was already spent counts:
    a restored site plans for what is left, not for the whole budget again.
    Returns ``None`` when even :data:`MAX_NOISE_MULTIPLIER` would pass the budget.
    """
    if steps <= 0:
        return None

    def eps(sigma: float) -> float:
        return compose_epsilon([*history, (sigma, sample_rate, steps)], delta=delta, pure=pure)

    if eps(MAX_NOISE_MULTIPLIER) > budget:
        return None
    lo, hi = 0.0, 1.0
    while eps(hi) > budget:
        lo, hi = hi, hi * 2.0
    while hi - lo > tolerance * max(hi, 1e-3):
        mid = (lo + hi) / 2
        if eps(mid) > budget:
            lo = mid
        else:
            hi = mid
    return hi


def max_steps_within_budget(
    history: Sequence[Spend],
    *,
    delta: float,
    budget: float,
    noise_multiplier: float,
    sample_rate: float,
    max_steps: int,
    pure: Sequence[float] = (),
) -> int:
    """Largest number of steps (<= ``max_steps``) at a fixed sigma that stays within budget."""
    if max_steps <= 0 or not math.isfinite(noise_multiplier) or noise_multiplier <= 0:
        return 0

    def fits(n: int) -> bool:
        return compose_epsilon(
            [*history, (noise_multiplier, sample_rate, n)], delta=delta, pure=pure
        ) <= budget

    if fits(max_steps):
        return max_steps
    lo, hi = 0, max_steps  # fits(lo) is True (or lo == 0), fits(hi) is False
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo
