"""The automatic training recipe: each ``"auto"`` run-config key follows from what the server
may know (image size, channels, number of classes, the run's epsilon), by the rules of
:data:`RULES`. docs/dp-recipe.md has the same table with the measurements behind each rule
(the figures live there, not here).

The server resolves the recipe once, before anything is sent to a site, so every site trains
with the same settings and the model card records which values a rule chose. A key given
explicitly (a scenario file, ``--set``, ``flwr run --run-config``) is never changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedaug.config import AUTO, RunConfig
from fedaug.data import ImageDataset, load_image_source
from fedaug.errors import ConfigError, FedaugError
from fedaug.generator.model import GeneratorConfig

__all__ = ["RULES", "rules_help", "SMALL_IMAGE", "RecipeFacts", "Rule", "resolve_for_data", "resolve_recipe",
           "resolve_run"]

#: Images up to this side (in pixels) take the small-image recipe.
SMALL_IMAGE = 16
#: The training noise levels of larger images (``noise-levels``): log sigma ~ N(0.5, 1.4^2).
FILM_NOISE_LEVELS = "lognormal:0.5:1.4"


@dataclass(frozen=True)
class RecipeFacts:
    """What the server knows before round 1: nothing a site has not released."""

    image_size: int
    channels: int
    num_classes: int
    epsilon: float

    @property
    def small(self) -> bool:
        return self.image_size <= SMALL_IMAGE


@dataclass(frozen=True)
class Rule:
    """One recipe key: its value from the facts (and the keys given explicitly), the rule in
    a few words, and why."""

    key: str
    value: Callable[[RecipeFacts, RunConfig], Any]
    summary: str
    reason: str


RULES: tuple[Rule, ...] = (
    Rule("prediction-type", lambda f, run: "edm", "edm",
         "EDM preconditioning beat x0-prediction at 8x8 and at 28x28"),
    Rule("batch-size", lambda f, run: 4096 if f.small else 512,
         "4096 (full batches) up to 16 px, 512 above",
         "small images: the noise-to-signal ratio depends on sqrt(d)/N, not on q, and full "
         "batches are cheapest; larger: Poisson batches of about 512 beat full batches"),
    Rule("local-epochs", lambda f, run: 0.0 if run.local_steps != AUTO else 1.0,
         "1, or 0 when local-steps is given",
         "one expected pass over a site's data per round: a large site takes several "
         "subsampled steps, a small one a full batch"),
    Rule("local-steps", lambda f, run: 1, "1",
         "one step per round where local-epochs is 0"),
    Rule("num-server-rounds", lambda f, run: 60 if f.small else 20,
         "60 up to 16 px, 20 above",
         "60 beat 30 and 100 at 8x8; at 28x28, 30 did not beat 20 on validation data"),
    Rule("warmup-steps", lambda f, run: 1000 if f.small else 300,
         "1000 up to 16 px, 300 above",
         "server pretraining on the DP central images and spread (post-processing, no "
         "budget): 1000 beat 300 at 8x8; at 28x28, on validation data, 600 steps gained 2 "
         "points of accuracy on PneumoniaMNIST at epsilon 10 (not on its test split) and "
         "lost 4 points of AUC at epsilon 1 and on BreastMNIST; 1000 on the central images "
         "alone had not beaten 300"),
    Rule("public-steps", lambda f, run: 300 if _public(f) else 0,
         "300 for grayscale images above 16 px at epsilon > 1, else 0",
         "server pretraining on patches of public photographs (no site data, no budget) "
         "before the warm start: on 28x28 films at epsilon 10 (validation, six data "
         "seeds) 300 steps raised the AUC 0.4 point and the balanced accuracy 1 point "
         "over none, at 2 points less accuracy; 600 steps gave the same AUC and balanced "
         "accuracy with 2 points less accuracy than 300, at 45 s more; on BreastMNIST "
         "600 steps gave no AUC gain over six data seeds and 300 a lower one on three; "
         "at epsilon 1 one data seed's model collapsed to one class (AUC 0.55) with 600 "
         "steps, and 300 lost 1 point of mean AUC and 4 of accuracy; in RGB "
         "(colour-mapped BreastMNIST) "
         "it lost 6.5 points of AUC; not measured at 8x8"),
    Rule("noise-levels", lambda f, run: FILM_NOISE_LEVELS if f.epsilon > 1 and not f.small
         else "uniform",
         f"{FILM_NOISE_LEVELS} above 16 px at epsilon > 1, else uniform",
         "DP-SGD's gradient on higher noise levels (global shape, class) rather than fine "
         "detail: at 28x28 and epsilon 10 it beat uniform timesteps on validation data (EDM's "
         "lognormal:-1.2:1.2, lower levels, lost); at epsilon 1 uniform beat it (validation); "
         "at 8x8 no difference, uniform kept"),
    Rule("warmup-size", lambda f, run: f.image_size // 2 if f.epsilon <= 1 and not f.small
         else 0,
         "half the image size at epsilon <= 1 above 16 px, else the image size",
         "at epsilon <= 1, half-size class sums (a quarter of the pixels at the same noise) "
         "beat full-size ones on 28x28 films"),
    Rule("warmup-spread", lambda f, run: 0 if f.small else 8,
         "8 above 16 px, else 0",
         "pretraining on draws from the classes' DP low-resolution spread, not on one "
         "central image per class, beat the central images alone on 28x28 films at epsilon "
         "10 and at epsilon 1 (validation data); not measured at 8x8"),
    Rule("label-dropout", lambda f, run: 0.1 if _guided(f, run) else 0.0,
         "0.1 for grayscale images above 16 px at epsilon > 1 (or where guidance-scale "
         "is given), else 0",
         "trains a null class for classifier-free guidance; on 28x28 films at epsilon 10 "
         "(validation data, six data seeds) it kept AUC and balanced accuracy and, with "
         "guidance 2, halved the Frechet distance to the real films; 0.2 lost to 0.1; "
         "at epsilon 1 it lost 2-3 points of accuracy and 1-2.5 of AUC at every guidance "
         "scale; at 8x8 guidance lost; on colour-mapped (RGB) BreastMNIST it lost 9 "
         "points of AUC"),
    Rule("guidance-scale", lambda f, run: 2.0 if _guided(f, run) and run.label_dropout != 0
         else 1.0,
         "2 where label-dropout is above 0 by the rule above, else 1 (no guidance)",
         "28x28 films at epsilon 10, validation: synthetic films nearer the real ones "
         "(Frechet distance 0.3-1.2 against 1.9-2.7), the two classes' recalls nearer each "
         "other, TSTR accuracy 4 points higher at the same AUC and balanced accuracy; 3 "
         "called too many films pneumonia; at 8x8 (digits) 2 lost 8 points"),
)


def _public(facts: RecipeFacts) -> bool:
    """Public pretraining by the rules: grayscale images above 16 px at epsilon > 1."""
    return facts.epsilon > 1 and not facts.small and facts.channels == 1


def _guided(facts: RecipeFacts, run: RunConfig) -> bool:
    """Classifier-free guidance by the rules: grayscale images above 16 px at epsilon > 1,
    or where a guidance scale other than 1 is given (it needs the null class)."""
    given = run.guidance_scale
    if given != AUTO:
        return given != 1.0
    return facts.epsilon > 1 and not facts.small and facts.channels == 1


def resolve_recipe(run: RunConfig, facts: RecipeFacts) -> tuple[RunConfig, dict[str, Any]]:
    """``run`` with every ``"auto"`` key set by its rule, and ``{key: {value, rule}}`` for
    the keys a rule set (for the model card and the log)."""
    given = run.to_mapping()
    changes: dict[str, Any] = {}
    chosen: dict[str, Any] = {}
    for rule in RULES:
        if given[rule.key] == AUTO:
            changes[rule.key] = rule.value(facts, run)
            chosen[rule.key] = {"value": changes[rule.key], "rule": rule.reason}
    if not changes:
        return run, chosen
    return RunConfig.from_mapping({**given, **changes}, source="the automatic recipe"), chosen


def data_facts(run: RunConfig) -> tuple[int, int, tuple[str, ...]]:
    """Image size, channels and class names: from the run config, else from the data.

    A deployed server has no data: it must be given ``image-size``, ``channels`` and
    ``class-names``. In simulation they are read from the (shared) data source.
    """
    names = tuple(c.strip() for c in run.class_names.split(",") if c.strip())
    if run.image_size and run.channels and names:
        return run.image_size, run.channels, names
    try:
        data = load_image_source(run.data, split="train", size=run.image_size or None,
                                 seed=run.seed, labels=run.labels)
    except FedaugError as err:
        raise ConfigError(
            "The server could not work out the image size, channels and classes.",
            value=run.data,
            fix="Set run config image-size, channels and class-names (a deployed server "
            "has no data), or a data source the server can read in simulation.",
        ) from err
    size, _, channels = data.image_shape
    return size, channels, names or data.class_names


def resolve_run(run: RunConfig) -> tuple[RunConfig, GeneratorConfig, tuple[str, ...],
                                          dict[str, Any]]:
    """The resolved run config, the generator's shape, the class names, and what the
    automatic recipe chose (see :func:`resolve_recipe`)."""
    size, channels, names = data_facts(run)
    run, chosen = resolve_recipe(run, RecipeFacts(image_size=size, channels=channels,
                                                  num_classes=len(names), epsilon=run.epsilon))
    cfg = GeneratorConfig(image_size=size, channels=channels, num_classes=len(names),
                          block_out_channels=run.channels_tuple,
                          layers_per_block=run.layers_per_block,
                          prediction_type=run.prediction_type,
                          label_dropout=run.label_dropout, guidance_scale=run.guidance_scale)
    return run, cfg, names, chosen


def resolve_for_data(run: RunConfig, data: ImageDataset) -> RunConfig:
    """``run`` resolved for ``data``'s shape and classes, as the server resolves it for the
    federation (tools that work on one site's data: the DP audit, the benchmarks)."""
    size, _, channels = data.image_shape
    return resolve_recipe(run, RecipeFacts(image_size=size, channels=channels,
                                           num_classes=data.num_classes,
                                           epsilon=run.epsilon))[0]


def rules_help() -> str:
    """One line per rule, for ``--help``."""
    return "\n".join(f"  {r.key:<20} {r.summary}" for r in RULES)
