"""Tests of the image augmentation engine: invariants, batched == per-image, backends, statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from fedaug.augment import (
    Affine,
    BatchAugmenter,
    BatchParams,
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
    apply_op,
    apply_policy,
    distribution_shift,
    draw_op_params,
    draw_params,
    format_shift_report,
    numpy_augmenter,
    opencv_backend,
)
from fedaug.augment import functional as F
from fedaug.augment.batched import OPENCV_MIN_PIXELS
from fedaug.errors import ConfigError, DataError

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
    if dtype != "uint8":  # a uint8 result is in range by its type; a float one may not be
        assert per_image.min() >= 0 and per_image.max() <= 1.0
        assert batched.min() >= 0 and batched.max() <= 1.0
    assert not np.array_equal(per_image, images)


@pytest.mark.parametrize("border", F.BORDER_MODES)
@pytest.mark.parametrize("sampling", [None, Sampling("randaugment", 3, 20), Sampling("trivialaugment", 1, 30)])
def test_batched_engine_matches_the_per_image_path(sampling: Sampling | None, border: str) -> None:
    # Prepare: gray uint8 and RGB float, every op
    policy = Policy(ops=ALL_IMAGE_OPS, sampling=sampling, border=border)
    gray, rgb = _images(1, "uint8", n=16), _images(3, "float32", n=16)

    # Execute
    ref_gray = apply_policy(policy, gray[..., 0], seed=5)  # (N, H, W) accepted too
    ref_rgb = apply_policy(policy, rgb, seed=5)
    aug = BatchAugmenter(policy, backend="torch")  # the OpenCV backend: tests below
    out_gray = aug(_nchw(gray), generator=torch.Generator().manual_seed(5))[:, 0].numpy()
    out_rgb = aug(_nchw(rgb), generator=torch.Generator().manual_seed(5)).permute(0, 2, 3, 1).numpy()

    # Assert: at most one grey level apart (float rounding before quantisation)
    assert np.abs(out_gray.astype(int) - ref_gray.astype(int)).max() <= 1
    np.testing.assert_allclose(out_rgb, ref_rgb, atol=1e-4)


def test_numpy_augmenter_follows_the_reference_and_replays_its_stream() -> None:
    # Prepare: a uint8 (N, H, W, C) batch, as a classifier's training loop hands it over
    policy = Policy(ops=ALL_IMAGE_OPS)
    batch = _images(1, "uint8", n=16)

    # Execute: two callables with one seed, each over two batches
    first, again = numpy_augmenter(policy, 5), numpy_augmenter(policy, 5)
    a1, a2 = first(batch), first(batch)
    b1, b2 = again(batch), again(batch)

    # Assert: its first batch is the reference path's draw for that seed; the stream moves
    # on between batches and replays from the seed
    assert a1.dtype == np.uint8 and a1.shape == batch.shape
    assert np.abs(a1.astype(int) - apply_policy(policy, batch, seed=5).astype(int)).max() <= 1
    assert not np.array_equal(a1, a2)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert numpy_augmenter(Policy(ops=()), 5) is None


@pytest.mark.parametrize("op", ALL_IMAGE_OPS, ids=lambda op: op.op)
def test_each_op_alone_draws_then_applies_deterministically(op) -> None:
    # Prepare
    image = _images(3, "uint8", n=1)[0]

    # Execute
    params = draw_op_params(op, torch.Generator().manual_seed(11))
    again = draw_op_params(op, torch.Generator().manual_seed(11))
    out = apply_op(op, image, {**params, "applied": True})

    # Assert
    assert params == again
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, apply_op(op, image, {**again, "applied": True}))


def test_flips_are_off_by_default_and_exact_when_asked() -> None:
    # Prepare
    image = _images(1, "uint8", n=1)

    square = image[0, :18, :18]

    # Execute
    default_tags = {op.op for op in Policy.default().ops}
    flipped = apply_policy(Policy(ops=(HFlip(p=1.0), VFlip(p=1.0))), image, seed=0)
    turned = apply_op(Rotate(), square, {"applied": True, "angle": 90.0})

    # Assert: no flips by default; opt-in flips and a 90-degree turn are exact
    assert default_tags.isdisjoint({"hflip", "vflip"})
    np.testing.assert_array_equal(flipped, image[:, ::-1, ::-1])
    np.testing.assert_array_equal(turned, np.rot90(square))  # counter-clockwise, as PIL


PATHS = ["reference", "torch", pytest.param("opencv", marks=pytest.mark.skipif(
    not opencv_backend.available(), reason="needs OpenCV >= 5"))]


def _apply(path: str, images: np.ndarray, params: BatchParams) -> np.ndarray:
    """Apply drawn parameters to uint8 (N, H, W, C) images along one path."""
    if path == "reference":
        return np.stack([F.augment_image(img, **params.image_kwargs(i)) for i, img in enumerate(images)])
    aug = BatchAugmenter(Policy(border=params.border), backend=path)
    return aug.apply_params(_nchw(images), params).permute(0, 2, 3, 1).numpy()


def _bright(n: int = 3, side: int = 32) -> np.ndarray:
    """Bright uint8 images: a left-to-right ramp from 200 to 250."""
    ramp = 200 + np.arange(side) * 50 // (side - 1)
    return np.broadcast_to(ramp[None, None, :, None], (n, side, side, 1)).astype(np.uint8)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("border", F.BORDER_MODES)
def test_rotated_bright_image_has_black_corners_only_under_constant_border(path: str, border: str) -> None:
    # Prepare: a 30-degree turn, which moves every corner pixel 5 pixels outside the image
    images = _bright()
    n, h, w, _ = images.shape
    theta = F.to_normalized(F.rotation_matrix(np.full(n, 30.0)), height=h, width=w)
    params = BatchParams(applied=np.ones((n, 1), dtype=bool), theta=theta, border=border)

    # Execute
    out = _apply(path, images, params)

    # Assert: black corners under constant; under reflect and edge no pixel darker than the image
    corners = out[:, [0, 0, -1, -1], [0, -1, 0, -1], 0]
    if border == "constant":
        assert (corners == 0).all()
        assert out[:, h // 2, w // 2].min() >= 200
    else:
        assert out.min() >= 200 and (corners >= 200).all()


def test_border_modes_fill_differently_and_the_policy_border_reaches_every_path() -> None:
    # Prepare: a flat bright image under a policy that always rotates
    flat = np.full((8, 24, 24, 1), 200, dtype=np.uint8)
    ramp = _bright(8, 24)
    policies = {b: Policy(ops=(Rotate(p=1.0, limit=45.0),), border=b) for b in F.BORDER_MODES}

    # Execute
    flat_out = {b: apply_policy(p, flat, seed=0) for b, p in policies.items()}
    ramp_out = {b: apply_policy(p, ramp, seed=0) for b, p in policies.items()}
    drawn = draw_params(policies["edge"], 2, channels=1, height=8, width=8,
                        generator=torch.Generator().manual_seed(0))

    # Assert: mirrored and repeated pixels keep a flat image flat, black does not;
    # the two keep different pixels of a ramp
    assert (flat_out["reflect"] == 200).all() and (flat_out["edge"] == 200).all()
    assert (flat_out["constant"] == 0).any()
    assert not np.array_equal(ramp_out["reflect"], ramp_out["edge"])
    assert drawn.border == "edge" and Policy.default().border == "reflect"


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


needs_opencv = pytest.mark.skipif(not opencv_backend.available(), reason="needs OpenCV >= 5")


def _smooth(n: int, channels: int, h: int, w: int) -> torch.Tensor:
    """Photo-like uint8 batch: coarse noise upsampled bicubically (plus fine noise)."""
    rng = np.random.default_rng(h * w + channels)
    coarse = torch.from_numpy(rng.random((n, channels, h // 6, w // 6)))
    up = TF.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False) * 230.0
    fine = torch.from_numpy(rng.normal(0.0, 8.0, (n, channels, h, w)))
    return (up + fine + 12.0).clamp(0, 255).round().to(torch.uint8)


@needs_opencv
@pytest.mark.parametrize("border", F.BORDER_MODES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "ops, max_diff",
    [((Rotate(p=1.0), HFlip(), VFlip(), CropResize(p=1.0)), 1), (ALL_IMAGE_OPS, 3)],
    ids=["geometric", "every-op"],
)
def test_opencv_backend_agrees_with_the_torch_backend(
    channels: int, ops, max_diff: int, border: str
) -> None:
    # Prepare: non-square, so a swapped height and width would show
    policy = Policy(ops=ops, border=border)
    x = _smooth(12, channels, 40, 56)

    # Execute
    ref = BatchAugmenter(policy, backend="torch")(x, generator=torch.Generator().manual_seed(7))
    out = BatchAugmenter(policy, backend="opencv")(x, generator=torch.Generator().manual_seed(7))

    # Assert: the warp alone within 1 grey level; uint8 rounding between later stages,
    # scaled by contrast and gamma, within a few; on average well under one, unbiased
    diff = out.float() - ref.float()
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert diff.abs().max().item() <= max_diff
    assert diff.abs().mean().item() < 0.35
    assert abs(diff.mean().item()) < 0.05
    assert not torch.equal(out, x)


@needs_opencv
def test_opencv_backend_is_deterministic_whatever_the_threads() -> None:
    # Prepare
    policy = Policy(ops=ALL_IMAGE_OPS)
    x = _smooth(9, 3, 24, 30)
    aug = BatchAugmenter(policy, backend="opencv")
    threads = torch.get_num_threads()

    # Execute: 1 thread, then the batch split over 3 threads
    try:
        torch.set_num_threads(1)
        first = aug(x, generator=torch.Generator().manual_seed(4))
        torch.set_num_threads(3)
        split = aug(x, generator=torch.Generator().manual_seed(4))
        other = aug(x, generator=torch.Generator().manual_seed(5))
    finally:
        torch.set_num_threads(threads)

    empty = aug(x[:0], generator=torch.Generator().manual_seed(4))

    # Assert
    assert torch.equal(first, split)
    assert not torch.equal(first, other)
    assert first.dtype == torch.uint8 and first.shape == x.shape
    assert empty.shape == (0, 3, 24, 30) and empty.dtype == torch.uint8


def test_auto_backend_picks_opencv_only_for_large_uint8_cpu_images() -> None:
    # Prepare
    aug = BatchAugmenter(Policy.default())
    side = int(np.ceil(np.sqrt(OPENCV_MIN_PIXELS)))
    large = torch.zeros(2, 3, side, side, dtype=torch.uint8)
    small = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    on_meta = torch.empty(2, 3, side, side, dtype=torch.uint8, device="meta")  # as a GPU

    # Execute / Assert
    assert aug.backend_for(large) == ("opencv" if opencv_backend.available() else "torch")
    assert aug.backend_for(large.float() / 255) == "torch"
    assert aug.backend_for(small) == "torch"
    assert aug.backend_for(on_meta) == "torch"
    assert BatchAugmenter(Policy.default(), backend="torch").backend_for(large) == "torch"


@needs_opencv
def test_opencv_backend_refuses_what_it_cannot_run() -> None:
    # Prepare
    aug = BatchAugmenter(Policy.default(), backend="opencv")

    # Execute / Assert
    assert aug.backend_for(torch.zeros(1, 1, 8, 8, dtype=torch.uint8)) == "opencv"
    with pytest.raises(DataError, match="needs a uint8 tensor on the CPU"):
        aug(torch.zeros(2, 3, 8, 8), generator=torch.Generator())
    with pytest.raises(DataError, match="needs a uint8 tensor on the CPU"):
        aug.backend_for(torch.empty(2, 3, 8, 8, dtype=torch.uint8, device="meta"))
    with pytest.raises(ConfigError, match="backend must be one of auto, torch, opencv"):
        BatchAugmenter(Policy.default(), backend="cv2")


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
