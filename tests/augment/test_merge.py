"""Tests of policy aggregation: the strict merge and its weighted-vote fallback."""

from __future__ import annotations

import logging

import pytest

from fedaug.augment import (
    Brightness,
    Contrast,
    GaussianNoise,
    Policy,
    Rotate,
    Sampling,
    aggregate_policies,
    merge_policies,
)
from fedaug.errors import PolicyError


def _plain_and_sampled() -> tuple[Policy, Policy]:
    plain = Policy.default("image")
    return plain, Policy(ops=plain.ops, sampling=Sampling("randaugment", 2, 30))


def test_merge_policies_weighted_average_known_answer() -> None:
    # Prepare: site A (weight 3) and site B (weight 1)
    a = Policy(ops=(Rotate(p=0.8, limit=10.0), Brightness(p=0.5, factor=(0.8, 1.2))))
    b = Policy(ops=(Rotate(p=0.4, limit=20.0), Contrast(p=0.1, factor=(0.5, 1.5)),
                    GaussianNoise(p=1.0, std=(0.0, 0.04))))

    # Execute
    merged = merge_policies([b, a], [1.0, 3.0])

    # Assert: p averaged over all sites (absent = 0), ranges over the sites that have it
    ops = {op.op: op for op in merged.ops}
    assert list(ops) == ["rotate", "brightness", "gaussian_noise"]  # canonical order
    assert ops["rotate"].p == pytest.approx(0.75 * 0.8 + 0.25 * 0.4)
    assert ops["rotate"].limit == pytest.approx(0.75 * 10.0 + 0.25 * 20.0)
    assert ops["brightness"].p == pytest.approx(0.375)
    assert ops["brightness"].factor == pytest.approx((0.8, 1.2))
    assert ops["gaussian_noise"].p == pytest.approx(0.25)
    assert "contrast" not in ops  # merged p = 0.025 < 0.05: dropped
    assert merge_policies([a, b], [3, 1]) == merged  # deterministic, order-free


def test_merge_policies_refuses_what_it_cannot_average() -> None:
    # Prepare
    plain, sampled = _plain_and_sampled()

    # Execute / Assert
    with pytest.raises(PolicyError, match=r"mixed modalities \['image', 'text'\]"):
        merge_policies([Policy.default("image"), Policy.default("text")], [1, 1])
    with pytest.raises(PolicyError, match=r"weights\.0: must be a finite number >= 0"):
        merge_policies([Policy.default()], [-1])
    with pytest.raises(PolicyError, match=r"mixed sampling kinds \['null', 'randaugment'\]"):
        merge_policies([plain, sampled], [1, 1])


def test_aggregate_merges_policies_that_can_be_merged() -> None:
    # Prepare
    a = Policy(ops=(Rotate(p=0.2, limit=10.0),))
    b = Policy(ops=(Rotate(p=0.8, limit=20.0),))

    # Execute
    merged = aggregate_policies([a, b], [1.0, 3.0])

    # Assert: exact on the wire (merged values are rounded to 6 decimals)
    assert merged == merge_policies([a, b], [1.0, 3.0])
    assert merged.to_dict()["ops"] == [{"op": "rotate", "p": 0.65, "limit": 17.5}]


def test_aggregate_falls_back_to_the_example_weighted_vote(caplog) -> None:
    # Prepare: two sites chose the sampled candidate, one the plain policy
    plain, sampled = _plain_and_sampled()

    # Execute
    with caplog.at_level(logging.INFO, logger="fedaug.augment"):
        more_plain = aggregate_policies([plain, sampled, sampled], [100.0, 30.0, 40.0])
    more_sampled = aggregate_policies([plain, sampled, sampled], [50.0, 30.0, 40.0])

    # Assert: equal policies pool their examples (70 vs 100, then 70 vs 50); logged
    assert more_plain == plain
    assert more_sampled == sampled
    lines = [r for r in caplog.records if r.name == "fedaug.augment"]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "mixed sampling kinds" in lines[0].getMessage()
    assert "100 of 170 examples" in lines[0].getMessage()


def test_aggregate_vote_tie_does_not_depend_on_the_order_of_sites() -> None:
    # Prepare
    plain, sampled = _plain_and_sampled()

    # Execute
    first = aggregate_policies([plain, sampled], [5, 5])
    second = aggregate_policies([sampled, plain], [5, 5])

    # Assert
    assert first == second
    assert first.to_json() == min(plain.to_json(), sampled.to_json())


def test_aggregate_keeps_a_shared_border_and_votes_between_different_ones() -> None:
    # Prepare
    reflect = Policy(ops=(Rotate(p=0.5, limit=10.0),))
    constant = Policy(ops=(Rotate(p=0.5, limit=20.0),), border="constant")

    no_warp = Policy(ops=(Brightness(p=0.5),))  # its border changes nothing

    # Execute
    merged = aggregate_policies([constant, constant, no_warp], [1, 1, 5])
    voted = aggregate_policies([reflect, constant], [3, 1])

    # Assert
    assert merged.border == "constant" and {op.op for op in merged.ops} == {"rotate", "brightness"}
    assert voted == reflect
    with pytest.raises(PolicyError, match=r"mixed border modes \['constant', 'reflect'\]"):
        merge_policies([reflect, constant], [3, 1])


@pytest.mark.parametrize(
    ("policies", "weights", "match"),
    [
        ([], [], r"policies: need at least one policy"),
        ([Policy.default()], [1, 2], r"weights: need one weight per policy \(1\), got 2"),
        ([Policy.default(), "rotate"], [1, 1], r"policies\.1: must be a Policy"),
        ([Policy.default()], [float("nan")], r"weights\.0: must be a finite number >= 0"),
        ([Policy.default()], [0], r"weights: must not all be zero"),
        ([Policy.default("image"), Policy.default("text")], [1, 1], r"mixed modalities"),
    ],
)
def test_aggregate_refuses_inputs_no_aggregate_can_mean(policies, weights, match) -> None:
    # Execute / Assert
    with pytest.raises(PolicyError, match=match):
        aggregate_policies(policies, weights)
