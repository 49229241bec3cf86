"""Sampling from the generator (DDIM by default, through the one denoising loop of
:mod:`fedaug.generator.pipeline`) and sample grids labelled by class."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from PIL import Image, ImageDraw, ImageFont

from fedaug.config import DEFAULT_SAMPLE_STEPS
from fedaug.generator.pipeline import denoise, read_class_names

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
    guidance_scale: float = 1.0,
    null_label: int | None = None,
) -> torch.Tensor:
    """Generate one image per label; returns float images (N, C, H, W) in [-1, 1].

    ``sampler="ddim"`` uses DDIM (eta 0) with ``num_inference_steps``; ``"ddpm"`` runs the
    full ancestral DDPM chain (the slow reference). Labels go through in chunks of ``chunk``,
    each denoised by :func:`fedaug.generator.pipeline.denoise` (the loop
    ``FedaugPipeline`` runs); ``progress`` shows a tqdm bar of the denoising steps of all
    chunks on stderr. ``guidance_scale`` and ``null_label``: classifier-free guidance (see
    :func:`~fedaug.generator.pipeline.denoise`; a model's own are its
    :class:`~fedaug.generator.model.GeneratorConfig`'s).
    """
    device = next(unet.parameters()).device
    labels = torch.as_tensor(labels, dtype=torch.long, device=device)
    size = unet.config.sample_size
    channels = unet.config.in_channels
    gen = torch.Generator(device=device).manual_seed(seed)
    if sampler == "ddim":
        sched = DDIMScheduler.from_config(scheduler.config)
        steps = num_inference_steps
    elif sampler == "ddpm":
        sched = DDPMScheduler.from_config(scheduler.config)
        steps = scheduler.config.num_train_timesteps
    else:
        raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
    chunks = range(0, len(labels), chunk)
    bar = _progress_bar(len(chunks) * steps) if progress else None
    was_training = unet.training
    unet.eval()
    out = []
    try:
        for s in chunks:
            y = labels[s:s + chunk]
            noise = torch.randn((len(y), channels, size, size), generator=gen, device=device)
            x = denoise(unet, sched, noise, y, prediction_type=scheduler.config.prediction_type,
                        num_inference_steps=steps, generator=gen,
                        progress=None if bar is None else partial(_counted, bar=bar),
                        guidance_scale=guidance_scale, null_label=null_label)
            out.append(x.clamp(-1, 1))
    finally:
        unet.train(was_training)
        if bar is not None:
            bar.close()
    if not out:
        return torch.empty((0, channels, size, size))
    return torch.cat(out).cpu()


#: Seconds a sampling run lasts before its progress bar appears (short runs show none).
PROGRESS_DELAY_S = 1.0


def _progress_bar(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sampling", unit="step", delay=PROGRESS_DELAY_S,
                dynamic_ncols=True)


def _counted(steps: Iterable[Any], *, bar: Any) -> Iterator[Any]:
    for t in steps:
        yield t
        bar.update(1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: np.ndarray, *, rows: int, scale: int = 4, pad: int = 1,
              row_labels: Sequence[str] | None = None) -> Image.Image:
    """Tile uint8 images (N, H, W, C) into a PIL image with ``rows`` rows (row = class).

    ``row_labels`` (one per row, e.g. the class names) are written left of their rows in
    PIL's default font, black on white.
    """
    n, h, w, c = images.shape
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"row_labels must have one label per row ({rows}), "
                         f"got {len(row_labels)}")
    cols = max(1, -(-n // rows))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = images[i]
    img = Image.fromarray(np.ascontiguousarray(grid[..., 0]) if c == 1 else grid)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if row_labels is None:
        return img
    return _label_rows(img, [str(t) for t in row_labels], row_height=(h + pad) * scale,
                       top=pad * scale, image_height=h * scale)


def _label_rows(grid: Image.Image, labels: list[str], *, row_height: int, top: int,
                image_height: int, margin: int = 6) -> Image.Image:
    """``grid`` with a white column on its left holding each row's label, centred on it."""
    font = ImageFont.load_default()
    boxes = [font.getbbox(text) for text in labels]
    width = max(right for _, _, right, _ in boxes) + 2 * margin
    out = Image.new(grid.mode, (grid.width + width, grid.height), 255 if grid.mode == "L"
                    else (255, 255, 255))
    out.paste(grid, (width, 0))
    draw = ImageDraw.Draw(out)
    black = 0 if grid.mode == "L" else (0, 0, 0)
    for r, (text, (_, up, _, down)) in enumerate(zip(labels, boxes, strict=True)):
        middle = top + r * row_height + image_height / 2
        draw.text((margin, round(middle - (up + down) / 2)), text, fill=black, font=font)
    return out


def write_sample_grid(model_dir: str | Path, png: str | Path, *, per_class: int = 10,
                      steps: int = DEFAULT_SAMPLE_STEPS, seed: int = 0) -> Path:
    """Sample ``per_class`` images of every class from a saved generator into one PNG
    (one row per class, labelled with the class name), written atomically."""
    from fedaug.atomic import atomic_write_bytes
    from fedaug.generator.model import load_generator

    unet, scheduler, config = load_generator(model_dir)
    labels = [c for c in range(config.num_classes) for _ in range(per_class)]
    images = to_uint8(sample_images(unet, scheduler, labels, num_inference_steps=steps,
                                    seed=seed, **config.guidance))
    buf = io.BytesIO()
    make_grid(images, rows=config.num_classes, scale=max(1, 128 // config.image_size),
              row_labels=read_class_names(model_dir, config.num_classes)
              ).save(buf, format="PNG")
    atomic_write_bytes(png, buf.getvalue())
    return Path(png)
