"""Tests of the augmentation policy: JSON round trips and strict validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedaug.augment import (
    OPS,
    Policy,
    Rotate,
    Sampling,
    apply_policy,
    apply_text_policy,
)
from fedaug.errors import PolicyError

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
TEXTS = ["the quick brown fox jumps over the lazy dog near the river bank today",
         "free entry in a weekly competition to win cup final tickets now"]


@pytest.fixture
def wordnet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point NLTK at the offline WordNet beside the repository, or skip."""
    pytest.importorskip("fedaug.augment.text", reason="text.py (EDA ops) not integrated yet")
    nltk_dir = DATA / "nltk_data"
    if not (nltk_dir / "corpora" / "wordnet.zip").is_file():
        pytest.skip(f"WordNet data missing: expected {nltk_dir}/corpora/wordnet.zip")
    import nltk

    monkeypatch.setenv("NLTK_DATA", str(nltk_dir))
    monkeypatch.setattr(nltk.data, "path", [str(nltk_dir), *nltk.data.path])


def _images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (6, 20, 24, 3), dtype=np.uint8)


@pytest.mark.parametrize("tag", list(OPS))
def test_every_op_round_trips_through_json_and_replays_with_the_same_seed(
    tag: str, request: pytest.FixtureRequest
) -> None:
    # Prepare: the op with its defaults, always applied
    cls = OPS[tag]
    policy = Policy(modality=cls.modality, ops=(cls(p=1.0),))

    # Execute
    wire = policy.to_json()
    back = Policy.from_json(wire)

    # Assert: same object, same dict, and the same output for the same seed
    assert back == policy
    assert back.to_dict() == policy.to_dict() == json.loads(wire)
    assert json.loads(wire)["ops"][0]["op"] == tag
    if cls.modality == "image":
        images = _images()
        out = apply_policy(policy, images, seed=7)
        np.testing.assert_array_equal(out, apply_policy(back, images, seed=7))
        assert not np.array_equal(out, images)  # the op did something
    else:
        request.getfixturevalue("wordnet")
        out = apply_text_policy(policy, TEXTS, seed=7)
        assert out == apply_text_policy(back, TEXTS, seed=7)


def test_malformed_policy_reports_every_problem_with_its_path() -> None:
    # Prepare: six independent mistakes
    raw = {
        "schema_version": 1,
        "modality": "image",
        "ops": [
            {"op": "rotate", "p": 0.5, "limit": 400},
            {"op": "brightness", "p": 1.5, "factor": [1.2, 0.8]},
            {"op": "solarize", "p": 0.5},
            {"op": "contrast", "p": True, "factor": [0.8, 1.2], "extra": 1},
            {"op": "gamma", "p": 0.5},
            {"op": "synonym_replace", "p": 0.5, "alpha": 0.1},
        ],
        "sampling": None,
        "colour": "red",
    }

    # Execute
    with pytest.raises(PolicyError) as info:
        Policy.from_dict(raw)

    # Assert: one error, every path named
    message = str(info.value)
    for expected in (
        "ops.0.rotate.limit: must be in [0, 180], got 400",
        "ops.1.brightness.p: must be in [0, 1], got 1.5",
        "ops.1.brightness.factor: low must be <= high, got [1.2, 0.8]",
        "ops.2.op: unknown op 'solarize'",
        "ops.3.contrast.p: must be a number, got True (bool)",
        "ops.3.contrast.extra: unknown key",
        "ops.4.gamma.gamma: missing (required)",
        "ops.5.synonym_replace: text op not allowed in a policy of modality 'image'",
        "colour: unknown key",
    ):
        assert expected in message
    assert len(info.value.problems) == 9


def test_duplicate_ops_and_too_many_sampled_ops_are_rejected() -> None:
    # Prepare
    raw = Policy(ops=(Rotate(),)).to_dict()
    raw["ops"].append({"op": "rotate", "p": 0.2, "limit": 5})
    raw["sampling"] = {"kind": "randaugment", "num_ops": 3, "magnitude": 9}

    # Execute / Assert
    with pytest.raises(PolicyError, match=r"ops\.1\.rotate: duplicate op.*sampling\.num_ops: must be <= the number of ops \(2\), got 3"):
        Policy.from_dict(raw)


