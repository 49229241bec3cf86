"""``fedaug generate``: synthetic samples from a global model as PNGs, a grid and an .npz."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fedaug.atomic import atomic_write_bytes
from fedaug.config import DEFAULT_SAMPLE_STEPS
from fedaug.errors import ConfigError
from fedaug.generator.model import load_generator
from fedaug.generator.sample import make_grid, sample_images, to_uint8

__all__ = ["generate", "generate_to_folder"]


def generate(model_dir: str | Path, *, num_samples: int, label: int | None = None,
             seed: int = 0, steps: int = DEFAULT_SAMPLE_STEPS) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Sample ``num_samples`` images: uint8 (N, H, W, C), labels (N,), class names."""
    unet, scheduler, config = load_generator(model_dir)
    names = _class_names(Path(model_dir), config.num_classes)
    if num_samples < 1:
        raise ConfigError("--num-samples must be at least 1.", value=num_samples)
    if label is not None and not 0 <= label < config.num_classes:
        raise ConfigError(f"--label must be a class index in [0, {config.num_classes - 1}] "
                          f"({', '.join(names)}).", value=label)
    if label is None:
        labels = np.arange(num_samples) % config.num_classes
        labels.sort(kind="stable")
    else:
        labels = np.full(num_samples, label)
    images = to_uint8(sample_images(unet, scheduler, labels.tolist(), num_inference_steps=steps,
                                    seed=seed, progress=num_samples > 256))
    return images, labels.astype(np.int64), names


def _class_names(folder: Path, k: int) -> list[str]:
    try:
        names = json.loads((folder / "model_card.json").read_text(encoding="utf-8"))["classes"]
        if len(names) == k:
            return [str(n) for n in names]
    except (OSError, ValueError, KeyError):
        pass
    return [str(i) for i in range(k)]


def generate_to_folder(model_dir: str | Path, out: str | Path, *, num_samples: int,
                       label: int | None = None, seed: int = 0, steps: int = DEFAULT_SAMPLE_STEPS
                       ) -> dict[str, Any]:
    """Write ``out/<class>/NNNNN.png``, ``out/grid.png`` and ``out/samples.npz``."""
    images, labels, names = generate(model_dir, num_samples=num_samples, label=label,
                                     seed=seed, steps=steps)
    out = Path(out)
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        folder = out / _safe(names[y])
        folder.mkdir(parents=True, exist_ok=True)
        arr = img[..., 0] if img.shape[-1] == 1 else img
        Image.fromarray(arr).save(folder / f"{i:05d}.png")
    rows = len(np.unique(labels))
    buf = io.BytesIO()
    make_grid(images, rows=rows, scale=max(1, 96 // images.shape[1])).save(buf, format="PNG")
    atomic_write_bytes(out / "grid.png", buf.getvalue())
    npz = io.BytesIO()
    np.savez_compressed(npz, images=images, labels=labels, class_names=np.array(names))
    atomic_write_bytes(out / "samples.npz", npz.getvalue())
    return {"folder": str(out), "grid": str(out / "grid.png"), "npz": str(out / "samples.npz"),
            "num-samples": int(len(images))}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "class"
