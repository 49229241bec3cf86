"""Apply a policy one sample at a time: images by the reference maths, texts by EDA.

:func:`apply_policy` is the per-image reference path of the image engine: parameters come
from :func:`~fedaug.augment.params.draw_params` (as in the batched engine) and each image
goes through :func:`~fedaug.augment.functional.augment_image`, plain numpy. The batched
engine's torch backend matches it within float rounding. :func:`apply_text_policy` runs
the EDA functions of :mod:`fedaug.augment.text` named by the text ops' tags.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fedaug.errors import DataError, PolicyError

from . import functional as F
from .ops import OPS, ImageOp
from .params import draw_params
from .policy import MAX_MAGNITUDE, Policy
from .schema import check_seed, show

__all__ = ["apply_policy", "apply_text_policy", "apply_op"]


def apply_policy(policy: Policy, images: np.ndarray, *, seed: int) -> np.ndarray:
    """Augment images one by one (the reference path).

    Parameters
    ----------
    policy : Policy
        An image policy.
    images : np.ndarray
        ``(N, H, W, C)`` or ``(N, H, W)``; ``uint8`` or floating in ``[0, 1]``.
    seed : int
        An integer >= 0; same policy and seed give the same output. Parameters are drawn
        exactly as ``BatchAugmenter(policy)(x, generator=torch.Generator().manual_seed(seed))``
        draws them, and the per-image maths (:func:`functional.augment_image`) matches
        the batched engine's torch backend within float rounding (at most 1 grey level on
        ``uint8``); its OpenCV backend is within a few grey levels of that.

    Returns
    -------
    np.ndarray
        Same shape and dtype as ``images``.
    """
    if not isinstance(policy, Policy) or policy.modality != "image":
        raise PolicyError([f"modality: apply_policy needs an image policy, got {show(policy)}"])
    seed = check_seed(seed)
    arr = np.asarray(images)
    if arr.ndim not in (3, 4) or not (arr.dtype == np.uint8 or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(
            "images must be an (N, H, W, C) or (N, H, W) array of uint8 or floats in [0, 1].",
            value=f"shape {arr.shape}, dtype {arr.dtype}",
            fix="Convert with np.asarray(images, dtype=np.uint8).",
        )
    x = arr[..., None] if arr.ndim == 3 else arr
    n, h, w, c = x.shape
    params = draw_params(
        policy, n, channels=c, height=h, width=w, generator=torch.Generator().manual_seed(seed)
    )
    out = np.empty_like(x)
    for i in range(n):
        out[i] = F.augment_image(x[i], **params.image_kwargs(i))
    return out[..., 0] if arr.ndim == 3 else out


def apply_op(
    op: ImageOp, image: np.ndarray, params: Mapping[str, Any], *, border: str = F.DEFAULT_BORDER
) -> np.ndarray:
    """Apply one image op alone to one ``(H, W, C)`` image.

    ``params`` are one image's parameters of ``op``, as
    :func:`~fedaug.augment.params.draw_op_params` draws them (``applied`` False returns
    a copy); ``border`` fills what a geometric op uncovers (as a policy's ``border``).
    """
    if not params.get("applied", True):
        return image.copy()
    h, w = image.shape[:2]
    if op.STAGE == "geometric":
        batch = {k: np.asarray([v]) for k, v in params.items()}
        m = op.matrix(batch, height=h, width=w)
        return F.augment_image(image, theta=F.to_normalized(m, height=h, width=w)[0],
                               border=border)
    kwargs: dict[str, Any] = {k: float(v) for k, v in op.stage_values(params).items()}
    if op.STAGE == "noise":
        kwargs["noise"] = np.random.default_rng(params["noise_seed"]).standard_normal(image.shape)
    return F.augment_image(image, **kwargs)


def apply_text_policy(policy: Policy, texts: Sequence[str], *, seed: int) -> list[str]:
    """Augment texts with the EDA ops of a text policy.

    All randomness comes from one ``random.Random(seed)`` used in order: per text, the op
    choice (each op's ``p``, or the sampled ops and magnitude), then the EDA functions.
    Ops run in canonical order; under sampling each ``alpha`` is scaled by the magnitude.
    """
    if not isinstance(policy, Policy) or policy.modality != "text":
        raise PolicyError([f"modality: apply_text_policy needs a text policy, got {show(policy)}"])
    rng = random.Random(check_seed(seed))
    from . import text as eda  # WordNet and NLTK load only when texts are augmented

    ops = policy.ops
    rank = {tag: i for i, tag in enumerate(OPS)}
    out = []
    for text in texts:
        s = policy.sampling
        if s is None:
            chosen = [op for op in ops if rng.random() < op.p]
            m = 1.0
        else:
            chosen = [ops[i] for i in rng.sample(range(len(ops)), s.num_ops)]
            m = s.magnitude / MAX_MAGNITUDE
            if s.kind == "trivialaugment":
                m = rng.uniform(0.0, m)
        for op in sorted(chosen, key=lambda o: rank[o.op]):
            alpha = op.alpha * m
            if alpha > 0.0:
                text = getattr(eda, op.op)(text, alpha=float(alpha), rng=rng)
        out.append(text)
    return out
