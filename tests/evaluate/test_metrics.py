"""Tests for fedaug.evaluate: classifier / TSTR, fidelity metrics and the privacy audit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from fedaug.errors import ConfigError, DataError
from fedaug.evaluate import (
    classification_report,
    fidelity_report,
    frechet_distance,
    loss_threshold_attack,
    membership_inference_auc,
    memorization_report,
    pixel_statistics,
    precision_recall,
    train_classifier,
    tstr,
)
from fedaug.evaluate.classifier import _roc_auc

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1,797 real 8x8 digits as uint8 (N, 8, 8, 1), shuffled with seed 0."""
    data = load_digits()
    images = np.round(data.images * 255.0 / 16.0).astype(np.uint8)[..., None]
    order = np.random.default_rng(0).permutation(len(images))
    return images[order], data.target.astype(np.int64)[order]


@pytest.fixture(scope="module")
def split(digits):
    images, labels = digits
    return (images[:1200], labels[:1200]), (images[1200:], labels[1200:])


@pytest.fixture(scope="module")
def digits_clf(split):
    (x, y), _ = split
    return train_classifier(x, y, num_classes=10, seed=0)


# --- classifier ------------------------------------------------------------------


def test_cnn_on_real_digits_reaches_sensible_accuracy(digits_clf, split):
    _, (x_test, y_test) = split

    report = classification_report(digits_clf, x_test, y_test)

    assert report["accuracy"] > 0.85
    assert report["roc-auc"] > 0.95
    assert len(report["per-class-recall"]) == 10
    assert min(report["per-class-recall"]) > 0.6
    assert report["num-examples"] == len(y_test)


def test_predict_proba_and_features_have_documented_shapes(digits_clf, split):
    _, (x_test, _) = split

    proba = digits_clf.predict_proba(x_test[:50])
    feats = digits_clf.features(x_test[:50])

    assert proba.shape == (50, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert feats.shape == (50, digits_clf.feature_dim)
    assert np.array_equal(digits_clf.predict(x_test[:50]), proba.argmax(axis=1))


def test_same_seed_gives_identical_model_and_other_seed_differs(split):
    (x, y), (x_test, _) = split

    a = train_classifier(x[:200], y[:200], num_classes=10, epochs=1, seed=3)
    b = train_classifier(x[:200], y[:200], num_classes=10, epochs=1, seed=3)
    c = train_classifier(x[:200], y[:200], num_classes=10, epochs=1, seed=4)

    assert np.array_equal(a.predict_proba(x_test), b.predict_proba(x_test))
    assert not np.allclose(a.predict_proba(x_test), c.predict_proba(x_test))


def test_fine_tuning_starts_from_init_and_leaves_it_unchanged(split, digits_clf):
    (x, y), (x_test, y_test) = split
    before = [p.detach().clone() for p in digits_clf.module.parameters()]
    # A vanishing learning rate keeps the copy's weights where init's are (BatchNorm's
    # running statistics do adapt to the new records, as they should)
    frozen = train_classifier(x[:50], y[:50], num_classes=10, epochs=1, lr=1e-12,
                              init=digits_clf)
    for a, b in zip(frozen.module.parameters(), digits_clf.module.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=0)
    assert np.array_equal(frozen.mean, digits_clf.mean)
    # A real fine-tune moves the copy but never init itself
    tuned = train_classifier(x[:50], y[:50], num_classes=10, epochs=3, init=digits_clf)
    assert not np.allclose(tuned.predict_proba(x_test), digits_clf.predict_proba(x_test))
    for a, b in zip(before, digits_clf.module.parameters(), strict=True):
        assert torch.equal(a, b)
    # and starts far above a fresh network given the same 50 records and steps
    fresh = train_classifier(x[:50], y[:50], num_classes=10, epochs=3, seed=0)
    assert (classification_report(tuned, x_test, y_test)["accuracy"]
            > classification_report(fresh, x_test, y_test)["accuracy"] + 0.2)
    with pytest.raises(DataError, match="init"):
        train_classifier(np.repeat(x[:50], 3, axis=-1), y[:50], num_classes=10, init=digits_clf)


def test_tstr_equals_trtr_when_synthetic_is_the_real_train_set(split):
    (x, y), (x_test, y_test) = split

    result = tstr(x, y, x, y, x_test, y_test, num_classes=10, seed=0, epochs=2)

    assert result["tstr"] == result["trtr"]
    assert result["trtr"]["accuracy"] > 0.5


def test_augment_is_applied_to_every_training_batch(split):
    (x, y), _ = split
    seen = []

    def flip(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        return batch[:, :, ::-1].copy()

    train_classifier(x[:100], y[:100], num_classes=10, epochs=2, batch_size=32, augment=flip)

    assert seen == [32, 32, 32, 4] * 2


def test_augment_returning_wrong_shape_is_refused(split):
    (x, y), _ = split

    with pytest.raises(DataError, match=r"`augment` must return a uint8 array"):
        train_classifier(x[:40], y[:40], num_classes=10, epochs=1, augment=lambda b: b[:, :4])


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (np.zeros((4, 8, 8, 1), np.float32), np.zeros(4, np.int64), "dtype uint8"),
        (np.zeros((4, 8, 8), np.uint8), np.zeros(4, np.int64), r"images\[\.\.\., None\]"),
        (np.zeros((4, 6, 6, 1), np.uint8), np.zeros(4, np.int64), "at least 8x8"),
        (np.zeros((4, 8, 8, 1), np.uint8), np.zeros((4, 1), np.int64), r"labels\.ravel"),
        (np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 1, 2, 3]), r"\[0, num_classes=3\)"),
    ],
)
def test_train_classifier_rejects_malformed_input(images, labels, match):
    with pytest.raises(DataError, match=match):
        train_classifier(images, labels, num_classes=3, epochs=1)


