"""Fidelity of synthetic images: Frechet distance and k-NN precision / recall on CNN features,
and plain pixel statistics (brightness, contrast, fine detail) per class."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import scipy.linalg

from fedaug.errors import ConfigError, DataError
from fedaug.evaluate.classifier import _check_images

__all__ = [
    "FeatureExtractor",
    "fidelity_report",
    "frechet_distance",
    "pixel_statistics",
    "precision_recall",
]

#: Largest imaginary part (relative to the largest real entry) tolerated in sqrtm's output.
_IMAG_TOL = 1e-3
#: Rows per block when computing pairwise distances (bounds memory to block x N floats).
_CHUNK = 1024


class FeatureExtractor(Protocol):
    """Anything with ``features(images) -> (N, D)``, such as a trained ``Classifier``."""

    def features(self, images: np.ndarray) -> np.ndarray: ...


def _check_feats(feats: Any, *, name: str, min_rows: int) -> np.ndarray:
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or len(feats) < min_rows:
        raise DataError(
            f"`{name}` must be a 2-D array (N, D) with N >= {min_rows}.",
            value=feats.shape,
            fix="pass one feature vector per row, with enough rows.",
        )
    if not np.all(np.isfinite(feats)):
        raise DataError(
            f"`{name}` contains NaN or infinite values.",
            value=int(np.sum(~np.isfinite(feats))),
            fix="check the feature extractor's input images.",
        )
    return feats


def _check_same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise DataError(
            "Both feature sets must have the same dimension D.",
            value=(a.shape[1], b.shape[1]),
            fix="extract both sets with the same feature extractor.",
        )


def _sqrtm(matrix: np.ndarray) -> tuple[np.ndarray, bool]:
    """``scipy.linalg.sqrtm`` plus whether the input was singular or the result not finite."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
        try:
            root = scipy.linalg.sqrtm(matrix)
        except scipy.linalg.LinAlgWarning:
            return np.full_like(matrix, np.nan), True
    return root, not np.all(np.isfinite(root))


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, *, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (the FID formula).

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``, with ``scipy.linalg.sqrtm``.
    When the product is singular (scipy warns, or the root is not finite) ``eps * I`` is
    added to both covariances; a complex square root whose imaginary part exceeds 1e-3 of its real
    scale is refused, a smaller one is dropped.

    Parameters
    ----------
    feats_a, feats_b : numpy.ndarray
        Features (N_a, D) and (N_b, D), each with at least 2 rows.
    eps : float, default 1e-6
        Diagonal offset used when the covariance product is singular.

    Returns
    -------
    float
        The distance (>= 0; 0 for identical sets).
    """
    a = _check_feats(feats_a, name="feats_a", min_rows=2)
    b = _check_feats(feats_b, name="feats_b", min_rows=2)
    _check_same_dim(a, b)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    covmean, singular = _sqrtm(cov_a @ cov_b)
    if singular:
        offset = eps * np.eye(len(cov_a))
        covmean, singular = _sqrtm((cov_a + offset) @ (cov_b + offset))
        if singular:
            raise DataError(
                f"The covariance product stays singular after adding eps={eps} * I.",
                value=eps,
                fix="pass a larger eps, or features with fewer constant dimensions.",
            )
    if np.iscomplexobj(covmean):
        scale = max(1.0, float(np.max(np.abs(covmean.real))))
        if np.max(np.abs(covmean.imag)) > _IMAG_TOL * scale:
            raise DataError(
                "The covariance square root has a large imaginary part (degenerate features).",
                value=float(np.max(np.abs(covmean.imag))),
                fix="use more samples than feature dimensions, or a larger eps.",
            )
        covmean = covmean.real
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean)
    return float(max(value, 0.0))


def _distance_blocks(
    queries: np.ndarray, refs: np.ndarray, *, chunk: int = _CHUNK
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, D)`` with ``D[i, j] = |queries[start + i] - refs[j]|`` (float64)."""
    ref_sq = np.einsum("ij,ij->i", refs, refs)
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        sq = np.einsum("ij,ij->i", q, q)[:, None] + ref_sq[None, :] - 2.0 * (q @ refs.T)
        yield start, np.sqrt(np.maximum(sq, 0.0))


