"""Image data sets: the built-in digits, MedMNIST ``.npz`` files and image folders."""

from __future__ import annotations

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
    "load_image_folder",
    "load_image_source",
    "load_medmnist",
]

BUILTIN_NAMES = ("digits", "builtin", "default")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
MEDMNIST_SPLITS = ("train", "val", "test")
_MEDMNIST_CLASS_NAMES = {
    "pneumoniamnist": ("normal", "pneumonia"),
    "breastmnist": ("malignant", "normal-benign"),
}
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


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
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
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
            self.images[idx], self.labels[idx], self.class_names, self.name
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


def load_medmnist(path: str | Path, split: str = "train") -> ImageDataset:
    """Load one split of a MedMNIST ``.npz`` file.

    Parameters
    ----------
    path : str or Path
        File with keys ``{split}_images`` (``(N, H, W)`` or ``(N, H, W, 3)`` uint8)
        and ``{split}_labels`` (``(N, 1)``) for ``split`` in train/val/test.
    split : {"train", "val", "test"}, default "train"
        The split to load.

    Returns
    -------
    ImageDataset
        Named after the file stem. Class names are known for ``pneumoniamnist``
        and ``breastmnist``; other files get ``"0"``, ``"1"``, ...
    """
    path = Path(path)
    _check_split(split, MEDMNIST_SPLITS, f"MedMNIST file {path.name}")
    if not path.is_file():
        raise DataError(
            "MedMNIST file not found.",
            value=str(path),
            fix="Check the path; MedMNIST files are named like pneumoniamnist.npz.",
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise DataError(
            f"Cannot read {path} as a .npz archive ({exc}).",
            value=str(path),
            fix="Pass an uncorrupted MedMNIST .npz file.",
        ) from exc
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
            f"{img_key} in {path.name} must be uint8.", value=str(images.dtype)
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(
            f"{img_key} in {path.name} must have shape (N, H, W) or (N, H, W, 3).",
            value=images.shape,
        )
    if labels.ndim == 2 and labels.shape[1] != 1:
        raise DataError(
            f"{lab_key} in {path.name} is multi-label; only single-label sets are supported.",
            value=labels.shape,
            fix="Use a single-label MedMNIST subset such as pneumoniamnist.",
        )
    names = _MEDMNIST_CLASS_NAMES.get(path.stem.lower())
    if names is None:
        top = max(
            int(arr.max())
            for key, arr in arrays.items()
            if key.endswith("_labels") and arr.size
        )
        names = tuple(str(i) for i in range(top + 1))
    return ImageDataset(
        np.ascontiguousarray(images),
        labels.astype(np.int64).reshape(-1),
        names,
        path.stem,
    )


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _to_8bit(im: Image.Image) -> Image.Image:
    """Scale 16-bit grayscale (e.g. medical PNGs) to 8 bits instead of clipping."""
    if im.mode.startswith("I;16"):
        scaled = np.rint(np.asarray(im, dtype=np.float64) / 257.0).astype(np.uint8)
        return Image.fromarray(scaled, mode="L")
    return im


def _as_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(s, int) and s > 0 for s in hw):
        raise DataError(
            "size must be a positive int or a (height, width) pair of positive ints.",
            value=size,
            fix="Use e.g. size=28 or size=(28, 28).",
        )
    return hw


