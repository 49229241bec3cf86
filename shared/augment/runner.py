"""``fedaug augment``: apply a policy to an image folder or a text table, K copies each.

Bad input does not stop a run: an unreadable image file or an empty class folder is
skipped with one warning naming it, a table row without a label or text with one warning
naming its line, and the summary counts what was skipped.
"""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fedaug.atomic import atomic_write_bytes, atomic_write_text
from fedaug.augment import Policy, apply_policy, apply_text_policy
from fedaug.augment.stats import distribution_shift, format_shift_report
from fedaug.augment.text import require_wordnet_for
from fedaug.data import IMAGE_EXTENSIONS, UnreadableImageError, read_image, read_text_table
from fedaug.errors import ConfigError, DataError

__all__ = ["augment_path"]

log = logging.getLogger("fedaug.augment")


def augment_path(policy: Policy, src: str | Path, out: str | Path, *, copies: int = 1,
                 seed: int = 0, progress: bool = True, text_column: int | str | None = None,
                 label_column: int | str | None = None) -> dict[str, Any]:
    """Augment a folder of images (class sub-folders kept) or a CSV/TSV of texts.

    Parameters
    ----------
    policy : Policy
        An image policy for a folder, a text policy for a table.
    src : str or Path
        ``IN/<class>/<image>`` folder, or a CSV/TSV table.
    out : str or Path
        Output folder; for a table, a file (or a folder that receives ``src``'s name).
    copies : int, default 1
        Augmented copies of every input.
    seed : int, default 0
        Same inputs, policy and seed give the same output.
    progress : bool, default True
        Show a progress bar over the images.
    text_column, label_column : int or str, optional
        The table's text and label columns (header name or 0-based index); default as
        :func:`fedaug.data.read_text_table` guesses them.

    Returns
    -------
    dict
        ``kind``, ``inputs``, ``written``, ``out`` and ``skipped`` (one ``"what: reason"``
        per input left out). For images also the golden-rule check (``shift``, and
        ``shift-text``: the per-class table, classes named by their folders) and the
        path of a preview grid PNG. A table is written in its own layout: the header and
        every column kept, only the text column changed, all copies in one atomic write.
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
        if text_column is not None or label_column is not None:
            raise ConfigError("--text-column and --label-column apply to text tables, not "
                              "to an image folder.", value=(text_column, label_column),
                              fix="Leave them out for an image folder.")
        return _augment_images(policy, src, out, copies=copies, seed=seed, progress=progress)
    if policy.modality != "text":
        raise DataError("A text table needs a text policy.", value=policy.modality,
                        fix='Use a policy with "modality": "text".')
    return _augment_texts(policy, src, out, copies=copies, seed=seed, text_column=text_column,
                          label_column=label_column)


def _skip(skipped: list[str], what: str, reason: str) -> None:
    log.warning("skipped %s: %s", what, reason)
    skipped.append(f"{what}: {reason}")


def _image_files(src: Path, skipped: list[str]) -> list[tuple[str, Path]]:
    class_dirs = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = []
    for folder in class_dirs:
        found = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS
                       and not f.name.startswith(".") and f.is_file())
        if not found:
            _skip(skipped, f"class folder {folder}",
                  f"holds no {'/'.join(IMAGE_EXTENSIONS)} images")
        files.extend((folder.name, f) for f in found)
    if not files:
        raise DataError(f"No images found in class sub-folders of {src}.",
                        fix="Lay the folder out as IN/<class>/<image>.png.")
    return files


def _augment_images(policy: Policy, src: Path, out: Path, *, copies: int, seed: int,
                    progress: bool) -> dict[str, Any]:
    skipped: list[str] = []
    files = _image_files(src, skipped)
    iterator: Any = files
    if progress and sys.stderr.isatty():  # bars stay out of log files
        from tqdm.auto import tqdm

        iterator = tqdm(files, desc="augment", unit="image")
    originals, augmented, labels, preview = [], [], [], []
    classes = sorted({c for c, _ in files})
    for i, (cls, path) in enumerate(iterator):
        try:
            arr = np.asarray(read_image(path))
        except UnreadableImageError as err:
            _skip(skipped, str(path), err.reason)
            continue
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
    if not originals:
        raise DataError(f"No readable image in {src} ({len(skipped)} skipped).", value=str(src),
                        fix="Replace the damaged files (see the warnings above).")
    summary: dict[str, Any] = {"kind": "images", "inputs": len(originals),
                               "written": len(originals) * copies, "out": str(out),
                               "skipped": skipped}
    shapes = {o.shape[1:] for o in originals}
    if len(shapes) == 1:
        report = distribution_shift(np.concatenate(originals), np.concatenate(augmented),
                                    np.asarray(labels), class_names=classes)
        summary["shift"] = report
        summary["shift-text"] = format_shift_report(report)
        rows = np.concatenate(preview)
        from fedaug.generator.sample import make_grid

        buf = io.BytesIO()
        make_grid(rows, rows=len(preview), scale=max(1, 64 // rows.shape[1])).save(buf, "PNG")
        atomic_write_bytes(out / "preview.png", buf.getvalue())
        summary["preview"] = str(out / "preview.png")
    else:
        summary["shift-text"] = ("distribution shift not measured: images differ in size "
                                 "or colour mode")
    return summary


def _augment_texts(policy: Policy, src: Path, out: Path, *, copies: int, seed: int,
                   text_column: int | str | None, label_column: int | str | None
                   ) -> dict[str, Any]:
    require_wordnet_for(policy)  # before any work, whatever the draws would pick
    table = read_text_table(src, text_column=text_column, label_column=label_column)
    table.dataset()  # the labels must be classes (names or whole numbers)
    target = out if out.suffix else out / src.name
    if target.resolve() == src.resolve():
        raise ConfigError("The output would overwrite the input table.", value=str(target),
                          fix="Pass another --out file.")
    rows: list[tuple[str, ...]] = []
    copies_iter: Any = range(copies)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        copies_iter = tqdm(copies_iter, desc=f"augment {len(table.rows)} texts", unit="copy")
    for k in copies_iter:
        texts = apply_text_policy(policy, table.texts, seed=seed * 1_000_003 + k)
        rows.extend(table.with_texts(texts))
    atomic_write_text(target, table.format(rows))
    return {"kind": "texts", "inputs": len(table.rows), "written": len(rows),
            "out": str(target), "skipped": list(table.skipped)}
