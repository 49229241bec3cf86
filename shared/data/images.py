"""Image data sets: the built-in digits, MedMNIST ``.npz`` files, image folders and
folders of DICOM files with a labels CSV.

Loaders never stop on one bad file: a damaged, empty, oversized or non-image file and an
empty class folder are skipped with one warning naming them (``strict=True`` refuses
instead), and the returned :class:`ImageDataset` lists them in ``skipped``.
"""

from __future__ import annotations

import logging
import re
import struct
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fedaug.errors import DataError

__all__ = [
    "BUILTIN_NAMES",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "load_digits_builtin",
    "load_dicom_folder",
    "load_image_folder",
    "load_image_source",
    "load_medmnist",
    "read_image",
    "UnreadableImageError",
]

log = logging.getLogger("fedaug.data")

BUILTIN_NAMES = ("digits", "builtin", "default")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MEDMNIST_SPLITS = ("train", "val", "test")
_MEDMNIST_CLASS_NAMES = {
    "pneumoniamnist": ("normal", "pneumonia"),
    "breastmnist": ("malignant", "normal-benign"),
}
#: What ``np.load`` and the zip reader raise for a damaged or truncated ``.npz`` file.
_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error,
               struct.error)


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A labelled set of images held in memory.

    Parameters
    ----------
    images : np.ndarray
        ``uint8`` array of shape ``(N, H, W, C)`` with ``C`` 1 (grayscale) or 3 (RGB).
    labels : np.ndarray
        ``int64`` array of shape ``(N,)`` with values in ``[0, len(class_names))``.
    class_names : tuple of str
        Name of each class; ``labels`` index into it.
    name : str
        Short name of the source (for logs), e.g. ``"digits"``.
    skipped : tuple of str, default ()
        What the loader left out, one ``"file: reason"`` each (damaged files, empty
        class folders), so that callers can report it.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str
    skipped: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "skipped", tuple(self.skipped))
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise DataError(
                "ImageDataset.images must be a uint8 numpy array.",
                value=getattr(images, "dtype", type(images).__name__),
                fix="Convert with np.asarray(images, dtype=np.uint8) (values 0..255).",
            )
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise DataError(
                "ImageDataset.images must have shape (N, H, W, C) with C 1 or 3.",
                value=images.shape,
                fix="Add a channel axis to grayscale images: images[..., None].",
            )
        if (
            not isinstance(labels, np.ndarray)
            or labels.dtype != np.int64
            or labels.ndim != 1
        ):
            raise DataError(
                "ImageDataset.labels must be a 1-D int64 numpy array.",
                value=(
                    getattr(labels, "dtype", type(labels).__name__),
                    getattr(labels, "shape", None),
                ),
                fix="Use np.asarray(labels, dtype=np.int64).reshape(-1).",
            )
        if len(labels) != len(images):
            raise DataError(
                "ImageDataset has a different number of images and labels.",
                value=(len(images), len(labels)),
                fix="Pass one label per image.",
            )
        names = tuple(self.class_names)
        if not names or not all(isinstance(n, str) for n in names):
            raise DataError(
                "ImageDataset.class_names must be a non-empty sequence of str.",
                value=self.class_names,
                fix='Pass names such as ("normal", "pneumonia").',
            )
        object.__setattr__(self, "class_names", names)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise DataError(
                f"ImageDataset labels must lie in [0, {len(names)}).",
                value=(int(labels.min()), int(labels.max())),
                fix="Give one class name per label value.",
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape ``(H, W, C)`` of one image."""
        h, w, c = self.images.shape[1:]
        return int(h), int(w), int(c)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        """Return a new data set with the examples at ``indices`` (copied, in that order)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return ImageDataset(
            self.images[idx], self.labels[idx], self.class_names, self.name, self.skipped
        )


def _check_split(split: str, allowed: Sequence[str], source: str) -> None:
    if split not in allowed:
        raise DataError(
            f"Unknown split for {source}.",
            value=split,
            fix=f"Use one of {', '.join(repr(s) for s in allowed)}.",
        )


def load_digits_builtin(
    split: str = "train", *, seed: int = 0, test_fraction: float = 0.2
) -> ImageDataset:
    """Load scikit-learn's bundled 8x8 digits (1,797 images, no download).

    Parameters
    ----------
    split : {"train", "test", "all"}, default "train"
        Which part of a stratified, seeded train/test split to return.
    seed : int, default 0
        Seed of the split; the same seed always gives the same split.
    test_fraction : float, default 0.2
        Fraction of each class put in the test split, in ``(0, 1)``.

    Returns
    -------
    ImageDataset
        Images of shape ``(N, 8, 8, 1)``, pixel values 0..16 scaled to 0..255,
        class names ``"0"`` .. ``"9"``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _check_split(split, ("train", "test", "all"), "the built-in digits")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(
            "test_fraction must lie strictly between 0 and 1.",
            value=test_fraction,
            fix="Use e.g. 0.2.",
        )
    raw = load_digits()
    images = np.rint(raw.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = raw.target.astype(np.int64)
    names = tuple(str(i) for i in range(10))
    full = ImageDataset(images, labels, names, "digits")
    if split == "all":
        return full
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=test_fraction,
        random_state=seed,
        stratify=labels,
    )
    return full.subset(np.sort(train_idx if split == "train" else test_idx))


def _integer_labels(labels: np.ndarray, where: str) -> np.ndarray:
    """Class labels as int64; whole-valued floats pass, 0.5 or NaN is refused (never cut)."""
    arr = np.asarray(labels)
    if arr.dtype.kind in "biu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            raise DataError(
                f"{where} holds labels that are not whole numbers; a class label is an "
                "index 0, 1, ...",
                value=sorted({float(x) for x in arr[bad].ravel()[:1000]})[:5],
                fix="Store class indices; a real-valued target (score, probability) is "
                "not a class and is not rounded or cut here.",
            )
        return arr.astype(np.int64)
    raise DataError(
        f"{where} must hold integer class labels.",
        value=str(arr.dtype),
        fix="Store class indices 0, 1, ... as integers.",
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("it holds one array (.npy), not named arrays")
        with loaded as npz:
            return {key: npz[key] for key in npz.files}
    except _NPZ_ERRORS as exc:
        raise DataError(
            f"Cannot read {path} as a .npz archive ({type(exc).__name__}: {exc}).",
            value=str(path),
            fix="The file is damaged or truncated: download it again (MedMNIST files "
            "come from https://zenodo.org/records/10519652) or pass another .npz.",
        ) from exc


def load_medmnist(path: str | Path, split: str = "train") -> ImageDataset:
    """Load one split of a MedMNIST ``.npz`` file.

    Parameters
    ----------
    path : str or Path
        File with keys ``{split}_images`` (``(N, H, W)`` or ``(N, H, W, 3)`` uint8)
        and ``{split}_labels`` (``(N, 1)`` or ``(N,)`` whole numbers) for ``split`` in
        train/val/test.
    split : {"train", "val", "test"}, default "train"
        The split to load.

    Returns
    -------
    ImageDataset
        Named after the file stem. Class names are known for ``pneumoniamnist``
        and ``breastmnist``; other files get ``"0"``, ``"1"``, ...

    Raises
    ------
    DataError
        If the file is missing, not a readable ``.npz`` (damaged, truncated), lacks the
        split's arrays, holds no images for the split, or has labels that are not whole
        numbers (0.5 is refused, not cut to 0).
    """
    path = Path(path)
    _check_split(split, MEDMNIST_SPLITS, f"MedMNIST file {path.name}")
    if not path.is_file():
        raise DataError(
            "MedMNIST file not found.",
            value=str(path),
            fix="Check the path; MedMNIST files are named like pneumoniamnist.npz.",
        )
    arrays = _read_npz(path)
    img_key, lab_key = f"{split}_images", f"{split}_labels"
    for key in (img_key, lab_key):
        if key not in arrays:
            raise DataError(
                f"Key {key!r} missing from {path.name}; keys found: {sorted(arrays)}.",
                value=str(path),
                fix="Use a MedMNIST file with train/val/test _images and _labels arrays.",
            )
    images, labels = arrays[img_key], arrays[lab_key]
    if images.dtype != np.uint8:
        raise DataError(
            f"{img_key} in {path.name} must be uint8.",
            value=str(images.dtype),
            fix="Store 8-bit images (values 0..255), as the MedMNIST files do.",
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(
            f"{img_key} in {path.name} must have shape (N, H, W) or (N, H, W, 3).",
            value=images.shape,
        )
    if images.shape[0] == 0:
        raise DataError(
            f"{img_key} in {path} holds no images.",
            value=images.shape,
            fix="Use another split or a file with images in this one.",
        )
    if labels.ndim == 2 and labels.shape[1] != 1:
        raise DataError(
            f"{lab_key} in {path.name} is multi-label; only single-label sets are supported.",
            value=labels.shape,
            fix="Use a single-label MedMNIST subset such as pneumoniamnist.",
        )
    labels = _integer_labels(labels, f"{lab_key} in {path.name}").reshape(-1)
    names = _MEDMNIST_CLASS_NAMES.get(path.stem.lower())
    if names is None:
        top = int(labels.max()) if labels.size else 0
        for key, arr in arrays.items():
            if key.endswith("_labels") and arr.size and arr.dtype.kind in "biuf":
                finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
                if finite.size:
                    top = max(top, int(finite.max()))
        names = tuple(str(i) for i in range(top + 1))
    return ImageDataset(np.ascontiguousarray(images), labels, names, path.stem)


def _image_files(folder: Path) -> list[Path]:
    """Image files of a folder by extension, in name order; hidden files (``.x.png``,
    macOS ``._x.png``) are not images."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def _scale_to_8bit(arr: np.ndarray) -> np.ndarray:
    """Integer or float pixels to uint8: floats in 0..1 times 255, 0..255 kept, 0..65535
    divided by 257, else the image's own range stretched to 0..255."""
    floating = np.asarray(arr).dtype.kind == "f"
    arr = np.asarray(arr, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if floating and lo >= 0 and hi <= 1:
        out = arr * 255.0
    elif lo >= 0 and hi <= 255:
        out = arr
    elif lo >= 0 and hi <= 65535:
        out = arr / 257.0
    else:
        out = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return np.rint(np.nan_to_num(np.clip(out, 0, 255))).astype(np.uint8)


def _to_8bit(im: Image.Image) -> Image.Image:
    """One image as 8-bit ``"L"`` or ``"RGB"``: 16-bit and 32-bit grayscale scaled (not
    clipped), alpha dropped, palette images gray when their colours are, CMYK/YCbCr
    converted."""
    mode = im.mode
    if mode in ("L", "RGB"):
        return im
    if mode == "1" or mode == "LA":
        return im.convert("L")
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_scale_to_8bit(np.asarray(im)), mode="L")
    if mode in ("P", "PA"):
        rgb = im.convert("RGB")
        arr = np.asarray(rgb)
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            return Image.fromarray(np.ascontiguousarray(arr[..., 0]), mode="L")
        return rgb
    return im.convert("RGB")


class UnreadableImageError(DataError):
    """A file that cannot be read as an image; ``reason`` says why in a few words."""

    def __init__(self, path: Path, reason: str, fix: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"Cannot read image {path}: {reason}.", value=str(path), fix=fix)


def read_image(path: str | Path) -> Image.Image:
    """Read one image file completely, as an 8-bit ``"L"`` or ``"RGB"`` PIL image.

    The size is checked from the header before any pixel is decoded, so that a
    decompression bomb is refused at once instead of filling memory.

    Parameters
    ----------
    path : str or Path
        A PNG, JPEG, BMP or TIFF file, in any mode Pillow reads (16-bit, palette, RGBA,
        CMYK, ...).

    Returns
    -------
    PIL.Image.Image
        Mode ``"L"`` or ``"RGB"``: 16-bit and 32-bit grayscale scaled to 8 bits (not
        clipped), alpha dropped, palette images gray when their colours are.

    Raises
    ------
    UnreadableImageError
        A `DataError` naming the file: empty, not an image, damaged or truncated, larger
        than ``PIL.Image.MAX_IMAGE_PIXELS``, or in a mode that cannot be converted.
    """
    path = Path(path)
    damaged = "Replace or delete the damaged file."
    try:
        if path.stat().st_size == 0:
            raise UnreadableImageError(path, "empty file (0 bytes)", damaged)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                limit = Image.MAX_IMAGE_PIXELS
                if limit and im.width * im.height > limit:
                    raise UnreadableImageError(
                        path,
                        f"{im.width}x{im.height} = {im.width * im.height} pixels, more than "
                        f"the {limit} Pillow decodes safely (a decompression bomb?)",
                        "Downscale the image, or raise PIL.Image.MAX_IMAGE_PIXELS if you "
                        "trust the file.",
                    )
                im.load()
                picture = im.copy()
    except UnreadableImageError:
        raise
    except Image.DecompressionBombError as exc:  # over twice the limit: refused at open
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise UnreadableImageError(
            path,
            f"{found.group(1) if found else 'too many'} pixels, more than the "
            f"{Image.MAX_IMAGE_PIXELS} Pillow decodes safely (a decompression bomb?)",
            "Downscale the image, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file.",
        ) from exc
    except UnidentifiedImageError as exc:
        raise UnreadableImageError(path, "not an image Pillow can identify", damaged) from exc
    except Exception as exc:  # Pillow's plugins raise OSError, SyntaxError, ValueError,
        # struct.error, DecompressionBombError, ... for damaged files: all mean unreadable
        detail = str(exc).replace(f"'{path}'", "").replace(str(path), "").strip(" :")
        raise UnreadableImageError(path, f"damaged ({type(exc).__name__}: {detail})",
                                   damaged) from exc
    try:
        return _to_8bit(picture)
    except ValueError as exc:  # a mode Pillow cannot convert to RGB
        raise UnreadableImageError(path, f"mode {picture.mode} cannot be converted to RGB",
                                   "Save it as 8-bit grayscale or RGB.") from exc


def _as_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(s, int) and s > 0 for s in hw):
        raise DataError(
            "size must be a positive int or a (height, width) pair of positive ints.",
            value=size,
            fix="Use e.g. size=28 or size=(28, 28).",
        )
    return hw


