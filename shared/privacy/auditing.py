"""One-run privacy auditing: an empirical lower bound on epsilon from canary guesses.

The statistical core of Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training
Run" (NeurIPS 2023, arXiv:2305.08846). The auditor inserts each of ``m`` canaries
independently with probability 1/2, runs the mechanism once, scores every canary from the
output, and guesses "in" for the ``k+`` highest scores and "out" for the ``k-`` lowest
(abstaining on the rest). Their main theorem: under an (epsilon, delta)-DP mechanism, the
number ``W`` of correct guesses among ``r`` guesses satisfies

    P[W >= v]  <=  P[Binomial(r, q) >= v]  +  2 m delta alpha,      q = e^eps / (1 + e^eps),

with ``alpha = max_{1<=i<=v} P[v - i <= Binomial(r, q) < v] / i`` (their appendix
algorithm; for delta = 0 only the binomial tail remains). Observing ``v`` correct guesses
whose tail probability is at most ``1 - confidence`` rejects every epsilon up to the
returned lower bound.

Pure numpy / scipy; the plotting helper imports Pillow lazily. The idealized mechanism of
the paper's experiments (:func:`gaussian_canary_scores`) and the exact epsilon of one
Gaussian mechanism (:func:`gaussian_epsilon`, Balle & Wang 2018) are here to check the
bound against the truth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import optimize, special, stats

__all__ = [
    "AuditResult",
    "audit_from_scores",
    "default_guess_counts",
    "epsilon_lower_bound",
    "gaussian_canary_scores",
    "gaussian_epsilon",
    "one_run_p_value",
    "plot_score_distributions",
]

#: Symmetric guess counts k (k+ = k- = k) tried by default: 10, 20, 50, 100, 200, 500, ...
_GRID_MANTISSAS = (1, 2, 5)
#: Largest epsilon searched; a bound here means "as large as the search can tell".
_EPS_CAP = 100.0
#: Bisection tolerance on epsilon.
_EPS_TOL = 1e-7


@dataclass(frozen=True)
class AuditResult:
    """The best one-run lower bound over a grid of (k+, k-) guess counts.

    ``epsilon_lower`` holds at ``confidence`` for the whole grid (Bonferroni over
    ``num_tests`` candidates), not just for the winning (k+, k-).
    """

    epsilon_lower: float
    confidence: float
    num_canaries: int
    num_guesses: int
    num_correct: int
    k_plus: int
    k_minus: int
    delta: float
    num_tests: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain JSON-ready dict of every field."""
        return asdict(self)


def one_run_p_value(*, num_canaries: int, num_guesses: int, num_correct: int,
                    epsilon: float, delta: float = 0.0) -> float:
    """Upper bound on P[>= num_correct correct guesses] under an (epsilon, delta)-DP mechanism.

    The paper's appendix procedure: ``beta + 2 m delta alpha`` with ``beta`` the
    Binomial(r, e^eps/(1+e^eps)) tail at ``v`` and ``alpha`` the largest average of the
    binomial mass just below ``v`` (``max_i P[v-i <= B < v] / i``), capped at 1.
    """
    m, r, v = _check_counts(num_canaries, num_guesses, num_correct)
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must be in [0, 1], got {delta}")
    if v == 0:
        return 1.0
    q = float(special.expit(epsilon))  # accuracy of eps-DP randomized response
    beta = float(stats.binom.sf(v - 1, r, q))  # P[B >= v]
    if delta == 0.0:
        return min(beta, 1.0)
    # P[B = v-1], P[B = v-2], ..., P[B = 0]; running sums are P[v-i <= B < v] for i = 1..v.
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)
    alpha = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(*, num_canaries: int, num_guesses: int, num_correct: int,
                        delta: float = 0.0, confidence: float = 0.95) -> float:
    """Largest epsilon that ``num_correct`` of ``num_guesses`` correct guesses rejects.

    Parameters
    ----------
    num_canaries : int
        ``m``, the canaries each included independently with probability 1/2.
    num_guesses : int
        ``r``, the guesses made (abstentions excluded), ``r <= m``.
    num_correct : int
        ``v``, the correct guesses, ``v <= r``.
    delta : float
        The delta of the (epsilon, delta)-DP null hypothesis.
    confidence : float
        ``1 - p``: the result is the largest epsilon whose :func:`one_run_p_value` is
        ``<= 1 - confidence`` (bisection, as the paper's ``get_eps_audit``).

    Returns
    -------
    float
        The lower bound; 0.0 when even epsilon 0 is not rejected (e.g. about half right).
    """
    m, r, v = _check_counts(num_canaries, num_guesses, num_correct)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must be in [0, 1], got {delta}")
    return _epsilon_lower_bound(m, r, v, float(delta), float(confidence))


