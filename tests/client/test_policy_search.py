"""Tests of the private policy search: candidates, scores, the exponential mechanism."""

from __future__ import annotations

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from fedaug.augment import OPS, CropResize, GaussianNoise, Policy, Rotate, Sampling
from fedaug.augment.candidates import candidate_labels, candidate_policies
from fedaug.client.policy_search import score_candidates, search_site_policy
from fedaug.data import load_digits_builtin
from fedaug.errors import ConfigError, DataError, PolicyError
from fedaug.privacy import NoiseSource
from fedaug.privacy.accounting import pure_dp_rdp
from fedaug.privacy.choice import private_choice, selection_probabilities

IMAGE_OPS = [tag for tag, cls in OPS.items() if cls.modality == "image"]


@pytest.fixture(scope="module")
def site() -> tuple[np.ndarray, np.ndarray]:
    """300 real 8x8 digits, about the size of one small site."""
    ds = load_digits_builtin("train")
    idx = np.random.default_rng(0).choice(len(ds.labels), 300, replace=False)
    return ds.images[idx], ds.labels[idx]


@pytest.fixture(scope="module")
def digit_scores(site) -> np.ndarray:
    images, labels = site
    return score_candidates(images, labels, candidate_policies(Policy.default("image")),
                            num_classes=10, seed=0)


def _softmax(scores: np.ndarray, eps: float, sens: float = 1.0) -> np.ndarray:
    w = np.exp(eps * scores / (2 * sens) - np.max(eps * scores / (2 * sens)))
    return w / w.sum()


# ------------------------------------------------------------------------------ candidates


def test_candidates_are_valid_image_policies_with_known_scalings():
    # Prepare
    base = Policy.default("image")

    # Execute
    cands = candidate_policies(base)

    # Assert: six valid, JSON-stable image policies in the documented order
    assert candidate_labels() == ["base", "none", "x0.5", "x1.5", "x2", "sampling"]
    assert len(cands) == 6
    for c in cands:
        assert c.modality == "image"
        assert Policy.from_json(c.to_json()) == c
    base_c, none_c, half, _, double, sampling = cands
    assert base_c == base
    assert none_c.ops == () and none_c.sampling is None
    by_tag = {op.op: op for op in double.ops}
    assert by_tag["rotate"] == Rotate(p=1.0, limit=20.0)
    assert by_tag["crop_resize"] == CropResize(p=1.0, scale=(0.7, 1.0))
    assert by_tag["gaussian_noise"] == GaussianNoise(p=0.6, std=(0.0, 0.04))
    assert by_tag["brightness"].factor == pytest.approx((0.8, 1.2))
    half_by_tag = {op.op: op for op in half.ops}
    assert half_by_tag["rotate"] == Rotate(p=0.25, limit=5.0)
    assert half_by_tag["contrast"].factor == pytest.approx((0.95, 1.05))
    assert sampling.ops == base.ops
    assert sampling.sampling == Sampling("randaugment", num_ops=2, magnitude=30.0)


def test_a_base_with_sampling_gets_a_variant_without_it():
    # Prepare
    base = Policy(ops=(Rotate(), CropResize()), sampling=Sampling("trivialaugment", 1, 20.0))

    # Execute
    cands = candidate_policies(base)

    # Assert: scaled candidates keep the base's sampling; the sampling variant drops it
    assert cands[2].sampling == base.sampling
    assert cands[5] == Policy(ops=base.ops)


@pytest.mark.parametrize("tag", IMAGE_OPS)
def test_every_image_op_scales_into_valid_policies(tag: str):
    # Prepare: the op alone with its defaults
    base = Policy(ops=(OPS[tag](p=0.5),))

    # Execute
    cands = candidate_policies(base, num_candidates=10, seed=3)

    # Assert: every candidate validates and round-trips; clamping keeps fields in bounds
    assert len(cands) == 10
    for c in cands:
        assert Policy.from_json(c.to_json()) == c
    assert cands[4].ops[0].p == 1.0  # 0.5 * 2


