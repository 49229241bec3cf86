"""The classes' spread for the warm start: a DP release of low-resolution second moments
around each class's released mean, and the Gaussian draws the server pretrains on.

The warm start's first release gives one central image per class. Pretrained on those alone
(plus pixel jitter and shifts), the generator learns one point per class and DP-SGD must
teach it all of the class's variation (brightness, size, position, shape); with a few dozen
DP steps per site it does not, and the synthetic images keep the pull towards the mean.
This release adds what varies, at low resolution:

* each record's deviation from its class's *released* (noised) mean, area-downsampled to
  ``side`` x ``side`` (:data:`SPREAD_SIZE`) per channel: a vector ``z`` of
  ``d = channels * side^2`` block means, clipped to L2 norm :data:`SPREAD_CLIP`. The centre is
  a function of the site's earlier release only, so it is public once that release is out;
* per class, the sum of ``z z^T`` over its records (upper triangle with the diagonal, ``d (d +
  1) / 2`` numbers). Adding or removing one record changes one class's block by ``z z^T``,
  whose Frobenius norm is ``|z|^2 <= SPREAD_CLIP^2``; the upper triangle's L2 norm is at most
  that. Noise ``N(0, (sigma * SPREAD_CLIP^2)^2)`` on every released number is a Gaussian
  mechanism with noise multiplier ``sigma``, recorded in the site's ledger before it leaves.

The server sums the sites' releases, divides by the classes' noised counts and keeps the
principal components whose eigenvalue stands out of the release noise's (a spiked Wigner
matrix: :func:`spread_components`). Pretraining images are the central image plus a Gaussian draw
in those components, upsampled to full size (:func:`draw_images`): post-processing.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from fedaug.privacy.noise import NoiseSource

__all__ = ["MIN_COUNT", "SPREAD_CLIP", "SPREAD_SIZE", "draw_images", "lowres",
           "noise_second_moments", "second_moments", "spread_components", "spread_side",
           "unpack"]

#: Side of the low-resolution deviations (block means) whose second moments are released.
SPREAD_SIZE = 7
#: L2 bound on one record's low-resolution deviation (block means on the [-1, 1] scale).
SPREAD_CLIP = 2.0
#: Smallest value a noised class count takes before it divides a released sum (a noised count
#: can be small or negative): the site's centres and the server's means, spread and class
#: prior all floor it here.
MIN_COUNT = 5.0


def spread_side(image_size: int) -> int:
    """The side of the released deviations for images of ``image_size``."""
    return min(SPREAD_SIZE, int(image_size))


def lowres(x: torch.Tensor, side: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C * side * side): area-downsampled block means."""
    if x.shape[-1] != side:
        x = F.interpolate(x, size=(side, side), mode="area")
    return x.flatten(1)


def second_moments(x: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor, *,
                   num_classes: int, side: int, clip: float = SPREAD_CLIP) -> torch.Tensor:
    """Per class, the upper triangle of the sum of ``z z^T`` (K, d (d + 1) / 2), float64.

    ``x`` (N, C, H, W) in [-1, 1], ``centres`` (K, C, h, w) the released class means at any
    side >= ``side``; ``z`` is a record's low-resolution deviation from its class's centre,
    clipped to L2 norm ``clip``."""
    z = lowres(x.double(), side) - lowres(centres.double(), side)[labels]
    norms = z.norm(dim=1, keepdim=True).clamp(min=1e-12)
    z = z * (clip / norms).clamp(max=1.0)
    d = z.shape[1]
    rows, cols = torch.triu_indices(d, d)
    out = torch.zeros(num_classes, len(rows), dtype=torch.float64)
    for c in range(num_classes):
        zc = z[labels == c]
        if len(zc):
            out[c] = (zc.T @ zc)[rows, cols]
    return out


def noise_second_moments(m2: torch.Tensor, *, noise_multiplier: float, noise: NoiseSource,
                         clip: float = SPREAD_CLIP) -> tuple[torch.Tensor, float]:
    """The Gaussian mechanism on the second moments (L2 sensitivity ``clip^2``): the noised
    moments and the noise std on each of them. Draws from ``noise`` only."""
    std = noise_multiplier * clip * clip
    return m2 + noise.normal(tuple(m2.shape), std=std, dtype=torch.float64), std


def unpack(upper: np.ndarray, d: int) -> np.ndarray:
    """An upper triangle with the diagonal (d (d + 1) / 2,) -> the symmetric (d, d) matrix."""
    rows, cols = np.triu_indices(d)
    out = np.zeros((d, d))
    out[rows, cols] = upper
    out[cols, rows] = upper
    return out


def spread_components(m2: np.ndarray, counts: np.ndarray, noise_std: float, *, rank: int,
                      min_count: float = MIN_COUNT) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class, the principal components the release resolves: ``(U (d, r), scale (r,))``
    with ``r <= rank``; a draw is ``U @ (scale * N(0, I))``.

    ``m2`` (K, T) the second moments summed over the sites, ``counts`` (K,) the noised class
    counts summed over the sites, ``noise_std`` the std of the summed noise on each entry.
    The noise is a symmetric Gaussian (Wigner) matrix with entries of std ``a / sqrt(d)``,
    ``a = sqrt(d) noise_std / count`` on the covariance: its eigenvalues fill ``[-2a, 2a]``,
    and a component of true variance ``v > a`` shows as an eigenvalue ``v + a^2 / v`` along a
    direction whose overlap with the true one is ``1 - a^2 / v^2`` (the spiked Wigner model).
    An eigenvalue above ``2a`` is inverted to ``v`` and the component kept with the variance
    ``v - a^2 / v`` the covariance has along the estimated direction; the others are noise."""
    t = m2.shape[1]
    d = int(round((math.sqrt(8 * t + 1) - 1) / 2))
    out = []
    for c in range(m2.shape[0]):
        n = max(float(counts[c]), min_count)
        cov = unpack(m2[c], d) / n
        values, vectors = np.linalg.eigh(cov)
        values, vectors = values[::-1], vectors[:, ::-1]
        a = math.sqrt(d) * noise_std / n
        top = values[:rank]
        keep = top > 2 * a
        v = (top[keep] + np.sqrt(top[keep] ** 2 - 4 * a * a)) / 2
        out.append((np.ascontiguousarray(vectors[:, :rank][:, keep]),
                    np.sqrt(np.maximum(v - a * a / np.maximum(v, 1e-12), 0.0))))
    return out


def draw_images(means: np.ndarray, components: list[tuple[np.ndarray, np.ndarray]], *,
                per_class: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` images per class: the central image (K, C, H, W) in [-1, 1] plus a
    Gaussian deviation in the class's components, upsampled (bilinear) from the release's
    side; clamped to [-1, 1]. Returns (images, labels)."""
    k, c, h, w = means.shape
    images, labels = [], []
    for cls, (vectors, scale) in enumerate(components):
        base = torch.from_numpy(np.asarray(means[cls], dtype=np.float32)).expand(per_class, c, h, w)
        if len(scale):
            side = int(round(math.sqrt(vectors.shape[0] / c)))
            coef = torch.randn(per_class, len(scale), generator=generator) * torch.from_numpy(
                scale.astype(np.float32))
            dev = (coef @ torch.from_numpy(vectors.T.astype(np.float32))).reshape(
                per_class, c, side, side)
            dev = F.interpolate(dev, size=(h, w), mode="bilinear", align_corners=False)
            base = base + dev
        images.append(base.clamp(-1, 1))
        labels.append(torch.full((per_class,), cls, dtype=torch.long))
    return torch.cat(images), torch.cat(labels)