class _Skips:
    """Collect what a loader leaves out: one warning each, or a DataError when strict."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.items: list[str] = []

    def add(self, what: str, reason: str, *, fix: str) -> None:
        if self.strict:
            raise DataError(f"{what}: {reason} (strict mode refuses bad input).",
                            value=what, fix=fix + " Or leave strict off to skip it.")
        log.warning("skipped %s: %s", what, reason)
        self.items.append(f"{what}: {reason}")


class _Stacker:
    """Resize pictures to one size as they are read and stack them in one mode."""

    def __init__(self, size: int | tuple[int, int] | None, mode: str | None) -> None:
        self.hw = _as_hw(size) if size is not None else None
        self.mode = mode
        self.arrays: list[np.ndarray] = []

    def add(self, picture: Image.Image) -> None:
        if self.mode is not None and picture.mode != self.mode:
            picture = picture.convert(self.mode)
        if self.hw is None:  # the first image sets the size
            self.hw = (picture.height, picture.width)
        height, width = self.hw
        if picture.size != (width, height):
            picture = picture.resize((width, height), Image.BILINEAR)
        self.arrays.append(np.asarray(picture, dtype=np.uint8))

    def stack(self) -> np.ndarray:
        rgb = any(a.ndim == 3 for a in self.arrays)
        if rgb:
            arrays = [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2)
                      for a in self.arrays]
            return np.stack(arrays)
        return np.stack(self.arrays)[..., None]


def load_image_folder(
    path: str | Path,
    *,
    size: int | tuple[int, int] | None = None,
    mode: str | None = None,
    strict: bool = False,
) -> ImageDataset:
    """Load a folder with one sub-folder of images per class.

    Parameters
    ----------
    path : str or Path
        Folder whose sub-folders (sorted by name) are the classes; files with an
        extension in :data:`IMAGE_EXTENSIONS` are the images, other files are ignored.
    size : int or (height, width), optional
        Every image is resized (bilinear) to this size. Default: the size of the
        first readable image.
    mode : {"L", "RGB"}, optional
        Colour mode all images are converted to. Default: ``"L"`` when every
        image is grayscale, else ``"RGB"``.
    strict : bool, default False
        Refuse (``DataError`` naming the file) instead of skipping an unreadable file
        or an empty class folder.

    Returns
    -------
    ImageDataset
        Named after the folder; examples in class order, then file-name order;
        ``skipped`` lists the files and class folders left out, each also logged once
        as a warning. An empty class folder is not a class.

    Raises
    ------
    DataError
        If the folder is missing, has no class sub-folders or no readable image, or, when
        ``strict``, at the first bad file or empty class folder.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(
            "Image folder not found.", value=str(root), fix="Check the path."
        )
    if mode not in (None, "L", "RGB"):
        raise DataError("mode must be 'L', 'RGB' or None.", value=mode)
    class_dirs = sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if not class_dirs:
        raise DataError(
            "Image folder has no class sub-folders.",
            value=str(root),
            fix="Put the images of each class in their own sub-folder, e.g. root/cat/1.png.",
        )
    skips = _Skips(strict)
    stacker = _Stacker(size, mode)
    names: list[str] = []
    labels: list[int] = []
    total = 0
    for class_dir in class_dirs:
        found = _image_files(class_dir)
        total += len(found)
        if not found:
            skips.add(f"class folder {class_dir}",
                      f"holds no {'/'.join(IMAGE_EXTENSIONS)} images",
                      fix="Add images to it or remove it.")
            continue
        read = 0
        for file in found:
            try:
                picture = read_image(file)
            except UnreadableImageError as err:
                skips.add(str(file), err.reason, fix=err.fix or "Replace or delete it.")
                continue
            stacker.add(picture)
            labels.append(len(names))
            read += 1
        if read:
            names.append(class_dir.name)
        else:
            skips.add(f"class folder {class_dir}", "holds no readable image",
                      fix="Replace the damaged images or remove the folder.")
    if not labels:
        raise DataError(
            f"Image folder has no readable image ({len(skips.items)} skipped: "
            + "; ".join(skips.items[:3]) + ").",
            value=str(root),
            fix="Put readable PNG/JPEG images in one sub-folder per class.",
        )
    return ImageDataset(stacker.stack(), np.asarray(labels, dtype=np.int64), tuple(names),
                        root.name, tuple(skips.items))


