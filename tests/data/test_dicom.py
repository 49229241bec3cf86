"""DICOM folders with a labels CSV, on real PneumoniaMNIST X-rays written as 16-bit DICOM."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from fedaug.data import load_dicom_folder, load_image_source
from fedaug.data.dicom import parse_window, read_dicom
from fedaug.errors import ConfigError, DataError

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid  # noqa: E402

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
PNEUMONIA = DATA / "medmnist" / "pneumoniamnist.npz"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
# Stored values v = 8 x + 100 (12 bits), rescaled 0.5 v - 1024 = 4 x - 974 for 8-bit x:
# this window maps the rescaled values back onto x exactly.
EXACT = (-463.5, 1021.0)


@pytest.fixture(scope="module")
def xrays() -> tuple[np.ndarray, np.ndarray]:
    """40 real chest X-rays (28x28 uint8), 20 normal then 20 pneumonia."""
    if not PNEUMONIA.is_file():
        pytest.skip(f"real data file {PNEUMONIA} is missing (see ../shared/data/README.md)")
    with np.load(PNEUMONIA) as npz:
        images, labels = npz["train_images"], npz["train_labels"][:, 0]
    idx = np.concatenate([np.flatnonzero(labels == 0)[:20], np.flatnonzero(labels == 1)[:20]])
    return images[idx], labels[idx].astype(np.int64)


def write_dicom(path: Path, stored: np.ndarray | None, *, photometric: str = "MONOCHROME2",
                window: tuple[float, float] | None = None, syntax=ExplicitVRLittleEndian,
                pixel_data: bytes | None = None) -> None:
    """A CR image file: 16-bit allocated, 12 stored, slope 0.5, intercept -1024."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CR", "anonymous"
    if stored is not None:
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-1024"
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
        ds.PixelData = pixel_data if pixel_data is not None else stored.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _stored(x: np.ndarray) -> np.ndarray:
    return x.astype(np.uint16) * 8 + 100


def write_xray_folder(root: Path, images: np.ndarray) -> list[str]:
    """Four kinds in turn: windowed, MONOCHROME1, no window tags, 56x56; returns the names."""
    names = []
    for i, x in enumerate(images):
        name = f"{'sub/' if i == 5 else ''}img{i:03d}.dcm"
        kind = i % 4
        if kind == 0:
            write_dicom(root / name, _stored(x), window=EXACT)
        elif kind == 1:  # MONOCHROME1 stores dense tissue dark: the loader must invert
            write_dicom(root / name, 4095 - _stored(x), photometric="MONOCHROME1")
        elif kind == 2:
            write_dicom(root / name, _stored(x))
        else:
            write_dicom(root / name, _stored(np.kron(x, np.ones((2, 2), np.uint8))),
                        window=EXACT)
        names.append(name)
    return names


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


