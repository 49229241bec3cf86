"""The public pretraining images: patches of scikit-learn's sample photographs."""

from __future__ import annotations

import pytest
import torch

from fedaug.generator.public import public_images


@pytest.mark.parametrize("channels", [1, 3])
def test_public_patches_are_varied_images_in_the_models_range(channels):
    x = public_images(64, size=28, channels=channels, seed=0)

    assert x.shape == (64, channels, 28, 28) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    # real image content, not a constant or noise: each patch varies, neighbours correlate
    assert (x.flatten(1).std(dim=1) > 0).float().mean() > 0.9
    a, b = x[..., :, :-1].flatten(), x[..., :, 1:].flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.8
    # no two patches alike
    flat = x.flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(64) * 1e9).min() > 0.1


def test_public_patches_follow_the_seed():
    assert torch.equal(public_images(8, size=16, channels=1, seed=3),
                       public_images(8, size=16, channels=1, seed=3))
    assert not torch.equal(public_images(8, size=16, channels=1, seed=3),
                           public_images(8, size=16, channels=1, seed=4))


def test_public_patches_need_one_or_three_channels():
    with pytest.raises(ValueError, match="channels"):
        public_images(2, size=16, channels=2)
