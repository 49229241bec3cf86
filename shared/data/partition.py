"""Split a labelled data set across federated sites: IID, label skew, quantity skew."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedaug.errors import ConfigError, DataError

__all__ = [
    "PARTITION_SCHEMES",
    "label_histogram",
    "partition",
    "partition_dirichlet",
    "partition_iid",
    "partition_quantity",
]

PARTITION_SCHEMES = ("iid", "dirichlet", "quantity")
_MAX_TRIES = 100


def _check_alpha(alpha: float) -> None:
    ok = isinstance(alpha, (int, float, np.floating, np.integer)) and not isinstance(
        alpha, bool
    )
    if not (ok and np.isfinite(alpha) and alpha > 0):
        raise ConfigError(
            "alpha must be a finite number > 0.",
            value=alpha,
            fix="Use e.g. 0.1 (strong skew), 0.5 (moderate) or 100 (nearly IID).",
        )


def _check(
    labels, num_sites: int, min_size: int, alpha: float | None = None
) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            "labels must be a 1-D array of integers.",
            value=(str(labels.dtype), labels.shape),
            fix="Pass dataset.labels.",
        )
    if (
        isinstance(num_sites, bool)
        or not isinstance(num_sites, (int, np.integer))
        or num_sites < 1
    ):
        raise ConfigError("num_sites must be an integer >= 1.", value=num_sites)
    if (
        isinstance(min_size, bool)
        or not isinstance(min_size, (int, np.integer))
        or min_size < 1
    ):
        raise ConfigError("min_size must be an integer >= 1.", value=min_size)
    if alpha is not None:
        _check_alpha(alpha)
    if num_sites * min_size > len(labels):
        raise ConfigError(
            f"Cannot give {num_sites} sites at least {min_size} example(s) each "
            f"from {len(labels)} examples.",
            value=num_sites,
            fix="Use fewer sites, a smaller min_size or a larger data set.",
        )
    return labels


def _finish(parts: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def partition_iid(
    labels: Sequence[int] | np.ndarray, num_sites: int, *, seed: int
) -> list[np.ndarray]:
    """Shuffle the examples and deal them into ``num_sites`` near-equal parts.

    Returns
    -------
    list of np.ndarray
        One sorted ``int64`` index array per site; together a partition of ``range(N)``.
    """
    labels = _check(labels, num_sites, 1)
    perm = np.random.default_rng(seed).permutation(len(labels))
    return _finish(np.array_split(perm, num_sites))


def partition_dirichlet(
    labels: Sequence[int] | np.ndarray,
    num_sites: int,
    *,
    alpha: float,
    seed: int,
    min_size: int = 2,
) -> list[np.ndarray]:
    """Label-skewed split: each class is shared out over sites with ``Dir(alpha)`` proportions.

    Parameters
    ----------
    labels : array of int, shape (N,)
        Class of every example.
    num_sites : int
        Number of sites, >= 1.
    alpha : float
        Dirichlet concentration, > 0; small values give each site few classes.
    seed : int
        Seed; the same seed gives the same split.
    min_size : int, default 2
        Every site gets at least this many examples. Draws are repeated up to
        100 times until this holds; a ``ConfigError`` says so if it never does.

    Returns
    -------
    list of np.ndarray
        One sorted ``int64`` index array per site; together a partition of ``range(N)``.
    """
    labels = _check(labels, num_sites, min_size, alpha)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(_MAX_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
        for idx in by_class:
            idx = rng.permutation(idx)
            share = rng.dirichlet(np.full(num_sites, alpha))
            cuts = (np.cumsum(share)[:-1] * len(idx)).astype(np.int64)
            for site, chunk in enumerate(np.split(idx, cuts)):
                parts[site].append(chunk)
        merged = [np.concatenate(p) for p in parts]
        if min(len(p) for p in merged) >= min_size:
            return _finish(merged)
    raise ConfigError(
        f"Dirichlet split left a site with fewer than {min_size} examples in "
        f"{_MAX_TRIES} draws ({len(labels)} examples, {num_sites} sites).",
        value=alpha,
        fix="Raise alpha, use fewer sites or lower min_size.",
    )


def partition_quantity(
    labels: Sequence[int] | np.ndarray,
    num_sites: int,
    *,
    alpha: float,
    seed: int,
    min_size: int = 2,
) -> list[np.ndarray]:
    """Quantity-skewed split: site sizes follow ``Dir(alpha)``, labels IID within a site.

    Each site first gets ``min_size`` examples; the rest are drawn multinomially
    with ``Dir(alpha)`` proportions, so the request never needs retrying.

    Returns
    -------
    list of np.ndarray
        One sorted ``int64`` index array per site; together a partition of ``range(N)``.
    """
    labels = _check(labels, num_sites, min_size, alpha)
    rng = np.random.default_rng(seed)
    share = rng.dirichlet(np.full(num_sites, alpha))
    sizes = min_size + rng.multinomial(len(labels) - num_sites * min_size, share)
    perm = rng.permutation(len(labels))
    return _finish(np.split(perm, np.cumsum(sizes)[:-1]))


def partition(
    labels: Sequence[int] | np.ndarray,
    num_sites: int,
    *,
    scheme: str = "dirichlet",
    alpha: float = 0.5,
    seed: int = 0,
    min_size: int = 2,
) -> list[np.ndarray]:
    """Split examples across sites with the named scheme.

    Parameters
    ----------
    labels : array of int, shape (N,)
        Class of every example.
    num_sites : int
        Number of sites, >= 1.
    scheme : {"iid", "dirichlet", "quantity"}, default "dirichlet"
        IID, label skew (Dirichlet over classes) or quantity skew (Dirichlet sizes).
    alpha : float, default 0.5
        Dirichlet concentration, > 0 (ignored by ``"iid"``).
    seed : int, default 0
        Seed; the same seed gives the same split.
    min_size : int, default 2
        Smallest site for the Dirichlet schemes (``"iid"`` only needs 1).

    Returns
    -------
    list of np.ndarray
        One sorted ``int64`` index array per site; together a partition of ``range(N)``.
    """
    if scheme not in PARTITION_SCHEMES:
        raise ConfigError(
            "Unknown partition scheme.",
            value=scheme,
            fix=f"Use one of {', '.join(PARTITION_SCHEMES)}.",
        )
    _check_alpha(alpha)
    if scheme == "iid":
        return partition_iid(labels, num_sites, seed=seed)
    if scheme == "dirichlet":
        return partition_dirichlet(
            labels, num_sites, alpha=alpha, seed=seed, min_size=min_size
        )
    return partition_quantity(
        labels, num_sites, alpha=alpha, seed=seed, min_size=min_size
    )


def label_histogram(
    labels: Sequence[int] | np.ndarray, parts: Sequence[np.ndarray], num_classes: int
) -> np.ndarray:
    """Count the examples of each class at each site.

    Returns
    -------
    np.ndarray
        ``int64`` array of shape ``(len(parts), num_classes)``.
    """
    labels = np.asarray(labels)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"labels must lie in [0, {num_classes}).",
            value=(int(labels.min()), int(labels.max())),
            fix="Pass num_classes=dataset.num_classes.",
        )
    hist = np.zeros((len(parts), num_classes), dtype=np.int64)
    for site, idx in enumerate(parts):
        hist[site] = np.bincount(
            labels[np.asarray(idx, dtype=np.int64)], minlength=num_classes
        )
    return hist