def load_dicom_folder(
    path: str | Path,
    labels: str | Path,
    *,
    split: str = "train",
    size: int | tuple[int, int] | None = None,
    window: str | tuple[float, float] = "auto",
    strict: bool = False,
) -> ImageDataset:
    """Load a folder of DICOM files labelled by a CSV, as 8-bit grayscale images.

    Each file gets its modality rescale (RescaleSlope/Intercept), then a window to 8
    bits; MONOCHROME1 images are inverted so that bright is dense everywhere. See
    :func:`fedaug.data.dicom.read_dicom` and :func:`fedaug.data.dicom.read_label_csv`.

    Parameters
    ----------
    path : str or Path
        The folder; file names in the CSV are relative to it.
    labels : str or Path
        CSV (or TSV) of ``file, label`` rows, optionally with a header and a ``split``
        column; a label is a class name or a class index.
    split : str, default "train"
        With a ``split`` column: the rows of that split (``"all"``: every row). Without
        one the folder has no splits: ``"train"`` and ``"all"`` give every row.
    size : int or (height, width), optional
        Resize every image (bilinear) to this size; default the first image's size.
    window : "auto", "center,width" or (center, width), default "auto"
        ``"auto"`` takes each file's WindowCenter/WindowWidth, else the 0.5 and 99.5
        percentiles of its pixels; an explicit window is in rescaled units (e.g. HU).
    strict : bool, default False
        Refuse instead of skipping a damaged or unsupported file or a bad CSV row.

    Returns
    -------
    ImageDataset
        ``(N, H, W, 1)`` uint8 (``(N, H, W, 3)`` if some file is RGB), named after the
        folder; ``skipped`` lists the files and rows left out.
    """
    from fedaug.data.dicom import (
        UnreadableDicomError,
        parse_window,
        read_dicom,
        read_label_csv,
    )

    root = Path(path)
    if not root.is_dir():
        raise DataError("DICOM folder not found.", value=str(root), fix="Check the path.")
    window = parse_window(window) or "auto"
    skips = _Skips(strict)
    table = read_label_csv(labels, root, split=split, strict=strict)
    skips.items.extend(table.skipped)
    stacker = _Stacker(size, None)
    kept: list[int] = []
    for file, label in zip(table.files, table.labels, strict=True):
        try:
            array = read_dicom(root / file, window=window)
        except UnreadableDicomError as err:
            skips.add(str(root / file), err.reason, fix=err.fix or "Replace or remove it.")
            continue
        stacker.add(Image.fromarray(array))
        kept.append(label)
    if not kept:
        raise DataError(
            f"No readable DICOM image among the {len(table.files)} files of {Path(labels).name}"
            f" ({len(skips.items)} skipped: " + "; ".join(skips.items[:3]) + ").",
            value=str(root),
            fix="Check that the CSV names files in this folder and that they hold "
            "uncompressed (or decodable) pixel data.",
        )
    return ImageDataset(stacker.stack(), np.asarray(kept, dtype=np.int64), table.class_names,
                        root.name, tuple(skips.items))


