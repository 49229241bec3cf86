"""A site's decision on the synthetic data (fedaug.evaluate.decision) and its CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fedaug.cli import main
from fedaug.data import ImageDataset, load_digits_builtin
from fedaug.errors import ConfigError, DataError
from fedaug.evaluate.decision import (
    OPTIONS,
    _balancing_weights,
    decide,
    decide_cv,
    site_decision,
    stratified_folds,
    stratified_split,
)
from fedaug.generator import GeneratorConfig, build_train_scheduler, build_unet, save_generator


def _tiny_model(folder):
    torch.manual_seed(0)
    cfg = GeneratorConfig(image_size=8, channels=1, num_classes=10, block_out_channels=(8, 16))
    save_generator(folder, build_unet(cfg), build_train_scheduler(cfg), cfg)


@pytest.fixture(scope="module")
def small_site():
    """A site with 12 digits per class (3 local + 9 validation each) and 600 other digits."""
    train = load_digits_builtin(split="train")
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.choice(np.flatnonzero(train.labels == c), 12, replace=False)
                          for c in range(10)])
    site = train.subset(idx)
    local_idx, val_idx = stratified_split(site.labels, 0.75, seed=0)
    others = train.subset(np.setdiff1d(np.arange(len(train)), idx)[:600])
    return site.subset(local_idx), site.subset(val_idx), others


def _decide(local, val, x, y):
    return decide(local, val, x, y, num_classes=10, seeds=3, epochs=4, site_epochs=15,
                  metric="accuracy")


def test_stratified_split_keeps_each_class_on_both_sides_and_is_disjoint():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 1)
    local, val = stratified_split(labels, 0.3, seed=1)
    assert np.intersect1d(local, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([local, val])), np.arange(14))
    assert np.bincount(labels[val], minlength=3).tolist() == [3, 1, 0]  # singletons stay local
    assert np.bincount(labels[local], minlength=3).tolist() == [7, 2, 1]


def test_synthetic_data_that_helps_gives_use_with_an_interval_above_zero(small_site):
    # Prepare: "synthetic" data from a perfect generator (other real digits)
    local, val, others = small_site

    # Execute
    d = _decide(local, val, others.images, others.labels)

    # Assert: structure, the interval around the gain, and the recommendation
    assert set(d["options"]) == set(OPTIONS)
    assert d["metric"] == "accuracy"
    for o in d["options"].values():
        assert len(o["score-per-seed"]) == 3
        assert o["score"] == pytest.approx(np.mean(o["score-per-seed"]))
        assert o["accuracy"] == pytest.approx(o["score"])
        # a balanced validation part: both metrics agree
        assert o["balanced-accuracy"] == pytest.approx(o["accuracy"])
        assert o["worst-seed-score"] == min(o["score-per-seed"])
    best = d["options"][d["best-synthetic-option"]]
    lo, hi = d["gain-interval"]
    assert lo <= d["gain"] <= hi and d["gain"] == pytest.approx(
        best["accuracy"] - d["options"]["local"]["accuracy"])
    assert d["interval-level"] == pytest.approx(0.975)
    assert (d["local-records"], d["validation-records"], d["synthetic-records"]) == (30, 90, 600)
    assert lo > 0 and d["recommendation"] == f"use {d['best-synthetic-option']}"
    assert d["use-synthetic"] is True
    json.dumps(d)


def test_balancing_weights_turn_the_mean_hit_into_the_mean_recall():
    labels = np.array([0] * 6 + [1] * 2 + [3] * 1)
    hits = np.array([1, 1, 1, 0, 0, 0, 1, 0, 1], dtype=float)
    w = _balancing_weights(labels)
    # recalls: class 0 3/6, class 1 1/2, class 3 1/1 -> mean 2/3 (class 2 is absent)
    assert (hits * w).mean() == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert w.mean() == pytest.approx(1.0)


def test_balanced_accuracy_scores_each_class_the_same_on_a_skewed_site(small_site):
    # Prepare: a site whose validation part is 9 of digit 0 and 1 each of digits 1-9
    local, val, others = small_site
    keep = np.concatenate([np.flatnonzero(val.labels == 0)]
                          + [np.flatnonzero(val.labels == c)[:1] for c in range(1, 10)])
    skewed = val.subset(np.sort(keep))

    # Execute
    d = decide(local, skewed, others.images, others.labels, num_classes=10, seeds=2,
               epochs=2, site_epochs=8, metric="balanced-accuracy")

    # Assert: the decision rests on the balanced score; the plain one is reported beside it
    assert d["metric"] == "balanced-accuracy" and "balanced-accuracy" in d["definition"]
    for name, o in d["options"].items():
        assert o["score"] == pytest.approx(o["balanced-accuracy"])
        if name != "local":
            assert o["gain"] == pytest.approx(o["score"] - d["options"]["local"]["score"])
            assert o["accuracy-gain"] == pytest.approx(
                o["accuracy"] - d["options"]["local"]["accuracy"])
            assert len(o["accuracy-gain-interval"]) == 2
    assert "accuracy-recommended-option" in d
    with pytest.raises(ConfigError, match="metric"):
        decide(local, skewed, others.images, others.labels, num_classes=10, seeds=1,
               epochs=1, site_epochs=1, metric="f1")


def test_stratified_folds_cover_every_record_once_and_deal_each_class_evenly():
    labels = np.array([0] * 10 + [1] * 4 + [2] * 1)
    parts = stratified_folds(labels, 3, seed=2)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(15))
    for c, n in ((0, 10), (1, 4)):
        per_fold = [int((labels[p] == c).sum()) for p in parts]
        assert sum(per_fold) == n and max(per_fold) - min(per_fold) <= 1
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_cross_validated_decision_validates_on_every_record(small_site):
    # Prepare: the whole site (120 digits) and "synthetic" data from a perfect generator
    local, val, others = small_site
    site = ImageDataset(np.concatenate([local.images, val.images]),
                        np.concatenate([local.labels, val.labels]), local.class_names, "site")

    # Execute
    d = decide_cv(site, others.images, others.labels, num_classes=10, folds=3, seeds=1,
                  epochs=4, site_epochs=15, test=val)

    # Assert: every record scored once, by options that never trained on it; a perfect
    # generator helps a 12-per-class site
    assert d["folds"] == 3 and d["validation-records"] == 120 and d["local-records"] == 80
    for o in d["options"].values():
        assert len(o["score-per-seed"]) == 1 and 0 <= o["test-accuracy"] <= 1
    assert d["gain-interval"][0] > 0 and d["use-synthetic"] is True
    assert "3 stratified folds" in d["definition"]
    with pytest.raises(ConfigError, match="folds"):
        decide_cv(site, others.images, others.labels, num_classes=10, folds=1)


def test_noise_as_synthetic_data_gives_do_not_use(small_site):
    local, val, _ = small_site
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (600, 8, 8, 1), dtype=np.uint8)

    labels = rng.integers(0, 10, 600)
    d = _decide(local, val, noise, labels)

    assert d["gain-interval"][0] <= 0
    assert d["recommendation"] == "do not use" and d["use-synthetic"] is False
    assert d["rule"] == "superiority (interval above 0)"
    # a margin no option can miss turns the same evidence into a non-inferiority "use"
    lax = decide(local, val, noise, labels, num_classes=10, seeds=3, epochs=4,
                 site_epochs=15, margin=1.0, metric="accuracy")
    assert lax["use-synthetic"] is True and lax["rule"] == "non-inferiority (margin 1)"
    assert lax["recommendation"].endswith("(no more than 100% below local alone at the "
                                          "interval's level)")


def test_site_decision_samples_the_model_and_reads_only_the_train_split(tmp_path):
    _tiny_model(tmp_path / "m")
    train = load_digits_builtin(split="train")
    site = train.subset(np.arange(80))

    d = site_decision(tmp_path / "m", site, folds=1, val_fraction=0.3, seeds=1,
                      num_samples=40, seed=0, steps=2, epochs=1, site_epochs=2)

    assert d["synthetic-records"] == 40 and d["seeds"] == 1 and d["policy"] == "default"
    assert d["local-records"] + d["validation-records"] == 80 and d["folds"] == 1
    assert d["recommendation"] in ("do not use", "use synthetic-pretrain", "use synthetic-mix")


def _site_folder(folder, names, n_per_class=10, mode="L"):
    digits = load_digits_builtin(split="train")
    for c, name in enumerate(names):
        (folder / name).mkdir(parents=True)
        for i, img in enumerate(digits.images[digits.labels == c][:n_per_class]):
            pic = Image.fromarray(img[..., 0]).convert(mode)
            pic.save(folder / name / f"{i}.png")
    return folder


def test_evaluate_site_data_prints_a_table_and_writes_decision_json(tmp_path, capsys):
    # Prepare: a site folder that lacks classes 7-9 (matched to the model's by name)
    _tiny_model(tmp_path / "m")
    site = _site_folder(tmp_path / "site", [str(c) for c in range(7)])

    # Execute
    rc = main(["evaluate", "--model", str(tmp_path / "m"), "--site-data", str(site),
               "--seeds", "1", "--num-samples", "30", "--steps", "2", "--quick",
               "--metric", "accuracy", "--out", str(tmp_path / "r")])

    # Assert
    out = capsys.readouterr().out
    d = json.loads((tmp_path / "r" / "decision.json").read_text())
    assert rc == 0 and "recommendation:" in out and "synthetic-pretrain" in out
    assert d["metric"] == "accuracy" and "val acc" in out
    assert d["classes-absent-at-site"] == [7, 8, 9]
    # cross-validated (the default): every record is a validation record once
    assert d["folds"] == 3 and d["validation-records"] == 70
    assert d["settings"]["site-epochs"] == 10


def test_bad_site_data_is_refused(tmp_path, capsys):
    _tiny_model(tmp_path / "m")
    digits = load_digits_builtin(split="train").subset(np.arange(100))
    rgb = ImageDataset(np.repeat(digits.images, 3, axis=-1), digits.labels,
                       digits.class_names, "rgb")
    with pytest.raises(DataError, match="channel"):
        site_decision(tmp_path / "m", rgb, num_samples=10, steps=2)
    other = ImageDataset(digits.images, digits.labels % 3, ("a", "b", "c"), "abc")
    with pytest.raises(DataError, match="classes"):
        site_decision(tmp_path / "m", other, num_samples=10, steps=2)
    with pytest.raises(DataError, match="too small"):
        site_decision(tmp_path / "m", digits.subset(np.arange(12)), num_samples=10, steps=2)
    with pytest.raises(ConfigError, match="val_fraction"):
        site_decision(tmp_path / "m", digits, folds=1, val_fraction=1.5, num_samples=10,
                      steps=2)
    with pytest.raises(ConfigError, match="folds"):
        site_decision(tmp_path / "m", digits, folds=0, num_samples=10, steps=2)
    with pytest.raises(ConfigError, match="seeds"):
        site_decision(tmp_path / "m", digits, seeds=0, num_samples=10, steps=2)
    rc = main(["evaluate", "--model", str(tmp_path / "m")])
    assert rc == 2 and "--site-data" in capsys.readouterr().err


def test_a_site_lacking_classes_is_judged_by_non_inferiority_on_the_classes_it_has(small_site):
    # Prepare: the site lacks digits 7-9; "synthetic" data: noise (worthless everywhere)
    local, val, _ = small_site
    keep_l, keep_v = np.flatnonzero(local.labels < 7), np.flatnonzero(val.labels < 7)
    local, val = local.subset(keep_l), val.subset(keep_v)
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (600, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, 600)

    # Execute: the same data under a margin no option can miss, and under none
    lax = decide(local, val, noise, labels, num_classes=10, seeds=2, epochs=2, site_epochs=8,
                 absent_margin=1.0)
    strict = decide(local, val, noise, labels, num_classes=10, seeds=2, epochs=2,
                    site_epochs=8, absent_margin=0.0)

    # Assert: the margin decides, the rule and the lacking classes are named
    assert lax["classes-absent-at-site"] == [7, 8, 9]
    assert "non-inferiority" in lax["rule"] and lax["use-synthetic"] is True
    option = lax["recommended-option"]
    assert lax["options"][option]["gain-interval"][0] > -1.0
    if lax["options"][option]["gain-interval"][0] <= 0:
        assert lax["recommendation"] == f"use {option} (for the 3 class(es) this site lacks)"
    assert strict["use-synthetic"] == (max(strict["options"][o]["gain-interval"][0]
                                           for o in OPTIONS[1:]) > 0)
