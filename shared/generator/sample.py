"""Sampling from the generator: one readable denoising loop (DDIM by default)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from PIL import Image

from fedaug.config import DEFAULT_SAMPLE_STEPS
from fedaug.generator.model import scheduler_output, scheduler_prediction_type

__all__ = ["sample_images", "to_uint8", "make_grid", "write_sample_grid"]


@torch.no_grad()
def sample_images(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    labels: Sequence[int] | torch.Tensor,
    *,
    num_inference_steps: int = DEFAULT_SAMPLE_STEPS,
    seed: int = 0,
    sampler: str = "ddim",
    chunk: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """Generate one image per label; returns float images (N, C, H, W) in [-1, 1].

    ``sampler="ddim"`` uses DDIM (eta 0) with ``num_inference_steps``; ``"ddpm"`` runs the
    full ancestral DDPM chain (the slow reference).
    """
    device = next(unet.parameters()).device
    labels = torch.as_tensor(labels, dtype=torch.long, device=device)
    size = unet.config.sample_size
    channels = unet.config.in_channels
    gen = torch.Generator(device=device).manual_seed(seed)
    prediction = scheduler.config.prediction_type
    alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    kind = {"prediction_type": scheduler_prediction_type(prediction)}
    if sampler == "ddim":
        sched = DDIMScheduler.from_config(scheduler.config, **kind)
        sched.set_timesteps(num_inference_steps)
    elif sampler == "ddpm":
        sched = DDPMScheduler.from_config(scheduler.config, **kind)
        sched.set_timesteps(scheduler.config.num_train_timesteps)
    else:
        raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
    was_training = unet.training
    unet.eval()
    out = []
    chunks = range(0, len(labels), chunk)
    iterator = chunks
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(chunks, desc="sampling", unit="chunk")
    for s in iterator:
        y = labels[s:s + chunk]
        x = torch.randn((len(y), channels, size, size), generator=gen, device=device)
        for t in sched.timesteps:
            output = scheduler_output(prediction, unet(x, t, class_labels=y).sample, x,
                                      alphas[t])
            x = sched.step(output, t, x, generator=gen).prev_sample
        out.append(x.clamp(-1, 1))
    unet.train(was_training)
    if not out:
        return torch.empty((0, channels, size, size))
    return torch.cat(out).cpu()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: np.ndarray, *, rows: int, scale: int = 4, pad: int = 1) -> Image.Image:
    """Tile uint8 images (N, H, W, C) into a PIL image with ``rows`` rows (row = class)."""
    n, h, w, c = images.shape
    cols = max(1, -(-n // rows))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = images[i]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid, mode="L" if c == 1 else "RGB")
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def write_sample_grid(model_dir: str | Path, png: str | Path, *, per_class: int = 10,
                      steps: int = DEFAULT_SAMPLE_STEPS, seed: int = 0) -> Path:
    """Sample ``per_class`` images of every class from a saved generator into one PNG
    (one row per class), written atomically."""
    from fedaug.atomic import atomic_write_bytes
    from fedaug.generator.model import load_generator

    unet, scheduler, config = load_generator(model_dir)
    labels = [c for c in range(config.num_classes) for _ in range(per_class)]
    images = to_uint8(sample_images(unet, scheduler, labels, num_inference_steps=steps,
                                    seed=seed))
    buf = io.BytesIO()
    make_grid(images, rows=config.num_classes, scale=max(1, 128 // config.image_size)
              ).save(buf, format="PNG")
    atomic_write_bytes(png, buf.getvalue())
    return Path(png)