@lru_cache(maxsize=4096)
def _epsilon_lower_bound(num_canaries: int, num_guesses: int, num_correct: int,
                         delta: float, confidence: float) -> float:
    level = 1.0 - confidence

    def rejected(eps: float, d: float) -> bool:
        return one_run_p_value(num_canaries=num_canaries, num_guesses=num_guesses,
                               num_correct=num_correct, epsilon=eps, delta=d) <= level

    if not rejected(0.0, 0.0):  # the delta term only adds to the p-value
        return 0.0
    # The delta = 0 bound is an upper bracket for the delta > 0 one (p-values only grow).
    hi = _bisect(lambda e: rejected(e, 0.0), 0.0)
    if delta == 0.0:
        return hi
    if not rejected(0.0, delta):
        return 0.0
    return _bisect(lambda e: rejected(e, delta), 0.0, hi)


def default_guess_counts(num_canaries: int) -> list[tuple[int, int]]:
    """Symmetric (k, k) for k = 10, 20, 50, 100, 200, 500, ... with 2k <= m, plus k = m // 2.

    Depends on ``m`` only, so it is fixed before any score is seen (as Bonferroni needs).
    """
    if num_canaries < 2:
        raise ValueError(f"need at least 2 canaries, got {num_canaries}")
    ks: list[int] = []
    decade = 10
    while True:
        fitting = [mant * decade for mant in _GRID_MANTISSAS if 2 * mant * decade <= num_canaries]
        ks.extend(fitting)
        if len(fitting) < len(_GRID_MANTISSAS):
            break
        decade *= 10
    if num_canaries // 2 not in ks:
        ks.append(num_canaries // 2)
    return [(k, k) for k in ks]


def audit_from_scores(scores: Sequence[float] | np.ndarray,
                      included: Sequence[bool] | np.ndarray, *, delta: float,
                      confidence: float = 0.95,
                      guess_counts: Sequence[int | tuple[int, int]] | None = None
                      ) -> AuditResult:
    """Best one-run lower bound over a grid of guess counts, valid at ``confidence``.

    The adversary guesses "included" for the ``k+`` highest scores, "excluded" for the
    ``k-`` lowest, and abstains on the rest (ties broken by canary index, a fixed rule).
    Every candidate (k+, k-) of the grid is tested, and the largest bound is reported.

    Choosing the best of several tests is a multiple comparison: reporting the maximum
    of bounds each valid at ``confidence`` would not itself be valid at ``confidence``.
    So each candidate is tested at the Bonferroni-corrected level
    ``1 - (1 - confidence) / len(grid)``; the union bound then makes the reported maximum
    a valid lower bound at ``confidence``. The grid must not depend on the scores (the
    default, :func:`default_guess_counts`, depends on ``m`` only).

    Parameters
    ----------
    scores : array of float, shape (m,)
        Canary scores, higher = more likely included.
    included : array of bool, shape (m,)
        The true inclusion bits (each drawn independently with probability 1/2).
    delta : float
        The delta of the (epsilon, delta)-DP hypothesis being audited.
    confidence : float
        Overall confidence of the reported bound.
    guess_counts : sequence of int or (k_plus, k_minus), optional
        The grid; an int ``k`` means ``(k, k)``. Default: :func:`default_guess_counts`.
    """
    s = np.asarray(scores, dtype=float).ravel()
    inc = np.asarray(included).ravel()
    if s.shape != inc.shape:
        raise ValueError(f"scores and included differ in length: {s.size} vs {inc.size}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    if inc.dtype != bool:
        if not np.all(np.isin(inc, (0, 1))):
            raise ValueError("included must be booleans or 0/1")
        inc = inc.astype(bool)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    m = int(s.size)
    grid = default_guess_counts(m) if guess_counts is None else _parse_grid(guess_counts, m)
    per_test = 1.0 - (1.0 - confidence) / len(grid)

    order = np.argsort(-s, kind="stable")  # highest score first; ties by index
    inc_sorted = inc[order]
    hits_top = np.concatenate(([0], np.cumsum(inc_sorted)))  # included among the top j
    out_bottom = np.concatenate(([0], np.cumsum(~inc_sorted[::-1])))  # excluded, bottom j

    best: AuditResult | None = None
    for k_plus, k_minus in grid:
        r = k_plus + k_minus
        v = int(hits_top[k_plus] + out_bottom[k_minus])
        eps = epsilon_lower_bound(num_canaries=m, num_guesses=r, num_correct=v,
                                  delta=delta, confidence=per_test)
        if best is None or eps > best.epsilon_lower:
            best = AuditResult(epsilon_lower=eps, confidence=confidence, num_canaries=m,
                               num_guesses=r, num_correct=v, k_plus=k_plus,
                               k_minus=k_minus, delta=float(delta), num_tests=len(grid))
    assert best is not None
    return best


def gaussian_canary_scores(num_canaries: int, *, noise_multiplier: float,
                           dim: int | None = None, rng: np.random.Generator
                           ) -> tuple[np.ndarray, np.ndarray]:
    """The paper's idealized mechanism: a noisy sum of the included canaries, scored.

    Each canary is included with probability 1/2; the release is the sum of the included
    canaries plus N(0, sigma^2 I) (L2 sensitivity 1, so ``sigma = noise_multiplier``); a
    canary's score is its inner product with the release.

    ``dim=None`` uses one-hot canaries (canary i is the i-th basis vector of R^m): the
    score is then the canary's own coordinate, ``included_i + N(0, sigma^2)``, independent
    across canaries, computed without building the m x m matrix. An integer ``dim`` draws
    random unit vectors in R^dim (memory ``8 m dim`` bytes); their overlaps add
    interference between canaries, which only weakens the audit.

    Returns ``(scores, included)``, float64 and bool arrays of length ``num_canaries``.
    """
    if num_canaries < 1:
        raise ValueError(f"num_canaries must be >= 1, got {num_canaries}")
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    included = rng.random(num_canaries) < 0.5
    if dim is None:
        scores = included + noise_multiplier * rng.standard_normal(num_canaries)
        return scores.astype(float), included
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    canaries = rng.standard_normal((num_canaries, dim))
    canaries /= np.linalg.norm(canaries, axis=1, keepdims=True)
    release = canaries[included].sum(axis=0) + noise_multiplier * rng.standard_normal(dim)
    return canaries @ release, included


def gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """Exact epsilon at ``delta`` of one Gaussian mechanism with sensitivity 1.

    The analytic Gaussian mechanism (Balle & Wang 2018, Theorem 8): N(0, sigma^2) noise
    on a sensitivity-1 query is (eps, delta)-DP exactly when
    ``Phi(1/(2 sigma) - eps sigma) - e^eps Phi(-1/(2 sigma) - eps sigma) <= delta``;
    this returns the smallest such eps (0.0 if eps = 0 already satisfies it).
    """
    sigma = float(noise_multiplier)
    if sigma <= 0:
        raise ValueError(f"noise_multiplier must be > 0, got {noise_multiplier}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")

    def excess(eps: float) -> float:  # delta(eps) - delta, decreasing in eps
        a = 1.0 / (2.0 * sigma)
        first = stats.norm.cdf(a - eps * sigma)
        second = math.exp(eps + stats.norm.logcdf(-a - eps * sigma))
        return first - second - delta

    if excess(0.0) <= 0.0:
        return 0.0
    hi = 1.0
    while excess(hi) > 0.0:
        hi *= 2.0
    return float(optimize.brentq(excess, 0.0, hi, xtol=1e-12, rtol=1e-12))


def plot_score_distributions(scores: Sequence[float] | np.ndarray,
                             included: Sequence[bool] | np.ndarray, path: str | Path, *,
                             title: str, bins: int = 40) -> Path:
    """Write a PNG of two overlaid histograms: scores of included vs excluded canaries.

    Drawn with Pillow (matplotlib is not a dependency of this project), with axis labels,
    tick values, a legend and the title. Returns the path written.
    """
    from PIL import Image, ImageDraw, ImageFont

    s = np.asarray(scores, dtype=float).ravel()
    inc = np.asarray(included).ravel().astype(bool)
    if s.shape != inc.shape or s.size == 0:
        raise ValueError("scores and included must be non-empty and of equal length")
    lo, hi = float(np.min(s)), float(np.max(s))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    h_in, _ = np.histogram(s[inc], bins=edges)
    h_out, _ = np.histogram(s[~inc], bins=edges)
    top = max(int(h_in.max(initial=0)), int(h_out.max(initial=0)), 1)

    width, height = 800, 500
    left, right, top_px, bottom = 80, 30, 50, 70
    pw, ph = width - left - right, height - top_px - bottom
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img, "RGBA")
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()

    def x_px(value: float) -> float:
        return left + (value - lo) / (hi - lo) * pw

    def y_px(count: float) -> float:
        return top_px + ph - count / top * ph

    colors = {"excluded": (31, 119, 180, 140), "included": (214, 39, 40, 140)}
    for name, counts in (("excluded", h_out), ("included", h_in)):
        for j, c in enumerate(counts):
            if c > 0:
                draw.rectangle([x_px(edges[j]), y_px(c), x_px(edges[j + 1]), y_px(0)],
                               fill=colors[name])
    # Axes, ticks and labels.
    draw.line([(left, top_px), (left, top_px + ph), (left + pw, top_px + ph)], fill="black")
    for t in np.linspace(lo, hi, 6):
        x = x_px(t)
        draw.line([(x, top_px + ph), (x, top_px + ph + 5)], fill="black")
        draw.text((x, top_px + ph + 8), f"{t:.3g}", fill="black", font=font, anchor="mt")
    for t in np.linspace(0, top, 5):
        y = y_px(t)
        draw.line([(left - 5, y), (left, y)], fill="black")
        draw.text((left - 8, y), f"{t:.0f}", fill="black", font=font, anchor="rm")
    draw.text((left + pw / 2, height - 10), "canary score", fill="black", font=font, anchor="mb")
    draw.text((12, top_px + ph / 2), "count", fill="black", font=font, anchor="lm")
    draw.text((width / 2, 15), title, fill="black", font=font, anchor="mt")
    for row, name in enumerate(("included", "excluded")):
        n = int(inc.sum()) if name == "included" else int((~inc).sum())
        y0 = top_px + 5 + 20 * row
        draw.rectangle([left + pw - 150, y0, left + pw - 136, y0 + 14], fill=colors[name])
        draw.text((left + pw - 130, y0), f"{name} (n={n})", fill="black", font=font)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG")
    return out


def _check_counts(m: int, r: int, v: int) -> tuple[int, int, int]:
    m, r, v = int(m), int(r), int(v)
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= num_correct <= num_guesses <= num_canaries, "
                         f"got {v}, {r}, {m}")
    return m, r, v


