"""The fast path: augment a whole ``(B, C, H, W)`` batch with per-image random parameters.

All geometric ops of an image (rotate, flips, crop_resize, affine) are composed into one
2x3 matrix; then blur, the fused brightness/contrast step, gamma and noise follow. Two
backends apply the drawn parameters:

- ``"torch"`` (:mod:`fedaug.augment.torch_backend`): the batch is warped by a single
  ``grid_sample`` on a hand-built grid and the other stages are batched tensor ops, on
  whatever device the tensor lives on.
- ``"opencv"`` (:mod:`fedaug.augment.opencv_backend`): ``uint8`` CPU batches only; one
  ``cv2.warpAffine`` per image plane and one lookup table per image for brightness,
  contrast and gamma, the batch split over ``torch.get_num_threads()`` threads; faster
  than the torch backend on large images, where ``grid_sample`` is float and memory-bound.

``backend="auto"`` (the default) picks OpenCV for ``uint8`` CPU images of at least
:data:`OPENCV_MIN_PIXELS` pixels when OpenCV >= 5 imports, torch otherwise (float, GPU,
small images, where one batched call beats a Python loop over images).

Parameters come from :func:`fedaug.augment.params.draw_params`, the one parameter draw
shared by both backends and by the per-image reference path
(:func:`fedaug.augment.apply.apply_policy`): the torch backend matches that path within
float rounding, the OpenCV backend the torch backend within a few grey levels.

Throughput tips (CPU): feed batches of about 256 images at 28x28 and 32 at 224x224, keep
``uint8`` input, and see ``simulations/benchmarks/augment_throughput.py --help`` for glibc
malloc settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fedaug.errors import ConfigError, DataError, PolicyError

from . import opencv_backend, torch_backend
from .params import BatchParams, draw_params
from .policy import Policy

__all__ = ["BACKENDS", "OPENCV_MIN_PIXELS", "BatchAugmenter", "numpy_augmenter"]

#: Accepted values of ``BatchAugmenter(backend=...)``.
BACKENDS = ("auto", "torch", "opencv")
#: Smallest image (H * W) for which ``"auto"`` picks OpenCV: below it one batched torch
#: call beats a Python loop over images (which contends for the GIL on several threads).
OPENCV_MIN_PIXELS = 96 * 96


class BatchAugmenter:
    """Apply an image :class:`Policy` to batches with per-image random parameters.

    Parameters
    ----------
    policy : Policy
        An image policy.
    device : str or torch.device, optional
        Where to compute; None (default) computes on each input's own device. With a
        device, inputs are moved there and results are returned there.
    backend : {"auto", "torch", "opencv"}, optional
        How drawn parameters are applied (see the module docstring). ``"auto"`` (default):
        OpenCV for ``uint8`` CPU images of at least :data:`OPENCV_MIN_PIXELS` pixels when
        OpenCV >= 5 imports, torch otherwise. ``"opencv"`` refuses other inputs.

    Notes
    -----
    The same seed draws the same parameters whatever the backend. With
    ``backend="torch"``, ``aug(x, generator=torch.Generator().manual_seed(s))`` equals
    ``apply_policy(policy, x_as_NHWC_numpy, seed=s)`` within float rounding; the OpenCV
    backend rounds to ``uint8`` between stages and agrees with the torch backend within a
    few grey levels (under one on average). Random parameters are drawn on the
    generator's device; pass a CUDA generator for CUDA input to keep the noise field on
    the GPU.
    """

    def __init__(
        self, policy: Policy, *, device: str | torch.device | None = None, backend: str = "auto"
    ) -> None:
        if not isinstance(policy, Policy) or policy.modality != "image":
            raise PolicyError([f"modality: BatchAugmenter needs an image policy, got {policy!r}"])
        if backend not in BACKENDS:
            raise ConfigError(
                f"backend must be one of {', '.join(BACKENDS)}.", value=backend,
                fix='Pass backend="auto" (OpenCV for uint8 CPU images, torch otherwise).',
            )
        if backend == "opencv" and not opencv_backend.available():
            raise ConfigError(
                f'backend="opencv" needs OpenCV >= {opencv_backend.MIN_OPENCV} (the cv2 module).',
                value=backend,
                fix='pip install "opencv-python-headless>=5", or use backend="auto".',
            )
        self.policy = policy
        self.device = None if device is None else torch.device(device)
        self.backend = backend
        self._opencv = backend != "torch" and opencv_backend.available()

    def __call__(self, images: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """Augment ``(B, C, H, W)`` images (``uint8``, or floating in [0, 1]).

        Returns
        -------
        torch.Tensor
            Same shape and dtype; values stay in range.
        """
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or not (
            images.dtype == torch.uint8 or images.is_floating_point()
        ):
            raise DataError(
                "images must be a (B, C, H, W) tensor of uint8 or floats in [0, 1].",
                value=_describe(images),
                fix="Use torch.as_tensor(x).permute(0, 3, 1, 2) for (N, H, W, C) arrays.",
            )
        if not isinstance(generator, torch.Generator):
            raise DataError(
                "generator must be a torch.Generator.", value=generator,
                fix="Pass generator=torch.Generator().manual_seed(seed).",
            )
        x = images if self.device is None else images.to(self.device)
        b, c, h, w = x.shape
        params = draw_params(self.policy, b, channels=c, height=h, width=w, generator=generator)
        return self.apply_params(x, params)

    def backend_for(self, x: torch.Tensor) -> str:
        """The backend (``"torch"`` or ``"opencv"``) that :meth:`apply_params` uses for ``x``."""
        fits = x.dtype == torch.uint8 and x.device.type == "cpu"
        if self.backend == "opencv":
            if not fits:
                raise DataError(
                    'backend="opencv" needs a uint8 tensor on the CPU.', value=_describe(x),
                    fix='Use backend="auto" or "torch" for float or GPU tensors.',
                )
            return "opencv"
        big = x.shape[-2] * x.shape[-1] >= OPENCV_MIN_PIXELS
        return "opencv" if self._opencv and fits and big else "torch"

    def apply_params(self, x: torch.Tensor, params: BatchParams) -> torch.Tensor:
        """Apply already drawn parameters to a ``(B, C, H, W)`` batch with :meth:`backend_for`."""
        if self.backend_for(x) == "opencv":
            return opencv_backend.apply_params(x, params)
        return torch_backend.apply_params(x, params)


def numpy_augmenter(policy: Policy, seed: int
                    ) -> Callable[[np.ndarray], np.ndarray] | None:
    """A ``uint8`` ``(N, H, W, C)`` -> same callable that runs ``policy`` through the batch
    engine, drawing from its own ``torch.Generator`` seeded with ``seed`` (so one callable
    replays the same sequence of batches); None for a policy without ops.

    What a classifier's training loop takes as ``augment`` (e.g.
    :func:`fedaug.evaluate.classifier.train_classifier`): one batched call per batch instead
    of the per-image reference path, several times faster at the same parameter draws.
    """
    if not policy.ops:
        return None
    aug = BatchAugmenter(policy)
    gen = torch.Generator().manual_seed(seed)

    def augment(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
        return aug(x, generator=gen).permute(0, 2, 3, 1).contiguous().numpy()

    return augment


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__
