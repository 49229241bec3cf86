"""DP-SGD training of the generator: exact per-example gradients with noise multiplicity.

One example's loss is the mean over ``K`` (augmented view, diffusion noise, timestep) draws
of that example; :meth:`~fedaug.generator.persample.PerExampleGrads.clipped_sum` (layer
hooks, one batched backward pass per chunk) clips each *example's* gradient to ``C`` and
sums them, and :func:`noisy_mean_gradient` adds Gaussian noise and divides by the expected
batch size: the arithmetic of Opacus's ``DPOptimizer``, which a test holds it to. Batches
come from Opacus's Poisson ``DPDataLoader``. Sensitivity stays one example whatever ``K``
is (DP-NOTES trap 2), and no hook-based per-sample gradient runs after an attention block
(trap 1: our UNet has none). :func:`per_example_grads` (``torch.func.vmap(grad(...))``) is
the independent reference the tests hold the hooks to.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from opacus.data_loader import DPDataLoader
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, TensorDataset

from fedaug.generator.model import diffusion_target
from fedaug.generator.persample import PerExampleGrads

__all__ = ["TrainOutcome", "poisson_sample_rate", "train_dp", "train_nondp", "diffusion_loss",
           "per_example_grads", "noisy_mean_gradient", "secure_noise_generator"]

#: A batch augmenter: float images (N, C, H, W) in [0, 1] -> same, drawing from the generator.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class TrainOutcome:
    """What one local training call did."""

    steps: int
    loss: float
    seconds: float
    examples_seen: int
    optimizer_state: dict | None = None


def noisy_mean_gradient(summed: list[torch.Tensor], *, noise_multiplier: float,
                        max_grad_norm: float, expected_batch_size: int,
                        generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """The Gaussian mechanism on a sum of clipped per-example gradients.

    What Opacus's ``DPOptimizer`` does after clipping (``add_noise`` then ``scale_grad``):
    add ``N(0, (sigma * C)^2)`` to every coordinate and divide by the expected batch size,
    so an empty Poisson batch still gets its noise. One normal draw covers all tensors (Opacus
    1.6 draws per tensor and re-counts its accumulated iterations once per tensor, which was
    a third of a DP step on our 105-tensor UNet). A test holds the two to the same result.
    """
    ref = summed[0]
    total = sum(t.numel() for t in summed)
    std = noise_multiplier * max_grad_norm
    noise = (torch.normal(0.0, std, (total,), device=ref.device, dtype=ref.dtype,
                          generator=generator) if std > 0 else None)
    out, offset = [], 0
    for t in summed:
        g = t if noise is None else t + noise[offset:offset + t.numel()].view_as(t)
        out.append(g / expected_batch_size)
        offset += t.numel()
    return out


def _adam(params, learning_rate: float) -> torch.optim.Adam:
    """Adam with torch's fused kernel where the device has one (CPU and CUDA): one kernel
    over all tensors instead of a Python loop over them (1.3 vs 7.9 ms a step on the default
    105-tensor UNet on this CPU). Same update rule and state dict as the plain loop."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=learning_rate, fused=True)
    except (RuntimeError, ValueError):  # a device without the fused kernel
        return torch.optim.Adam(params, lr=learning_rate, foreach=True)


def poisson_sample_rate(num_examples: int, batch_size: int) -> float:
    """The q Opacus uses for a loader of ``batch_size`` over ``num_examples``: 1/len(loader)."""
    return 1.0 / math.ceil(num_examples / max(1, min(batch_size, num_examples)))