def test_candidates_are_deterministic_and_only_extras_depend_on_the_seed():
    # Prepare
    base = Policy.default("image")

    # Execute
    a = candidate_policies(base, num_candidates=9, seed=7)
    b = candidate_policies(base, num_candidates=9, seed=7)
    c = candidate_policies(base, num_candidates=9, seed=8)

    # Assert
    assert [p.to_json() for p in a] == [p.to_json() for p in b]
    assert a[:6] == c[:6] == candidate_policies(base, seed=123)
    assert a[6:] != c[6:]
    assert candidate_labels(9)[6:] == ["random-1", "random-2", "random-3"]
    assert candidate_policies(base, num_candidates=2) == a[:2]


@pytest.mark.parametrize(
    ("base", "kwargs", "error", "match"),
    [
        (Policy.default("text"), {}, PolicyError, "must be an image Policy"),
        (Policy(), {}, PolicyError, "has no ops"),
        (Policy.default("image"), {"num_candidates": 1}, ConfigError, "num_candidates must be"),
        (Policy.default("image"), {"seed": -1}, ConfigError, "seed must be an integer >= 0"),
    ],
)
def test_candidate_policies_refuses_bad_input(base, kwargs, error, match):
    with pytest.raises(error, match=match):
        candidate_policies(base, **kwargs)


# ------------------------------------------------------------------------------ scoring


def test_scores_on_real_digits_are_accuracies_well_above_chance(digit_scores):
    # Assert: one accuracy per candidate, in [0, 1], the unaugmented proxy far above 10%
    assert digit_scores.shape == (6,)
    assert np.all((digit_scores >= 0) & (digit_scores <= 1))
    assert digit_scores[1] > 0.5


def test_scores_replay_for_the_same_seed(site, digit_scores):
    # Prepare
    images, labels = site
    cands = candidate_policies(Policy.default("image"))[:2]

    # Execute
    again = score_candidates(images, labels, cands, num_classes=10, seed=0)

    # Assert: same split, initialisation and augmentation stream
    np.testing.assert_array_equal(again, digit_scores[:2])


def test_score_candidates_refuses_bad_input(site):
    images, labels = site
    cands = candidate_policies(Policy.default("image"))[:2]
    with pytest.raises(ConfigError, match="val_fraction must lie strictly between 0 and 1"):
        score_candidates(images, labels, cands, num_classes=10, val_fraction=1.0)
    with pytest.raises(DataError, match="too few examples"):  # one image per class
        one_each = np.array([np.flatnonzero(labels == k)[0] for k in range(10)])
        score_candidates(images[one_each], labels[one_each], cands, num_classes=10)
    with pytest.raises(PolicyError, match="candidates.0: must be an image Policy"):
        score_candidates(images, labels, [Policy.default("text")], num_classes=10)
    with pytest.raises(DataError, match="labels must be an integer array"):
        score_candidates(images, labels[:-1], cands, num_classes=10)


# ---------------------------------------------------------------------------- mechanism


def test_huge_epsilon_always_picks_the_argmax():
    # Prepare
    scores = np.array([0.61, 0.83, 0.82, 0.40])
    noise = NoiseSource.for_tests(0)

    # Execute
    picks = {private_choice(scores, epsilon=1e6, noise=noise) for _ in range(300)}

    # Assert
    assert picks == {1}


def test_tiny_epsilon_is_near_uniform():
    # Prepare
    scores = np.array([0.0, 1.0, 0.5, 0.9, 0.2, 0.7])
    noise = NoiseSource.for_tests(1)
    n = 12000

    # Execute
    counts = np.bincount([private_choice(scores, epsilon=1e-6, noise=noise) for _ in range(n)],
                         minlength=6)

    # Assert: each count within 5 standard deviations of n/6
    sd = np.sqrt(n * (1 / 6) * (5 / 6))
    assert np.all(np.abs(counts - n / 6) < 5 * sd)
    np.testing.assert_allclose(selection_probabilities(scores, epsilon=0.0), np.full(6, 1 / 6))


@pytest.mark.parametrize(("eps", "sens"), [(4.0, 1.0), (1.0, 0.25)])
def test_empirical_selection_matches_the_closed_form(eps, sens):
    # Prepare
    scores = np.array([0.1, 0.5, 0.9, 0.3])
    noise = NoiseSource.for_tests(2)
    n = 20000
    expected = _softmax(scores, eps, sens)

    # Execute
    picks = [private_choice(scores, epsilon=eps, sensitivity=sens, noise=noise) for _ in range(n)]
    empirical = np.bincount(picks, minlength=4) / n

    # Assert: within 5 standard deviations, and the helper agrees with the formula
    np.testing.assert_allclose(selection_probabilities(scores, epsilon=eps, sensitivity=sens),
                               expected, rtol=1e-12)
    assert np.all(np.abs(empirical - expected) < 5 * np.sqrt(expected * (1 - expected) / n))