def test_train_classifier_rejects_bad_settings(split):
    (x, y), _ = split

    with pytest.raises(ConfigError, match="`epochs` must be a positive int"):
        train_classifier(x[:10], y[:10], num_classes=10, epochs=0)
    with pytest.raises(ConfigError, match="`num_classes` must be an int >= 2"):
        train_classifier(x[:10], np.zeros(10, np.int64), num_classes=1)


def test_balanced_class_weight_lifts_the_recall_of_a_rare_class(split):
    # Prepare: digits 3 vs 8 with every three of the split (130) and 4 eights (a site with
    # almost one class)
    (x, y), (xt, yt) = split
    three, eight = np.flatnonzero(y == 3)[:200], np.flatnonzero(y == 8)[:4]
    idx = np.concatenate([three, eight])
    xs, ys = x[idx], (y[idx] == 8).astype(np.int64)
    test = np.flatnonzero((yt == 3) | (yt == 8))
    kw = {"num_classes": 2, "seed": 0, "epochs": 10, "batch_size": 16}
    # Execute
    plain = train_classifier(xs, ys, **kw)
    balanced = train_classifier(xs, ys, class_weight="balanced", **kw)
    # Assert: weighting the 4 eights 32x as much finds far more of the real eights
    recall = {name: classification_report(clf, xt[test], (yt[test] == 8).astype(np.int64))
              ["per-class-recall"][1] for name, clf in (("plain", plain), ("balanced", balanced))}
    assert recall["balanced"] > recall["plain"] + 0.2, recall
    with pytest.raises(ConfigError, match="class_weight"):
        train_classifier(xs, ys, class_weight="inverse", **kw)


def test_classifier_refuses_images_of_another_shape(digits_clf):
    with pytest.raises(DataError, match=r"training shape \(N, 8, 8, 1\)"):
        digits_clf.predict_proba(np.zeros((2, 16, 16, 1), np.uint8))


def test_roc_auc_binary_is_auc_of_class_one_and_multiclass_matches_sklearn_ovr():
    binary = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    proba = rng.dirichlet(np.ones(4), 200)
    proba[np.arange(200), labels] += 0.3
    proba /= proba.sum(axis=1, keepdims=True)

    auc_binary = _roc_auc(np.array([0, 0, 1, 1]), binary)
    auc_multi = _roc_auc(labels, proba)

    assert auc_binary == pytest.approx(0.75)
    assert auc_multi == pytest.approx(roc_auc_score(labels, proba, multi_class="ovr"))


def test_cnn_on_breastmnist_28x28_beats_chance():
    path = DATA / "medmnist" / "breastmnist.npz"
    if not path.exists():
        pytest.skip(f"real data missing: {path} (see ../shared/data/README.md)")
    with np.load(path) as d:
        x, y = d["train_images"][..., None], d["train_labels"].ravel().astype(np.int64)
        x_test, y_test = d["test_images"][..., None], d["test_labels"].ravel()

    clf = train_classifier(x, y, num_classes=2, seed=0)
    report = classification_report(clf, x_test, y_test.astype(np.int64))

    assert report["roc-auc"] > 0.7
    assert report["accuracy"] > 0.7


# --- fidelity --------------------------------------------------------------------


@pytest.fixture(scope="module")
def gauss() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(500, 8))


def test_frechet_distance_of_identical_sets_is_zero(gauss):
    assert frechet_distance(gauss, gauss.copy()) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_a_shift_is_dim_times_shift_squared(gauss):
    distances = [frechet_distance(gauss, gauss + s) for s in (0.5, 1.0, 2.0)]

    assert distances == pytest.approx([8 * 0.25, 8 * 1.0, 8 * 4.0], rel=1e-6)