def _resize(dataset: ImageDataset, size: int | tuple[int, int]) -> ImageDataset:
    height, width = _as_hw(size)
    if dataset.image_shape[:2] == (height, width):
        return dataset
    out = np.stack(
        [
            np.asarray(
                Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).resize(
                    (width, height), Image.BILINEAR
                ),
                dtype=np.uint8,
            )
            for img in dataset.images
        ]
    ).reshape(len(dataset), height, width, dataset.image_shape[2])
    return ImageDataset(out, dataset.labels, dataset.class_names, dataset.name,
                        dataset.skipped)


def _load_split_folder(root: Path, split: str, size, strict: bool) -> ImageDataset:
    available = [s for s in MEDMNIST_SPLITS if (root / s).is_dir()]
    _check_split(split, (*available, "all"), f"image folder {root}")
    if split != "all":
        ds = load_image_folder(root / split, size=size, strict=strict)
        return ImageDataset(ds.images, ds.labels, ds.class_names, root.name, ds.skipped)
    parts = [load_image_folder(root / available[0], size=size, strict=strict)]
    mode = "L" if parts[0].image_shape[2] == 1 else "RGB"
    parts += [
        load_image_folder(root / s, size=parts[0].image_shape[:2], mode=mode, strict=strict)
        for s in available[1:]
    ]
    for s, ds in zip(available, parts, strict=False):
        if ds.class_names != parts[0].class_names:
            raise DataError(
                f"Split {s!r} of {root} has other class folders than {available[0]!r}.",
                value=ds.class_names,
                fix="Give every split the same class sub-folders.",
            )
    return ImageDataset(
        np.concatenate([d.images for d in parts]),
        np.concatenate([d.labels for d in parts]),
        parts[0].class_names,
        root.name,
        tuple(item for d in parts for item in d.skipped),
    )


