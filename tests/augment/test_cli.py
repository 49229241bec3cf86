"""``fedaug augment`` on an image folder (with the golden-rule check) and on SMS texts."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from fedaug.augment import Policy
from fedaug.cli import main
from fedaug.data import load_digits_builtin


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