def test_frechet_distance_of_a_scaling_matches_closed_form(gauss):
    # cov(2a) = 4 cov(a): |mu - 2 mu|^2 + tr(S + 4S - 2 * 2S) = |mu|^2 + tr(S).
    expected = gauss.mean(axis=0) @ gauss.mean(axis=0) + np.trace(np.cov(gauss.T))

    assert frechet_distance(gauss, 2 * gauss) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_with_fewer_samples_than_dimensions_is_finite():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 20)), rng.normal(size=(6, 20)) + 3.0

    value = frechet_distance(a, b)

    assert np.isfinite(value)
    assert value > frechet_distance(a, a)


def test_frechet_distance_rejects_mismatched_dimensions(gauss):
    with pytest.raises(DataError, match="same dimension D"):
        frechet_distance(gauss, gauss[:, :4])


def test_precision_recall_of_identical_sets_is_one(gauss):
    assert precision_recall(gauss, gauss.copy()) == {"precision": 1.0, "recall": 1.0}


def test_precision_recall_of_disjoint_far_sets_is_zero(gauss):
    assert precision_recall(gauss, gauss + 100.0) == {"precision": 0.0, "recall": 0.0}


def test_precision_counts_the_share_of_fakes_on_the_real_manifold(gauss):
    fake = np.concatenate([gauss[:100], gauss[100:200] + 100.0])

    result = precision_recall(gauss, fake)

    assert result["precision"] == 0.5
    assert 0.0 < result["recall"] < 1.0


def test_precision_recall_validates_k(gauss):
    with pytest.raises(ConfigError, match="`k` must be an int >= 1"):
        precision_recall(gauss, gauss, k=0)
    with pytest.raises(DataError, match="N >= 4"):
        precision_recall(gauss[:3], gauss, k=3)


def test_fidelity_report_ranks_real_images_above_noise(digits_clf, split):
    (x, y), (x_test, y_test) = split
    noise = np.random.default_rng(0).integers(0, 256, x_test.shape, dtype=np.uint8)

    same = fidelity_report(digits_clf, x_test, y_test, x_test, y_test)
    real = fidelity_report(digits_clf, x_test, y_test, x[:600], y[:600])
    fake = fidelity_report(digits_clf, x_test, y_test, noise, y_test)

    assert same["frechet-distance"] == pytest.approx(0.0, abs=1e-6)
    assert same["precision"] == same["recall"] == 1.0
    assert real["frechet-distance"] < fake["frechet-distance"]
    assert real["precision"] > 0.8 > fake["precision"]
    assert sorted(real["per-class"]) == list(range(10))
    assert set(real["per-class"][3]) == {
        "frechet-distance",
        "precision",
        "recall",
        "num-real",
        "num-fake",
        "pixels",
    }
    assert real["per-class"][3]["num-real"] == int(np.sum(y_test == 3))
    assert same["detail-ratio"] == pytest.approx(1.0)
    assert fake["detail-ratio"] > 1.3  # noise: more fine detail than even 8x8 digits (1.7x)
    assert "small CNN" in real["extractor"]


def test_fidelity_report_gives_nan_for_a_class_too_small_to_score(digits_clf, split):
    _, (x_test, y_test) = split
    fake_labels = y_test.copy()
    fake_labels[:2] = 10  # a class the real set lacks

    report = fidelity_report(digits_clf, x_test, y_test, x_test, fake_labels)

    assert np.isnan(report["per-class"][10]["frechet-distance"])
    assert report["per-class"][10]["num-fake"] == 2
    assert report["per-class"][10]["pixels"]["real"] is None


def test_pixel_statistics_known_answers_and_blur_lowers_detail():
    flat = np.full((3, 9, 9, 1), 100, dtype=np.uint8)
    board = (np.indices((9, 9)).sum(axis=0) % 2 * 255).astype(np.uint8)[None, :, :, None]
    assert pixel_statistics(flat) == {"mean": 100.0, "contrast": 0.0, "detail": 0.0}
    # a 0/255 checkerboard: every interior Laplacian is +-4 * 255
    stats = pixel_statistics(board)
    assert stats["contrast"] == pytest.approx(127.5, abs=0.8)
    assert stats["detail"] == pytest.approx((4 * 255) ** 2, rel=0.02)
    # a 3x3 box blur keeps brightness, lowers contrast a little and detail a lot
    digits = (load_digits().images[:50, :, :, None] * 16).astype(np.uint8)
    pad = np.pad(digits[..., 0].astype(float), ((0, 0), (1, 1), (1, 1)), mode="edge")
    blur = sum(pad[:, i:i + 8, j:j + 8] for i in range(3) for j in range(3)) / 9
    blurred = pixel_statistics(blur.round().astype(np.uint8)[..., None])
    sharp = pixel_statistics(digits)
    assert blurred["mean"] == pytest.approx(sharp["mean"], rel=0.05)
    assert blurred["detail"] < 0.2 * sharp["detail"]