def _holds_dicom(folder: Path) -> bool:
    from fedaug.data.dicom import DICOM_EXTENSIONS

    return any(p.suffix.lower() in DICOM_EXTENSIONS for p in folder.iterdir())


def load_image_source(
    source: str | Path,
    *,
    split: str = "train",
    size: int | tuple[int, int] | None = None,
    seed: int = 0,
    labels: str | Path | None = None,
    window: str | tuple[float, float] = "auto",
    strict: bool = False,
) -> ImageDataset:
    """Load images from a source string, choosing the loader by its form.

    Parameters
    ----------
    source : str or Path
        ``"digits"`` (also ``"builtin"``/``"default"``): the built-in digits;
        an existing ``.npz`` file: MedMNIST; an existing folder: an image folder, or,
        with ``labels``, a folder of DICOM files.
    split : str, default "train"
        ``"train"``/``"test"``/``"all"`` for digits, ``"train"``/``"val"``/``"test"``
        for MedMNIST. A plain class folder has no splits (``"train"`` and ``"all"``
        give the whole folder); a folder with ``train/`` and ``test/`` (and
        optionally ``val/``) sub-folders serves those, ``"all"`` concatenates them. A
        DICOM labels CSV with a ``split`` column serves its splits.
    size : int or (height, width), optional
        Resize every image (bilinear) to this size; default keeps the source size.
    seed : int, default 0
        Seed of the digits train/test split; ignored for other sources.
    labels : str or Path, optional
        CSV of ``file, label`` rows for a folder of DICOM files (see
        :func:`load_dicom_folder`); ``None`` or ``""`` for every other source.
    window : "auto", "center,width" or (center, width), default "auto"
        Display window of DICOM images (see :func:`load_dicom_folder`).
    strict : bool, default False
        Refuse bad files in folders instead of skipping them with a warning.

    Returns
    -------
    ImageDataset
    """
    text = str(source)
    labels = None if labels is None or str(labels).strip() == "" else labels
    if text.strip().lower() in BUILTIN_NAMES and labels is None:
        dataset = load_digits_builtin(split, seed=seed)
        return dataset if size is None else _resize(dataset, size)
    path = Path(text).expanduser()
    if labels is not None:
        if not path.is_dir():
            raise DataError(
                "A labels CSV goes with a folder of DICOM files, but the data source is "
                "not a folder.",
                value=text,
                fix="Pass the DICOM folder as the data source, or drop the labels CSV "
                "for digits, MedMNIST .npz files and class folders.",
            )
        return load_dicom_folder(path, labels, split=split, size=size, window=window,
                                 strict=strict)
    if path.is_file() and path.suffix.lower() == ".npz":
        dataset = load_medmnist(path, split)
        return dataset if size is None else _resize(dataset, size)
    if path.is_dir():
        if (path / "train").is_dir() and (path / "test").is_dir():
            return _load_split_folder(path, split, size, strict)
        if not any(p.is_dir() for p in path.iterdir()) and _holds_dicom(path):
            raise DataError(
                "The folder holds DICOM files but no labels CSV was given.",
                value=text,
                fix="Pass labels=LABELS.csv with rows 'file,label' (fedaug simulate "
                "--labels LABELS.csv).",
            )
        if split not in ("train", "all"):
            raise DataError(
                f"Image folder {path} has no splits, so split {split!r} does not exist.",
                value=split,
                fix="Use split='train' for the whole folder, or give the folder train/ and "
                "test/ sub-folders, each with one sub-folder per class.",
            )
        return load_image_folder(path, size=size, strict=strict)
    raise DataError(
        "Unknown image source: not a built-in name, an existing .npz file or an existing folder.",
        value=text,
        fix="Use 'digits' (built-in), a MedMNIST .npz path, a folder with one "
        "sub-folder of PNG/JPEG images per class, or a DICOM folder with labels=CSV.",
    )
