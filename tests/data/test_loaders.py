"""Tests of fedaug.data: image loaders, text tables and federated partitioners."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedaug.data import (
    ImageDataset,
    label_histogram,
    load_digits_builtin,
    load_image_folder,
    load_image_source,
    load_medmnist,
    load_text_table,
    partition,
    partition_dirichlet,
    partition_iid,
    partition_quantity,
)
from fedaug.errors import ConfigError, DataError

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
MEDMNIST = DATA / "medmnist"
SMS = DATA / "sms_spam" / "SMSSpamCollection"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data file {path} is missing (see ../shared/data/README.md)")
    return path


def _rows(ds: ImageDataset) -> Counter:
    return Counter(img.tobytes() for img in ds.images)


def _write(path: Path, array: np.ndarray, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)  # mode follows the dtype and shape
    assert image.mode == mode
    image.save(path)


# ---------------------------------------------------------------- built-in digits


def test_digits_shape_range_and_classes():
    ds = load_digits_builtin("all")

    assert ds.images.shape == (1797, 8, 8, 1)
    assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int64
    assert ds.images.min() == 0 and ds.images.max() == 255
    assert ds.class_names == tuple("0123456789") and ds.num_classes == 10
    assert ds.image_shape == (8, 8, 1) and ds.name == "digits"


def test_digits_split_is_disjoint_stratified_and_deterministic():
    train, test = load_digits_builtin("train"), load_digits_builtin("test")
    again = load_digits_builtin("train", seed=0)
    other = load_digits_builtin("train", seed=1)

    assert (len(train), len(test)) == (1437, 360)
    assert _rows(train) + _rows(test) == _rows(load_digits_builtin("all"))
    assert np.bincount(test.labels).min() >= 35  # about 20 % of every class
    assert np.array_equal(train.images, again.images)
    assert np.array_equal(train.labels, again.labels)
    assert not np.array_equal(train.labels, other.labels)


def test_digits_bad_split():
    with pytest.raises(DataError, match="Unknown split.*'val'"):
        load_digits_builtin("val")


# ---------------------------------------------------------------- MedMNIST


@pytest.mark.parametrize(
    ("stem", "split", "size", "names"),
    [
        ("pneumoniamnist", "train", 4708, ("normal", "pneumonia")),
        ("pneumoniamnist", "val", 524, ("normal", "pneumonia")),
        ("pneumoniamnist", "test", 624, ("normal", "pneumonia")),
        ("breastmnist", "train", 546, ("malignant", "normal-benign")),
        ("breastmnist", "val", 78, ("malignant", "normal-benign")),
        ("breastmnist", "test", 156, ("malignant", "normal-benign")),
    ],
)
def test_medmnist_real_files(stem, split, size, names):
    path = _need(MEDMNIST / f"{stem}.npz")

    ds = load_medmnist(path, split)

    assert ds.images.shape == (size, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.shape == (size,) and ds.labels.dtype == np.int64
    assert set(np.unique(ds.labels)) == {0, 1}
    assert ds.class_names == names and ds.name == stem


def test_medmnist_pneumonia_class_counts():
    path = _need(MEDMNIST / "pneumoniamnist.npz")

    train = load_medmnist(path, "train")
    test = load_image_source(str(path), split="test")

    assert np.bincount(train.labels).tolist() == [1214, 3494]
    assert np.bincount(test.labels).tolist() == [234, 390]


def _rgb_npz(path: Path, keys=("train", "val", "test")) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for i, split in enumerate(keys):
        n = 4 + i
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).astype(np.uint8).reshape(n, 1)
    np.savez(path, **arrays)


def test_medmnist_rgb_fixture(tmp_path):
    path = tmp_path / "tinyderma.npz"
    _rgb_npz(path)

    ds = load_medmnist(path, "val")
    resized = load_image_source(path, split="test", size=14)

    assert ds.images.shape == (5, 28, 28, 3)
    assert ds.labels.tolist() == [0, 1, 2, 0, 1]
    assert ds.class_names == ("0", "1", "2") and ds.name == "tinyderma"
    assert resized.images.shape == (6, 14, 14, 3)


def test_medmnist_errors(tmp_path):
    path = tmp_path / "partial.npz"
    _rgb_npz(path, keys=("train",))

    with pytest.raises(DataError, match="not found.*nope.npz"):
        load_medmnist(tmp_path / "nope.npz")
    with pytest.raises(DataError, match=r"'test_images' missing.*train_images"):
        load_medmnist(path, "test")
    with pytest.raises(DataError, match="Unknown split.*'validation'"):
        load_medmnist(path, "validation")


# ---------------------------------------------------------------- image folders


def test_rgb_folder_with_jpeg_and_mixed_sizes(tmp_path):
    red = np.zeros((12, 10, 3), np.uint8)
    red[..., 0] = 200
    _write(tmp_path / "cat" / "a.png", red, "RGB")
    _write(tmp_path / "cat" / "b.JPG", np.full((20, 16, 3), 90, np.uint8), "RGB")
    _write(tmp_path / "dog" / "c.png", np.full((6, 6), 40, np.uint8), "L")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")

    ds = load_image_folder(tmp_path)

    assert ds.images.shape == (3, 12, 10, 3)
    assert ds.labels.tolist() == [0, 0, 1]
    assert ds.class_names == ("cat", "dog")
    assert ds.images[0, ..., 0].min() == 200 and ds.images[0, ..., 1:].max() == 0
    assert abs(int(ds.images[1].mean()) - 90) <= 2  # JPEG is lossy
    assert np.all(ds.images[2] == 40)  # grayscale converted to RGB


def test_gray_folder_resized_to_size(tmp_path):
    _write(tmp_path / "a" / "1.png", np.full((28, 28), 10, np.uint8), "L")
    _write(tmp_path / "a" / "16bit.png", np.full((9, 9), 25700, np.uint16), "I;16")
    _write(tmp_path / "b" / "2.jpeg", np.full((40, 30), 250, np.uint8), "L")

    ds = load_image_folder(tmp_path, size=16)
    tall = load_image_source(str(tmp_path), size=(8, 4))

    assert ds.images.shape == (3, 16, 16, 1)
    assert ds.images[0].max() == 10 and np.all(ds.images[1] == 100)  # 16 bit scaled
    assert abs(int(ds.images[2].mean()) - 250) <= 2
    assert tall.image_shape == (8, 4, 1)


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad" / "x").mkdir(parents=True)
    (tmp_path / "bad" / "x" / "broken.png").write_bytes(b"not a png")

    with pytest.raises(DataError, match="no class sub-folders"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(DataError, match="no readable image.*broken.png: not an image"):
        load_image_folder(tmp_path / "bad")
    with pytest.raises(DataError, match="broken.png: not an image.*strict"):
        load_image_folder(tmp_path / "bad", strict=True)
    with pytest.raises(DataError, match="Image folder not found"):
        load_image_folder(tmp_path / "missing")


def test_source_dispatch_and_folder_splits(tmp_path):
    plain, split = tmp_path / "plain", tmp_path / "split"
    for root in (plain, split / "train", split / "test"):
        for name in ("no", "yes"):
            _write(root / name / "0.png", np.full((5, 5), 7, np.uint8), "L")

    whole = load_image_source(plain, split="train")
    test = load_image_source(split, split="test")
    both = load_image_source(split, split="all")

    assert len(load_image_source("Digits", split="test")) == 360
    assert len(whole) == 2 and len(test) == 2 and len(both) == 4
    assert test.class_names == ("no", "yes") and test.name == "split"
    with pytest.raises(DataError, match="has no splits.*train/ and test/"):
        load_image_source(plain, split="test")
    with pytest.raises(DataError, match="Unknown image source.*nowhere.*'digits'"):
        load_image_source(str(tmp_path / "nowhere"))


def test_dataset_validation_and_subset():
    ds = load_digits_builtin("test")

    sub = ds.subset([3, 0])

    assert len(sub) == 2 and np.array_equal(sub.images[1], ds.images[0])
    with pytest.raises(DataError, match="uint8"):
        ImageDataset(ds.images.astype(np.float32), ds.labels, ds.class_names, "x")
    with pytest.raises(DataError, match=r"labels must lie in \[0, 2\)"):
        ImageDataset(ds.images, ds.labels, ("a", "b"), "x")


# ---------------------------------------------------------------- partitions


def _skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between site and global label distributions."""
    hist = label_histogram(labels, parts, int(labels.max()) + 1).astype(float)
    site = hist / hist.sum(axis=1, keepdims=True)
    glob = hist.sum(axis=0) / hist.sum()
    return float(0.5 * np.abs(site - glob).sum(axis=1).mean())


