"""A site's private policy search: score data-independent candidates on its own records with
a small proxy CNN, then release only the index the exponential mechanism picks.

Privacy. The scores are a function of the site's records and never leave the site; the
chosen index does, so it is paid for. Scores are accuracies in ``[0, 1]``; under any
neighbouring relation (one record added, removed or replaced) every score moves by at most
1, whatever the training does, so the sensitivity is 1 and the choice is ``epsilon``-DP
(:func:`fedaug.privacy.choice.private_choice`). The candidates and the proxy's split and
training seeds are data-independent, so they cost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedaug.augment import Policy, numpy_augmenter
from fedaug.augment.candidates import candidate_policies
from fedaug.augment.schema import check_seed
from fedaug.errors import ConfigError, DataError, PolicyError
from fedaug.privacy import NoiseSource
from fedaug.privacy.choice import _check_mechanism, private_choice

__all__ = ["score_candidates", "search_site_policy"]


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
    policy.

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

    seed = check_seed(seed)
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
            lr=lr, seed=int(train_seed), augment=numpy_augmenter(cand, int(aug_seed)),
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


def search_site_policy(
    images: np.ndarray,
    labels: np.ndarray,
    base: Policy,
    *,
    num_classes: int,
    epsilon: float,
    seed: int,
    noise: NoiseSource,
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
        Pure-DP cost of the release; record it in the site's ledger before the index
        leaves the site.
    seed : int
        Seeds the candidates and the scoring (replayable, data-independent). It does NOT
        seed the mechanism.
    noise : NoiseSource
        The mechanism's secret randomness.
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
    return private_choice(scores, epsilon=epsilon, noise=noise), candidates