def _bisect(rejected, lo: float, hi: float | None = None) -> float:
    """Largest eps in [lo, hi] with ``rejected(eps)``, given ``rejected(lo)``.

    Without ``hi``, doubles an upper bracket until it is not rejected (cap ``_EPS_CAP``).
    """
    if hi is None:
        hi = max(1.0, 2 * lo)
        while rejected(hi):
            if hi >= _EPS_CAP:
                return _EPS_CAP
            lo, hi = hi, min(2 * hi, _EPS_CAP)
    elif rejected(hi):
        return hi
    while hi - lo > _EPS_TOL:
        mid = 0.5 * (lo + hi)
        if rejected(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _parse_grid(guess_counts: Sequence[int | tuple[int, int]], m: int) -> list[tuple[int, int]]:
    grid: list[tuple[int, int]] = []
    for item in guess_counts:
        if isinstance(item, (tuple, list)):
            k_plus, k_minus = (int(x) for x in item)
        else:
            k_plus = k_minus = int(item)
        if k_plus < 0 or k_minus < 0 or k_plus + k_minus == 0 or k_plus + k_minus > m:
            raise ValueError(f"guess counts ({k_plus}, {k_minus}) do not fit {m} canaries")
        grid.append((k_plus, k_minus))
    if not grid:
        raise ValueError("guess_counts is empty")
    return grid