def test_sampling_may_be_left_out_and_defaults_to_null() -> None:
    # Prepare
    raw = Policy.default().to_dict()
    del raw["sampling"]

    # Execute
    policy = Policy.from_json(json.dumps(raw))

    # Assert: the same policy; still written out, for readers that require it
    assert policy == Policy.default()
    assert policy.sampling is None
    assert policy.to_dict()["sampling"] is None


@pytest.mark.parametrize(
    ("drop", "add", "expected"),
    [
        ("ops", {}, ["ops: missing (required)"]),
        ("modality", {}, ["modality: missing (required)"]),
        ("schema_version", {"extra": 1},
         ["extra: unknown key (allowed: schema_version, modality, ops, sampling",
          "schema_version: missing (required)"]),
    ],
)
def test_other_top_level_keys_stay_strict(drop: str, add: dict, expected: list[str]) -> None:
    # Prepare: a policy without sampling, so that key's absence is not what fails
    raw = {key: value for key, value in Policy.default().to_dict().items()
           if key not in (drop, "sampling")}
    raw.update(add)

    # Execute
    with pytest.raises(PolicyError) as info:
        Policy.from_dict(raw)

    # Assert: exactly the expected problems (a missing key is reported once)
    assert len(info.value.problems) == len(expected)
    for problem, start in zip(sorted(info.value.problems), sorted(expected), strict=True):
        assert problem.startswith(start)


@pytest.mark.parametrize("border", ["reflect", "constant", "edge"])
def test_border_round_trips_and_defaults_to_reflect(border: str) -> None:
    # Prepare
    policy = Policy(ops=(Rotate(p=1.0),), border=border)
    raw = policy.to_dict()
    without = {key: value for key, value in raw.items() if key != "border"}

    # Execute
    back = Policy.from_json(policy.to_json())
    defaulted = Policy.from_dict(without)

    # Assert: written out, read back; a policy without the key reflects
    assert raw["border"] == border and back == policy
    assert defaulted.border == "reflect" and raw["schema_version"] == 1


def test_bad_border_is_listed_with_the_other_problems() -> None:
    # Prepare
    raw = {**Policy.default().to_dict(), "border": "wrap"}
    raw["ops"][0]["limit"] = 400

    # Execute
    with pytest.raises(PolicyError) as info:
        Policy.from_dict(raw)

    # Assert
    assert sorted(info.value.problems) == [
        "border: must be one of reflect, constant, edge, got 'wrap' (str)",
        "ops.0.rotate.limit: must be in [0, 180], got 400",
    ]
    with pytest.raises(PolicyError, match=r"border: must be one of reflect, constant, edge, got None"):
        Policy(border=None)  # type: ignore[arg-type]


def test_unknown_schema_version_is_refused() -> None:
    # Prepare
    raw = Policy.default().to_dict()
    raw["schema_version"] = 2

    # Execute / Assert
    with pytest.raises(PolicyError, match=r"schema_version: unsupported version 2 \(this fedaug reads version 1\)"):
        Policy.from_json(json.dumps(raw))


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        ("{not json", r"policy: not valid JSON"),
        ('{"schema_version": 1, "modality": "image", "ops": [], "sampling": NaN}', r"NaN is not allowed"),
        ('{"schema_version": 1, "schema_version": 1}', r"duplicate key 'schema_version'"),
        ("[1, 2]", r"policy: must be an object"),
        (b"\xff\xfe", r"not valid JSON"),
        ("[" * 60_000, r"policy: not valid JSON"),
        ("[" * 70_000, r"policy: JSON text too long"),
        (None, r"must be a JSON string"),
    ],
)
def test_from_json_raises_only_policy_error(wire: object, match: str) -> None:
    # Execute / Assert
    with pytest.raises(PolicyError, match=match):
        Policy.from_json(wire)  # type: ignore[arg-type]


def test_python_construction_is_validated_too() -> None:
    # Execute / Assert
    with pytest.raises(PolicyError, match=r"rotate\.limit: must be in \[0, 180\], got -1"):
        Rotate(limit=-1)
    with pytest.raises(PolicyError, match=r"sampling\.magnitude: must be in \[0, 30\], got 31"):
        Sampling("randaugment", num_ops=1, magnitude=31)
