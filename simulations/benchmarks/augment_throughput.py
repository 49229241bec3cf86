"""Image augmentation throughput: fedaug's batched engine against per-image and batched peers.

The same pipeline everywhere: rotate within +-15 degrees, horizontal and vertical flips at
p=0.5, a crop keeping 70-90% of each side resized back, brightness and contrast factors in
0.8-1.2. Inputs: 10,000 grayscale 28x28 images (real PneumoniaMNIST train images, tiled, when
``../shared/data`` is present; random otherwise) and 1,000 random RGB 224x224 images.

Methods: a plain PIL per-image loop; Albumentations per image, torchvision.transforms.v2 per
image and kornia on batches (each optional: skipped with a note when not installed); fedaug's
``BatchAugmenter`` on uint8 batches (256 images at 28x28, 32 at 224x224) with its default
``backend="auto"`` (the backend it picked is reported per input). Each method gets
pre-built inputs in its own native type (PIL images, numpy arrays, tensors); conversion is
not timed. Differences: Albumentations' brightness is additive and its contrast scales about
0; torchvision/kornia's RandomResizedCrop draws area and aspect ratio rather than two
sides; all are close but not identical pipelines.

Threads: for each count ``t`` in ``--threads`` the script sets both
``torch.set_num_threads(t)`` and ``cv2.setNumThreads(t)`` (when OpenCV is installed), so
Albumentations' OpenCV calls and kornia's torch ops get the same threads as fedaug.
fedaug's OpenCV backend splits each batch into ``torch.get_num_threads()`` chunks on a
thread pool (OpenCV releases the GIL); its torch backend uses torch's intra-op threads.

Reported: images per second, the median of ``--passes`` interleaved passes (one pass of every
method in turn, then again), with 1 and 2 threads, and fedaug's ratio to the fastest
other method.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]

from fedaug.augment import (  # noqa: E402
    BatchAugmenter,
    Brightness,
    Contrast,
    CropResize,
    HFlip,
    Policy,
    Rotate,
    VFlip,
)

DATA = ROOT.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "4294967296",
}
EPILOG = """\
memory settings (glibc): at 224x224 a batched torch path is memory-bound; tensors above
the malloc mmap threshold are returned to the OS and page-faulted back every batch. This
script therefore re-executes itself with
    MALLOC_MMAP_THRESHOLD_=33554432   (keep blocks up to 32 MB on the heap)
    MALLOC_TRIM_THRESHOLD_=4294967296 (do not give freed heap memory back to the OS)
