"""The classes' spread: the warm start's second release and what the server makes of it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedaug.generator.spread import (
    SPREAD_CLIP,
    draw_images,
    noise_second_moments,
    second_moments,
    spread_components,
    unpack,
)
from fedaug.privacy.noise import NoiseSource


def test_one_record_moves_the_release_by_at_most_the_clip_squared():
    """From the adversary's side: the worst record (every pixel at the far bound from its
    centre) moves its class's released numbers by exactly SPREAD_CLIP^2 in L2, the
    sensitivity the noise is calibrated to, and no other class's."""
    centres = -torch.ones(3, 1, 28, 28)
    x = torch.ones(1, 1, 28, 28)
    m2 = second_moments(x, torch.tensor([1]), centres, num_classes=3, side=7)
    assert m2.shape == (3, 49 * 50 // 2)
    assert float(m2[1].norm()) <= SPREAD_CLIP ** 2 + 1e-9
    assert float(m2[0].abs().sum()) == 0 and float(m2[2].abs().sum()) == 0
    # the full symmetric matrix's Frobenius norm is |z|^2 = SPREAD_CLIP^2 (clipped)
    assert np.linalg.norm(unpack(m2[1].numpy(), 49)) == pytest.approx(SPREAD_CLIP ** 2)


def test_the_release_noise_is_the_stated_multiple_of_the_sensitivity():
    sigma = 2.0
    noised, std = noise_second_moments(torch.zeros(2, 5000, dtype=torch.float64),
                                       noise_multiplier=sigma, noise=NoiseSource.for_tests(1))
    assert std == pytest.approx(sigma * SPREAD_CLIP ** 2)
    assert float(noised.std()) == pytest.approx(std, rel=0.02)


def _release(records: torch.Tensor, labels: torch.Tensor, *, sigma: float, seed: int):
    centres = torch.zeros(2, 1, 7, 7)
    m2 = second_moments(records, labels, centres, num_classes=2, side=7)
    return noise_second_moments(m2, noise_multiplier=sigma, noise=NoiseSource.for_tests(seed))


def test_a_strong_component_is_found_and_pure_noise_is_not():
    g = torch.Generator().manual_seed(0)
    d, n = 49, 3000
    direction = torch.randn(d, generator=g, dtype=torch.float64)
    direction /= direction.norm()
    # class 0: variance 0.5 along one direction; class 1: nothing but a constant
    records = torch.cat([(torch.randn(n, 1, generator=g, dtype=torch.float64) * math.sqrt(0.5))
                         * direction, torch.zeros(n, d, dtype=torch.float64)]).reshape(2 * n, 1, 7, 7)
    labels = torch.cat([torch.zeros(n), torch.ones(n)]).long()
    noised, std = _release(records, labels, sigma=2.0, seed=3)
    comps = spread_components(noised.numpy(), np.array([n, n], dtype=float), std, rank=8)
    (u0, s0), (u1, s1) = comps
    assert len(s0) == 1 and len(s1) == 0
    assert abs(float(u0[:, 0] @ direction.numpy())) > 0.95
    assert s0[0] == pytest.approx(math.sqrt(0.5), rel=0.15)


def test_draws_vary_around_the_central_image_and_stay_in_range():
    means = np.zeros((2, 1, 28, 28), dtype=np.float32)
    vector = np.ones((49, 1)) / 7.0
    comps = [(vector, np.array([0.5])), (np.zeros((49, 0)), np.zeros(0))]
    images, labels = draw_images(means, comps, per_class=400,
                                 generator=torch.Generator().manual_seed(0))
    assert images.shape == (800, 1, 28, 28) and labels.tolist() == [0] * 400 + [1] * 400
    assert float(images.abs().max()) <= 1.0
    # class 0 moves as a whole (one component: brightness), with the stated std per block
    block = images[:400].mean(dim=(1, 2, 3))
    assert float(block.std()) == pytest.approx(0.5 / 7.0, rel=0.15)
    assert float(images[400:].abs().max()) == 0.0  # no component: the central image itself
