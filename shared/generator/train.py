"""DP-SGD training of the generator: exact per-example gradients with noise multiplicity.

One example's loss is the mean over ``K`` (augmented view, diffusion noise, timestep) draws
of that example; :meth:`~fedaug.generator.persample.PerExampleGrads.clipped_sum` (layer
hooks, one batched backward pass per chunk) clips each *example's* gradient to ``C`` and
sums them, and :func:`noisy_mean_gradient` adds Gaussian noise and divides by the expected
batch size: the arithmetic of Opacus's ``DPOptimizer``, which a test holds it to. Batches
come from Opacus's Poisson sampler with masks from the secret noise source. Sensitivity
stays one example whatever ``K`` is, and no hook-based per-sample gradient runs after an
attention block (our UNet has none; Opacus's hooks after diffusers' attention are wrong).
:func:`per_example_grads` (``torch.func.vmap(grad(...))``) is the independent reference
the tests hold the hooks to.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from opacus.data_loader import wrap_collate_with_empty
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data._utils.collate import default_collate

from fedaug.config import UNIFORM_NOISE_LEVELS, parse_noise_levels
from fedaug.generator.model import diffusion_target, drop_labels, forward_diffuse
from fedaug.generator.persample import PerExampleGrads, clip_factors
from fedaug.privacy.noise import NoiseSource

__all__ = ["TrainOutcome", "GradientCanaries", "sample_rate_for", "SecretPoissonSampler", "poisson_loader",
           "train_dp", "train_nondp", "diffusion_loss", "per_example_grads",
           "noisy_mean_gradient"]

#: A batch augmenter: float images (N, C, H, W) in [0, 1] -> same, drawing from the generator.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class GradientCanaries:
    """White-box audit canaries: extra records whose per-example gradient is a fixed
    direction of norm ``norm`` (well above the clipping norm).

    Each included canary is Poisson-sampled, clipped and noised by the same code as a real
    record (see :func:`train_dp`); an excluded one is absent. Only the privacy audit makes
    them.

    Attributes
    ----------
    directions : Tensor (m, P)
        Unit vectors over the trainable parameters, flattened in ``named_parameters`` order.
    included : Tensor (m,) of bool
        Which canaries are in the data set.
    norm : float
        Each canary's per-example gradient norm before clipping.
    """

    directions: torch.Tensor
    included: torch.Tensor
    norm: float


@dataclass(frozen=True)
class TrainOutcome:
    """What one local training call did."""

    steps: int
    loss: float
    seconds: float
    examples_seen: int
    optimizer_state: dict | None = None


def noisy_mean_gradient(summed: list[torch.Tensor], *, noise_multiplier: float,
                        max_grad_norm: float, expected_batch_size: float,
                        noise: NoiseSource) -> list[torch.Tensor]:
    """The Gaussian mechanism on a sum of clipped per-example gradients.

    What Opacus's ``DPOptimizer`` does after clipping (``add_noise`` then ``scale_grad``):
    add ``N(0, (sigma * C)^2)`` to every coordinate and divide by the expected batch size,
    so an empty Poisson batch still gets its noise. One normal draw from the secret
    ``noise`` source covers all tensors. A test holds the two to the same result.
    """
    ref = summed[0]
    total = sum(t.numel() for t in summed)
    std = noise_multiplier * max_grad_norm
    draw = noise.normal(total, std=std, device=ref.device, dtype=ref.dtype) if std > 0 else None
    out, offset = [], 0
    for t in summed:
        g = t if draw is None else t + draw[offset:offset + t.numel()].view_as(t)
        out.append(g / expected_batch_size)
        offset += t.numel()
    return out


def _adam(params, learning_rate: float) -> torch.optim.Adam:
    """Adam with torch's fused kernel where the device has one (CPU and CUDA): one kernel
    over all tensors instead of a Python loop over them. Same update rule and state dict as
    the plain loop."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=learning_rate, fused=True)
    except (RuntimeError, ValueError):  # a device without the fused kernel
        return torch.optim.Adam(params, lr=learning_rate, foreach=True)


def sample_rate_for(num_examples: float, batch_size: int) -> float:
    """The Poisson rate q giving ``batch_size`` expected examples out of ``num_examples``
    (the site's released, noisy count: q is then a post-processing of a DP release), at
    most 1."""
    return float(min(1.0, batch_size / max(float(num_examples), 1.0)))


