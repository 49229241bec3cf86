"""The torch backend of the batched engine: one ``grid_sample`` and batched tensor ops.

The batch is warped by a single ``grid_sample`` on a hand-built grid (the composed 2x3
maps of :class:`~fedaug.augment.params.BatchParams`, padded as its ``border`` says); blur is a separable grouped
convolution with reflect padding; brightness and contrast are one fused multiply-add
(with the final clip and rounding folded in when it is the last stage); gamma and noise
touch only the images that get them. It runs on whatever device the tensor lives on and
matches the per-image reference path (:func:`fedaug.augment.apply.apply_policy`) within
float rounding.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as TF

from . import functional as F

if TYPE_CHECKING:
    from .params import BatchParams

__all__ = ["PADDING_MODES", "apply_params"]

#: ``grid_sample``'s ``padding_mode`` for each border mode of a policy.
PADDING_MODES = {"reflect": "reflection", "constant": "zeros", "edge": "border"}


def apply_params(x: torch.Tensor, params: BatchParams) -> torch.Tensor:
    """Apply drawn parameters to a ``(B, C, H, W)`` batch (``uint8`` or float in [0, 1]).

    Returns a tensor of the same shape and dtype, on ``x``'s device.
    """
    u8 = x.dtype == torch.uint8
    top = 255.0 if u8 else 1.0
    dev = x.device
    y = x.to(torch.float32)
    owned = y is not x
    if params.theta is not None:
        y = _warp(y, params.theta, PADDING_MODES[params.border])
        owned = True
    if params.sigma is not None:
        y = _blur(y if owned else y.clone(), params.sigma)
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


@functools.lru_cache(maxsize=64)
def _base(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised pixel-centre coordinates of a row and a column (``align_corners=False``)."""
    xs = (2.0 * torch.arange(w, dtype=torch.float64) + 1.0) / w - 1.0
    ys = (2.0 * torch.arange(h, dtype=torch.float64) + 1.0) / h - 1.0
    return xs.to(device=device, dtype=torch.float32), ys.to(device=device, dtype=torch.float32)


def _warp(y: torch.Tensor, theta: np.ndarray, padding_mode: str) -> torch.Tensor:
    b, _, h, w = y.shape
    t = torch.from_numpy(theta).to(device=y.device, dtype=torch.float32)
    xs, ys = _base(h, w, y.device)
    # grid[..., 0] = t00 * x + (t01 * y + t02), built by broadcasting (no matmul)
    grid = torch.empty((b, h, w, 2), dtype=torch.float32, device=y.device)
    for i in range(2):
        torch.add(
            (t[:, i, 0:1] * xs)[:, None, :],
            torch.addcmul(t[:, i, 2:3], t[:, i, 1:2], ys)[:, :, None],
            out=grid[..., i],
        )
    return TF.grid_sample(y, grid, mode="bilinear", padding_mode=padding_mode,
                          align_corners=False)


def _blur(y: torch.Tensor, sigma: np.ndarray) -> torch.Tensor:
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