def secure_noise_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from the OS entropy pool, for the DP noise only.

    Data order and augmentation are seeded (replayable); the privacy noise never is, so
    knowing the run seed does not let anyone subtract the noise. This is not
    ``secure_mode`` (which needs torchcsprng, not installable here; see README).
    """
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))
    return g


def _alphas(scheduler: DDPMScheduler, device: torch.device) -> torch.Tensor:
    return scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)


def diffusion_loss(unet: UNet2DModel, x0: torch.Tensor, labels: torch.Tensor,
                   noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor, *,
                   prediction_type: str = "epsilon") -> torch.Tensor:
    """Mean MSE of a batch of (view, noise, timestep) draws against
    :func:`~fedaug.generator.model.diffusion_target` (the scheduler's ``prediction_type``)."""
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
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
        noisy = a.sqrt() * xe + (1 - a).sqrt() * ne
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
    noise_multiplicity: int = 1,
    augment: Augment | None = None,
    seed: int = 0,
    optimizer_state: dict | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> TrainOutcome:
    """Train ``unet`` in place with DP-SGD under Opacus for exactly ``steps`` steps.

    Parameters
    ----------
    images : Tensor (N, C, H, W), float in [-1, 1]
    labels : Tensor (N,), int64
    steps : int
        Optimizer steps (each one Poisson-sampled batch). The caller records
        ``(noise_multiplier, sample_rate, steps)`` in the site's ledger.
    sample_rate : float
        Poisson sampling rate q (expected batch = q * N).
    noise_multiplicity : int (default: 1)
        K draws averaged inside each example's loss before clipping.
    augment : callable, optional
        Draws augmented views (see :data:`Augment`).
    optimizer_state : dict, optional
        Adam state from the site's previous round (a function of already-noised gradients
        only, so keeping it costs no privacy); the new state is returned in the outcome.
    """
    device = next(unet.parameters()).device
    n = images.shape[0]
    batch_size = math.ceil(n * sample_rate)
    if abs(poisson_sample_rate(n, batch_size) - sample_rate) > 1e-12:
        raise ValueError(f"sample_rate {sample_rate} is not 1/k for a whole k with {n} examples; "
                         "use poisson_sample_rate(num_examples, batch_size)")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    torch_gen_dev = torch.Generator(device=device).manual_seed(seed + 1)
    dataset = TensorDataset(images, labels)
    loader = DataLoader(dataset, batch_size=batch_size, generator=gen)
    optimizer = _adam(unet.parameters(), learning_rate)
    if optimizer_state is not None:
        try:
            optimizer.load_state_dict(optimizer_state)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
        except (ValueError, KeyError, RuntimeError):
            optimizer = _adam(unet.parameters(), learning_rate)
    # The data side of PrivacyEngine.make_private(poisson_sampling=True): Opacus's Poisson
    # loader. Clipping comes from PerExampleGrads.clipped_sum, noise from
    # noisy_mean_gradient; the site's ledger (not an engine accountant) does the accounting.
    loader = DPDataLoader.from_data_loader(loader, generator=gen)
    expected_batch_size = int(n / len(loader))  # as make_private sets it
    # Poisson batches vary in size: pad them to a few sizes (see PerExampleGrads.clipped_sum)
    pad_to = 1 if len(loader) == 1 else 2 ** int(math.log2(max(1, expected_batch_size // 8)))
    noise_gen = secure_noise_generator(device)
    # q = 1 / len(loader), as Opacus computes it; the ledger records the same q.
    actual_q = 1 / len(loader)
    if abs(actual_q - sample_rate) > 1e-9:
        raise RuntimeError(f"sample rate drifted: asked {sample_rate}, Opacus uses {actual_q}")
    alphas = _alphas(scheduler, device)
    prediction = scheduler.config.prediction_type
    t_max = scheduler.config.num_train_timesteps
    per_example = PerExampleGrads(unet)
    named = [(k, p) for k, p in unet.named_parameters() if p.requires_grad]
    unet.train()
    done, seen, loss_sum, t0 = 0, 0, 0.0, time.perf_counter()
    try:
        while done < steps:
            for xb, yb in loader:
                if done >= steps:
                    break
                xb, yb = xb.to(device), yb.to(device)
                if xb.shape[0] == 0:  # an empty Poisson batch: a zero sum, noise still added
                    summed = {k: torch.zeros_like(p) for k, p in named}
                    batch_loss = float("nan")
                else:
                    b, k = xb.shape[0], noise_multiplicity
                    x0 = _draw_views(xb, k, augment, torch_gen_dev)
                    noise = torch.randn(x0.shape, generator=torch_gen_dev, device=device)
                    t = torch.randint(0, t_max, (b, k), generator=torch_gen_dev, device=device)
                    summed, losses, _ = per_example.clipped_sum(
                        x0, yb, noise, t, alphas, max_grad_norm=max_grad_norm,
                        prediction_type=prediction, pad_to=pad_to)
                    batch_loss = float(losses.mean())
                    seen += b
                grads = noisy_mean_gradient([summed[k] for k, _ in named],
                                            noise_multiplier=noise_multiplier,
                                            max_grad_norm=max_grad_norm,
                                            expected_batch_size=expected_batch_size,
                                            generator=noise_gen)
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
) -> TrainOutcome:
    """The same objective without privacy (a baseline for benchmarks; never used by sites).

    Batches larger than ``chunk`` examples are processed ``chunk`` at a time, their
    gradients accumulated before the one optimizer step, as the DP step does
    (:meth:`PerExampleGrads.clipped_sum`). In one speed.py run at 28x28 an unchunked pass
    over 512 examples and K = 2 draws ran at 189 examples/s against 253 for 64-example steps
    (chunked: 282 in the next run), so an unchunked baseline would flatter DP.
    """
    device = next(unet.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    optimizer = _adam(unet.parameters(), learning_rate)
    alphas = _alphas(scheduler, device)
    t_max = scheduler.config.num_train_timesteps
    n = images.shape[0]
    unet.train()
    loss_sum, t0 = 0.0, time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=gen, device=device)
        xb, yb = images[idx].to(device), labels[idx].to(device)
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
    return TrainOutcome(steps=steps, loss=loss_sum / max(steps, 1),
                        seconds=time.perf_counter() - t0, examples_seen=steps * batch_size)
