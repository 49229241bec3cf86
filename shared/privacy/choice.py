"""The exponential mechanism: a private choice among candidates scored on private data.

``Pr[i] ∝ exp(epsilon * score_i / (2 * sensitivity))`` is ``epsilon``-DP (pure; McSherry &
Talwar 2007) when no score moves by more than ``sensitivity`` between neighbouring data
sets. The draw comes from the secret :class:`~fedaug.privacy.NoiseSource`: a choice drawn
from a generator the server can reproduce would be a deterministic function of the data.
Floating-point sampling is not hardened against the side channels of Mironov (2012) or
Ilvento (2020).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedaug.errors import ConfigError
from fedaug.privacy.noise import NoiseSource

__all__ = ["selection_probabilities", "private_choice"]


def selection_probabilities(scores: np.ndarray, *, epsilon: float, sensitivity: float = 1.0) -> np.ndarray:
    """Closed-form probabilities of :func:`private_choice`: softmax of ``eps * s / (2 * sens)``."""
    s = _check_scores(scores)
    epsilon, sensitivity = _check_mechanism(epsilon, sensitivity)
    logits = epsilon * s / (2.0 * sensitivity)
    w = np.exp(logits - logits.max())
    return w / w.sum()


def private_choice(
    scores: np.ndarray, *, epsilon: float, sensitivity: float = 1.0, noise: NoiseSource
) -> int:
    """Pick an index with the exponential mechanism: ``Pr[i] ∝ exp(eps * s_i / (2 * sens))``.

    This is ``epsilon``-DP (pure) when no score can move by more than ``sensitivity`` between
    neighbouring data sets (McSherry & Talwar 2007). For validation accuracies the default 1
    is a sound, conservative bound: one added, removed or changed training record can
    change the trained classifier arbitrarily, and can move a record between the train and
    validation parts, but an accuracy stays in ``[0, 1]``, so it moves by at most 1. Release
    only the returned index; the scores stay at the site.

    The index is drawn by inverse CDF from :func:`selection_probabilities` (a softmax
    computed without overflow at any ``epsilon``) on one uniform of ``noise``.

    Parameters
    ----------
    scores : np.ndarray
        Finite utilities ``(K,)``, K >= 1.
    epsilon : float
        Privacy parameter, finite and >= 0 (0 gives the uniform choice).
    sensitivity : float, default 1.0
        Largest change of any score between neighbouring data sets (> 0).
    noise : NoiseSource
        The mechanism's secret randomness.

    Returns
    -------
    int
        The chosen index in ``[0, K)``.
    """
    probabilities = selection_probabilities(scores, epsilon=epsilon, sensitivity=sensitivity)
    if not isinstance(noise, NoiseSource):
        raise ConfigError("noise must be a NoiseSource.", value=noise,
                          fix="Pass noise=NoiseSource() (fresh OS entropy).")
    return noise.choice(probabilities)


def _check_scores(scores: Any) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)):
        raise ConfigError("scores must be a non-empty 1-D array of finite numbers.",
                          value=scores, fix="Pass the output of score_candidates.")
    return s


def _check_mechanism(epsilon: Any, sensitivity: Any) -> tuple[float, float]:
    if not _finite(epsilon) or epsilon < 0:
        raise ConfigError("epsilon must be a finite number >= 0.", value=epsilon,
                          fix="Use e.g. epsilon=1.0 (the pure-DP cost of this choice).")
    if not _finite(sensitivity) or sensitivity <= 0:
        raise ConfigError("sensitivity must be a finite number > 0.", value=sensitivity,
                          fix="Use 1.0 for scores in [0, 1].")
    return float(epsilon), float(sensitivity)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and (
        math.isfinite(x)
    )
