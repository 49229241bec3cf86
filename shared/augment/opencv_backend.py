"""The OpenCV backend of the batched engine: one uint8 warp and one lookup table per image.

For ``uint8`` batches on the CPU, :class:`~fedaug.augment.batched.BatchAugmenter` (with
``backend="auto"`` or ``"opencv"``) hands the drawn :class:`BatchParams` to
:func:`apply_params`. Each image is warped by the same composed 2x3 matrix as the torch
path (converted by :func:`functional.to_pixel`) in one ``cv2.warpAffine`` call per channel
plane (bilinear, OpenCV's SIMD kernel on ``uint8``; the policy's border as ``BORDER_REFLECT``,
which mirrors about the outer pixel edges as ``grid_sample``'s reflection does,
``BORDER_CONSTANT`` or ``BORDER_REPLICATE``); blur is
``cv2.sepFilter2D`` with the torch path's kernel and reflect-101 border; brightness,
contrast and gamma become one 256-entry lookup table per image (``cv2.LUT``), built from
the image's own mean grey after the warp; noise is added in float32 on the looked-up values.

Agreement with the torch backend: the warp alone is within 1 grey level with OpenCV 5
(whose bilinear warp uses exact coordinates; OpenCV 4 rounds them to 1/32 pixel, up to 7
grey levels apart on noise images, so :func:`available` asks for OpenCV >= 5). The
stages after the warp see ``uint8`` values where the torch path keeps floats, so each
rounding (after the warp, after the blur) is scaled by the later contrast and gamma:
a few grey levels at most, well under one on average (``tests/augment/test_batched.py``).

Threads: the batch is split into ``torch.get_num_threads()`` contiguous chunks, the
calling thread running the first and a shared thread pool the others (OpenCV releases the
GIL), so one setting drives both backends and the output does not depend on it.
``cv2.setNumThreads`` is left as the caller set it.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import functional as F

if TYPE_CHECKING:
    from .params import BatchParams

__all__ = ["MIN_OPENCV", "BORDER_FLAGS", "available", "apply_params"]

#: Oldest OpenCV major version whose bilinear ``uint8`` warp agrees with ``grid_sample``.
MIN_OPENCV = 5

#: Names of ``cv2``'s border flags for each border mode of a policy (``cv2`` loads lazily).
BORDER_FLAGS = {"reflect": "BORDER_REFLECT", "constant": "BORDER_CONSTANT", "edge": "BORDER_REPLICATE"}

_RAMP = np.arange(256, dtype=np.float64)
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def available() -> bool:
    """Whether ``cv2`` imports and is OpenCV ``MIN_OPENCV`` or newer."""
    try:
        import cv2
    except ImportError:
        return False
    try:
        return int(cv2.__version__.split(".")[0]) >= MIN_OPENCV
    except (AttributeError, ValueError):
        return False


def _pool(workers: int) -> ThreadPoolExecutor:
    with _POOL_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="fedaug-augment")
        return _POOLS[workers]


def apply_params(x: torch.Tensor, params: BatchParams) -> torch.Tensor:
    """Apply drawn parameters to a CPU ``uint8`` ``(B, C, H, W)`` batch; returns a new one."""
    src = x.contiguous().numpy()
    b, _, h, w = src.shape
    out = np.empty_like(src)
    if b == 0:
        return torch.from_numpy(out)
    mats = None if params.theta is None else F.to_pixel(params.theta, height=h, width=w)
    workers = max(1, min(torch.get_num_threads(), b))
    bounds = np.linspace(0, b, workers + 1).astype(int)
    chunks = [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo]
    # the calling thread takes the first chunk, the pool the others
    futures = [_pool(len(chunks) - 1).submit(_run, src, out, params, mats, lo, hi) for lo, hi in chunks[1:]]
    _run(src, out, params, mats, *chunks[0])
    for f in futures:
        f.result()
    return torch.from_numpy(out)


def _run(
    src: np.ndarray, out: np.ndarray, params: BatchParams, mats: np.ndarray | None, lo: int, hi: int
) -> None:
    """Augment images ``lo`` to ``hi - 1`` of ``src`` into ``out`` (one worker's chunk)."""
    import cv2

    _, c, h, w = src.shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    border = getattr(cv2, BORDER_FLAGS[params.border])
    for i in range(lo, hi):
        if mats is None:
            out[i] = src[i]
        else:
            for ch in range(c):
                cv2.warpAffine(src[i, ch], mats[i], (w, h), dst=out[i, ch], flags=flags,
                               borderMode=border, borderValue=0)
        if params.sigma is not None:
            _blur(out[i], float(params.sigma[i]))
    tables = _tables(out[lo:hi], params, lo, hi)
    if tables is None:
        return
    noise_at = {} if params.noise is None else {int(i): j for j, i in enumerate(params.noise_index)}
    rounded = np.floor(np.clip(tables, 0.0, 255.0) + 0.5).astype(np.uint8)
    for i in range(lo, hi):
        planes = out[i].reshape(c * h, w)  # one table for every channel: one call
        j = noise_at.get(i)
        if j is None:
            cv2.LUT(planes, rounded[i - lo], dst=planes)
            continue
        y = cv2.LUT(planes, tables[i - lo].astype(np.float32)).reshape(c, h, w)
        y += params.noise[j].numpy() * np.float32(params.noise_std[i] * 255.0)
        np.clip(y, 0.0, 255.0, out=y)
        y += 0.5
        out[i] = y  # truncation after +0.5: round half up, as the torch path


def _blur(img: np.ndarray, sigma: float) -> None:
    import cv2

    _, h, w = img.shape
    full = F.blur_radius(sigma)
    r = min(full, h - 1, w - 1)
    if r <= 0:
        return
    k = F.gaussian_kernel1d(sigma, radius=full)[full - r : full + r + 1]  # as the torch path
    for plane in img:
        plane[...] = cv2.sepFilter2D(plane, -1, k, k, borderType=cv2.BORDER_REFLECT_101)


def _tables(imgs: np.ndarray, params: BatchParams, lo: int, hi: int) -> np.ndarray | None:
    """``(hi - lo, 256)`` float64 tables of brightness, contrast, gamma (and noise: identity).

    None when no image of the chunk has a value stage.
    """
    import cv2

    if params.brightness is None and params.contrast is None and params.gamma is None and (
        params.noise is None or not params.noise_index.size
    ):
        return None
    k, c = imgs.shape[:2]
    y = np.broadcast_to(_RAMP, (k, 256))
    if params.brightness is not None or params.contrast is not None:
        b = np.ones(k) if params.brightness is None else params.brightness[lo:hi]
        con = np.ones(k) if params.contrast is None else params.contrast[lo:hi]
        shift = np.zeros(k)
        if params.contrast is not None:  # blend with the (luma) mean grey, as the torch path
            means = np.array([cv2.mean(p)[0] for p in imgs.reshape(k * c, *imgs.shape[2:])])
            means = means.reshape(k, c)
            grey = means @ np.array(F.LUMA_WEIGHTS) if c == 3 else means.mean(axis=1)
            shift = (1.0 - con) * b * grey
        y = np.clip(y * (con * b)[:, None] + shift[:, None], 0.0, 255.0)
    if params.gamma is not None:
        g = params.gamma[lo:hi]
        y = np.where((g != 1.0)[:, None], 255.0 * np.power(y / 255.0, g[:, None]), y)
    return y
