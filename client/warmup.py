"""A site's warm-up release: per-class pixel sums and counts under the Gaussian mechanism.

The server averages the released sums of all sites into DP "central images" (one per class)
and pretrains the generator on them before DP-SGD starts (a DP-FETA-style warm start; the
pretraining is post-processing and costs nothing more).

The mechanism: each example ``x`` in ``[-1, 1]^D`` adds ``x`` to its class's row of the sums
and 1 to its class's count. The counts enter the released vector with a weight ``w``
(:func:`count_weight`): adding or removing one example changes (class sums, ``w`` * class
counts) by at most ``sqrt(D + w^2)`` in L2, so noise ``N(0, (sigma * sqrt(D + w^2))^2)`` on
every coordinate of that vector is a Gaussian mechanism with noise multiplier ``sigma``,
recorded as one entry ``(sigma, sample_rate=1, steps=1)`` in the site's ledger before
anything leaves. Dividing the weighted counts by ``w`` (post-processing) releases counts
with noise ``sigma * sqrt(D + w^2) / w``.

Why ``w = D ** 0.25``: the server's central image of a class is ``sums / count``, whose
error per pixel is about ``(e_sum - m * e_count) / count`` for a pixel mean ``m``; its
variance, ``sigma^2 (D + w^2) (1 + m^2 / w^2) / count^2``, is smallest at ``w^2 = |m|
sqrt(D)``, so ``w = D ** 0.25`` for the brightest pixels (``|m| = 1``). At 28 x 28 it adds
1.7 % to the pixel sums' noise and divides the counts' noise by 5.2 (``w = 1``, an
unweighted count, gave noise 56 on a count at ``sigma = 2``: a class of 150 records could
come out anywhere from 40 to 260, and the class prior and every central image's scale with
it).

A second, optional release (the server's ``warmup-spread`` > 0) gives the classes' spread:
the noised second moments of each record's low-resolution deviation from its class's
*released* mean (:mod:`fedaug.generator.spread`: L2 sensitivity ``SPREAD_CLIP^2``), with
noise multiplier :data:`fedaug.privacy.planner.SPREAD_NOISE_RATIO` times the class sums',
recorded as a second ledger entry (``warm-start-spread``) before anything leaves. Both ride
in one reply.
"""

from __future__ import annotations

import io
import logging
import math

import numpy as np
import torch

from fedaug.atomic import atomic_write_bytes
from fedaug.client.site import SiteContext, check_fits, load_site_data, open_ledger
from fedaug.client.train import images_to_tensor
from fedaug.config import RunConfig
from fedaug.errors import ConfigError
from fedaug.generator.spread import (
    MIN_COUNT,
    noise_second_moments,
    second_moments,
    spread_side,
)
from fedaug.privacy.noise import NoiseSource
from fedaug.privacy.planner import (
    WARMUP_MAX_SHARE,
    WARMUP_MAX_SIGMA,
    warmup_noise_multipliers,
)

__all__ = ["release_class_sums", "noise_class_sums", "count_weight", "WARMUP_FILE"]

log = logging.getLogger("fedaug.client")
WARMUP_FILE = "warmup-release.pt"


def count_weight(num_pixels: int) -> float:
    """The weight ``w = D ** 0.25`` of the class counts in the release (module docstring)."""
    return float(num_pixels) ** 0.25


