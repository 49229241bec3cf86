"""Institution-level (central) DP at the server: each site's whole update is protected from
whoever gets the global model, given a trusted server.

Each round, every site's update (its parameters minus the global model it received) is
clipped to ``C`` in L2; the clipped updates are summed, Gaussian noise of std ``sigma * C``
is added, and the noisy sum is divided by a FIXED denominator ``W``, the expected number of
sites per round (McMahan et al. 2018, "Learning differentially private recurrent language
models"). Adding or removing one site moves the sum by at most ``C``, so each round is a
Gaussian mechanism with noise multiplier ``sigma`` whatever the number of replies; dividing
by the number of replies instead would make the sensitivity ``2C / m`` with a data-dependent
``m``. The server chooses its sites, so no sampling amplification is claimed (rate 1).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from fedaug.privacy import NoiseSource

__all__ = ["clipped_updates", "central_dp_mean"]


def clipped_updates(records: list[ArrayRecord], reference: ArrayRecord, *,
                    clip_norm: float) -> list[dict[str, np.ndarray]]:
    """Each site's update (record minus reference), scaled down to L2 norm ``clip_norm``."""
    ref = {k: v.numpy().astype(np.float64) for k, v in reference.items()}
    out = []
    for record in records:
        delta = {k: record[k].numpy().astype(np.float64) - ref[k] for k in ref}
        norm = float(np.sqrt(sum(float(np.sum(d * d)) for d in delta.values())))
        scale = min(1.0, clip_norm / max(norm, 1e-12))
        out.append({k: d * scale for k, d in delta.items()})
    return out


def central_dp_mean(records: list[ArrayRecord], reference: ArrayRecord, *, clip_norm: float,
                    noise_multiplier: float, denominator: float,
                    noise: NoiseSource) -> ArrayRecord:
    """The new global model: reference + (sum of clipped updates + N(0, (sigma C)^2)) / W.

    Floating parameters get noise; integer buffers (none in our UNet) keep the reference.
    """
    updates = clipped_updates(records, reference, clip_norm=clip_norm)
    out = {}
    for k, ref in reference.items():
        base = ref.numpy()
        if not np.issubdtype(base.dtype, np.floating):
            out[k] = Array(base)
            continue
        total = sum(u[k] for u in updates) if updates else np.zeros(base.shape)
        total = total + noise.normal(base.shape, std=noise_multiplier * clip_norm).double().numpy()
        out[k] = Array((base.astype(np.float64) + total / denominator).astype(base.dtype))
    return ArrayRecord(out)