def load_image_folder(
    path: str | Path,
    *,
    size: int | tuple[int, int] | None = None,
    mode: str | None = None,
) -> ImageDataset:
    """Load a folder with one sub-folder of PNG/JPEG images per class.

    Parameters
    ----------
    path : str or Path
        Folder whose sub-folders (sorted by name) are the classes.
    size : int or (height, width), optional
        Every image is resized (bilinear) to this size. Default: the size of the
        first image.
    mode : {"L", "RGB"}, optional
        Colour mode all images are converted to. Default: ``"L"`` when every
        image is grayscale, else ``"RGB"``.

    Returns
    -------
    ImageDataset
        Named after the folder; examples in class order, then file-name order.
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
    files: list[tuple[Path, int]] = []
    for label, class_dir in enumerate(class_dirs):
        found = _image_files(class_dir)
        if not found:
            raise DataError(
                f"Class folder {class_dir.name!r} holds no {'/'.join(IMAGE_EXTENSIONS)} images.",
                value=str(class_dir),
                fix="Add images to it or remove it.",
            )
        files.extend((f, label) for f in found)
    pictures = []
    for file, _ in files:
        try:
            with Image.open(file) as im:
                im.load()
                pictures.append(_to_8bit(im.copy()))
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(
                f"Cannot read image {file} ({exc}).",
                value=str(file),
                fix="Replace or delete the damaged file.",
            ) from exc
    if mode is None:
        mode = "L" if all(p.mode in _GRAY_MODES for p in pictures) else "RGB"
    height, width = (
        _as_hw(size) if size is not None else (pictures[0].height, pictures[0].width)
    )
    arrays = []
    for pic in pictures:
        pic = pic.convert(mode)
        if pic.size != (width, height):
            pic = pic.resize((width, height), Image.BILINEAR)
        arrays.append(np.asarray(pic, dtype=np.uint8))
    images = np.stack(arrays)
    if images.ndim == 3:
        images = images[..., None]
    labels = np.array([label for _, label in files], dtype=np.int64)
    return ImageDataset(images, labels, tuple(d.name for d in class_dirs), root.name)


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
    return ImageDataset(out, dataset.labels, dataset.class_names, dataset.name)


def _load_split_folder(root: Path, split: str, size) -> ImageDataset:
    available = [s for s in MEDMNIST_SPLITS if (root / s).is_dir()]
    _check_split(split, (*available, "all"), f"image folder {root}")
    if split != "all":
        ds = load_image_folder(root / split, size=size)
        return ImageDataset(ds.images, ds.labels, ds.class_names, root.name)
    parts = [load_image_folder(root / available[0], size=size)]
    mode = "L" if parts[0].image_shape[2] == 1 else "RGB"
    parts += [
        load_image_folder(root / s, size=parts[0].image_shape[:2], mode=mode)
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
    )


def load_image_source(
    source: str | Path,
    *,
    split: str = "train",
    size: int | tuple[int, int] | None = None,
    seed: int = 0,
) -> ImageDataset:
    """Load images from a source string, choosing the loader by its form.

    Parameters
    ----------
    source : str or Path
        ``"digits"`` (also ``"builtin"``/``"default"``): the built-in digits;
        an existing ``.npz`` file: MedMNIST; an existing folder: an image folder.
    split : str, default "train"
        ``"train"``/``"test"``/``"all"`` for digits, ``"train"``/``"val"``/``"test"``
        for MedMNIST. A plain class folder has no splits (``"train"`` and ``"all"``
        give the whole folder); a folder with ``train/`` and ``test/`` (and
        optionally ``val/``) sub-folders serves those, ``"all"`` concatenates them.
    size : int or (height, width), optional
        Resize every image (bilinear) to this size; default keeps the source size.
    seed : int, default 0
        Seed of the digits train/test split; ignored for other sources.

    Returns
    -------
    ImageDataset
    """
    text = str(source)
    if text.strip().lower() in BUILTIN_NAMES:
        dataset = load_digits_builtin(split, seed=seed)
        return dataset if size is None else _resize(dataset, size)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix.lower() == ".npz":
        dataset = load_medmnist(path, split)
        return dataset if size is None else _resize(dataset, size)
    if path.is_dir():
        if (path / "train").is_dir() and (path / "test").is_dir():
            return _load_split_folder(path, split, size)
        if split not in ("train", "all"):
            raise DataError(
                f"Image folder {path} has no splits, so split {split!r} does not exist.",
                value=split,
                fix="Use split='train' for the whole folder, or give the folder train/ and "
                "test/ sub-folders, each with one sub-folder per class.",
            )
        return load_image_folder(path, size=size)
    raise DataError(
        "Unknown image source: not a built-in name, an existing .npz file or an existing folder.",
        value=text,
        fix="Use 'digits' (built-in), a MedMNIST .npz path, or a folder with one "
        "sub-folder of PNG/JPEG images per class.",
    )