def test_neighbouring_scores_change_no_probability_by_more_than_e_to_the_epsilon():
    # Prepare: score vectors whose entries each move by at most the sensitivity (1)
    rng = np.random.default_rng(3)
    eps = 0.7
    worst = 0.0

    # Execute
    for _ in range(2000):
        s = rng.uniform(0, 1, 6)
        t = np.clip(s + rng.choice([-1.0, 1.0], 6) * rng.uniform(0, 1, 6), 0, 1)
        p, q = (selection_probabilities(v, epsilon=eps) for v in (s, t))
        worst = max(worst, float(np.max(np.log(p / q))))

    # Assert: the epsilon-DP ratio bound holds
    assert 0.0 < worst <= eps + 1e-12


def test_private_choice_refuses_bad_input():
    noise = NoiseSource.for_tests(0)
    with pytest.raises(ConfigError, match="epsilon must be a finite number >= 0"):
        private_choice(np.ones(3), epsilon=-1.0, noise=noise)
    with pytest.raises(ConfigError, match="sensitivity must be a finite number > 0"):
        private_choice(np.ones(3), epsilon=1.0, sensitivity=0.0, noise=noise)
    with pytest.raises(ConfigError, match="scores must be a non-empty 1-D array"):
        private_choice(np.array([0.5, np.nan]), epsilon=1.0, noise=noise)
    with pytest.raises(ConfigError, match="noise must be a NoiseSource"):
        private_choice(np.ones(3), epsilon=1.0, noise=0)


# ------------------------------------------------------------------------------- privacy


def test_pure_dp_rdp_known_answers():
    np.testing.assert_allclose(pure_dp_rdp(1.0, [1.5, 2, 3]), [0.75, 1.0, 1.0])
    np.testing.assert_allclose(pure_dp_rdp(0.1, [2, 10, 20, 32]), [0.01, 0.05, 0.1, 0.1])
    np.testing.assert_array_equal(pure_dp_rdp(0.0, [2, 64]), [0.0, 0.0])


@pytest.mark.parametrize("eps", [0.01, 0.3, 1.0, 5.0])
def test_pure_dp_rdp_never_exceeds_epsilon_and_matches_the_ledger_math(eps):

    orders = RDPAccountant.DEFAULT_ALPHAS
    curve = pure_dp_rdp(eps, orders)
    assert np.all(curve <= eps)
    np.testing.assert_allclose(curve, np.minimum(eps, np.asarray(orders) * eps**2 / 2))


def test_site_step_candidates_ignore_the_data_and_huge_epsilon_returns_the_best(site):
    # Prepare: two different sites
    images, labels = site
    base = Policy.default("image")
    kwargs = {"num_classes": 10, "seed": 4, "num_candidates": 3, "epochs": 1}

    # Execute
    i_a, cands_a = search_site_policy(images[:150], labels[:150], base, epsilon=1e6,
                                      noise=NoiseSource.for_tests(0), **kwargs)
    i_b, cands_b = search_site_policy(images[150:], labels[150:], base, epsilon=1.0,
                                      noise=NoiseSource(), **kwargs)
    scores_a = score_candidates(images[:150], labels[:150], cands_a, num_classes=10, seed=4,
                                epochs=1)

    # Assert: the same candidates everywhere (the server can rebuild them), the best is chosen
    assert cands_a == cands_b == candidate_policies(base, num_candidates=3, seed=4)
    assert scores_a[i_a] == scores_a.max()
    assert 0 <= i_b < 3


def test_site_step_refuses_a_bad_epsilon_before_training(site):
    images, labels = site
    with pytest.raises(ConfigError, match="epsilon must be a finite number >= 0"):
        search_site_policy(images, labels, Policy.default("image"), num_classes=10,
                           epsilon=float("nan"), seed=0, noise=NoiseSource())