LABELS = np.repeat(np.arange(5), 60)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "quantity"])
def test_partition_covers_every_index_once_and_is_seeded(scheme):
    parts = partition(LABELS, 7, scheme=scheme, alpha=0.5, seed=3)
    again = partition(LABELS, 7, scheme=scheme, alpha=0.5, seed=3)
    other = partition(LABELS, 7, scheme=scheme, alpha=0.5, seed=4)

    merged = np.concatenate(parts)
    assert len(parts) == 7 and all(len(p) >= 2 for p in parts)
    assert all(p.dtype == np.int64 for p in parts)
    assert np.array_equal(np.sort(merged), np.arange(len(LABELS)))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=False))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=False))


def test_dirichlet_small_alpha_is_more_skewed_than_iid():
    iid = partition_iid(LABELS, 5, seed=0)
    skewed = partition_dirichlet(LABELS, 5, alpha=0.1, seed=0)
    sizes = [len(p) for p in partition_quantity(LABELS, 5, alpha=0.2, seed=0)]

    assert _skew(LABELS, iid) < 0.15
    assert _skew(LABELS, skewed) > 3 * _skew(LABELS, iid)
    assert max(sizes) > 3 * min(sizes)
    assert label_histogram(LABELS, iid, 5).sum() == len(LABELS)


