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
from fedaug.augment.functional import gaussian_kernel1d
from fedaug.generator import train_nondp
from fedaug.generator.public import public_images
from fedaug.generator.spread import MIN_COUNT, draw_images, spread_components

__all__ = ["BLUR_WIDTHS", "PRETRAIN_JITTER", "SPREAD_POOL", "CentralImages", "WarmupReply",
           "class_prior", "collect_central_images", "denoise_central_images",
           "pretrain_on_central_images", "pretrain_on_public_images"]

log = logging.getLogger("fedaug.server")

#: Widths (standard deviations, in pixels) of the Gaussian blurs a central image may get;
#: 0 leaves it as released.
BLUR_WIDTHS = (0.0, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
#: Std of the pixel noise (on the [-1, 1] scale) the pretraining adds to the central images.
PRETRAIN_JITTER = 0.3
#: Images per class the pretraining draws from the classes' spread.
SPREAD_POOL = 2000


@dataclass(frozen=True)
class WarmupReply:
    """What one site said to the warm-start request (all of it releases or its settings)."""

    node: int
    site: str
    released: bool
    epsilon: float
    delta: float
    budget: float


@dataclass(frozen=True)
class CentralImages:
    """What the warm start learned from the sites' releases (all post-processing)."""

    means: np.ndarray | None  # (K, C, H, W) in [-1, 1]; None when no site released
    counts: np.ndarray | None  # (K,) noised class counts summed over the sites
    answers: list[WarmupReply]
    #: per class, the principal components of its low-resolution spread ((d, r), (r,));
    #: None without a spread release
    spread: list[tuple[np.ndarray, np.ndarray]] | None = None


def collect_central_images(grid: Grid, config: ConfigRecord, *, num_classes: int,
                           image_shape: tuple[int, int, int], timeout: float,
                           min_count: float = MIN_COUNT) -> CentralImages:
    """Ask every site for its noised class sums; return per-class mean images, the summed
    noised class counts, each site's reply and, where the config asks for
    ``warmup-spread`` components and sites released them, the classes' spread."""
    rank = int(config.get(keys.WARMUP_SPREAD, 0))
    nodes = list(grid.get_node_ids())
    msgs = [Message(content=RecordDict({keys.CONFIG: config}), message_type=MessageType.QUERY,
                    dst_node_id=n) for n in nodes]
    replies = list(grid.send_and_receive(msgs, timeout=timeout))
    c, h, w = image_shape
    sums = np.zeros((num_classes, c * h * w))
    counts = np.zeros(num_classes)
    noise_var = 0.0  # of each coordinate of the summed class sums
    used = 0
    spread_sum, spread_var, spread_counts = None, 0.0, np.zeros(num_classes)
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
            std = arrays["noise-std"].numpy().astype(np.float64)
        except KeyError as err:  # e.g. a client older than the server: no noise-std
            log.warning("warm-up: ignoring node %d's release: it lacks %s",
                        r.metadata.src_node_id, err)
            continue
        if s.shape != sums.shape or n.shape != counts.shape or std.shape != (1,) or not (
                np.all(np.isfinite(s)) and np.all(np.isfinite(n)) and np.isfinite(std[0])
                and std[0] >= 0):
            log.warning("warm-up: ignoring a malformed release from node %d",
                        r.metadata.src_node_id)
            continue
        sums += s
        counts += n
        noise_var += float(std[0]) ** 2
        used += 1
        if rank and "class-spread" in arrays and "spread-noise-std" in arrays:
            m2 = arrays["class-spread"].numpy().astype(np.float64)
            m2_std = arrays["spread-noise-std"].numpy().astype(np.float64)
            if (spread_sum is not None and m2.shape != spread_sum.shape) or m2.ndim != 2 \
                    or m2.shape[0] != num_classes or m2_std.shape != (1,) \
                    or not (np.all(np.isfinite(m2)) and np.isfinite(m2_std[0])
                            and m2_std[0] >= 0):
                log.warning("warm-up: ignoring a malformed spread release from node %d",
                            r.metadata.src_node_id)
                continue
            spread_sum = m2 if spread_sum is None else spread_sum + m2
            spread_var += float(m2_std[0]) ** 2
            spread_counts += n
    log.info("warm-up: %d of %d sites released noised class sums", used, len(nodes))
    if used == 0:
        return CentralImages(None, None, answers)
    floor = np.maximum(counts, min_count)
    means = (sums / floor[:, None]).reshape(num_classes, c, h, w)
    noise_sd = np.sqrt(noise_var) / floor  # per pixel of each class's central image
    means, widths = denoise_central_images(means, noise_sd, keep_below=PRETRAIN_JITTER)
    log.info("warm start: central images blurred by %s px (Stein's risk estimate; noise %s "
             "per pixel)", ", ".join(f"{b:g}" for b in widths),
             ", ".join(f"{v:.3f}" for v in noise_sd))
    spread = None
    if spread_sum is not None:
        spread = spread_components(spread_sum, spread_counts, float(np.sqrt(spread_var)),
                                   rank=rank, min_count=min_count)
        log.info("warm start: the classes' spread resolves %s principal components (of at most "
                 "%d)", ", ".join(str(len(sc)) for _, sc in spread), rank)
    return CentralImages(np.clip(means, -1, 1).astype(np.float32), counts, answers, spread)


def _blur_matrix(side: int, width: float) -> np.ndarray:
    """(side, side) matrix of the augmentation's 1-D Gaussian blur of ``width`` pixels
    (:func:`fedaug.augment.functional.gaussian_kernel1d`), edges reflected."""
    kernel = gaussian_kernel1d(width)
    radius = len(kernel) // 2
    padded = np.pad(np.eye(side), ((radius, radius), (0, 0)), mode="reflect")
    return sum(k * padded[j:j + side] for j, k in enumerate(kernel))


def denoise_central_images(means: np.ndarray, noise_sd: np.ndarray, *, keep_below: float = 0.0
                           ) -> tuple[np.ndarray, list[float]]:
    """Each class's central image (``means`` (K, C, H, W)) blurred by the width of
    :data:`BLUR_WIDTHS` that minimises Stein's unbiased risk estimate of its squared error,
    given the noise ``noise_sd`` (K,) per pixel; returns the images and the widths.

    For a linear smoother ``S`` and ``y = m + e``, ``e ~ N(0, s^2 I)`` over ``n`` pixels,
    ``||y - S y||^2 - n s^2 + 2 s^2 tr(S)`` is an unbiased estimate of ``||S y - m||^2``:
    the blur that removes most noise for least detail is read off the noisy image itself.
    A class of few records (much noise) gets a wide blur. A class whose noise is at most
    ``keep_below`` is left as released: the pretraining adds that much noise to every copy
    of it anyway (:data:`PRETRAIN_JITTER`), and on PneumoniaMNIST (noise 0.05-0.14) blurring
    such images lost on validation data. Post-processing of the DP release (the images, the
    noised counts and the mechanism's stated noise).
    """
    k, c, h, w = means.shape
    blurs = {b: (_blur_matrix(h, b), _blur_matrix(w, b)) for b in BLUR_WIDTHS + (0.0,)}
    out = means.astype(np.float64).copy()
    widths = []
    for i in range(k):
        y, s2 = out[i], float(noise_sd[i]) ** 2
        best = None
        for width in BLUR_WIDTHS if noise_sd[i] > keep_below else (0.0,):
            mh, mw = blurs[width]
            smoothed = np.einsum("ab,cbd,ed->cae", mh, y, mw)
            risk = (float(((y - smoothed) ** 2).sum()) - y.size * s2
                    + 2 * s2 * c * float(np.trace(mh)) * float(np.trace(mw)))
            if best is None or risk < best[0]:
                best = (risk, width, smoothed)
        out[i] = best[2]
        widths.append(best[1])
    return out, widths


def class_prior(counts: np.ndarray, *, min_count: float = MIN_COUNT) -> list[float]:
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
                               *, steps: int = 300, jitter: float = PRETRAIN_JITTER,
                               seed: int = 0,
                               spread: list[tuple[np.ndarray, np.ndarray]] | None = None,
                               label_dropout: float = 0.0, null_label: int | None = None
                               ) -> float:
    """Train on jittered, shifted copies of the central images (one per class); returns the
    mean loss. The jitter (pixel noise of std ``jitter`` on the [-1, 1] scale) and +-1 pixel
    shifts make it learn a family, not K points. With ``spread`` (per class, principal
    components of its low-resolution deviations, :func:`fedaug.generator.spread.spread_components`)
    each copy also gets a Gaussian deviation in those components: a pool of
    :data:`SPREAD_POOL` images per class drawn once (at most about 64 MB of them).
    ``label_dropout`` and ``null_label`` train the null class of classifier-free guidance
    as the sites do (:func:`fedaug.generator.train.train_dp`)."""
    if spread is None:
        x = torch.from_numpy(means)
        y = torch.arange(len(means))
    else:
        per_class = int(np.clip(16_000_000 // max(means[0].size * len(means), 1), 100,
                                SPREAD_POOL))
        x, y = draw_images(means, spread, per_class=per_class,
                           generator=torch.Generator().manual_seed(seed))

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
                              label_dropout=label_dropout, null_label=null_label,
                              progress=None if bar is None else (lambda i, loss: bar.update(1)))
    finally:
        if bar is not None:
            bar.close()
    return outcome.loss


#: Public patches drawn once for the public pretraining.
PUBLIC_POOL = 4096


def pretrain_on_public_images(unet: UNet2DModel, scheduler: DDPMScheduler, *, steps: int,
                              image_size: int, channels: int, num_classes: int,
                              seed: int = 0) -> float:
    """Train on patches of public photographs (:func:`fedaug.generator.public.public_images`)
    before the warm start; returns the mean loss. No site's data is used: it costs no
    privacy. Each patch gets one of the real classes uniformly at random, so no class learns
    anything of its own from them; the null class of classifier-free guidance (where the
    model has one) is left to the sites' data, since guidance steers away from it."""
    x = public_images(PUBLIC_POOL, size=image_size, channels=channels, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (len(x),), generator=gen)
    return train_nondp(unet, scheduler, x, y, steps=steps, batch_size=128,
                       learning_rate=2e-3, seed=seed).loss
