"""The server's warm start: DP central images from the sites' noised class sums, then a short
pretraining of the generator on them (post-processing of DP releases: no further cost)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedaug import keys
from fedaug.generator import train_nondp

__all__ = ["WarmupReply", "class_prior", "collect_central_images", "pretrain_on_central_images"]

log = logging.getLogger("fedaug.server")


@dataclass(frozen=True)
class WarmupReply:
    """What one site said to the warm-start request (all of it releases or its settings)."""

    node: int
    site: str
    released: bool
    epsilon: float
    delta: float
    budget: float


def collect_central_images(grid: Grid, config: ConfigRecord, *, num_classes: int,
                           image_shape: tuple[int, int, int], timeout: float,
                           min_count: float = 5.0
                           ) -> tuple[np.ndarray | None, np.ndarray | None, list[WarmupReply]]:
    """Ask every site for its noised class sums; return per-class mean images in [-1, 1]
    as (K, C, H, W), the noised class counts summed over the sites (K,) (both None when no
    site released) and each site's reply."""
    nodes = list(grid.get_node_ids())
    msgs = [Message(content=RecordDict({keys.CONFIG: config}), message_type=MessageType.QUERY,
                    dst_node_id=n) for n in nodes]
    replies = list(grid.send_and_receive(msgs, timeout=timeout))
    c, h, w = image_shape
    sums = np.zeros((num_classes, c * h * w))
    counts = np.zeros(num_classes)
    used = 0
    answers = []
    for r in replies:
        if r.has_error():
            log.warning("warm-up: node %d failed: %s", r.metadata.src_node_id, r.error.reason)
            continue
        answer = _answer(r)
        if answer is not None:
            answers.append(answer)
        if keys.ARRAYS not in r.content.array_records:
            continue
        arrays = r.content[keys.ARRAYS]
        try:
            s, n = arrays["class-sums"].numpy(), arrays["class-counts"].numpy()
        except KeyError:
            continue
        if s.shape != sums.shape or n.shape != counts.shape or not (
                np.all(np.isfinite(s)) and np.all(np.isfinite(n))):
            log.warning("warm-up: ignoring a malformed release from node %d",
                        r.metadata.src_node_id)
            continue
        sums += s
        counts += n
        used += 1
    log.info("warm-up: %d of %d sites released noised class sums", used, len(nodes))
    if used == 0:
        return None, None, answers
    means = sums / np.maximum(counts, min_count)[:, None]
    return (np.clip(means, -1, 1).reshape(num_classes, c, h, w).astype(np.float32), counts,
            answers)


def class_prior(counts: np.ndarray, *, min_count: float = 5.0) -> list[float]:
    """The federation's class proportions from the sites' noised class counts (summed): each
    count raised to at least ``min_count`` (a noised count can be small or negative), then
    normalised. A post-processing of DP releases; synthetic labels follow it."""
    floor = np.maximum(np.asarray(counts, dtype=np.float64), min_count)
    return [float(v) for v in floor / floor.sum()]


def _answer(reply: Message) -> WarmupReply | None:
    cfg = reply.content.config_records.get(keys.CONFIG)
    metrics = reply.content.metric_records.get(keys.METRICS)
    if cfg is None or metrics is None:
        return None
    try:
        return WarmupReply(node=reply.metadata.src_node_id, site=str(cfg[keys.SITE]),
                           released=cfg.get(keys.STATUS) == keys.STATUS_RELEASED,
                           epsilon=float(metrics[keys.EPSILON]), delta=float(metrics[keys.DELTA]),
                           budget=float(metrics.get(keys.BUDGET, 0.0)))
    except (KeyError, TypeError, ValueError):
        return None


def pretrain_on_central_images(unet: UNet2DModel, scheduler: DDPMScheduler, means: np.ndarray,
                               *, steps: int = 300, jitter: float = 0.3, seed: int = 0) -> float:
    """Train on jittered, shifted copies of the central images (one per class); returns the
    mean loss. The jitter and +-1 pixel shifts make it learn a family, not K points."""
    x = torch.from_numpy(means)
    y = torch.arange(len(means))

    def jittered(batch01: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        shift = torch.randint(-1, 2, (2,), generator=gen)
        out = torch.roll(batch01, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
        noise = torch.randn(out.shape, generator=gen) * (jitter / 2)
        return (out + noise).clamp(0, 1)

    bar = None
    if sys.stderr.isatty():  # bars stay out of log files
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="warm start", unit="step", leave=False)
    try:
        outcome = train_nondp(unet, scheduler, x, y, steps=steps, batch_size=128,
                              learning_rate=2e-3, augment=jittered, seed=seed,
                              progress=None if bar is None else (lambda i, loss: bar.update(1)))
    finally:
        if bar is not None:
            bar.close()
    return outcome.loss