unless they are already set or --no-malloc-tuning is given. Set them the same way for a
training process that augments on CPU. THP_MEM_ALLOC_ENABLE=1 (transparent huge pages)
helps large batches further. Batches: 256 images at 28x28, 32 at 224x224.
"""

ROTATE, CROP, COLOUR = 15.0, (0.7, 0.9), (0.8, 1.2)


def pipeline_policy() -> Policy:
    """The benchmark pipeline as a fedaug policy."""
    return Policy(
        ops=(
            Rotate(p=1.0, limit=ROTATE),
            HFlip(p=0.5),
            VFlip(p=0.5),
            CropResize(p=1.0, scale=CROP),
            Brightness(p=1.0, factor=COLOUR),
            Contrast(p=1.0, factor=COLOUR),
        )
    )


def load_inputs(n_gray: int, n_rgb: int) -> tuple[dict[str, np.ndarray], str]:
    """``{"gray-28x28": (N, 28, 28, 1), "rgb-224x224": (M, 224, 224, 3)}`` uint8 arrays."""
    rng = np.random.default_rng(0)
    if DATA.exists():
        train = np.load(DATA)["train_images"]
        gray = np.resize(train, (n_gray, 28, 28))
        how = "tiled to" if n_gray > len(train) else "first"
        source = f"PneumoniaMNIST train ({len(train)} images, {how} {n_gray})"
    else:
        gray = rng.integers(0, 256, (n_gray, 28, 28), dtype=np.uint8)
        source = "random (PneumoniaMNIST not found at ../shared/data)"
    rgb = rng.integers(0, 256, (n_rgb, 224, 224, 3), dtype=np.uint8)
    return {"gray-28x28": gray[..., None], "rgb-224x224": rgb}, source


# ------------------------------------------------------------------------------ methods


def make_pil(images: np.ndarray) -> Callable[[], None]:
    from PIL import Image, ImageEnhance

    pics = [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in images]
    rng = random.Random(0)
    bilinear = Image.Resampling.BILINEAR

    def run() -> None:
        for im in pics:
            w, h = im.size
            im = im.rotate(rng.uniform(-ROTATE, ROTATE), resample=bilinear)
            if rng.random() < 0.5:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if rng.random() < 0.5:
                im = im.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
            cw, ch = rng.uniform(*CROP) * w, rng.uniform(*CROP) * h
            left, top = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
            im = im.resize((w, h), bilinear, box=(left, top, left + cw, top + ch))
            im = ImageEnhance.Brightness(im).enhance(rng.uniform(*COLOUR))
            ImageEnhance.Contrast(im).enhance(rng.uniform(*COLOUR))

    return run


def make_albumentations(images: np.ndarray) -> Callable[[], None]:
    import albumentations as A  # optional; never installed by this script

    h, w = images.shape[1:3]
    tf = A.Compose([
        A.Rotate(limit=ROTATE, border_mode=0, p=1.0),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomResizedCrop(size=(h, w), scale=(CROP[0] ** 2, CROP[1] ** 2), ratio=(7 / 9, 9 / 7), p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=1.0),
    ])
    arrays = [np.ascontiguousarray(a) for a in images]

    def run() -> None:
        for a in arrays:
            tf(image=a)

    return run


def make_torchvision(images: np.ndarray) -> Callable[[], None]:
    from torchvision.transforms import v2  # optional; never installed by this script

    h, w = images.shape[1:3]
    tf = v2.Compose([
        v2.RandomRotation(ROTATE),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomResizedCrop((h, w), scale=(CROP[0] ** 2, CROP[1] ** 2), ratio=(7 / 9, 9 / 7)),
        v2.ColorJitter(brightness=0.2, contrast=0.2),
    ])
    tensors = [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in images]

    def run() -> None:
        for t in tensors:  # per image: v2 on a batch draws one parameter set for all
            tf(t)

    return run


def make_kornia(images: np.ndarray, batch: int) -> Callable[[], None]:
    import kornia.augmentation as K  # optional; never installed by this script

    h, w = images.shape[1:3]
    tf = K.AugmentationSequential(
        K.RandomRotation(ROTATE, p=1.0),
        K.RandomHorizontalFlip(),
        K.RandomVerticalFlip(),
        K.RandomResizedCrop((h, w), scale=(CROP[0] ** 2, CROP[1] ** 2), ratio=(7 / 9, 9 / 7)),
        K.ColorJiggle(brightness=0.2, contrast=0.2, p=1.0),
    )
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)

    def run() -> None:
        with torch.no_grad():
            for i in range(0, len(x), batch):
                tf(x[i : i + batch])

    return run


def make_fedaug(images: np.ndarray, batch: int) -> Callable[[], None]:
    aug = BatchAugmenter(pipeline_policy())
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    gen = torch.Generator().manual_seed(0)

    def run() -> None:
        for i in range(0, len(x), batch):
            aug(x[i : i + batch], generator=gen)

    run.backend = aug.backend_for(x[:batch])  # type: ignore[attr-defined]
    return run


def set_threads(n: int) -> None:
    """Give torch and (when installed) OpenCV the same thread count."""
    torch.set_num_threads(n)
    try:
        import cv2
    except ImportError:
        return
    cv2.setNumThreads(n)


# ---------------------------------------------------------------------------- measuring


def build_methods(images: np.ndarray, batch: int) -> tuple[dict[str, Callable[[], None]], dict[str, str]]:
    makers: dict[str, Callable[[], Callable[[], None]]] = {
        "pil": lambda: make_pil(images),
        "albumentations": lambda: make_albumentations(images),
        "torchvision-v2": lambda: make_torchvision(images),
        "kornia": lambda: make_kornia(images, batch),
        "fedaug": lambda: make_fedaug(images, batch),
    }
    methods, skipped = {}, {}
    for name, make in makers.items():
        try:
            methods[name] = make()
        except ImportError as exc:
            skipped[name] = f"not installed ({exc.name or exc}); not installed by this benchmark"
    return methods, skipped


def measure(methods: dict[str, Callable[[], None]], n: int, passes: int) -> dict[str, float]:
    """Median images/s over interleaved passes, after one untimed warm-up pass each."""
    for run in methods.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(passes):
        for name, run in methods.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return {name: n / statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="2,000 gray and 128 RGB images, 3 passes")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--passes", type=int, default=None, help="timed passes (default 5, quick 3)")
    parser.add_argument("--threads", default="1,2", help="torch and OpenCV thread counts (default 1,2)")
    parser.add_argument("--no-malloc-tuning", action="store_true", help="do not re-exec with the malloc settings")
    args = parser.parse_args(argv)

    if not args.no_malloc_tuning and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        env = {**os.environ, **MALLOC_ENV}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    n_gray, n_rgb = (2000, 128) if args.quick else (10_000, 1_000)
    passes = args.passes or (3 if args.quick else 5)
    threads = [int(t) for t in args.threads.split(",")]
    inputs, source = load_inputs(n_gray, n_rgb)
    batches = {"gray-28x28": 256, "rgb-224x224": 32}

    report: dict[str, Any] = {
        "pipeline": "rotate +-15 deg, hflip p=0.5, vflip p=0.5, crop 70-90% per side + resize, brightness and contrast 0.8-1.2",
        "gray-source": source,
        "passes": passes,
        "malloc-tuning": all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()),
        "inputs": {},
    }
    for key, images in inputs.items():
        methods, skipped = build_methods(images, batches[key])
        per_threads = {}
        for t in threads:
            set_threads(t)
            per_threads[str(t)] = measure(methods, len(images), passes)
        entry: dict[str, Any] = {
            "images": len(images), "batch": batches[key],
            "fedaug-backend": getattr(methods["fedaug"], "backend", None), "skipped": skipped,
        }
        for t, res in per_threads.items():
            others = {k: v for k, v in res.items() if k != "fedaug"}
            best = max(others, key=others.get) if others else None
            suffix = "" if t == str(threads[0]) else f"-{t}-threads"
            entry[f"fedaug-images-per-s{suffix}"] = round(res["fedaug"], 1)
            entry[f"best-other{suffix}"] = best
            entry[f"best-other-images-per-s{suffix}"] = round(others[best], 1) if best else None
            entry[f"ratio{suffix}"] = round(res["fedaug"] / others[best], 2) if best else None
        entry["threads"] = {t: {k: round(v, 1) for k, v in res.items()} for t, res in per_threads.items()}
        report["inputs"][key] = entry

    if args.json:
        print(json.dumps(report))
    else:
        print(f"pipeline: {report['pipeline']}\ngray inputs: {source}; median of {passes} interleaved passes"
              f"; malloc tuning {'on' if report['malloc-tuning'] else 'off'}")
        for key, entry in report["inputs"].items():
            print(f"\n{key} ({entry['images']} images, fedaug batch {entry['batch']}"
                  f", backend {entry['fedaug-backend']})")
            names = list(next(iter(entry["threads"].values())))
            print(f"  {'method':<16}" + "".join(f"{t + ' thr img/s':>16}" for t in entry["threads"]))
            for name in names:
                print(f"  {name:<16}" + "".join(f"{entry['threads'][t][name]:>16,.0f}" for t in entry["threads"]))
            for name, why in entry["skipped"].items():
                print(f"  {name:<16}skipped: {why}")
            for t in entry["threads"]:
                suffix = "" if t == str(threads[0]) else f"-{t}-threads"
                print(f"  {t} thread(s): fedaug / {entry['best-other' + suffix]} = {entry['ratio' + suffix]}x")
    return report


if __name__ == "__main__":
    main()