def test_dicom_folder_with_class_name_labels_matches_the_originals(tmp_path, xrays):
    # Prepare
    images, labels = xrays
    names = write_xray_folder(tmp_path / "dicom", images)
    classes = ("normal", "pneumonia")
    (tmp_path / "labels.csv").write_text(
        "file,label\n" + "".join(f"{n},{classes[y]}\n" for n, y in zip(names, labels,
                                                                          strict=True)))

    # Execute
    ds = load_image_source(tmp_path / "dicom", labels=tmp_path / "labels.csv")
    explicit = load_dicom_folder(tmp_path / "dicom", tmp_path / "labels.csv", window="-463.5,1021")

    # Assert
    assert ds.images.shape == (40, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.class_names == classes and np.array_equal(ds.labels, labels)
    assert ds.skipped == () and ds.name == "dicom"
    loaded = ds.images[..., 0]
    for i, (got, want) in enumerate(zip(loaded, images, strict=True)):
        assert _corr(got, want) > 0.98, i
        if i % 4 == 0:  # the file's own window inverts the rescale exactly
            assert np.abs(got.astype(int) - want).max() <= 1, i
        if i % 4 == 2:  # no window tags: the explicit window is exact too
            assert np.abs(explicit.images[i, ..., 0].astype(int) - want).max() <= 1, i
    assert np.mean([_corr(a, b) for a, b in zip(loaded, images, strict=True)]) > 0.995


def test_index_labels_split_column_and_auto_window(tmp_path, xrays):
    # Prepare: labels as indices, no header, and a CSV with a split column
    images, labels = xrays
    names = write_xray_folder(tmp_path / "d", images[:8])
    (tmp_path / "idx.csv").write_text("".join(f"{n},{y}\n" for n, y in zip(
        names, [0, 1, 1, 0, 1, 0, 0, 1], strict=True)))
    (tmp_path / "split.csv").write_text("image,class,split\n" + "".join(
        f"{n},{c},{s}\n" for n, c, s in zip(names, "abcabcab", ["train"] * 6 + ["test"] * 2,
                                          strict=True)))

    # Execute
    by_index = load_image_source(tmp_path / "d", labels=tmp_path / "idx.csv", size=14)
    test = load_image_source(tmp_path / "d", labels=tmp_path / "split.csv", split="test")
    every = load_image_source(tmp_path / "d", labels=tmp_path / "split.csv", split="all")

    # Assert
    assert by_index.class_names == ("0", "1") and by_index.labels.tolist()[:4] == [0, 1, 1, 0]
    assert by_index.images.shape == (8, 14, 14, 1)
    assert test.class_names == ("a", "b", "c") and test.labels.tolist() == [0, 1]
    assert len(every) == 8
    with pytest.raises(DataError, match="no split column, so split 'test' does not exist"):
        load_image_source(tmp_path / "d", labels=tmp_path / "idx.csv", split="test")
    auto = read_dicom(tmp_path / "d" / names[2])  # no window tags: 0.5/99.5 percentiles
    assert auto.min() == 0 and auto.max() == 255


def test_broken_dicom_files_are_skipped_with_one_warning_each(tmp_path, xrays, caplog):
    # Prepare: four good files; no pixel data, JPEG-LS without a decoder, not DICOM,
    # truncated; a CSV row naming a missing file and one without a label
    images, _ = xrays
    root = tmp_path / "dicom"
    names = write_xray_folder(root, images[:4])
    write_dicom(root / "nopixels.dcm", None)
    write_dicom(root / "jpegls.dcm", _stored(images[4]), syntax=JPEGLSLossless,
                pixel_data=encapsulate([b"\xff\xd8\xff\xf7 not a real JPEG-LS stream"]))
    (root / "garbage.dcm").write_bytes(np.random.default_rng(0).bytes(3000))
    whole = (root / names[0]).read_bytes()
    (root / "truncated.dcm").write_bytes(whole[: len(whole) - 900])
    bad = ["nopixels.dcm", "jpegls.dcm", "garbage.dcm", "truncated.dcm", "missing.dcm"]
    rows = [f"{n},normal" for n in names + bad] + ["unlabelled.dcm,"]
    (tmp_path / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    caplog.set_level(logging.WARNING, logger="fedaug.data")

    # Execute
    ds = load_image_source(root, labels=tmp_path / "labels.csv")

    # Assert
    assert len(ds) == 4 and len(ds.skipped) == 6
    warnings = [r.getMessage() for r in caplog.records]
    for name in [*bad, "unlabelled.dcm"]:
        assert sum(name in w for w in warnings) == 1, (name, warnings)
    reasons = "\n".join(ds.skipped)
    assert "nopixels.dcm: no pixel data" in reasons
    assert "jpegls.dcm: compressed pixel data (JPEG-LS Lossless" in reasons
    assert "garbage.dcm: not a DICOM file" in reasons
    assert "truncated.dcm: damaged pixel data" in reasons
    assert "missing.dcm: file not found" in reasons
    with pytest.raises(DataError, match=r"unlabelled\.dcm \(strict mode"):
        load_dicom_folder(root, tmp_path / "labels.csv", strict=True)
    (tmp_path / "labelled.csv").write_text("file,label\n" + "\n".join(rows[:-1]) + "\n")
    with pytest.raises(DataError, match=r"nopixels\.dcm: no pixel data.*strict mode"):
        load_dicom_folder(root, tmp_path / "labelled.csv", strict=True)


def test_dicom_source_errors(tmp_path, xrays):
    # Prepare
    images, _ = xrays
    write_xray_folder(tmp_path / "d", images[:2])
    (tmp_path / "float.csv").write_text("file,label\nimg000.dcm,0.5\nimg001.dcm,1.5\n")

    # Execute / Assert
    with pytest.raises(DataError, match="holds DICOM files but no labels CSV.*--labels"):
        load_image_source(tmp_path / "d")
    with pytest.raises(DataError, match="not whole numbers"):
        load_image_source(tmp_path / "d", labels=tmp_path / "float.csv")
    with pytest.raises(DataError, match="Labels CSV not found"):
        load_image_source(tmp_path / "d", labels=tmp_path / "nope.csv")
    with pytest.raises(DataError, match="labels CSV goes with a folder of DICOM files"):
        load_image_source("digits", labels=tmp_path / "float.csv")
    with pytest.raises(ConfigError, match="'center,width' with a width of at least 1"):
        parse_window("40")
    assert parse_window("auto") is None and parse_window("40, 400") == (40.0, 400.0)
    with pytest.raises(DataError, match="no labels CSV"):  # RunConfig's default labels ""
        load_image_source(tmp_path / "d", labels="")


def test_fedaug_simulate_runs_end_to_end_on_a_dicom_folder(tmp_path, xrays):
    # Prepare: 40 X-rays as DICOM files and a labels CSV of class names
    from fedaug.cli import main

    images, labels = xrays
    names = write_xray_folder(tmp_path / "dicom", images)
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\n" + "".join(
        f"{n},{'pneumonia' if y else 'normal'}\n" for n, y in zip(names, labels, strict=True)))
    out = tmp_path / "out"

    # Execute
    code = main(["simulate", "--data", str(tmp_path / "dicom"), "--labels", str(csv),
                 "--sites", "2", "--rounds", "1", "--out", str(out), "--no-progress",
                 "--set", "model-channels=8,16", "--set", "image-size=28",
                 "--set", "warmup-steps=5", "--set", "public-steps=5", "--set", "sample-steps=2",
                 "--set", "samples-per-class=2", "--set", "batch-size=16"])

    # Assert: a global model of the two named classes, trained by both sites
    import json

    assert code == 0
    card = json.loads((out / "global" / "model_card.json").read_text())
    assert card["classes"] == ["normal", "pneumonia"]
    assert card["image-shape"] == [28, 28, 1]
    assert [s["status"] for s in card["sites"]] == ["trained", "trained"]
