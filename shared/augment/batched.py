"""The fast path: augment a whole ``(B, C, H, W)`` batch with per-image random parameters.

All geometric ops of an image (rotate, flips, crop_resize, affine) are composed into one
2x3 matrix; then blur, the fused brightness/contrast step, gamma and noise follow. Two
backends apply the drawn parameters:

- ``"torch"``: the batch is warped by a single ``grid_sample`` on a hand-built grid and the
  other stages are batched tensor ops, on whatever device the tensor lives on.
- ``"opencv"`` (:mod:`fedaug.augment.opencv_backend`): ``uint8`` CPU batches only; one
  ``cv2.warpAffine`` per image plane and one lookup table per image for brightness,
  contrast and gamma, the batch split over ``torch.get_num_threads()`` threads. At 224x224
  it is about 2x the torch backend's speed (``grid_sample`` is float and memory-bound).

``backend="auto"`` (the default) picks OpenCV for ``uint8`` CPU images of at least
:data:`OPENCV_MIN_PIXELS` pixels when OpenCV >= 5 imports, torch otherwise (float, GPU,
small images, where one batched call beats a Python loop over images).

:func:`draw_params` is the one parameter draw shared by both backends and by the per-image
reference path (:func:`fedaug.augment.policy.apply_policy`): the torch backend matches that
path within float rounding, the OpenCV backend the torch backend within a few grey levels.

Throughput tips (CPU): feed batches of about 256 images at 28x28 and 32 at 224x224, keep
``uint8`` input, and see ``simulations/benchmarks/augment_throughput.py --help`` for glibc
malloc settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as TF

from fedaug.errors import ConfigError, DataError, PolicyError

from . import functional as F
from . import opencv_backend
from .ops import _uniform
from .policy import MAX_MAGNITUDE, Policy

__all__ = ["BACKENDS", "OPENCV_MIN_PIXELS", "BatchParams", "draw_params", "BatchAugmenter"]

#: Accepted values of ``BatchAugmenter(backend=...)``.
BACKENDS = ("auto", "torch", "opencv")
#: Smallest image (H * W) for which ``"auto"`` picks OpenCV: below it one batched torch
#: call beats a Python loop over images (measured crossover: about 64x64 on 1 thread,
#: 96x96 on 2, where the per-image loop contends for the GIL).
OPENCV_MIN_PIXELS = 96 * 96


@dataclass(frozen=True)
class BatchParams:
    """Per-image parameters of one batch, in stage order (None: stage absent).

    Attributes
    ----------
    applied : np.ndarray
        ``(n, K)`` booleans, whether op ``k`` of ``policy.ops`` (list order) was applied.
    theta : np.ndarray or None
        ``(n, 2, 3)`` composed output-to-input maps in ``grid_sample`` coordinates.
    sigma, brightness, contrast, gamma, noise_std : np.ndarray or None
        ``(n,)`` float64 values; identity where the op was not applied.
    noise_index : np.ndarray or None
        Indices of the images that receive noise (``noise_std > 0``).
    noise : torch.Tensor or None
        ``(len(noise_index), C, H, W)`` standard normal float32 noise, on the generator's
        device.
    """

    applied: np.ndarray
    theta: np.ndarray | None = None
    sigma: np.ndarray | None = None
    brightness: np.ndarray | None = None
    contrast: np.ndarray | None = None
    gamma: np.ndarray | None = None
    noise_std: np.ndarray | None = None
    noise_index: np.ndarray | None = None
    noise: torch.Tensor | None = None

    def image_kwargs(self, i: int) -> dict[str, Any]:
        """Keyword arguments of :func:`functional.augment_image` for image ``i``."""
        kw: dict[str, Any] = {}
        if self.theta is not None:
            kw["theta"] = self.theta[i]
        for name in ("sigma", "brightness", "contrast", "gamma", "noise_std"):
            values = getattr(self, name)
            if values is not None:
                kw[name] = float(values[i])
        if self.noise is not None:
            where = np.nonzero(self.noise_index == i)[0]
            if where.size:
                kw["noise"] = self.noise[int(where[0])].permute(1, 2, 0).cpu().numpy()
        return kw


def draw_params(
    policy: Policy,
    n: int,
    *,
    channels: int,
    height: int,
    width: int,
    generator: torch.Generator,
) -> BatchParams:
    """Draw the parameters of ``n`` images from ``generator``, in a fixed order.

    One ``(n, K + sum(N_UNIFORMS) + trivial)`` float64 uniform draw gives, in columns:
    which ops apply (``p`` per op, or the sampled ops), each op's raw parameters in policy
    list order, the TrivialAugment magnitude; then the noise field is drawn.
    """
    ops = policy.ops
    k = len(ops)
    if k == 0 or n == 0:
        return BatchParams(applied=np.zeros((n, k), dtype=bool))
    s = policy.sampling
    trivial = s is not None and s.kind == "trivialaugment"
    widths = [op.N_UNIFORMS for op in ops]
    u = _uniform(n, k + sum(widths) + int(trivial), generator)  # one draw for everything
    if s is None:
        applied = u[:, :k] < np.array([op.p for op in ops])[None, :]
        magnitude: np.ndarray | float = 1.0
    else:
        chosen = np.argsort(u[:, :k], axis=1, kind="stable")[:, : s.num_ops]
        applied = np.zeros((n, k), dtype=bool)
        np.put_along_axis(applied, chosen, True, axis=1)
        magnitude = s.magnitude / MAX_MAGNITUDE
    starts = k + np.cumsum([0] + widths[:-1])
    raws = [op.draw_from(u[:, a : a + w]) for op, a, w in zip(ops, starts, widths, strict=True)]
    if trivial:
        magnitude = u[:, -1] * (s.magnitude / MAX_MAGNITUDE)
    by_tag = {
        op.op: (op, op.finalize(raw, applied[:, j], magnitude))
        for j, (op, raw) in enumerate(zip(ops, raws, strict=True))
    }
    kw: dict[str, Any] = {"applied": applied}
    geometric = [by_tag[t] for t in ("rotate", "hflip", "vflip", "crop_resize", "affine") if t in by_tag]
    if geometric:
        mats = [op.matrix(params, height=height, width=width) for op, params in geometric]
        kw["theta"] = F.to_normalized(F.compose(*mats), height=height, width=width)
    for tag, name, key in (
        ("gaussian_blur", "sigma", "sigma"),
        ("brightness", "brightness", "factor"),
        ("contrast", "contrast", "factor"),
        ("gamma", "gamma", "gamma"),
        ("gaussian_noise", "noise_std", "std"),
    ):
        if tag in by_tag:
            kw[name] = by_tag[tag][1][key]
    if "noise_std" in kw:
        index = np.nonzero(kw["noise_std"] > 0)[0]
        kw["noise_index"] = index
        kw["noise"] = torch.randn(
            (index.size, channels, height, width),
            generator=generator, dtype=torch.float32, device=generator.device,
        )
    return BatchParams(**kw)


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
        self._bases: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}

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

    # ------------------------------------------------------------------ stages

    def apply_params(self, x: torch.Tensor, params: BatchParams) -> torch.Tensor:
        """Apply already drawn parameters to a ``(B, C, H, W)`` batch."""
        if self.backend_for(x) == "opencv":
            return opencv_backend.apply_params(x, params)
        u8 = x.dtype == torch.uint8
        top = 255.0 if u8 else 1.0
        dev = x.device
        y = x.to(torch.float32)
        owned = y is not x
        if params.theta is not None:
            y = self._warp(y, params.theta)
            owned = True
        if params.sigma is not None:
            y = self._blur(y if owned else y.clone(), params.sigma)
            owned = True
        rounded = clamped = False
        if params.brightness is not None or params.contrast is not None:
            n = y.shape[0]
            b = params.brightness if params.brightness is not None else np.ones(n)
            c = params.contrast if params.contrast is not None else np.ones(n)
            scale = torch.from_numpy(c * b).to(device=dev, dtype=torch.float32)
            shift = torch.from_numpy((1.0 - c) * b).to(device=dev, dtype=torch.float32)
            if params.contrast is not None:  # blend with the (luma) mean grey
                if y.shape[1] == 3:
                    lum = torch.tensor(F.LUMA_WEIGHTS, dtype=torch.float32, device=dev)
                    shift = shift * (y.mean(dim=(2, 3)) @ lum)
                else:
                    shift = shift * y.mean(dim=(1, 2, 3))
            last = params.gamma is None and params.noise_std is None
            fuse = u8 and last  # fold the final clip and round-half-up into this step
            if fuse:
                shift = shift.add_(0.5)
            out = y if owned else None  # in place: no new batch-sized allocation
            y = torch.addcmul(shift.view(n, 1, 1, 1), y, scale.view(n, 1, 1, 1), out=out)
            if fuse:
                y.clamp_(0.5, 255.5)
            else:
                y.clamp_(0.0, top)
            rounded = fuse
            owned = clamped = True
        if params.gamma is not None:
            idx = np.nonzero(params.gamma != 1.0)[0]
            if idx.size:
                y = y if owned else y.clone()
                owned = True
                it = torch.from_numpy(idx).to(dev)
                g = torch.from_numpy(params.gamma[idx]).to(device=dev, dtype=torch.float32)
                sub = y.index_select(0, it).clamp_(0.0, top).div_(top)
                y.index_copy_(0, it, sub.pow_(g.view(-1, 1, 1, 1)).mul_(top))
        if params.noise is not None and params.noise_index.size:
            y = y if owned else y.clone()
            owned = True
            it = torch.from_numpy(params.noise_index).to(dev)
            std = torch.from_numpy(params.noise_std[params.noise_index] * top).to(
                device=dev, dtype=torch.float32
            )
            sub = y.index_select(0, it)
            sub.addcmul_(params.noise.to(dev), std.view(-1, 1, 1, 1)).clamp_(0.0, top)
            y.index_copy_(0, it, sub)
            clamped = clamped or it.numel() == y.shape[0]
        if u8:
            if not rounded:
                y = y if owned else y.clone()
                y.clamp_(0.0, 255.0).add_(0.5)
            return y.to(torch.uint8)
        if not clamped:  # bilinear weights may overshoot 1 by a rounding error
            y = y.clamp(0.0, 1.0) if not owned else y.clamp_(0.0, 1.0)
        return y.to(x.dtype)

    def _base(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (h, w, str(device))
        if key not in self._bases:
            xs = (2.0 * torch.arange(w, dtype=torch.float64) + 1.0) / w - 1.0
            ys = (2.0 * torch.arange(h, dtype=torch.float64) + 1.0) / h - 1.0
            self._bases[key] = (
                xs.to(device=device, dtype=torch.float32),
                ys.to(device=device, dtype=torch.float32),
            )
        return self._bases[key]

    def _warp(self, y: torch.Tensor, theta: np.ndarray) -> torch.Tensor:
        b, _, h, w = y.shape
        t = torch.from_numpy(theta).to(device=y.device, dtype=torch.float32)
        xs, ys = self._base(h, w, y.device)
        # grid[..., 0] = t00 * x + (t01 * y + t02), built by broadcasting (no matmul)
        grid = torch.empty((b, h, w, 2), dtype=torch.float32, device=y.device)
        for i in range(2):
            torch.add(
                (t[:, i, 0:1] * xs)[:, None, :],
                torch.addcmul(t[:, i, 2:3], t[:, i, 1:2], ys)[:, :, None],
                out=grid[..., i],
            )
        return TF.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _blur(self, y: torch.Tensor, sigma: np.ndarray) -> torch.Tensor:
        b, c, h, w = y.shape
        radii = np.array([F.blur_radius(float(s)) for s in sigma])
        idx = np.nonzero(radii > 0)[0]
        if not idx.size:
            return y
        full = int(radii[idx].max())
        r = min(full, h - 1, w - 1)
        if r <= 0:
            return y
        kernels = np.stack(
            [F.gaussian_kernel1d(float(sigma[i]), radius=full)[full - r : full + r + 1] for i in idx]
        )
        k = torch.from_numpy(kernels).to(device=y.device, dtype=torch.float32)
        k = k.repeat_interleave(c, dim=0)  # (len(idx) * C, 2r + 1)
        it = torch.from_numpy(idx).to(y.device)
        sub = y.index_select(0, it).reshape(1, idx.size * c, h, w)
        sub = TF.pad(sub, (r, r, r, r), mode="reflect")
        sub = TF.conv2d(sub, k.view(-1, 1, 1, 2 * r + 1), groups=idx.size * c)
        sub = TF.conv2d(sub, k.view(-1, 1, 2 * r + 1, 1), groups=idx.size * c)
        y.index_copy_(0, it, sub.reshape(idx.size, c, h, w))
        return y


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__
