"""Tests of the image augmentation engine: invariants, batched == per-image, statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.augment import (
    Affine,
    BatchAugmenter,
    Brightness,
    Contrast,
    CropResize,
    Gamma,
    GaussianBlur,
    GaussianNoise,
    HFlip,
    Policy,
    Rotate,
    Sampling,
    VFlip,
    apply_policy,
    distribution_shift,
    draw_params,
    format_shift_report,
)
from shared.errors import DataError

ALL_IMAGE_OPS = (
    Rotate(p=0.8), HFlip(), VFlip(), CropResize(p=0.8), Affine(), GaussianBlur(),
    Brightness(p=0.8, factor=(0.5, 1.8)), Contrast(p=0.8, factor=(0.5, 1.8)), Gamma(),
    GaussianNoise(std=(0.0, 0.1)),
)


def _images(channels: int, dtype: str, n: int = 8) -> np.ndarray:
    rng = np.random.default_rng(channels)
    u8 = rng.integers(0, 256, (n, 18, 22, channels), dtype=np.uint8)
    return u8 if dtype == "uint8" else u8.astype(np.float32) / 255.0


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_shape_dtype_and_range_are_kept(channels: int, dtype: str) -> None:
    # Prepare
    images = _images(channels, dtype)
    policy = Policy(ops=ALL_IMAGE_OPS)

    # Execute
    per_image = apply_policy(policy, images, seed=1)
    batched = BatchAugmenter(policy)(_nchw(images), generator=torch.Generator().manual_seed(1))

    # Assert
    assert per_image.shape == images.shape and per_image.dtype == images.dtype
    assert tuple(batched.shape) == _nchw(images).shape and batched.dtype == _nchw(images).dtype
    top = 255 if dtype == "uint8" else 1.0
    assert per_image.min() >= 0 and per_image.max() <= top
    assert batched.min() >= 0 and batched.max() <= top
    assert not np.array_equal(per_image, images)


@pytest.mark.parametrize("sampling", [None, Sampling("randaugment", 3, 20), Sampling("trivialaugment", 1, 30)])
def test_batched_engine_matches_the_per_image_path(sampling: Sampling | None) -> None:
    # Prepare: gray uint8 and RGB float, every op
    policy = Policy(ops=ALL_IMAGE_OPS, sampling=sampling)
    gray, rgb = _images(1, "uint8", n=16), _images(3, "float32", n=16)

    # Execute
    ref_gray = apply_policy(policy, gray[..., 0], seed=5)  # (N, H, W) accepted too
    ref_rgb = apply_policy(policy, rgb, seed=5)
    aug = BatchAugmenter(policy)
    out_gray = aug(_nchw(gray), generator=torch.Generator().manual_seed(5))[:, 0].numpy()
    out_rgb = aug(_nchw(rgb), generator=torch.Generator().manual_seed(5)).permute(0, 2, 3, 1).numpy()

    # Assert: at most one grey level apart (float rounding before quantisation)
    assert np.abs(out_gray.astype(int) - ref_gray.astype(int)).max() <= 1
    np.testing.assert_allclose(out_rgb, ref_rgb, atol=1e-4)


@pytest.mark.parametrize("op", ALL_IMAGE_OPS, ids=lambda op: op.op)
def test_each_op_alone_draws_then_applies_deterministically(op) -> None:
    # Prepare
    image = _images(3, "uint8", n=1)[0]

    # Execute
    params = op.sample_params(torch.Generator().manual_seed(11))
    again = op.sample_params(torch.Generator().manual_seed(11))
    out = op.apply(image, {**params, "applied": True})

    # Assert
    assert params == again
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, op.apply(image, {**again, "applied": True}))


def test_flips_are_off_by_default_and_exact_when_asked() -> None:
    # Prepare
    image = _images(1, "uint8", n=1)

    square = image[0, :18, :18]

    # Execute
    default_tags = {op.op for op in Policy.default().ops}
    flipped = apply_policy(Policy(ops=(HFlip(p=1.0), VFlip(p=1.0))), image, seed=0)
    turned = Rotate().apply(square, {"applied": True, "angle": 90.0})

    # Assert: no flips by default; opt-in flips and a 90-degree turn are exact
    assert default_tags.isdisjoint({"hflip", "vflip"})
    np.testing.assert_array_equal(flipped, image[:, ::-1, ::-1])
    np.testing.assert_array_equal(turned, np.rot90(square))  # counter-clockwise, as PIL


def test_randaugment_sampling_is_deterministic_and_applies_num_ops() -> None:
    # Prepare
    policy = Policy(ops=ALL_IMAGE_OPS, sampling=Sampling("randaugment", num_ops=2, magnitude=12))
    images = _images(3, "uint8")

    # Execute
    first = apply_policy(policy, images, seed=3)
    again = apply_policy(policy, images, seed=3)
    other = apply_policy(policy, images, seed=4)
    params = draw_params(policy, 64, channels=3, height=8, width=8, generator=torch.Generator().manual_seed(0))
    still = apply_policy(Policy(ops=(Rotate(), CropResize()), sampling=Sampling("randaugment", 2, 0)), images, seed=3)

    # Assert
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert (params.applied.sum(axis=1) == 2).all()
    np.testing.assert_array_equal(still, images)  # magnitude 0 changes nothing


def test_batch_augmenter_rejects_bad_input() -> None:
    # Prepare
    aug = BatchAugmenter(Policy.default())

    # Execute / Assert
    with pytest.raises(DataError, match=r"images must be a \(B, C, H, W\) tensor"):
        aug(torch.zeros(3, 8, 8, dtype=torch.int64), generator=torch.Generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_engine_runs_on_cuda_like_on_cpu() -> None:
    # Prepare
    policy = Policy(ops=ALL_IMAGE_OPS)
    x = _nchw(_images(3, "uint8"))

    # Execute
    cpu = BatchAugmenter(policy)(x, generator=torch.Generator().manual_seed(2))
    gpu = BatchAugmenter(policy)(x.cuda(), generator=torch.Generator().manual_seed(2))

    # Assert
    assert gpu.device.type == "cuda"
    assert (gpu.cpu().int() - cpu.int()).abs().max() <= 1


def test_distribution_shift_passes_default_and_flags_destructive_policies(shared_data) -> None:
    # Prepare: real PneumoniaMNIST chest X-rays
    data = np.load(shared_data / "medmnist" / "pneumoniamnist.npz")
    images, labels = data["train_images"][:600], data["train_labels"][:600]
    bright = Policy(ops=(Brightness(p=0.5, factor=(0.1, 3.0)),))
    noisy = Policy(ops=(GaussianNoise(p=1.0, std=(0.2, 0.4)),))

    # Execute
    ok = distribution_shift(images, apply_policy(Policy.default(), images, seed=0), labels)
    too_bright = distribution_shift(images, apply_policy(bright, images, seed=0), labels)
    too_noisy = distribution_shift(images, apply_policy(noisy, images, seed=0), labels)

    # Assert
    assert ok["ok"] and ok["problems"] == [] and set(ok["per_class"]) == {0, 1}
    assert not too_bright["ok"] and "overall: ks" in " ".join(too_bright["problems"])
    assert not too_noisy["ok"] and any("std_delta" in p for p in too_noisy["problems"])
    assert "TOO LARGE" in format_shift_report(too_noisy) and "class 1" in format_shift_report(ok)