def noise_class_sums(sums: torch.Tensor, counts: torch.Tensor, *, noise_multiplier: float,
                     noise: NoiseSource) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The Gaussian mechanism on (``sums`` (K, D), ``w`` * ``counts`` (K,)), L2 sensitivity
    ``sqrt(D + w^2)``, returned as noised sums, noised counts (the weighted counts divided
    by ``w``) and the noise std on the sums, ``sigma * sqrt(D + w^2)`` (that over ``w`` on
    the counts). Draws from ``noise`` only."""
    d = sums.shape[1]
    w = count_weight(d)
    std = noise_multiplier * math.sqrt(d + w * w)
    noised_sums = sums + noise.normal(tuple(sums.shape), std=std, dtype=torch.float64)
    weighted = w * counts + noise.normal(tuple(counts.shape), std=std, dtype=torch.float64)
    return noised_sums, weighted / w, std


def release_class_sums(*, site: SiteContext, run: RunConfig, noise_multiplier: float,
                       num_classes: int, image_size: int, channels: int, run_id: str,
                       release_size: int | None = None, spread: bool = False
                       ) -> dict[str, np.ndarray] | None:
    """Noised ``class-sums`` (K, D) and ``class-counts`` (K,) and the sums' ``noise-std``
    (1,), or None if the budget forbids; with ``spread``, also the classes' noised
    low-resolution second moments ``class-spread`` (K, d (d + 1) / 2) and their
    ``spread-noise-std`` (1,) (:mod:`fedaug.generator.spread`).

    The noise multiplier is the server's ``noise_multiplier`` or, where that would spend more
    than half of the budget left, the larger one that spends half
    (:func:`fedaug.privacy.planner.warmup_noise_multiplier`). With ``spread`` the second
    release gets :data:`fedaug.privacy.planner.SPREAD_NOISE_RATIO` (1) times it, and the
    half-budget cap applies to the two together: two Gaussian mechanisms of multipliers
    ``s1`` and ``s2`` compose exactly like one of ``(s1^-2 + s2^-2)^-1/2``.
    ``release_size`` < ``image_size`` sums
    area-downsampled images instead: each pixel is still in ``[-1, 1]``, so the bound
    ``sqrt(D + w^2)`` holds with the smaller D, and the noise per pixel shrinks with the side.
    Released once per run: a repeated request gets the same stored release (free).
    """
    if release_size is not None and not 1 <= release_size <= image_size:
        raise ConfigError("The warm-up release size must be between 1 and the image size.",
                          value=release_size, fix=f"Set warmup-size to 0 (= {image_size}) or "
                          f"a side in 1..{image_size} on the server.")
    path = site.state_dir / WARMUP_FILE
    try:
        stored = torch.load(path, map_location="cpu", weights_only=False)
        if stored.get("run") == run_id:
            return stored["release"]
    except (OSError, RuntimeError, EOFError, ValueError):
        pass
    data = load_site_data(site, run)
    check_fits(site, data, channels=channels, num_classes=num_classes)
    ledger, planner = open_ledger(site, data)
    sigmas = warmup_noise_multipliers(noise_multiplier, planner, spread=spread)
    sigma = None if sigmas is None else sigmas[0]
    if sigma is None:
        log.warning("%s: declines the warm-up release: even noise multiplier %g would spend "
                    "more than %.0f%% of the budget left (epsilon %.3f of %.2f).", site.name,
                    WARMUP_MAX_SIGMA, 100 * WARMUP_MAX_SHARE, ledger.epsilon(),
                    site.epsilon_budget)
        return None
    if sigma != noise_multiplier:
        log.info("%s: warm-up release with noise multiplier %.2f instead of %.2f, to spend at "
                 "most %.0f%% of the budget left", site.name, sigma, noise_multiplier,
                 100 * WARMUP_MAX_SHARE)
    noise_multiplier = sigma
    x = images_to_tensor(data.images)
    if x.shape[-1] != image_size:
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear",
                                            align_corners=False)
    if release_size is not None and release_size < image_size:
        x = torch.nn.functional.interpolate(x, size=(release_size, release_size), mode="area")
    flat = x.flatten(1).double()
    y = torch.from_numpy(data.labels).long()
    sums = torch.zeros(num_classes, flat.shape[1], dtype=torch.float64).index_add_(0, y, flat)
    counts = torch.bincount(y, minlength=num_classes).double()
    sums, counts, std = noise_class_sums(sums, counts, noise_multiplier=noise_multiplier,
                                         noise=site.noise_source())
    # the noise std is the mechanism's public parameter: the server denoises with it
    release = {"class-sums": sums.float().numpy(), "class-counts": counts.float().numpy(),
               "noise-std": np.array([std], dtype=np.float32)}
    ledger.append(mechanism="gaussian", noise_multiplier=noise_multiplier, sample_rate=1.0,
                  steps=1, run=run_id, round=0, release="warm-start")
    if spread:  # centred on the release just made: public from here on
        side = spread_side(min(release_size or image_size, image_size))
        centres = (sums / counts.clamp(min=MIN_COUNT)[:, None]).reshape(
            num_classes, *x.shape[1:])
        m2 = second_moments(x, y, centres, num_classes=num_classes, side=side)
        spread_sigma = sigmas[1]
        m2, spread_std = noise_second_moments(m2, noise_multiplier=spread_sigma,
                                              noise=site.noise_source())
        release["class-spread"] = m2.float().numpy()
        release["spread-noise-std"] = np.array([spread_std], dtype=np.float32)
        ledger.append(mechanism="gaussian", noise_multiplier=spread_sigma, sample_rate=1.0,
                      steps=1, run=run_id, round=0, release="warm-start-spread")
    buf = io.BytesIO()
    torch.save({"run": run_id, "release": release}, buf)
    atomic_write_bytes(path, buf.getvalue())
    log.info("%s: warm-up release of class sums%s (sigma %.2f), epsilon now %.3f", site.name,
             " and spread" if spread else "", noise_multiplier, ledger.epsilon())
    return release
