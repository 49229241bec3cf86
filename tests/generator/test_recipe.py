"""The automatic recipe: the rules of docs/dp-recipe.md, explicit keys always win."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from fedaug.config import AUTO, RunConfig
from fedaug.errors import ConfigError
from fedaug.generator.recipe import RULES, RecipeFacts, resolve_recipe, resolve_run

ROOT = Path(__file__).resolve().parents[2]
DIGITS = RecipeFacts(image_size=8, channels=1, num_classes=10, epsilon=10.0)
FILMS = RecipeFacts(image_size=28, channels=1, num_classes=2, epsilon=10.0)


def _resolved(facts: RecipeFacts, **given) -> RunConfig:
    run = RunConfig.from_mapping({"epsilon": facts.epsilon, **given}, source="test")
    return resolve_recipe(run, facts)[0]


def test_small_images_get_the_digits_recipe():
    run = _resolved(DIGITS)
    assert run.auto_keys == ()
    assert (run.prediction_type, run.batch_size, run.num_server_rounds, run.warmup_size,
            run.warmup_steps, run.warmup_spread, run.public_steps) == (
        "edm", 4096, 60, 0, 1000, 0, 0)
    # one full-batch step per round, as the digits study's recipe takes
    assert run.train_settings().steps_per_round(1.0) == 1


@pytest.mark.parametrize(("epsilon", "warmup_size", "spread", "public"),
                         [(10.0, 0, 8, 300), (1.0, 14, 8, 0)])
def test_films_get_the_recipe_measured_on_pneumoniamnist(epsilon, warmup_size, spread, public):
    run = _resolved(RecipeFacts(image_size=28, channels=1, num_classes=2, epsilon=epsilon))
    assert (run.prediction_type, run.batch_size, run.local_epochs, run.num_server_rounds,
            run.warmup_size, run.warmup_steps, run.warmup_spread, run.public_steps) == (
        "edm", 512, 1.0, 20, warmup_size, 300, spread, public)
    # a 3,083-film site takes about one pass of ~512-film steps per round, a 44-film site one
    settings = run.train_settings()
    assert settings.steps_per_round(512 / 3083) == math.ceil(3083 / 512)
    assert settings.steps_per_round(1.0) == 1


def test_rgb_images_follow_the_same_rules_without_guidance_or_public_pretraining():
    rgb_facts = RecipeFacts(image_size=28, channels=3, num_classes=5, epsilon=10.0)
    rgb = _resolved(rgb_facts)
    # colour-mapped BreastMNIST lost AUC with guidance (validation): no null class for RGB;
    # public pretraining was not measured in RGB: off there
    assert (rgb.label_dropout, rgb.guidance_scale, rgb.public_steps) == (0.0, 1.0, 0)
    guided = {"label-dropout", "guidance-scale", "public-steps"}
    assert {k: v for k, v in rgb.to_mapping().items() if k not in guided} == \
        {k: v for k, v in _resolved(FILMS).to_mapping().items() if k not in guided}
    # a given guidance scale still gets its null class in RGB
    given = _resolved(rgb_facts, **{"guidance-scale": 2})
    assert (given.label_dropout, given.guidance_scale) == (0.1, 2.0)


def test_explicit_keys_are_never_changed():
    run, chosen = resolve_recipe(
        RunConfig.from_mapping({"prediction-type": "sample", "batch-size": 64,
                                "num-server-rounds": 3, "warmup-size": 0}, source="test"),
        FILMS)
    assert (run.prediction_type, run.batch_size, run.num_server_rounds, run.warmup_size) == \
        ("sample", 64, 3, 0)
    assert set(chosen) == {"local-epochs", "local-steps", "noise-levels", "warmup-spread",
                           "warmup-steps", "public-steps", "label-dropout", "guidance-scale"}
    assert all(chosen[k]["rule"] for k in chosen)


def test_given_local_steps_switch_off_local_epochs():
    run = _resolved(FILMS, **{"local-steps": 5})
    assert run.local_epochs == 0.0
    assert run.train_settings().steps_per_round(0.1) == 5


def test_an_unresolved_run_config_is_never_sent_to_sites():
    with pytest.raises(ConfigError, match="auto: .*batch-size") as err:
        RunConfig().train_settings()
    assert "resolve_run" in err.value.fix


def test_auto_or_a_value_nothing_else():
    assert RunConfig.from_mapping({"batch-size": "auto"}, source="t").batch_size == AUTO
    assert RunConfig.from_mapping({"batch-size": "128"}, source="t").batch_size == 128
    with pytest.raises(ConfigError, match='batch-size: must be a whole number or "auto"'):
        RunConfig.from_mapping({"batch-size": "big"}, source="t")
    with pytest.raises(ConfigError, match="batch-size: must be >= 1"):
        RunConfig.from_mapping({"batch-size": 0}, source="t")


def test_resolve_run_reads_the_shape_from_the_data():
    run, gen, names, chosen = resolve_run(RunConfig())
    assert (gen.image_size, gen.channels, gen.num_classes, gen.prediction_type) == \
        (8, 1, 10, "edm")
    assert len(names) == 10 and run.auto_keys == () and chosen


def test_every_rule_is_in_the_docs_table():
    doc = (ROOT / "docs" / "dp-recipe.md").read_text(encoding="utf-8")
    table = re.search(r"## The automatic recipe\n(.*?)\n## ", doc, re.S)
    assert table, "docs/dp-recipe.md has no 'The automatic recipe' section"
    for rule in RULES:
        assert f"`{rule.key}`" in table.group(1), rule.key
    assert {r.key for r in RULES} == {k for k, v in RunConfig().to_mapping().items()
                                      if v == AUTO}


def test_films_train_on_higher_noise_levels_and_digits_on_uniform_timesteps():
    assert _resolved(DIGITS).noise_levels == "uniform"
    assert _resolved(FILMS).noise_levels == "lognormal:0.5:1.4"
    # at epsilon 1 uniform timesteps won on the validation split
    films_eps1 = RecipeFacts(image_size=28, channels=1, num_classes=2, epsilon=1.0)
    assert _resolved(films_eps1).noise_levels == "uniform"
    assert _resolved(FILMS, **{"noise-levels": "uniform"}).noise_levels == "uniform"
    for bad in ("normal", "lognormal:0.5", "lognormal:x:1", "lognormal:0:0", "lognormal:0:-1"):
        with pytest.raises(ConfigError, match="noise-levels must be 'uniform' or"):
            RunConfig.from_mapping({"noise-levels": bad}, source="test")


def test_films_above_epsilon_one_train_a_null_class_and_sample_guided():
    films_eps1 = RecipeFacts(image_size=28, channels=1, num_classes=2, epsilon=1.0)
    assert (_resolved(FILMS).label_dropout, _resolved(FILMS).guidance_scale) == (0.1, 2.0)
    assert (_resolved(DIGITS).label_dropout, _resolved(DIGITS).guidance_scale) == (0.0, 1.0)
    assert (_resolved(films_eps1).label_dropout, _resolved(films_eps1).guidance_scale) == \
        (0.0, 1.0)
    # no null class: no guidance; a given guidance scale gets its null class
    off = _resolved(FILMS, **{"label-dropout": 0})
    assert (off.label_dropout, off.guidance_scale) == (0.0, 1.0)
    given = _resolved(DIGITS, **{"guidance-scale": 1.5})
    assert (given.label_dropout, given.guidance_scale) == (0.1, 1.5)
    assert _resolved(FILMS, **{"guidance-scale": 1}).label_dropout == 0.0
    # the generator carries both, to the sites and into the saved model
    run = RunConfig.from_mapping({"label-dropout": 0.2, "guidance-scale": 3}, source="t")
    gen = resolve_run(run)[1]
    assert (gen.label_dropout, gen.guidance_scale, gen.null_label) == (0.2, 3.0, 10)
    with pytest.raises(ConfigError, match="needs a null class"):
        resolve_run(RunConfig.from_mapping({"label-dropout": 0, "guidance-scale": 2},
                                           source="t"))