class SecretPoissonSampler(UniformWithReplacementSampler):
    """Opacus's Poisson sampler with every batch mask drawn from a secret noise source.

    Each of ``steps`` batches holds every record independently with probability
    ``sample_rate``; the masks come from :class:`~fedaug.privacy.NoiseSource`, so nobody who
    knows the run seed can replay them.
    """

    def __init__(self, *, num_samples: int, sample_rate: float, steps: int,
                 noise: NoiseSource) -> None:
        super().__init__(num_samples=num_samples, sample_rate=sample_rate, steps=steps)
        self.noise = noise

    def __iter__(self):
        for _ in range(self.steps):
            yield np.flatnonzero(self.noise.poisson_mask(self.num_samples, self.sample_rate)
                                 ).tolist()


def poisson_loader(images: torch.Tensor, labels: torch.Tensor, *, sample_rate: float,
                   steps: int, noise: NoiseSource) -> DataLoader:
    """Opacus's Poisson data loader (its sampler and empty-batch collation) over tensors,
    with secret batch masks."""
    sampler = SecretPoissonSampler(num_samples=len(images), sample_rate=sample_rate,
                                   steps=steps, noise=noise)
    collate = wrap_collate_with_empty(
        collate_fn=default_collate,
        sample_empty_shapes=[(0, *images.shape[1:]), (0,)], dtypes=[images.dtype, labels.dtype])
    return DataLoader(TensorDataset(images, labels), batch_sampler=sampler, collate_fn=collate)


def _alphas(scheduler: DDPMScheduler, device: torch.device) -> torch.Tensor:
    return scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)


def diffusion_loss(unet: UNet2DModel, x0: torch.Tensor, labels: torch.Tensor,
                   noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor, *,
                   prediction_type: str = "epsilon") -> torch.Tensor:
    """Mean MSE of a batch of (view, noise, timestep) draws against
    :func:`~fedaug.generator.model.diffusion_target` (the scheduler's ``prediction_type``)."""
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = forward_diffuse(x0, noise, a)
    pred = unet(noisy, t, class_labels=labels).sample
    return F.mse_loss(pred, diffusion_target(prediction_type, x0, noise, a))


