"""The class-conditional diffusion generator: model, DP training, sampling."""

from fedaug.generator.model import (
    GENERATOR_FILE,
    GeneratorConfig,
    build_sample_scheduler,
    build_train_scheduler,
    build_unet,
    load_generator,
    save_generator,
)
from fedaug.generator.sample import make_grid, sample_images, to_uint8, write_sample_grid
from fedaug.generator.train import (
    TrainOutcome,
    diffusion_loss,
    per_example_grads,
    sample_rate_for,
    train_dp,
    train_nondp,
)

__all__ = [
    "GENERATOR_FILE",
    "GeneratorConfig",
    "build_sample_scheduler",
    "build_train_scheduler",
    "build_unet",
    "load_generator",
    "save_generator",
    "make_grid",
    "sample_images",
    "to_uint8",
    "write_sample_grid",
    "TrainOutcome",
    "diffusion_loss",
    "per_example_grads",
    "sample_rate_for",
    "train_dp",
    "train_nondp",
]
