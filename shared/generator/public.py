"""Public images for the server's first pretraining: patches of the photographs that ship with
scikit-learn (``sklearn.datasets.load_sample_images``: a building in China and a flower).

No site's data is involved, so training on them costs no privacy. They are meant to teach the
UNet what denoising any image takes (edges, smooth regions, texture at every scale) before it
sees the sites' DP releases, so DP-SGD's few steps can go to the sites' own images: an idea,
not a measurement; docs/dp-recipe.md ("Public pretraining") has what was measured.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

__all__ = ["public_images"]


def _photos() -> list[Image.Image]:
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(np.asarray(img)) for img in load_sample_images().images]


def public_images(count: int, *, size: int, channels: int, seed: int = 0) -> torch.Tensor:
    """``count`` patches of the public photographs as (count, channels, size, size) in
    [-1, 1]: square crops of random side (from ``size`` to half the photo's height) at random
    places, resized to ``size`` with antialiasing, randomly mirrored; grayscale (ITU-R 601
    luma) for one channel. Fully determined by ``seed``."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    rng = np.random.default_rng(seed)
    photos = [p.convert("L") if channels == 1 else p for p in _photos()]
    out = np.empty((count, size, size, channels), dtype=np.uint8)
    for i in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        w, h = photo.size
        side = int(rng.integers(size, max(size, h // 2) + 1))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        patch = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.LANCZOS)
        arr = np.asarray(patch).reshape(size, size, channels)
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        out[i] = arr
    x = torch.from_numpy(out).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x.contiguous()