def per_example_grads(unet: UNet2DModel, x0: torch.Tensor, labels: torch.Tensor,
                      noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor,
                      *, prediction_type: str = "epsilon", chunk: int = 64
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Gradient of each example's K-averaged loss.

    Parameters
    ----------
    x0, noise : Tensor (B, K, C, H, W)
        K views of each example and their diffusion noise.
    labels : Tensor (B,)
    t : Tensor (B, K)
        Timesteps.

    Returns
    -------
    grads : dict name -> Tensor (B, *param.shape)
    losses : Tensor (B,)
    """
    params = {k: v.detach() for k, v in unet.named_parameters()}
    buffers = {k: v.detach() for k, v in unet.named_buffers()}

    def one(p: dict[str, torch.Tensor], xe: torch.Tensor, ye: torch.Tensor,
            ne: torch.Tensor, te: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = xe.shape[0]
        a = alphas_cumprod[te].view(k, 1, 1, 1)
        noisy = forward_diffuse(xe, ne, a)
        pred = functional_call(unet, (p, buffers), (noisy, te),
                               {"class_labels": ye.expand(k)}).sample
        target = diffusion_target(prediction_type, xe, ne, a)
        loss = ((pred - target) ** 2).mean()
        return loss, loss

    g_fn = vmap(grad(one, has_aux=True), in_dims=(None, 0, 0, 0, 0))
    out: dict[str, list[torch.Tensor]] = {k: [] for k in params}
    losses = []
    for s in range(0, x0.shape[0], chunk):
        g, loss = g_fn(params, x0[s:s + chunk], labels[s:s + chunk], noise[s:s + chunk],
                       t[s:s + chunk])
        for k, v in g.items():
            out[k].append(v)
        losses.append(loss)
    return {k: torch.cat(v) for k, v in out.items()}, torch.cat(losses)


def _draw_views(x: torch.Tensor, k: int, augment: Augment | None,
                gen: torch.Generator) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> (B, K, C, H, W): K augmented views of each example."""
    b = x.shape[0]
    rep = x.unsqueeze(1).expand(b, k, *x.shape[1:]).reshape(b * k, *x.shape[1:])
    if augment is not None:
        rep = augment((rep + 1) / 2, gen) * 2 - 1
    return rep.reshape(b, k, *x.shape[1:])


def train_dp(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    sample_rate: float,
    noise_multiplier: float,
    max_grad_norm: float,
    learning_rate: float,
    expected_batch_size: float,
    noise: NoiseSource,
    noise_multiplicity: int = 1,
    noise_levels: str = UNIFORM_NOISE_LEVELS,
    augment: Augment | None = None,
    optimizer_state: dict | None = None,
    progress: Callable[[int, float], None] | None = None,
    observe: Callable[[list[torch.Tensor]], None] | None = None,
    canaries: GradientCanaries | None = None,
    label_dropout: float = 0.0,
    null_label: int | None = None,
) -> TrainOutcome:
    """Train ``unet`` in place with DP-SGD for exactly ``steps`` Poisson-sampled steps.

    Parameters
    ----------
    images : Tensor (N, C, H, W), float in [-1, 1]
    labels : Tensor (N,), int64
    steps : int
        Optimizer steps. The caller records ``(noise_multiplier, sample_rate, steps)`` in
        the site's ledger before anything trained here leaves the site.
    sample_rate : float
        Poisson sampling rate q in (0, 1].
    expected_batch_size : float
        What the noisy gradient sum is divided by: q times the site's *released* count, so
        the update's scale is a post-processing of DP releases, never of the exact size.
    noise : NoiseSource
        The secret source of every draw here: batch masks, views, diffusion noise,
        timesteps and the Gaussian noise.
    noise_multiplicity : int (default: 1)
        K draws averaged inside each example's loss before clipping.
    noise_levels : str (default: "uniform")
        How each draw's timestep is drawn (:func:`draw_timesteps`).
    augment : callable, optional
        Draws augmented views (see :data:`Augment`).
    optimizer_state : dict, optional
        Adam state from the site's previous round (a function of already-noised gradients
        only, so keeping it costs no privacy); the new state is returned in the outcome.
    observe : callable, optional
        Called with each step's noisy gradient sum (before the division), e.g. by the
        white-box privacy audit.
    canaries : GradientCanaries, optional
        The privacy audit's gradient canaries, sampled, clipped and noised with the records.
    label_dropout, null_label : float, int, optional
        Classifier-free guidance's training: each sampled example's label is replaced by
        ``null_label`` with probability ``label_dropout`` (drawn from ``noise``); the
        example still adds one clipped gradient, so the sensitivity is unchanged.
    """
    device = next(unet.parameters()).device
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    optimizer = _adam(unet.parameters(), learning_rate)
    if optimizer_state is not None:
        try:
            optimizer.load_state_dict(optimizer_state)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
        except (ValueError, KeyError, RuntimeError):
            optimizer = _adam(unet.parameters(), learning_rate)
    loader = poisson_loader(images, labels, sample_rate=sample_rate, steps=steps, noise=noise)
    expected = q_n = float(expected_batch_size)
    # Poisson batches vary in size: pad them to a few sizes (see PerExampleGrads.clipped_sum)
    pad_to = 1 if sample_rate >= 1 else 2 ** int(math.log2(max(1, int(q_n) // 8)))
    alphas = _alphas(scheduler, device)
    prediction = scheduler.config.prediction_type
    parse_noise_levels(noise_levels)  # a bad value fails before any draw
    per_example = PerExampleGrads(unet)
    named = [(k, p) for k, p in unet.named_parameters() if p.requires_grad]
    unet.train()
    done, seen, loss_sum, t0 = 0, 0, 0.0, time.perf_counter()
    try:
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            if xb.shape[0] == 0:  # an empty Poisson batch: a zero sum, noise still added
                summed = {k: torch.zeros_like(p) for k, p in named}
                batch_loss = float("nan")
            else:
                draws = noise.generator(device)  # views, diffusion noise, timesteps
                yb = drop_labels(yb, label_dropout, null_label, generator=draws)
                b, k = xb.shape[0], noise_multiplicity
                x0 = _draw_views(xb, k, augment, draws)
                eps = torch.randn(x0.shape, generator=draws, device=device)
                t = draw_timesteps((b, k), alphas, noise_levels, generator=draws)
                summed, losses, _ = per_example.clipped_sum(
                    x0, yb, eps, t, alphas, max_grad_norm=max_grad_norm,
                    prediction_type=prediction, pad_to=pad_to)
                batch_loss = float(losses.mean())
                seen += b
            if canaries is not None:
                summed = _add_canaries(summed, named, canaries, sample_rate=sample_rate,
                                       max_grad_norm=max_grad_norm, noise=noise)
            grads = noisy_mean_gradient([summed[k] for k, _ in named],
                                        noise_multiplier=noise_multiplier,
                                        max_grad_norm=max_grad_norm,
                                        expected_batch_size=expected, noise=noise)
            if observe is not None:
                observe([g * expected for g in grads])
            for (_, p), g in zip(named, grads, strict=True):
                p.grad = g
            optimizer.step()
            done += 1
            if batch_loss == batch_loss:  # not NaN
                loss_sum += batch_loss
            if progress is not None:
                progress(done, batch_loss)
    finally:  # the hooks never outlive this call
        per_example.close()
        for _, p in named:
            p.grad = None
    return TrainOutcome(steps=done, loss=loss_sum / max(done, 1),
                        seconds=time.perf_counter() - t0, examples_seen=seen,
                        optimizer_state=optimizer.state_dict())


def draw_timesteps(shape: tuple[int, ...], alphas_cumprod: torch.Tensor, noise_levels: str,
                   *, generator: torch.Generator) -> torch.Tensor:
    """Training timesteps of ``shape``, drawn with ``generator``.

    ``noise_levels`` ``"uniform"``: uniform over the schedule's timesteps.
    ``"lognormal:MEAN:STD"``: the noise level ``sigma = sqrt((1 - a) / a)`` (in the units of
    images in [-1, 1]) with ``log sigma ~ N(MEAN, STD)``, as EDM draws it, mapped to the first
    timestep whose sigma reaches it (the last one beyond the schedule's end). The loss is not
    reweighted: a level drawn more often simply gets more of the gradient.
    """
    levels = parse_noise_levels(noise_levels)
    t_max = len(alphas_cumprod)
    device = alphas_cumprod.device
    if levels is None:
        return torch.randint(0, t_max, shape, generator=generator, device=device)
    mean, std = levels
    log_sigma = (((1 - alphas_cumprod) / alphas_cumprod).sqrt()).log().contiguous()
    drawn = mean + std * torch.randn(shape, generator=generator, device=device)
    t = torch.searchsorted(log_sigma, drawn.flatten().contiguous()).reshape(shape)
    return t.clamp(0, t_max - 1)


def _add_canaries(summed: dict[str, torch.Tensor], named: list, canaries: GradientCanaries, *,
                  sample_rate: float, max_grad_norm: float, noise: NoiseSource
                  ) -> dict[str, torch.Tensor]:
    """Add this step's Poisson-sampled, clipped canary gradients to the clipped sum."""
    mask = torch.from_numpy(noise.poisson_mask(len(canaries.included), sample_rate))
    chosen = canaries.directions[mask & canaries.included.cpu()]
    if not len(chosen):
        return summed
    grads = chosen * canaries.norm
    factor = clip_factors(grads.norm(dim=1), max_grad_norm)
    flat = (factor @ grads).to(next(iter(summed.values())).device)
    out, offset = dict(summed), 0
    for k, p in named:
        out[k] = summed[k] + flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return out


def train_nondp(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    noise_multiplicity: int = 1,
    augment: Augment | None = None,
    seed: int = 0,
    chunk: int = 256,
    progress: Callable[[int, float], None] | None = None,
    label_dropout: float = 0.0,
    null_label: int | None = None,
) -> TrainOutcome:
    """The same objective without privacy (a baseline for benchmarks; never used by sites).

    Batches larger than ``chunk`` examples are processed ``chunk`` at a time, their
    gradients accumulated before the one optimizer step, as the DP step does
    (:meth:`PerExampleGrads.clipped_sum`): an unchunked baseline runs slower per example
    on large batches and would flatter DP in the benchmarks.
    """
    device = next(unet.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    optimizer = _adam(unet.parameters(), learning_rate)
    alphas = _alphas(scheduler, device)
    t_max = scheduler.config.num_train_timesteps
    n = images.shape[0]
    unet.train()
    loss_sum, t0 = 0.0, time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=gen, device=device)
        xb, yb = images[idx].to(device), labels[idx].to(device)
        yb = drop_labels(yb, label_dropout, null_label, generator=gen)
        b, k = xb.shape[0], noise_multiplicity
        x0 = _draw_views(xb, k, augment, gen).reshape(b * k, *xb.shape[1:])
        noise = torch.randn(x0.shape, generator=gen, device=device)
        t = torch.randint(0, t_max, (b * k,), generator=gen, device=device)
        yk = yb.repeat_interleave(k)
        optimizer.zero_grad(set_to_none=True)
        for s in range(0, b * k, chunk * k):  # rows of whole examples, chunk at a time
            part = slice(s, s + chunk * k)
            loss = diffusion_loss(unet, x0[part], yk[part], noise[part], t[part], alphas,
                                  prediction_type=scheduler.config.prediction_type)
            (loss * (x0[part].shape[0] / (b * k))).backward()
            loss_sum += loss.item() * x0[part].shape[0] / (b * k)
        optimizer.step()
        if progress is not None:
            progress(step + 1, loss_sum / (step + 1))
    return TrainOutcome(steps=steps, loss=loss_sum / max(steps, 1),
                        seconds=time.perf_counter() - t0, examples_seen=steps * batch_size)
