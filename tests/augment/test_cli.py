"""``fedaug augment`` on an image folder (with the golden-rule check) and on SMS texts."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from fedaug.augment import Policy
from fedaug.cli import main
from fedaug.data import load_digits_builtin
from fedaug.errors import DataError


def test_augment_image_folder_keeps_classes_and_checks_shift(tmp_path, capsys):
    # Prepare: a folder of real digits, two classes
    digits = load_digits_builtin(split="train")
    for c in (0, 1):
        (tmp_path / "in" / f"class{c}").mkdir(parents=True)
        for i, idx in enumerate(np.flatnonzero(digits.labels == c)[:6]):
            Image.fromarray(digits.images[idx][..., 0]).save(tmp_path / "in" / f"class{c}" / f"{i}.png")
    (tmp_path / "policy.json").write_text(Policy.default("image").to_json())
    # Execute
    rc = main(["augment", "--policy", str(tmp_path / "policy.json"), "--in", str(tmp_path / "in"),
               "--out", str(tmp_path / "out"), "--copies", "3", "--seed", "1"])
    # Assert
    assert rc == 0
    outs = sorted((tmp_path / "out").glob("class*/*.png"))
    assert len(outs) == 2 * 6 * 3
    assert {p.parent.name for p in outs} == {"class0", "class1"}
    assert Image.open(outs[0]).size == (8, 8)
    assert (tmp_path / "out" / "preview.png").exists()
    assert "distribution shift" in capsys.readouterr().out


def test_augment_texts_keeps_labels(tmp_path, shared_data, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(shared_data / "nltk_data"), *nltk.data.path])
    lines = (shared_data / "sms_spam" / "SMSSpamCollection").read_text(encoding="utf-8").splitlines()[:20]
    (tmp_path / "sms.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "policy.json").write_text(Policy.default("text").to_json())
    rc = main(["augment", "--policy", str(tmp_path / "policy.json"), "--in",
               str(tmp_path / "sms.tsv"), "--out", str(tmp_path / "out.tsv"), "--copies", "2"])
    assert rc == 0
    rows = list(csv.reader((tmp_path / "out.tsv").open(encoding="utf-8"), delimiter="\t"))
    assert len(rows) == 40
    assert [r[0] for r in rows[:20]] == [ln.split("\t")[0] for ln in lines]


def test_augment_rejects_missing_policy(tmp_path, capsys):
    rc = main(["augment", "--policy", str(tmp_path / "nope.json"), "--in", str(tmp_path),
               "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "Policy file not found" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--help"], ["simulate", "--help"], ["generate", "--help"],
                                  ["privacy", "show", "--help"], ["evaluate", "--help"],
                                  ["augment", "--help"], ["audit", "--help"]])
def test_help_explains(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    assert len(capsys.readouterr().out) > 200


# ---------------------------------------------------------------- bad input, names, columns


def _xray_folder(root, shared_data, per_class=5):
    """Real PneumoniaMNIST X-rays in IN/normal and IN/pneumonia."""
    with np.load(shared_data / "medmnist" / "pneumoniamnist.npz") as npz:
        images, labels = npz["train_images"][:100], npz["train_labels"][:100, 0]
    for name, label in (("normal", 0), ("pneumonia", 1)):
        (root / name).mkdir(parents=True)
        for i, idx in enumerate(np.flatnonzero(labels == label)[:per_class]):
            Image.fromarray(images[idx]).save(root / name / f"{i}.png")


def test_shift_table_names_classes_and_bad_images_are_skipped(tmp_path, shared_data, capsys):
    # Prepare: real X-rays, a truncated PNG, a text file named .jpg, an empty class folder
    _xray_folder(tmp_path / "in", shared_data)
    good = (tmp_path / "in" / "normal" / "0.png").read_bytes()
    (tmp_path / "in" / "normal" / "cut.png").write_bytes(good[:100])
    (tmp_path / "in" / "pneumonia" / "notes.jpg").write_text("not an image")
    (tmp_path / "in" / "unused").mkdir()
    (tmp_path / "policy.json").write_text(Policy.default("image").to_json())

    # Execute
    rc = main(["augment", "--policy", str(tmp_path / "policy.json"), "--in", str(tmp_path / "in"),
               "--out", str(tmp_path / "out"), "--copies", "2"])

    # Assert
    out, err = capsys.readouterr()
    assert rc == 0
    assert "wrote 20 augmented images from 10 inputs" in out
    assert "skipped 3 unreadable input(s)" in out
    lines = out.splitlines()
    table = lines[[i for i, line in enumerate(lines) if line.startswith("group")][0] + 1:]
    rows = [line.split()[0] for line in table[:3]]
    assert rows == ["overall", "normal", "pneumonia"] and "class 0" not in out
    for name in ("cut.png", "notes.jpg", "unused"):
        assert err.count(name) == 1, err
    assert len(list((tmp_path / "out").glob("*/*.png"))) == 20


def test_format_shift_report_uses_class_names():
    # Prepare
    from fedaug.augment import distribution_shift, format_shift_report

    images = load_digits_builtin(split="test").images[:20]
    labels = np.repeat([0, 1], 10)
    brighter = np.clip(images.astype(int) + 80, 0, 255).astype(np.uint8)

    # Execute
    named = distribution_shift(images, brighter, labels, class_names=("benign", "malignant"))
    plain = distribution_shift(images, brighter, labels)

    # Assert
    text = format_shift_report(named)
    assert "\nbenign " in text and "\nmalignant " in text and "  - malignant: ks" in text
    assert "class 1" in format_shift_report(plain)
    assert "\nmalignant " in format_shift_report(plain, ("benign", "malignant"))
    with pytest.raises(DataError, match="labels go up to 1 but only 1 class names"):
        distribution_shift(images, brighter, labels, class_names=("benign",))


def _sms_lines(shared_data, n):
    return (shared_data / "sms_spam" / "SMSSpamCollection").read_text(
        encoding="utf-8").splitlines()[:n]


def test_text_columns_by_name_and_index_keep_header_and_other_columns(tmp_path, shared_data,
                                                                      monkeypatch, capsys):
    # Prepare: real SMS texts in a quoted CSV with a header and four columns
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(shared_data / "nltk_data"), *nltk.data.path])
    sms = [line.split("\t", 1) for line in _sms_lines(shared_data, 30)]
    header = ["id", "kind", "sms", "received"]
    table = [[str(100 + i), kind, text, f"2011-05-{i % 28 + 1:02d}"]
             for i, (kind, text) in enumerate(sms)]
    with (tmp_path / "sms.csv").open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([header, *table])
    (tmp_path / "policy.json").write_text(Policy.default("text").to_json())

    # Execute
    rc = main(["augment", "--policy", str(tmp_path / "policy.json"), "--in",
               str(tmp_path / "sms.csv"), "--out", str(tmp_path / "aug.csv"), "--copies", "2",
               "--text-column", "sms", "--label-column", "1"])

    # Assert
    assert rc == 0, capsys.readouterr().err
    with (tmp_path / "aug.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == header and len(rows) == 1 + 2 * len(table)
    for k, row in enumerate(rows[1:]):
        original = table[k % len(table)]
        assert row[:2] + row[3:] == original[:2] + original[3:]
    assert sum(row[2] != table[k % len(table)][2] for k, row in enumerate(rows[1:])) > 10
    assert not list(tmp_path.glob(".aug.csv.*"))  # written atomically, no temporary left


def test_headerless_tsv_columns_by_index(tmp_path, capsys):
    # Prepare: text in column 2, label in column 0, no header
    lines = ["spam\t1\tWIN a £50 voucher now at www.x.com", "ham\t2\tsee you at 10:30 then"]
    (tmp_path / "t.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "policy.json").write_text(Policy.from_dict({
        "schema_version": 1, "modality": "text",
        "ops": [{"op": "random_swap", "p": 1.0, "alpha": 0.5}]}).to_json())

    # Execute
    rc = main(["augment", "--policy", str(tmp_path / "policy.json"), "--in",
               str(tmp_path / "t.tsv"), "--out", str(tmp_path / "o.tsv"),
               "--text-column", "2", "--label-column", "0"])

    # Assert
    assert rc == 0, capsys.readouterr().err
    rows = [line.split("\t") for line in (tmp_path / "o.tsv").read_text().splitlines()]
    assert [r[:2] for r in rows] == [["spam", "1"], ["ham", "2"]]
    assert sorted(rows[0][2].split()) == sorted(lines[0].split("\t")[2].split())
    assert "£50" in rows[0][2] and "www.x.com" in rows[0][2]


@pytest.mark.parametrize("copies", ["1", "4"])
def test_missing_wordnet_is_reported_once_before_any_work(tmp_path, shared_data, monkeypatch,
                                                          capsys, copies):
    # Prepare: a rare synonym op (p=0.05) that three texts and one copy would likely not draw
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "no-nltk-data")])
    (tmp_path / "sms.tsv").write_text("\n".join(_sms_lines(shared_data, 3)) + "\n",
                                      encoding="utf-8")
    (tmp_path / "policy.json").write_text(Policy.from_dict({
        "schema_version": 1, "modality": "text",
        "ops": [{"op": "synonym_replace", "p": 0.05, "alpha": 0.1},
                {"op": "random_swap", "p": 1.0, "alpha": 0.1}]}).to_json())

    # Execute
    rc = main(["augment", "--policy", str(tmp_path / "policy.json"), "--in",
               str(tmp_path / "sms.tsv"), "--out", str(tmp_path / "out.tsv"), "--copies", copies])

    # Assert
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("WordNet data for NLTK was not found") == 1
    assert "python -m nltk.downloader wordnet" in err
    assert not (tmp_path / "out.tsv").exists()


def test_text_columns_do_not_apply_to_image_folders(tmp_path, shared_data, capsys):
    # Prepare
    _xray_folder(tmp_path / "in", shared_data, per_class=1)
    (tmp_path / "policy.json").write_text(Policy.default("image").to_json())

    # Execute
    rc = main(["augment", "--policy", str(tmp_path / "policy.json"), "--in", str(tmp_path / "in"),
               "--out", str(tmp_path / "out"), "--text-column", "text"])

    # Assert
    assert rc == 2 and "apply to text tables" in capsys.readouterr().err
