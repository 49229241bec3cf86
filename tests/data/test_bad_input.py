"""Bad input never gives a traceback or a hang: damaged files are skipped (or refused)
with a DataError that names them, and every loader says what it left out."""

from __future__ import annotations

import io
import logging
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedaug.data import (
    load_image_folder,
    load_image_source,
    load_medmnist,
    load_text_table,
    read_image,
    read_text_table,
)
from fedaug.errors import DataError

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
PNEUMONIA = DATA / "medmnist" / "pneumoniamnist.npz"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data file {path} is missing (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="module")
def xrays() -> tuple[np.ndarray, np.ndarray]:
    """Real PneumoniaMNIST train images (N, 28, 28) and labels (N,)."""
    with np.load(_need(PNEUMONIA)) as npz:
        return npz["train_images"][:200], npz["train_labels"][:200, 0]


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def _bomb_png(path: Path, side: int) -> None:
    """A valid 1-bit PNG of side x side black pixels, written without holding it in memory."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    row = bytes(1 + (side + 7) // 8)  # filter byte 0, then the row's bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _broken_corpus(root: Path, xrays) -> dict[str, np.ndarray]:
    """Six real X-rays per class among broken files; returns the good images by file name."""
    images, labels = xrays
    good = {}
    for name, label in (("normal", 0), ("pneumonia", 1)):
        (root / name).mkdir(parents=True)
        for i, idx in enumerate(np.flatnonzero(labels == label)[:6]):
            (root / name / f"{i}.png").write_bytes(_png_bytes(images[idx]))
            good[f"{name}/{i}.png"] = images[idx]
    (root / "normal" / "corrupt.png").write_bytes(_png_bytes(images[0])[:120])  # truncated
    (root / "normal" / "empty.png").write_bytes(b"")
    (root / "normal" / "readme.txt").write_text("not an image, not an image extension")
    (root / "normal" / "._0.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (root / "pneumonia" / "notes.jpg").write_text("a text file with an image extension")
    _bomb_png(root / "pneumonia" / "bomb.png", 20000)
    (root / "unused").mkdir()
    return good


BAD = ("corrupt.png", "empty.png", "notes.jpg", "bomb.png", "unused")


def test_image_folder_skips_each_bad_file_with_one_warning_and_counts_it(tmp_path, xrays,
                                                                         caplog):
    # Prepare
    good = _broken_corpus(tmp_path / "xray", xrays)
    caplog.set_level(logging.WARNING, logger="fedaug.data")

    # Execute
    ds = load_image_folder(tmp_path / "xray")

    # Assert: the good images, in order, and one warning per bad thing
    assert ds.class_names == ("normal", "pneumonia")
    assert ds.images.shape == (12, 28, 28, 1) and ds.labels.tolist() == [0] * 6 + [1] * 6
    assert np.array_equal(ds.images[:, ..., 0], np.stack(list(good.values())))
    assert len(ds.skipped) == len(BAD)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name in BAD:
        assert sum(name in w for w in warnings) == 1, (name, warnings)
        assert sum(name in s for s in ds.skipped) == 1
    assert len(warnings) == len(BAD)
    assert not any("readme.txt" in w or "._0.png" in w for w in warnings)
    assert "400000000 pixels" in next(s for s in ds.skipped if "bomb.png" in s)
    assert "empty file" in next(s for s in ds.skipped if "empty.png" in s)


def test_strict_refuses_naming_the_file(tmp_path, xrays):
    # Prepare: a damaged file among good ones; an empty class folder beside a good one
    one = tmp_path / "one"
    (one / "a").mkdir(parents=True)
    (one / "a" / "x.png").write_bytes(_png_bytes(xrays[0][0]))
    (one / "a" / "corrupt.png").write_bytes(_png_bytes(xrays[0][0])[:120])
    two = tmp_path / "two"
    (two / "a").mkdir(parents=True)
    (two / "a" / "x.png").write_bytes(_png_bytes(xrays[0][0]))
    (two / "unused").mkdir()

    # Execute / Assert
    with pytest.raises(DataError, match=r"corrupt\.png: damaged .*strict mode.*Fix: Replace"):
        load_image_folder(one, strict=True)
    with pytest.raises(DataError, match=r"unused: holds no .*strict mode"):
        load_image_source(two, strict=True)
    assert len(load_image_source(one).skipped) == 1
    assert load_image_source(two).class_names == ("a",)


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    # Prepare: 400 megapixels in a 60 kB file; and one just over a lowered limit
    _bomb_png(tmp_path / "bomb.png", 20000)
    _bomb_png(tmp_path / "small.png", 300)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 80_000)

    # Execute / Assert
    with pytest.raises(DataError, match=r"bomb\.png: 400000000 pixels.*MAX_IMAGE_PIXELS"):
        read_image(tmp_path / "bomb.png")
    with pytest.raises(DataError, match=r"small\.png: 300x300 = 90000 pixels, more than the "
                       r"80000"):
        read_image(tmp_path / "small.png")


def test_folder_of_mixed_modes_and_sizes_becomes_one_mode_and_size(tmp_path):
    # Prepare: constant images in eight modes, odd sizes; the expected 8-bit RGB colour
    root = tmp_path / "mixed"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    palette = Image.new("P", (11, 23))
    palette.putpalette([10, 200, 30] + [0] * 765)
    cases = {
        "a/1_rgba.png": (Image.new("RGBA", (13, 7), (200, 30, 40, 128)), (200, 30, 40)),
        "a/2_16bit.png": (Image.fromarray(np.full((31, 29), 51400, np.uint16)), (200,) * 3),
        "a/3_cmyk.jpg": (Image.new("CMYK", (17, 19), (0, 255, 255, 0)), (255, 0, 0)),
        "a/4_palette.png": (palette, (10, 200, 30)),
        "b/5_bilevel.png": (Image.new("1", (9, 9), 1), (255,) * 3),
        "b/6_gray_alpha.png": (Image.new("LA", (10, 12), (90, 255)), (90,) * 3),
        "b/7_int32.tif": (Image.fromarray(np.full((8, 5), 25700, np.int32)), (100,) * 3),
        "b/8_float.tif": (Image.fromarray(np.full((6, 7), 0.5, np.float32)), (128,) * 3),
    }
    for name, (image, _) in cases.items():
        image.save(root / name)

    # Execute
    ds = load_image_folder(root, size=16)
    first = load_image_folder(root)

    # Assert
    assert ds.images.shape == (8, 16, 16, 3) and ds.images.dtype == np.uint8
    assert ds.skipped == ()
    for image, (name, (_, colour)) in zip(ds.images, cases.items(), strict=True):
        tolerance = 3 if name.endswith(".jpg") else 0
        assert np.abs(image.astype(int) - colour).max() <= tolerance, name
    assert first.images.shape == (8, 7, 13, 3)  # the first image's size


def _garbage_zip(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04" + np.random.default_rng(0).bytes(4000))


def _truncated(path: Path) -> None:
    whole = _need(PNEUMONIA).read_bytes()
    path.write_bytes(whole[: len(whole) // 2])


def _no_images(path: Path) -> None:
    np.savez(path, train_images=np.zeros((0, 28, 28), np.uint8),
             train_labels=np.zeros((0, 1), np.uint8))


def _plain_npy(path: Path) -> None:
    with path.open("wb") as fh:
        np.save(fh, np.zeros((3, 28, 28), np.uint8))


@pytest.mark.parametrize(
    ("write", "reason"),
    [(_garbage_zip, "as a .npz archive"), (_truncated, "as a .npz archive"),
     (_no_images, "holds no images"), (_plain_npy, "as a .npz archive")],
    ids=["garbage-behind-zip-header", "truncated", "zero-images", "npy-not-npz"],
)
def test_unreadable_npz_is_a_data_error_with_path_and_fix(tmp_path, write, reason):
    # Prepare
    path = tmp_path / "pneumoniamnist.npz"
    write(path)

    # Execute
    with pytest.raises(DataError, match=re.escape(reason)) as err:
        load_medmnist(path)
    with pytest.raises(DataError, match=re.escape(reason)):
        load_image_source(str(path))

    # Assert
    assert str(path) in err.value.what and err.value.fix


def test_float_labels_are_refused_not_truncated(tmp_path, xrays):
    # Prepare: real images, labels 0.5 / 1.5 (a score, not a class); and whole floats
    images = xrays[0][:4]
    np.savez(tmp_path / "scores.npz", train_images=images,
             train_labels=np.array([[0.5], [1.5], [0.5], [1.0]]))
    np.savez(tmp_path / "whole.npz", train_images=images,
             train_labels=np.array([[0.0], [1.0], [1.0], [0.0]]))

    # Execute
    whole = load_medmnist(tmp_path / "whole.npz")

    # Assert
    with pytest.raises(DataError, match=r"not whole numbers.*Got: \[0\.5, 1\.5\].*Fix: "):
        load_medmnist(tmp_path / "scores.npz")
    assert whole.labels.tolist() == [0, 1, 1, 0] and whole.class_names == ("0", "1")


def test_text_row_without_label_is_skipped_with_a_warning_and_counted(tmp_path, caplog):
    # Prepare: real SMS rows, one without a label, one without text, one with a stray tab
    sms = (_need(DATA / "sms_spam" / "SMSSpamCollection")
           .read_text(encoding="utf-8").splitlines()[:10])
    lines = [*sms[:3], "\t" + sms[3].split("\t", 1)[1], "spam\t ", *sms[4:6], "ham\ta\tb",
             *sms[6:]]
    (tmp_path / "sms.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    caplog.set_level(logging.WARNING, logger="fedaug.data")

    # Execute
    ds = load_text_table(tmp_path / "sms.tsv")

    # Assert
    assert len(ds) == 9 and ds.texts[3] == sms[4].split("\t", 1)[1]
    assert ds.skipped == ("sms.tsv line 4: no label", "sms.tsv line 5: empty text",
                          "sms.tsv line 8: 3 field(s), expected 2")
    assert [r.getMessage() for r in caplog.records] == [f"skipped {s}" for s in ds.skipped]
    with pytest.raises(DataError, match=r"Line 4 of sms\.tsv: no label \(strict"):
        load_text_table(tmp_path / "sms.tsv", strict=True)


def test_text_table_float_labels_and_all_bad_rows_are_refused(tmp_path):
    # Prepare
    (tmp_path / "scores.csv").write_text("text,label\ngood film,0.5\nbad film,1.5\n")
    (tmp_path / "bad.tsv").write_text("\thello\n\tworld\n")

    # Execute / Assert
    with pytest.raises(DataError, match=r"scores\.csv has labels that are not whole numbers"):
        load_text_table(tmp_path / "scores.csv")
    with pytest.raises(DataError, match=r"no usable row \(2 skipped, e\.g\. bad\.tsv line 1"):
        load_text_table(tmp_path / "bad.tsv")


# A review table laid out like the UCI Drug Review data set (drugsComTrain_raw.tsv): an
# unnamed id column, quoted reviews with doubled quotes, a review spanning two lines.
UCI_TSV = (
    '\tdrugName\tcondition\treview\trating\tdate\tusefulCount\n'
    '206461\tValsartan\tLeft Ventricular Dysfunction\t"""It has no side effect, I take it in '
    'combination of Bystolic 5 Mg and Fish Oil"""\t9.0\tMay 20, 2012\t27\n'
    '95260\tGuanfacine\tADHD\t"""My son is halfway through his fourth week of Intuniv.\r\n'
    'We became concerned when he began this last week"""\t8.0\tApril 27, 2010\t192\n'
    '92703\tLybrel\tBirth Control\t"""I used to take another oral contraceptive, which had '
    '21 pill cycle, and was very happy- very light periods"""\t5.0\tDecember 14, 2009\t17\n'
)


def test_quoted_uci_review_tsv_with_header_loads(tmp_path):
    # Prepare
    path = tmp_path / "drugsCom.tsv"
    path.write_text(UCI_TSV, encoding="utf-8", newline="")

    # Execute
    table = read_text_table(path, label_column="rating")
    ds = table.dataset()

    # Assert
    assert table.quoted and table.header[3] == "review" and len(table.rows) == 3
    assert ds.texts[0].startswith('"It has no side effect, I take') and ds.texts[0][-1] == '"'
    assert "Intuniv.\r\nWe became" in ds.texts[1]
    assert ds.class_names == ("5.0", "8.0", "9.0") and ds.labels.tolist() == [2, 1, 0]
    assert table.rows[1][5] == "April 27, 2010"
