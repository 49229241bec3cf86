"""``fedaug generate``: synthetic samples from a global model as PNGs, a grid and an .npz."""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fedaug.atomic import atomic_write_bytes
from fedaug.config import DEFAULT_SAMPLE_STEPS, LABEL_MODES
from fedaug.errors import ConfigError
from fedaug.generator.model import load_generator
from fedaug.generator.pipeline import read_class_names, read_class_prior
from fedaug.generator.sample import make_grid, sample_images, to_uint8

__all__ = ["generate", "generate_to_folder", "model_labels", "synthetic_labels",
           "GRID_PER_CLASS", "LABEL_MODES"]

#: Most images of one class in a row of ``grid.png`` (a preview; every sample is a PNG).
GRID_PER_CLASS = 16
_GRID, _NPZ = "grid.png", "samples.npz"
#: The names generate gives the PNGs in class folders: the sample's index, 5 digits or more.
_SAMPLE_PNG = re.compile(r"\d{5,}\.png")


def synthetic_labels(num_samples: int, num_classes: int,
                     prior: Sequence[float] | None = None) -> np.ndarray:
    """``num_samples`` class labels, sorted: in the proportions of ``prior`` (largest
    remainders, so the counts are as close to ``num_samples * prior`` as whole numbers get),
    or spread evenly over the classes when ``prior`` is None."""
    if prior is None:
        prior = np.full(num_classes, 1.0 / num_classes)
    p = np.asarray(prior, dtype=np.float64)
    if p.shape != (num_classes,) or not np.all(np.isfinite(p)) or p.min() < 0 or p.sum() <= 0:
        raise ConfigError(f"A class prior needs {num_classes} non-negative proportions.",
                          value=list(np.asarray(prior).tolist()))
    exact = num_samples * p / p.sum()
    counts = np.floor(exact).astype(np.int64)
    # the remainder, one each, to the classes with the largest fractions (ties: lower index)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:num_samples - int(counts.sum())]] += 1
    return np.repeat(np.arange(num_classes), counts)


def model_labels(model_dir: str | Path, num_samples: int, num_classes: int, mode: str
                 ) -> tuple[np.ndarray, bool]:
    """:func:`synthetic_labels` for a model folder: in its card's class prior with ``mode``
    ``"prior"`` (evenly when the card has none), evenly with ``"balanced"``; also whether
    the prior was used."""
    if mode not in LABEL_MODES:
        raise ConfigError(f"labels must be one of {', '.join(LABEL_MODES)}.", value=mode,
                          fix="Use --labels prior (the federation's class mix) or balanced.")
    prior = read_class_prior(model_dir, num_classes) if mode == "prior" else None
    return synthetic_labels(num_samples, num_classes, prior), prior is not None