# --- privacy audit ---------------------------------------------------------------


def test_memorization_report_flags_copies_of_the_training_set(digits):
    images, _ = digits
    train, holdout = images[:600], images[600:1200]

    report = memorization_report(train[:200].copy(), train, holdout)

    assert report["memorization-rate"] > 0.95
    assert report["closer-to-train-fraction"] > 0.95
    assert report["dcr-train-median"] == pytest.approx(0.0, abs=1e-5)
    assert report["ratio"] < 0.01


def test_memorization_report_does_not_flag_an_independent_draw(digits):
    images, _ = digits
    train, holdout = images[:600], images[600:1200]

    report = memorization_report(images[1200:1500], train, holdout)

    assert report["memorization-rate"] < 0.05
    assert 0.3 < report["closer-to-train-fraction"] < 0.7
    assert 0.8 < report["ratio"] < 1.25
    assert report["reference-size"] == 600


def test_memorization_report_counts_every_copy_of_a_training_set_larger_than_holdout(
    digits,
):
    images, _ = digits
    train, holdout = images[:1000], images[1000:1300]

    copies = memorization_report(train[::5].copy(), train, holdout)
    independent = memorization_report(images[1300:1600], train, holdout)

    assert copies["memorization-rate"] > 0.95
    assert independent["memorization-rate"] < 0.05
    assert 0.3 < independent["closer-to-train-fraction"] < 0.7
    assert independent["reference-size"] == 300
    assert (independent["num-train"], independent["num-holdout"]) == (1000, 300)


def test_memorization_report_rejects_mismatched_shapes(digits):
    images, _ = digits
    other = np.zeros((10, 16, 16, 1), np.uint8)

    with pytest.raises(DataError, match="share one shape"):
        memorization_report(images[:10], images[10:20], other)
    with pytest.raises(ConfigError, match=r"`ratio_threshold` must lie in \(0, 1\]"):
        memorization_report(images[:10], images[10:20], images[20:30], ratio_threshold=2)


def test_membership_auc_known_answers():
    rng = np.random.default_rng(0)

    perfect = membership_inference_auc([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    inverted = membership_inference_auc([0.4, 0.5, 0.6], [0.1, 0.2, 0.3])
    tied = membership_inference_auc([1.0, 1.0], [1.0, 1.0])
    same = membership_inference_auc(rng.normal(size=3000), rng.normal(size=3000))

    assert (perfect, inverted, tied) == (1.0, 0.0, 0.5)
    assert same == pytest.approx(0.5, abs=0.03)


def test_membership_auc_rejects_empty_or_nonfinite_scores():
    with pytest.raises(DataError, match="non-empty 1-D array of finite scores"):
        membership_inference_auc([], [1.0])
    with pytest.raises(DataError, match="non-finite values"):
        membership_inference_auc([np.nan], [1.0])


def test_loss_threshold_attack_on_a_model_that_remembers_its_members(digits):
    images, labels = digits
    members, nonmembers = (images[:100], labels[:100]), (images[100:250], labels[100:250])
    bank = members[0].reshape(100, -1).astype(np.float64)
    calls = []

    def loss_fn(batch: np.ndarray, batch_labels: np.ndarray) -> torch.Tensor:
        # Distance to the nearest member: 0 on members, positive elsewhere.
        calls.append(len(batch))
        flat = batch.reshape(len(batch), -1).astype(np.float64)
        dist = np.sqrt(((flat[:, None] - bank[None]) ** 2).sum(-1)).min(1)
        return torch.from_numpy(dist)

    result = loss_threshold_attack(loss_fn, members, nonmembers, batch_size=64)

    assert result["auc"] == 1.0
    assert result["advantage"] == 1.0
    assert result["tpr-at-fpr-1pct"] == 1.0
    assert result["member-loss-mean"] == 0.0 < result["nonmember-loss-mean"]
    assert (result["num-members"], result["num-nonmembers"]) == (100, 150)
    assert calls == [64, 36, 64, 64, 22]


def test_loss_threshold_attack_on_an_uninformative_loss_is_near_chance(digits):
    images, labels = digits
    rng = np.random.default_rng(0)

    result = loss_threshold_attack(
        lambda b, _: rng.normal(size=len(b)),
        (images[:800], labels[:800]),
        (images[800:1600], labels[800:1600]),
    )

    assert result["auc"] == pytest.approx(0.5, abs=0.05)


def test_loss_threshold_attack_refuses_a_batch_reduced_loss(digits):
    images, labels = digits

    with pytest.raises(DataError, match="one loss per example"):
        loss_threshold_attack(
            lambda b, _: np.float64(b.mean()),
            (images[:10], labels[:10]),
            (images[10:20], labels[10:20]),
        )
