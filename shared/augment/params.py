"""Parameter sampling: draw every image's augmentation parameters from a ``torch.Generator``.

:func:`draw_params` is the one parameter draw shared by the batched engine's backends
and the per-image reference path, so the same policy and seed give the same parameters
whichever applies them. Each op says how uniforms become its parameters
(:meth:`~fedaug.augment.ops.ImageOp.draw_from`), what they mean
(:meth:`~fedaug.augment.ops.ImageOp.matrix`,
:meth:`~fedaug.augment.ops.ImageOp.stage_values`); this module only draws and collects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import functional as F
from .ops import ImageOp
from .policy import MAX_MAGNITUDE, Policy

__all__ = ["BatchParams", "draw_params", "draw_op_params", "uniform"]


def uniform(n: int, k: int, generator: torch.Generator) -> np.ndarray:
    """``(n, k)`` float64 uniforms in [0, 1) drawn on the generator's device."""
    u = torch.rand((n, k), generator=generator, dtype=torch.float64, device=generator.device)
    return u.cpu().numpy()


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
    border : str
        The policy's border mode, for the warp (:data:`functional.BORDER_MODES`).
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
    border: str = F.DEFAULT_BORDER

    def image_kwargs(self, i: int) -> dict[str, Any]:
        """Keyword arguments of :func:`functional.augment_image` for image ``i``."""
        kw: dict[str, Any] = {}
        if self.theta is not None:
            kw["theta"] = self.theta[i]
            kw["border"] = self.border
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
    list order, the TrivialAugment magnitude; then the noise field is drawn. Geometric
    ops are composed, in canonical order, into one map per image.
    """
    ops = policy.ops
    k = len(ops)
    if k == 0 or n == 0:
        return BatchParams(applied=np.zeros((n, k), dtype=bool), border=policy.border)
    s = policy.sampling
    trivial = s is not None and s.kind == "trivialaugment"
    widths = [op.N_UNIFORMS for op in ops]
    u = uniform(n, k + sum(widths) + int(trivial), generator)  # one draw for everything
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
    drawn = {
        op.op: op.finalize(raw, applied[:, j], magnitude)
        for j, (op, raw) in enumerate(zip(ops, raws, strict=True))
    }
    kw: dict[str, Any] = {"applied": applied, "border": policy.border}
    mats = []
    for op in policy.ordered_ops():
        if op.STAGE == "geometric":
            mats.append(op.matrix(drawn[op.op], height=height, width=width))
        else:
            kw.update(op.stage_values(drawn[op.op]))
    if mats:
        kw["theta"] = F.to_normalized(F.compose(*mats), height=height, width=width)
    if "noise_std" in kw:
        index = np.nonzero(kw["noise_std"] > 0)[0]
        kw["noise_index"] = index
        kw["noise"] = torch.randn(
            (index.size, channels, height, width),
            generator=generator, dtype=torch.float32, device=generator.device,
        )
    return BatchParams(**kw)


def draw_op_params(op: ImageOp, generator: torch.Generator) -> dict[str, Any]:
    """Draw one image's parameters of ``op`` alone, ``applied`` (with ``p``) included.

    The noise stage also gets a ``noise_seed`` for the noise field. The result is what
    :func:`fedaug.augment.apply.apply_op` takes.
    """
    applied = uniform(1, 1, generator)[:, 0] < op.p
    params: Mapping[str, np.ndarray] = op.finalize(
        op.draw_from(uniform(1, op.N_UNIFORMS, generator)), applied, 1.0
    )
    out: dict[str, Any] = {k: v[0].item() for k, v in params.items()}
    if op.STAGE == "noise":
        out["noise_seed"] = int(
            torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device)
        )
    return out