def generate(model_dir: str | Path, *, num_samples: int, label: int | None = None,
             seed: int = 0, steps: int = DEFAULT_SAMPLE_STEPS, labels: str = "prior",
             progress: bool | None = None, guidance_scale: float | None = None
             ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Sample ``num_samples`` images: uint8 (N, H, W, C), labels (N,), class names.

    ``labels``: ``"prior"`` (the default) draws the classes in the federation's proportions
    (the model card's ``class-prior``, from the sites' noised class counts), so the synthetic
    set follows the real data's class mix; a model without one, and ``"balanced"``, spread
    the samples evenly over the classes. ``label`` gives every sample one class instead.
    ``progress``: a tqdm bar on stderr for runs longer than a second; ``None`` shows it when
    stderr is a terminal. ``guidance_scale``: classifier-free guidance (1: none); default:
    the model's own (its ``fedaug_generator.json``), which needs a null class unless it is 1.
    """
    unet, scheduler, config = load_generator(model_dir)
    if guidance_scale is None:
        guidance_scale = config.guidance_scale
    names = read_class_names(model_dir, config.num_classes)
    if num_samples < 1:
        raise ConfigError("--num-samples must be at least 1.", value=num_samples)
    if label is not None and not 0 <= label < config.num_classes:
        raise ConfigError(f"--label must be a class index in [0, {config.num_classes - 1}] "
                          f"({', '.join(names)}).", value=label)
    if label is None:
        drawn, _ = model_labels(model_dir, num_samples, config.num_classes, labels)
    else:
        drawn = np.full(num_samples, label)
    if progress is None:
        progress = _stderr_is_terminal()
    images = to_uint8(sample_images(unet, scheduler, drawn.tolist(), num_inference_steps=steps,
                                    seed=seed, progress=progress,
                                    guidance_scale=guidance_scale,
                                    null_label=config.null_label))
    return images, drawn.astype(np.int64), names


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def generate_to_folder(model_dir: str | Path, out: str | Path, *, num_samples: int,
                       label: int | None = None, seed: int = 0, steps: int = DEFAULT_SAMPLE_STEPS,
                       labels: str = "prior", overwrite: bool = False,
                       progress: bool | None = None,
                       guidance_scale: float | None = None) -> dict[str, Any]:
    """Write ``out/<class>/NNNNN.png``, ``out/grid.png`` (one labelled row per class) and
    ``out/samples.npz``.

    An ``out`` folder that holds anything is refused unless ``overwrite``, which first
    removes what an earlier run wrote there (the ``NNNNN.png`` files of its sub-folders,
    sub-folders left empty by that, ``grid.png`` and ``samples.npz``) and nothing else.
    """
    out = Path(out)
    _check_out(out, overwrite=overwrite)
    images, labels, names = generate(model_dir, num_samples=num_samples, label=label,
                                     seed=seed, steps=steps, labels=labels, progress=progress,
                                     guidance_scale=guidance_scale)
    if overwrite:
        _remove_earlier_samples(out)
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        folder = out / _safe(names[y])
        folder.mkdir(parents=True, exist_ok=True)
        arr = img[..., 0] if img.shape[-1] == 1 else img
        Image.fromarray(arr).save(folder / f"{i:05d}.png")
    cells, rows, row_names = _grid_cells(images, labels, names)
    buf = io.BytesIO()
    make_grid(cells, rows=rows, scale=max(1, 96 // images.shape[1]),
              row_labels=row_names).save(buf, format="PNG")
    atomic_write_bytes(out / _GRID, buf.getvalue())
    npz = io.BytesIO()
    np.savez_compressed(npz, images=images, labels=labels, class_names=np.array(names))
    atomic_write_bytes(out / _NPZ, npz.getvalue())
    return {"folder": str(out), "grid": str(out / _GRID), "npz": str(out / _NPZ),
            "num-samples": int(len(images))}


def _check_out(out: Path, *, overwrite: bool) -> None:
    """Refuse an ``--out`` that is a file, or a folder with something in it (unless
    ``overwrite``), before any sampling time is spent."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder.",
                          fix="Pass a folder for the samples (it is created if missing).")
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise ConfigError(
            f"--out {out} is not empty.",
            fix="Pass --overwrite to replace the samples an earlier `fedaug generate` wrote "
            "there (only its class folders of PNGs, grid.png and samples.npz are removed), or "
            "choose a new or empty folder.")


def _remove_earlier_samples(out: Path) -> None:
    if not out.is_dir():
        return
    for name in (_GRID, _NPZ):
        if (out / name).is_file():
            (out / name).unlink()
    for folder in out.iterdir():
        if not folder.is_dir() or folder.is_symlink():
            continue
        pngs = [p for p in folder.iterdir()
                if _SAMPLE_PNG.fullmatch(p.name) and (p.is_file() or p.is_symlink())]
        for png in pngs:
            png.unlink()
        if pngs and not any(folder.iterdir()):
            folder.rmdir()


def _grid_cells(images: np.ndarray, labels: np.ndarray, names: list[str]
                ) -> tuple[np.ndarray, int, list[str]]:
    """The grid's cells: one row per class present, its first :data:`GRID_PER_CLASS` images,
    short rows filled with white cells; also the row count and the row labels."""
    classes = np.unique(labels)
    per_row = [np.flatnonzero(labels == c)[:GRID_PER_CLASS] for c in classes]
    cols = max(len(idx) for idx in per_row)
    cells = np.full((len(classes) * cols, *images.shape[1:]), 255, dtype=np.uint8)
    for r, idx in enumerate(per_row):
        cells[r * cols:r * cols + len(idx)] = images[idx]
    return cells, len(classes), [names[c] for c in classes]


def _safe(name: str) -> str:
    """A class name as a folder name inside ``out`` (never ``.`` or ``..``)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return "class" if not safe.strip(".") else safe
