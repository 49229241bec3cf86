"""Differentially private, federated search over data-independent augmentation policies.

The site step (:func:`search_site_policy`) is: derive a fixed list of candidate policies
from the base policy without looking at any data (:func:`candidate_policies`), score each
by the validation accuracy of a small proxy CNN trained with it (:func:`score_candidates`),
and release only the index chosen by the exponential mechanism (:func:`private_choice`).
The server combines the sites' indices by a weighted vote (:func:`combine_choices`).

Privacy. The scores are a function of the site's records and never leave the site; the
chosen index does, so it is a release of private information and is paid for. Scores are
accuracies in ``[0, 1]``; under any neighbouring relation (one record added, removed or
replaced) every score moves by at most 1, whatever the training does, so the sensitivity
is 1 and the exponential mechanism with ``Pr[i] ∝ exp(epsilon * score_i / 2)`` is
``epsilon``-DP (pure; McSherry & Talwar 2007). The candidates, the split seed and the
training seed are data-independent, so they cost nothing. :func:`pure_dp_rdp` gives the RDP
curve the site's ledger composes with its DP-SGD spending. Rounds compose: a site that
searches every round spends ``epsilon`` every round.

Two caveats the caller owns: the mechanism's random generator must be secret from the
server (a generator seeded with the run seed makes the choice a deterministic function of
the data and voids the guarantee; :func:`search_site_policy` draws fresh OS entropy unless
told otherwise), and floating-point sampling is not hardened against the side channels of
Mironov (2012) or Ilvento (2020).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fedaug.errors import ConfigError, DataError, PolicyError

from .batched import BatchAugmenter
from .ops import ImageOp, Op, _Field
from .policy import MAX_MAGNITUDE, Policy, Sampling

__all__ = [
    "SCALE_FACTORS",
    "candidate_labels",
    "candidate_policies",
    "score_candidates",
    "selection_probabilities",
    "private_choice",
    "combine_choices",
    "pure_dp_rdp",
    "search_site_policy",
]

#: Factors applied to every op's probability and range (about the op's identity), in the
#: order the scaled candidates appear (after the base and the no-augmentation policy).
SCALE_FACTORS = (0.5, 1.5, 2.0)
#: Fixed candidates: base, none, one per scale factor, the sampling variant.
_FIXED = ("base", "none", *(f"x{f:g}" for f in SCALE_FACTORS), "sampling")
#: Random extra candidates (beyond the fixed ones) draw their scale factor in this range.
_EXTRA_SCALE = (0.25, 2.5)


# ------------------------------------------------------------------------------ candidates


def candidate_labels(num_candidates: int = 6) -> list[str]:
    """Short names of the candidates :func:`candidate_policies` returns, in order.

    ``base``, ``none``, ``x0.5``, ``x1.5``, ``x2``, ``sampling``, then ``random-1``,
    ``random-2``, ... for the seeded extras.
    """
    _check_num_candidates(num_candidates)
    extra = [f"random-{i}" for i in range(1, num_candidates - len(_FIXED) + 1)]
    return [*_FIXED, *extra][:num_candidates]


def candidate_policies(base: Policy, *, num_candidates: int = 6, seed: int = 0) -> list[Policy]:
    """Derive candidate policies from ``base`` alone (no data is read).

    Parameters
    ----------
    base : Policy
        An image policy with at least one op.
    num_candidates : int, default 6
        At least 2. The first six are fixed (the first ``num_candidates`` of them are
        used when fewer are asked for): the base itself; no augmentation; the base with
        every op's ``p`` and range scaled by 0.5, 1.5 and 2 about the op's identity
        (:data:`SCALE_FACTORS`; values clamped to each field's bounds); and the sampling
        variant: a base without sampling gets RandAugment (``num_ops = min(2, len(ops))``,
        magnitude 30, i.e. the ops' own ranges), a base with sampling gets it removed.
        Beyond six, each extra candidate scales the base by a factor drawn in
        ``[0.25, 2.5]`` and samples with RandAugment or TrivialAugment, ``num_ops`` and
        magnitude drawn too, all from ``seed``.
    seed : int, default 0
        Seeds the extra candidates only; the same base, count and seed give the same list.

    Returns
    -------
    list of Policy
        ``num_candidates`` valid image policies (named by :func:`candidate_labels`).

    Raises
    ------
    PolicyError
        ``base`` is not an image policy or has no ops.
    ConfigError
        ``num_candidates`` or ``seed`` is invalid.
    """
    _check_base(base)
    _check_num_candidates(num_candidates)
    seed = _check_seed(seed)
    out = [base, Policy(modality="image")]
    out += [_scaled(base, f, base.sampling) for f in SCALE_FACTORS]
    if base.sampling is None:
        sampling = Sampling("randaugment", num_ops=min(2, len(base.ops)), magnitude=MAX_MAGNITUDE)
        out.append(Policy(modality="image", ops=base.ops, sampling=sampling))
    else:
        out.append(Policy(modality="image", ops=base.ops))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EA7C4]))
    while len(out) < num_candidates:
        factor = float(rng.uniform(*_EXTRA_SCALE))
        kind = ("randaugment", "trivialaugment")[int(rng.integers(2))]
        num_ops = int(rng.integers(1, len(base.ops) + 1))
        magnitude = round(float(rng.uniform(5.0, MAX_MAGNITUDE)), 3)
        out.append(_scaled(base, factor, Sampling(kind, num_ops=num_ops, magnitude=magnitude)))
    return out[:num_candidates]


def _scaled(base: Policy, factor: float, sampling: Sampling | None) -> Policy:
    return Policy(modality="image", ops=tuple(_scale_op(op, factor) for op in base.ops),
                  sampling=sampling)


def _scale_op(op: Op, factor: float) -> Op:
    """``op`` with ``p`` times ``factor`` and every range moved about its identity."""
    kwargs: dict[str, Any] = {}
    for name, spec in type(op).FIELDS.items():
        value = getattr(op, name)
        ident = 0.0 if name == "p" else _field_identity(op, name)
        if spec.kind == "number":
            kwargs[name] = _clamp(ident + factor * (value - ident), spec)
        else:
            kwargs[name] = tuple(_clamp(ident + factor * (v - ident), spec) for v in value)
    return type(op)(**kwargs)


def _field_identity(op: Op, name: str) -> float:
    """The value of field ``name`` that leaves an image unchanged.

    Single numbers (``limit``, ``shear``, ``translate``) are largest deviations from 0;
    a range's identity is the op's ``IDENTITY`` of the same name (``factor`` 1, ``sigma``
    0, ``std`` 0, ``gamma`` 1) or 1 for a ``scale`` (crop fraction, zoom).
    """
    spec = type(op).FIELDS[name]
    if spec.kind == "number":
        return 0.0
    identity = getattr(type(op), "IDENTITY", {})
    if name in identity:
        return float(identity[name])
    if name == "scale":
        return 1.0
    raise PolicyError(  # pragma: no cover - guards a future op
        [f"ops.{op.op}.{name}: no known identity value, so this op cannot be scaled"],
        fix="Teach fedaug.augment.search._field_identity the op's identity value.",
    )


def _clamp(x: float, spec: _Field) -> float:
    """Round to 6 decimals and clamp into bounds (an open lower bound keeps 1% of the span)."""
    lo = spec.lo + 0.01 * (spec.hi - spec.lo) if spec.lo_open else spec.lo
    return float(min(spec.hi, max(lo, round(x, 6))))  # round: 1.2, not 1.2000000000000002


# --------------------------------------------------------------------------------- scoring


def score_candidates(
    images: np.ndarray,
    labels: np.ndarray,
    candidates: Sequence[Policy],
    *,
    num_classes: int,
    seed: int = 0,
    val_fraction: float = 0.25,
    epochs: int = 3,
    batch_size: int = 16,
    lr: float = 5e-3,
) -> np.ndarray:
    """Validation accuracy of the proxy CNN trained with each candidate (private: keep local).

    One stratified split of the site's data (``val_fraction`` of each class, at least one
    example of each class kept for training) is drawn from ``seed``; every candidate trains
    :func:`fedaug.evaluate.classifier.train_classifier` on the same train part with the
    same initialisation, batch order and augmentation stream, so scores differ only by the
    policy. Six candidates on 300 8x8 digits take about 3 s on one (shared) CPU core.

    Parameters
    ----------
    images : np.ndarray
        uint8 ``(N, H, W, C)``.
    labels : np.ndarray
        int ``(N,)`` in ``[0, num_classes)``.
    candidates : sequence of Policy
        Image policies, e.g. from :func:`candidate_policies`.
    num_classes : int
        Number of classes (>= 2).
    seed : int, default 0
        Seeds the split, the training and the augmentation.
    val_fraction : float, default 0.25
        Fraction of each class held out for validation, in ``(0, 1)``.
    epochs, batch_size, lr : int, int, float, default 3, 16, 5e-3
        Proxy training settings.

    Returns
    -------
    np.ndarray
        float64 ``(len(candidates),)`` accuracies in ``[0, 1]``.

    Raises
    ------
    DataError
        Malformed data, or too few examples to hold any out for validation.
    PolicyError
        A candidate is not an image policy.
    """
    from fedaug.evaluate.classifier import classification_report, train_classifier

    seed = _check_seed(seed)
    if not isinstance(val_fraction, (int, float)) or isinstance(val_fraction, bool) or not (
        0.0 < val_fraction < 1.0
    ):
        raise ConfigError("val_fraction must lie strictly between 0 and 1.", value=val_fraction,
                          fix="Use e.g. 0.25.")
    candidates = list(candidates)
    if not candidates:
        raise ConfigError("candidates must not be empty.", value=candidates,
                          fix="Pass candidate_policies(base).")
    for i, cand in enumerate(candidates):
        if not isinstance(cand, Policy) or cand.modality != "image":
            raise PolicyError([f"candidates.{i}: must be an image Policy, got {cand!r:.60}"])
    images = np.asarray(images)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError("labels must be an integer array (N,) aligned with the images.",
                        value=f"{labels.dtype} {labels.shape} for {len(images)} images",
                        fix="Pass one integer label per image (flatten (N, 1) labels).")
    split_seed, train_seed, aug_seed = np.random.SeedSequence([seed, 0xA06]).generate_state(3)
    train_idx, val_idx = _stratified_split(labels, val_fraction, int(split_seed))
    x_train, y_train = images[train_idx], labels[train_idx]
    x_val, y_val = images[val_idx], labels[val_idx]
    scores = np.empty(len(candidates))
    for i, cand in enumerate(candidates):
        clf = train_classifier(
            x_train, y_train, num_classes=num_classes, epochs=epochs, batch_size=batch_size,
            lr=lr, seed=int(train_seed), augment=_augmenter(cand, int(aug_seed)),
        )
        scores[i] = classification_report(clf, x_val, y_val)["accuracy"]
    return scores


def _stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(int(math.floor(len(idx) * val_fraction + 0.5)), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    if val_idx.size == 0:
        raise DataError(
            "too few examples to hold any out for validation (each class keeps one for training).",
            value=f"{len(labels)} examples",
            fix="Skip the policy search at this site, or raise val_fraction.",
        )
    return np.sort(np.concatenate(train)), val_idx


def _augmenter(policy: Policy, seed: int):
    """A uint8 (n, H, W, C) -> uint8 batch callable with its own seeded stream, or None."""
    if not policy.ops:
        return None
    aug = BatchAugmenter(policy)
    gen = torch.Generator().manual_seed(seed)

    def augment(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
        return aug(x, generator=gen).permute(0, 2, 3, 1).contiguous().numpy()

    return augment


# ------------------------------------------------------------------------------- mechanism


def selection_probabilities(scores: np.ndarray, *, epsilon: float, sensitivity: float = 1.0) -> np.ndarray:
    """Closed-form probabilities of :func:`private_choice`: softmax of ``eps * s / (2 * sens)``."""
    s = _check_scores(scores)
    epsilon, sensitivity = _check_mechanism(epsilon, sensitivity)
    logits = epsilon * s / (2.0 * sensitivity)
    w = np.exp(logits - logits.max())
    return w / w.sum()


def private_choice(
    scores: np.ndarray, *, epsilon: float, sensitivity: float = 1.0, rng: np.random.Generator
) -> int:
    """Pick an index with the exponential mechanism: ``Pr[i] ∝ exp(eps * s_i / (2 * sens))``.

    This is ``epsilon``-DP (pure) when no score can move by more than ``sensitivity`` between
    neighbouring data sets (McSherry & Talwar 2007). For validation accuracies the default 1
    is a sound, conservative bound: one added, removed or changed training record can
    change the trained classifier arbitrarily, and can move a record between the train and
    validation parts, but an accuracy stays in ``[0, 1]``, so it moves by at most 1. Release
    only the returned index; the scores stay at the site.

    Sampling uses the Gumbel-max trick (``argmax(logit_i + Gumbel_i)``), which draws exactly
    from the softmax above without overflow at any ``epsilon``.

    Parameters
    ----------
    scores : np.ndarray
        Finite utilities ``(K,)``, K >= 1.
    epsilon : float
        Privacy parameter, finite and >= 0 (0 gives the uniform choice).
    sensitivity : float, default 1.0
        Largest change of any score between neighbouring data sets (> 0).
    rng : np.random.Generator
        The mechanism's randomness; must be unknown to whoever sees the index.

    Returns
    -------
    int
        The chosen index in ``[0, K)``.
    """
    s = _check_scores(scores)
    epsilon, sensitivity = _check_mechanism(epsilon, sensitivity)
    if not isinstance(rng, np.random.Generator):
        raise ConfigError("rng must be a numpy Generator.", value=rng,
                          fix="Pass rng=np.random.default_rng() (fresh OS entropy).")
    logits = epsilon * s / (2.0 * sensitivity)
    return int(np.argmax(logits + rng.gumbel(size=s.shape)))


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


# ------------------------------------------------------------------------------ server side


def combine_choices(choices: Sequence[int], weights: Sequence[float], num_candidates: int) -> int:
    """The server's weighted vote over the sites' chosen indices.

    Parameters
    ----------
    choices : sequence of int
        One index in ``[0, num_candidates)`` per site.
    weights : sequence of float
        One finite weight >= 0 per site (e.g. ``num-examples``), not all zero.
    num_candidates : int
        Number of candidates (>= 1).

    Returns
    -------
    int
        The index with the largest total weight; ties go to the lowest index.
    """
    _check_num_candidates(num_candidates, minimum=1)
    choices, weights = list(choices), list(weights)
    if not choices or len(weights) != len(choices):
        raise ConfigError("need one weight per choice and at least one choice.",
                          value=f"{len(choices)} choices, {len(weights)} weights",
                          fix="Pass the sites' indices and their num-examples, aligned.")
    for c in choices:
        if not isinstance(c, (int, np.integer)) or isinstance(c, bool) or not 0 <= c < num_candidates:
            raise ConfigError(f"every choice must be an integer in [0, {num_candidates}).",
                              value=c, fix="Drop the reply of the site that sent it.")
    for w in weights:
        if not _finite(w) or w < 0:
            raise ConfigError("every weight must be a finite number >= 0.", value=w,
                              fix="Use the sites' example counts.")
    if math.fsum(weights) <= 0:
        raise ConfigError("weights must not all be zero.", value=weights,
                          fix="Use the sites' example counts.")
    totals = np.zeros(num_candidates)
    for c, w in zip(choices, weights, strict=True):
        totals[int(c)] += float(w)
    return int(np.argmax(totals))  # first maximum: lowest index wins a tie


# ---------------------------------------------------------------------------------- privacy


def pure_dp_rdp(epsilon: float, orders: Sequence[float]) -> np.ndarray:
    """RDP of a pure ``epsilon``-DP mechanism at each order: ``min(eps, alpha * eps**2 / 2)``.

    Pure ``eps``-DP bounds every Renyi divergence by ``eps`` (the max-divergence), and
    implies ``eps**2 / 2``-zCDP (Bun & Steinke 2016, "Concentrated Differential Privacy:
    Simplifications, Extensions, and Lower Bounds", Prop. 1.4), i.e. RDP ``alpha * eps**2
    / 2`` at every order ``alpha > 1``; the minimum of the two holds.

    Parameters
    ----------
    epsilon : float
        Finite, >= 0.
    orders : sequence of float
        RDP orders, each > 1 (e.g. Opacus's ``RDPAccountant.DEFAULT_ALPHAS``).

    Returns
    -------
    np.ndarray
        float64 ``(len(orders),)``, never above ``epsilon``; add it to the ledger's curve.
    """
    if not _finite(epsilon) or epsilon < 0:
        raise ConfigError("epsilon must be a finite number >= 0.", value=epsilon,
                          fix="Pass the epsilon spent by private_choice.")
    a = np.asarray(orders, dtype=np.float64)
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 1):
        raise ConfigError("orders must be a non-empty list of finite numbers > 1.", value=orders,
                          fix="Use opacus.accountants.RDPAccountant.DEFAULT_ALPHAS.")
    from fedaug.privacy.accounting import pure_dp_rdp as _ledger_curve

    return _ledger_curve(float(epsilon), a)


# -------------------------------------------------------------------------------- site step


def search_site_policy(
    images: np.ndarray,
    labels: np.ndarray,
    base: Policy,
    *,
    num_classes: int,
    epsilon: float,
    seed: int,
    rng: np.random.Generator | None = None,
    num_candidates: int = 6,
    epochs: int = 3,
) -> tuple[int, list[Policy]]:
    """One site's private policy search: candidates, local scores, exponential mechanism.

    Parameters
    ----------
    images, labels : np.ndarray
        The site's training data (uint8 ``(N, H, W, C)``, int ``(N,)``).
    base : Policy
        The current global image policy.
    num_classes : int
        Number of classes.
    epsilon : float
        Pure-DP cost of the release; record it in the site's ledger (:func:`pure_dp_rdp`)
        before the index leaves the site.
    seed : int
        Seeds the candidates and the scoring (replayable, data-independent). It does NOT
        seed the mechanism.
    rng : np.random.Generator, optional
        The mechanism's randomness. None (default) draws 128 bits of OS entropy; pass a
        seeded generator only in tests, since a generator the server can reproduce voids
        the privacy of the choice.
    num_candidates, epochs : int, default 6, 3
        Passed to :func:`candidate_policies` and :func:`score_candidates`.

    Returns
    -------
    tuple
        ``(index, candidates)``: send only ``index``; the server rebuilds the same
        candidates with :func:`candidate_policies` from the base and seed.
    """
    _check_mechanism(epsilon, 1.0)  # refuse a bad epsilon before spending compute
    candidates = candidate_policies(base, num_candidates=num_candidates, seed=seed)
    scores = score_candidates(images, labels, candidates, num_classes=num_classes, seed=seed,
                              epochs=epochs)
    if rng is None:
        rng = np.random.default_rng(secrets.randbits(128))
    return private_choice(scores, epsilon=epsilon, rng=rng), candidates


# -------------------------------------------------------------------------------- checking


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and (
        math.isfinite(x)
    )


def _check_seed(seed: Any) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ConfigError("seed must be an integer >= 0.", value=seed, fix="Pass seed=<int>.")
    return int(seed)


def _check_num_candidates(n: Any, *, minimum: int = 2) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < minimum:
        raise ConfigError(f"num_candidates must be an integer >= {minimum}.", value=n,
                          fix="Use the default 6.")


def _check_base(base: Any) -> None:
    if not isinstance(base, Policy) or base.modality != "image":
        raise PolicyError([f"base: must be an image Policy, got {base!r:.60}"],
                          fix="Search image policies only; start from Policy.default('image').")
    if not base.ops:
        raise PolicyError(["base.ops: the base policy has no ops, so every candidate would be "
                           "'no augmentation'"], fix="Start from Policy.default('image').")
    if not all(isinstance(op, ImageOp) for op in base.ops):  # pragma: no cover - Policy checks
        raise PolicyError(["base.ops: every op must be an image op"])
