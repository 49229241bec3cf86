"""``fedaug augment``: apply a policy to an image folder or a text table, K copies each."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fedaug.atomic import atomic_write_bytes, atomic_write_text
from fedaug.augment.policy import Policy, apply_policy, apply_text_policy
from fedaug.augment.stats import distribution_shift, format_shift_report
from fedaug.data import IMAGE_EXTENSIONS, load_text_table
from fedaug.errors import DataError

__all__ = ["augment_path"]


def augment_path(policy: Policy, src: str | Path, out: str | Path, *, copies: int = 1,
                 seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Augment a folder of images (class sub-folders kept) or a CSV/TSV of texts.

    Returns a summary; for images it includes the golden-rule check (distribution shift of
    augmented against original images, per class) and the path of a preview grid PNG.
    """
    src, out = Path(src), Path(out)
    if copies < 1:
        raise DataError("--copies must be at least 1.", value=copies)
    if not src.exists():
        raise DataError("Input not found.", value=str(src),
                        fix="Pass an image folder (one sub-folder per class) or a CSV/TSV file.")
    if src.is_dir():
        if policy.modality != "image":
            raise DataError("A folder of images needs an image policy.", value=policy.modality)
        return _augment_images(policy, src, out, copies=copies, seed=seed, progress=progress)
    if policy.modality != "text":
        raise DataError("A text table needs a text policy.", value=policy.modality,
                        fix='Use a policy with "modality": "text".')
    return _augment_texts(policy, src, out, copies=copies, seed=seed)


def _image_files(src: Path) -> list[tuple[str, Path]]:
    files = []
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append((folder.name, f))
    if not files:
        raise DataError(f"No images found in class sub-folders of {src}.",
                        fix="Lay the folder out as IN/<class>/<image>.png.")
    return files


def _augment_images(policy: Policy, src: Path, out: Path, *, copies: int, seed: int,
                    progress: bool) -> dict[str, Any]:
    files = _image_files(src)
    iterator: Any = files
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(files, desc="augment", unit="image")
    originals, augmented, labels, preview = [], [], [], []
    classes = sorted({c for c, _ in files})
    for i, (cls, path) in enumerate(iterator):
        with Image.open(path) as im:
            mode = "L" if im.mode in ("L", "I;16", "I", "1") else "RGB"
            arr = np.asarray(im.convert(mode))
        arr3 = arr[..., None] if arr.ndim == 2 else arr
        batch = np.repeat(arr3[None], copies, axis=0)
        aug = apply_policy(policy, batch, seed=seed * 1_000_003 + i)
        (out / cls).mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            img = aug[k][..., 0] if aug.shape[-1] == 1 else aug[k]
            Image.fromarray(img).save(out / cls / f"{path.stem}_aug{k}.png")
        originals.append(batch)
        augmented.append(aug)
        labels.extend([classes.index(cls)] * copies)
        if len(preview) < 8:
            preview.append(np.concatenate([arr3[None], aug[: min(copies, 7)]]))
    summary: dict[str, Any] = {"kind": "images", "inputs": len(files),
                               "written": len(files) * copies, "out": str(out)}
    shapes = {o.shape[1:] for o in originals}
    if len(shapes) == 1:
        report = distribution_shift(np.concatenate(originals), np.concatenate(augmented),
                                    np.asarray(labels))
        summary["shift"] = report
        summary["shift-text"] = format_shift_report(report)
        rows = np.concatenate(preview)
        from fedaug.generator.sample import make_grid

        buf = io.BytesIO()
        make_grid(rows, rows=len(preview), scale=max(1, 64 // rows.shape[1])).save(buf, "PNG")
        atomic_write_bytes(out / "preview.png", buf.getvalue())
        summary["preview"] = str(out / "preview.png")
    else:
        summary["shift-text"] = "distribution shift not measured: images differ in size"
    return summary


def _augment_texts(policy: Policy, src: Path, out: Path, *, copies: int, seed: int
                   ) -> dict[str, Any]:
    data = load_text_table(src)
    delim = "," if src.suffix.lower() == ".csv" else "\t"
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delim, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    for k in range(copies):
        texts = apply_text_policy(policy, data.texts, seed=seed * 1_000_003 + k)
        for text, y in zip(texts, data.labels, strict=True):
            writer.writerow([data.class_names[y], text])
    target = out if out.suffix else out / src.name
    atomic_write_text(target, buf.getvalue())
    return {"kind": "texts", "inputs": len(data), "written": len(data) * copies,
            "out": str(target)}
