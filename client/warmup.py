"""A site's warm-up release: per-class pixel sums and counts under the Gaussian mechanism.

The server averages the released sums of all sites into DP "central images" (one per class)
and pretrains the generator on them before DP-SGD starts (a DP-FETA-style warm start; the
pretraining is post-processing and costs nothing more). Each example ``x`` in ``[-1, 1]^D``
changes the concatenated (class sums, class counts) vector by at most ``sqrt(D + 1)`` in L2
when it is added or removed, so noise ``N(0, (sigma * sqrt(D + 1))^2)`` on every coordinate
is a Gaussian mechanism with noise multiplier ``sigma``, recorded as one entry
``(sigma, sample_rate=1, steps=1)`` in the site's ledger before anything leaves.
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
from fedaug.privacy.planner import (
    WARMUP_MAX_SHARE,
    WARMUP_MAX_SIGMA,
    warmup_noise_multiplier,
)

__all__ = ["release_class_sums", "WARMUP_FILE"]

log = logging.getLogger("fedaug.client")
WARMUP_FILE = "warmup-release.pt"
def release_class_sums(*, site: SiteContext, run: RunConfig, noise_multiplier: float,
                       num_classes: int, image_size: int, channels: int, run_id: str,
                       release_size: int | None = None) -> dict[str, np.ndarray] | None:
    """Noised ``class-sums`` (K, D) and ``class-counts`` (K,), or None if the budget forbids.

    The noise multiplier is the server's ``noise_multiplier`` or, where that would spend more
    than half of the budget left, the larger one that spends half
    (:func:`fedaug.privacy.planner.warmup_noise_multiplier`). ``release_size`` < ``image_size`` sums
    area-downsampled images instead: each pixel is still in ``[-1, 1]``, so the bound
    ``sqrt(D + 1)`` holds with the smaller D, and the noise per pixel shrinks with the side.
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
    sigma = warmup_noise_multiplier(noise_multiplier, planner)
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
    std = noise_multiplier * math.sqrt(flat.shape[1] + 1.0)
    noise = site.noise_source()
    sums += noise.normal(tuple(sums.shape), std=std, dtype=torch.float64)
    counts += noise.normal(tuple(counts.shape), std=std, dtype=torch.float64)
    release = {"class-sums": sums.float().numpy(), "class-counts": counts.float().numpy()}
    ledger.append(mechanism="gaussian", noise_multiplier=noise_multiplier, sample_rate=1.0,
                  steps=1, run=run_id, round=0, release="warm-start")
    buf = io.BytesIO()
    torch.save({"run": run_id, "release": release}, buf)
    atomic_write_bytes(path, buf.getvalue())
    log.info("%s: warm-up release of class sums (sigma %.2f), epsilon now %.3f", site.name,
             noise_multiplier, ledger.epsilon())
    return release