def test_partition_errors():
    with pytest.raises(ConfigError, match="Cannot give 10 sites at least 2"):
        partition_dirichlet(np.arange(15) % 3, 10, alpha=0.5, seed=0)
    with pytest.raises(ConfigError, match="fewer than 20 examples in 100 draws"):
        partition_dirichlet(LABELS, 10, alpha=0.01, seed=0, min_size=20)
    with pytest.raises(ConfigError, match="num_sites must be an integer >= 1"):
        partition(LABELS, 0)
    with pytest.raises(ConfigError, match="alpha must be a finite number > 0"):
        partition(LABELS, 2, alpha=0.0)
    with pytest.raises(ConfigError, match="Unknown partition scheme.*'pathological'"):
        partition(LABELS, 2, scheme="pathological")


# ---------------------------------------------------------------- text tables


def test_sms_spam_collection_counts():
    ds = load_text_table(_need(SMS))

    assert len(ds) == 5574
    assert ds.class_names == ("ham", "spam") and ds.num_classes == 2
    assert np.bincount(ds.labels).tolist() == [4827, 747]
    assert ds.texts[0].startswith("Go until jurong point")
    assert len(ds.subset(np.flatnonzero(ds.labels == 1))) == 747


def test_csv_with_header_and_quotes(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text(
        'id,Review,label\n1,"good, really",pos\n2,bad,neg\n3,"ok ""fine""",pos\n'
    )

    ds = load_text_table(path)
    by_index = load_text_table(path, text_column=1, label_column="label")

    assert ds.texts == ("good, really", "bad", 'ok "fine"')
    assert ds.class_names == ("neg", "pos") and ds.labels.tolist() == [1, 0, 1]
    assert by_index.texts == ds.texts


def test_text_table_errors(tmp_path):
    ragged = tmp_path / "ragged.tsv"
    ragged.write_text("ham\thello\nspam\twin\textra\n")
    blank = tmp_path / "blank.tsv"
    blank.write_text("ham\thello\nspam\t  \n")
    header = tmp_path / "h.csv"
    header.write_text("text,label\nhi,a\n")

    with pytest.raises(DataError, match="not found"):
        load_text_table(tmp_path / "missing.tsv")
    with pytest.raises(DataError, match="Line 2 of ragged.tsv: 3 field.*strict"):
        load_text_table(ragged, strict=True)
    with pytest.raises(DataError, match="Line 2 of blank.tsv: empty text"):
        load_text_table(blank, strict=True)
    with pytest.raises(DataError, match=r"column not found.*\['text', 'label'\]"):
        load_text_table(header, text_column="body")
    assert load_text_table(ragged).skipped == ("ragged.tsv line 2: 3 field(s), expected 2",)
    assert load_text_table(blank).skipped == ("blank.tsv line 2: empty text",)
