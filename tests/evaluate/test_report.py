"""``fedaug evaluate`` and ``fedaug audit`` on a tiny saved generator (real code paths)."""

from __future__ import annotations

import json

import torch

from fedaug.cli import main
from fedaug.data import load_digits_builtin
from fedaug.evaluate.report import evaluate_generator, small_site_subset
from fedaug.generator import GeneratorConfig, build_train_scheduler, build_unet, save_generator


def _tiny_model(folder):
    torch.manual_seed(0)
    cfg = GeneratorConfig(image_size=8, channels=1, num_classes=10, block_out_channels=(8, 16))
    save_generator(folder, build_unet(cfg), build_train_scheduler(cfg), cfg)


def test_evaluate_report_has_every_part_and_writes_files(tmp_path):
    # Prepare
    _tiny_model(tmp_path / "m")
    train, test = load_digits_builtin(split="train"), load_digits_builtin(split="test")
    small = small_site_subset(train, 60, seed=0)
    # the federation's class mix, as the server writes it from the noised counts
    prior = [0.55] + [0.05] * 9
    (tmp_path / "m" / "model_card.json").write_text(json.dumps(
        {"class-prior": {"proportions": prior}}))
    # Execute
    report = evaluate_generator(tmp_path / "m", train, test, num_samples=100, small_site=small,
                                steps=2, epochs=1, out_dir=tmp_path / "r")
    # Assert
    assert len(small) == 60 and set(small.labels.tolist()) == set(range(10))
    assert set(report["utility"]) == {"tstr", "tstr+augment", "trtr"}
    assert report["utility"]["trtr"]["accuracy"] > report["utility"]["tstr"]["accuracy"]
    assert report["fidelity"]["frechet-distance"] > 0
    gain = report["augmentation-gain"]
    assert gain["small-site-size"] == 60 and "local+augment+synthetic" in gain
    for name in ("local", "local+augment", "local+augment+synthetic"):
        seeds = gain[name]["accuracy-per-seed"]
        assert len(seeds) == gain["seeds"] == 3
        assert gain[name]["accuracy"] == sum(seeds) / 3
    assert gain["gain-synthetic"] == (gain["local+augment+synthetic"]["accuracy"]
                                      - gain["local"]["accuracy"])
    assert 0 <= report["privacy-audit"]["membership-inference-auc"] <= 1
    assert json.loads((tmp_path / "r" / "report.json").read_text())["num-synthetic"] == 100
    # the synthetic classes follow the model's class prior
    assert report["settings"]["synthetic-labels"] == "the model's class prior"
    assert [report["fidelity"]["per-class"][c]["num-fake"] for c in range(10)] == [55] + [5] * 9
    assert (tmp_path / "r" / "report.png").stat().st_size > 0


def test_audit_command_writes_into_the_model_card(tmp_path, capsys):
    _tiny_model(tmp_path / "m")
    (tmp_path / "m" / "model_card.json").write_text(json.dumps({"rounds": 1}))
    rc = main(["audit", "--model", str(tmp_path / "m"), "--data", "digits", "--num-samples",
               "50", "--write-card"])
    assert rc == 0
    card = json.loads((tmp_path / "m" / "model_card.json").read_text())
    assert card["rounds"] == 1 and "memorization-rate" in card["privacy-audit"]
    assert "membership-inference-auc" in capsys.readouterr().out


def _quick_evaluate(tmp_path) -> int:
    return main(["evaluate", "--model", str(tmp_path / "m"), "--real", "digits", "--num-samples",
                 "50", "--steps", "2", "--small-site-size", "40", "--quick",
                 "--out", str(tmp_path / "r")])


def test_quick_evaluate_runs_end_to_end_with_one_seed_and_few_epochs(tmp_path, capsys):
    # Prepare
    _tiny_model(tmp_path / "m")

    # Execute: stderr is captured, not a terminal
    rc = _quick_evaluate(tmp_path)

    # Assert: the quick settings were used and recorded; no progress bars
    out, err = capsys.readouterr()
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rc == 0 and "TSTR accuracy" in out and "mean of 1 seeds" in out
    assert report["settings"] == {"num-samples": 50, "steps": 2, "seed": 0, "epochs": 2,
                                  "small-site-seeds": 1, "small-site-epochs": 10,
                                  "synthetic-labels": "balanced"}  # the model has no prior
    gain = report["augmentation-gain"]
    assert gain["seeds"] == 1 and len(gain["local"]["accuracy-per-seed"]) == 1
    assert "privacy-audit" in report and (tmp_path / "r" / "report.png").is_file()
    assert "TSTR classifier" not in err


def test_evaluate_shows_a_progress_bar_per_stage_on_a_terminal(tmp_path, capsys, monkeypatch):
    # Prepare: stderr claims to be a terminal
    import sys

    from fedaug.evaluate.report import STAGES

    _tiny_model(tmp_path / "m")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)

    # Execute
    rc = _quick_evaluate(tmp_path)

    # Assert: every stage's bar ran to its end (sampling's own bar waits a second to show)
    err = capsys.readouterr().err
    assert rc == 0
    for stage in STAGES[1:]:
        assert f"{stage}: 100%" in err


def test_evaluate_report_draws_samples_per_class_by_default(tmp_path, monkeypatch):
    # the default sample count grows with the classes (SAMPLES_PER_CLASS each)
    import fedaug.evaluate.report as report_module

    _tiny_model(tmp_path / "m")
    monkeypatch.setattr(report_module, "SAMPLES_PER_CLASS", 3)
    train, test = load_digits_builtin(split="train"), load_digits_builtin(split="test")
    report = evaluate_generator(tmp_path / "m", train, test, steps=2, epochs=1, audit=False)
    assert report["num-synthetic"] == 30 and report["settings"]["num-samples"] == 30