def _knn_radii(feats: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row to its k-th nearest other row."""
    radii = np.empty(len(feats))
    for start, dist in _distance_blocks(feats, feats):
        # Column k of the sorted row is the k-th neighbour: column 0 is the point itself.
        radii[start : start + len(dist)] = np.partition(dist, k, axis=1)[:, k]
    return radii


def _coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray) -> float:
    """Fraction of ``queries`` inside the union of balls ``B(manifold[i], radii[i])``."""
    inside = np.zeros(len(queries), dtype=bool)
    for start, dist in _distance_blocks(queries, manifold):
        inside[start : start + len(dist)] = np.any(dist <= radii[None, :], axis=1)
    return float(np.mean(inside))


def precision_recall(real_feats: np.ndarray, fake_feats: np.ndarray, *, k: int = 3) -> dict:
    """Improved precision and recall (Kynkaanniemi et al., NeurIPS 2019).

    Each set's manifold is the union of balls around its points, each ball reaching the
    point's k-th nearest neighbour in the same set. Precision is the fraction of fake
    samples inside the real manifold (are the fakes realistic?); recall is the fraction of
    real samples inside the fake manifold (do the fakes cover the real data?).

    Parameters
    ----------
    real_feats, fake_feats : numpy.ndarray
        Features (N_real, D) and (N_fake, D), each with more than ``k`` rows.
    k : int, default 3
        Neighbourhood size (the paper uses 3).

    Returns
    -------
    dict
        ``precision`` and ``recall``, floats in [0, 1].
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError("`k` must be an int >= 1.", value=k, fix="use k=3 as in the paper.")
    real = _check_feats(real_feats, name="real_feats", min_rows=k + 1)
    fake = _check_feats(fake_feats, name="fake_feats", min_rows=k + 1)
    _check_same_dim(real, fake)
    return {
        "precision": _coverage(real, _knn_radii(real, k), fake),
        "recall": _coverage(fake, _knn_radii(fake, k), real),
    }


def _scores(real: np.ndarray, fake: np.ndarray, k: int) -> dict:
    return {
        "frechet-distance": frechet_distance(real, fake),
        **precision_recall(real, fake, k=k),
    }


def pixel_statistics(images: np.ndarray) -> dict[str, float]:
    """Brightness, contrast and fine detail of uint8 images (N, H, W, C), in grey levels.

    ``mean``: the mean grey level; ``contrast``: the mean over images of each image's
    standard deviation; ``detail``: the mean over images of the variance of each image's
    4-neighbour Laplacian (interior pixels, channels averaged first), the energy of the
    finest detail, which blur removes and a CNN can key on.
    """
    images = _check_images(images)
    grey = images.astype(np.float64).mean(axis=3)
    lap = (4 * grey[:, 1:-1, 1:-1] - grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1]
           - grey[:, 1:-1, :-2] - grey[:, 1:-1, 2:])
    return {"mean": float(grey.mean()), "contrast": float(grey.std(axis=(1, 2)).mean()),
            "detail": float(lap.var(axis=(1, 2)).mean())}


def fidelity_report(
    extractor: FeatureExtractor,
    real_images: np.ndarray,
    real_labels: np.ndarray,
    fake_images: np.ndarray,
    fake_labels: np.ndarray,
    *,
    k: int = 3,
    progress: Callable[[int], object] | None = None,
) -> dict:
    """Frechet distance, precision and recall overall and per class.

    Parameters
    ----------
    extractor : Classifier
        Supplies ``features(images)``; normally a CNN trained on the real train split.
        No downloaded Inception weights are used, so values are comparable only between
        runs that share the extractor.
    real_images, fake_images : numpy.ndarray
        uint8 (N, H, W, C) images of the extractor's input shape.
    real_labels, fake_labels : numpy.ndarray
        int labels (N,), aligned with the images.
    k : int, default 3
        Neighbourhood size for precision / recall.
    progress : callable, optional
        Called as ``progress(1)`` after each class and after the overall scores (one
        more call than there are classes in either set), e.g. a tqdm bar's ``update``.

    Returns
    -------
    dict
        ``frechet-distance``, ``precision``, ``recall`` over all images; ``per-class``:
        ``{class: {frechet-distance, precision, recall, num-real, num-fake, pixels}}`` for
        every class found in either set (the three scores are NaN when either side has
        ``k`` or fewer images of that class; ``pixels`` holds :func:`pixel_statistics` of
        the ``real`` and ``synthetic`` images of the class); ``detail-ratio``: synthetic over
        real fine detail over all images (1 when the synthetic images are as sharp as the
        real ones); ``extractor``: what produced the features.
        A class with fewer images than feature dimensions (D = 64 for the default CNN)
        gets a biased, noisy Frechet distance: compare such values only between sets of
        equal size.
    """
    real_images = _check_images(real_images, name="real_images")
    fake_images = _check_images(fake_images, name="fake_images")
    real_labels, fake_labels = np.asarray(real_labels), np.asarray(fake_labels)
    for name, labels, images in (
        ("real_labels", real_labels, real_images),
        ("fake_labels", fake_labels, fake_images),
    ):
        if labels.shape != (len(images),):
            raise DataError(
                f"`{name}` must have shape ({len(images)},), one label per image.",
                value=labels.shape,
                fix="pass flat labels aligned with the images (labels.ravel()).",
            )
    real = np.asarray(extractor.features(real_images), dtype=np.float64)
    fake = np.asarray(extractor.features(fake_images), dtype=np.float64)
    per_class = {}
    for c in np.union1d(real_labels, fake_labels).tolist():
        r, f = real[real_labels == c], fake[fake_labels == c]
        if min(len(r), len(f)) > k:
            scores = _scores(r, f, k)
        else:
            scores = dict.fromkeys(("frechet-distance", "precision", "recall"), float("nan"))
        pixels = {name: pixel_statistics(imgs[lab == c]) if (lab == c).any() else None
                  for name, imgs, lab in (("real", real_images, real_labels),
                                          ("synthetic", fake_images, fake_labels))}
        per_class[int(c)] = {**scores, "num-real": len(r), "num-fake": len(f), "pixels": pixels}
        if progress is not None:
            progress(1)
    real_detail = pixel_statistics(real_images)["detail"]
    overall = _scores(real, fake, k)
    if progress is not None:
        progress(1)
    return {
        **overall,
        "detail-ratio": (pixel_statistics(fake_images)["detail"] / real_detail
                         if real_detail > 0 else float("nan")),
        "per-class": per_class,
        "extractor": getattr(extractor, "description", type(extractor).__name__),
    }
