"""FedaugPipeline: a saved model folder loads and samples as a diffusers pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    ImagePipelineOutput,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)
from PIL import Image

from fedaug.config import PREDICTION_TYPES
from fedaug.errors import ConfigError
from fedaug.generator.model import (
    GeneratorConfig,
    build_train_scheduler,
    build_unet,
    diffusion_target,
    load_generator,
    save_generator,
)
from fedaug.generator.pipeline import FedaugPipeline, read_class_names
from fedaug.generator.sample import sample_images

NAMES = ["benign", "malignant", "normal"]


def _cfg(prediction: str = "sample") -> GeneratorConfig:
    return GeneratorConfig(image_size=8, channels=1, num_classes=3, block_out_channels=(8, 16),
                           prediction_type=prediction)


def _saved(tmp_path, prediction: str = "sample", class_names=NAMES):
    cfg = _cfg(prediction)
    torch.manual_seed(0)
    unet, sched = build_unet(cfg), build_train_scheduler(cfg)
    save_generator(tmp_path / "global", unet, sched, cfg, class_names=class_names)
    return tmp_path / "global", unet, sched


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_saved_generator_loads_and_samples_as_a_diffusers_pipeline(tmp_path, prediction):
    # Prepare: a folder written by save_generator, as the server writes global/
    folder, _, _ = _saved(tmp_path, prediction)
    # Execute
    pipe = FedaugPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(class_labels=[0, 1], num_inference_steps=2)
    # Assert: the model's prediction type, DDIM as sampler, PIL images of the model's size
    assert isinstance(out, ImagePipelineOutput)
    assert pipe.config.prediction_type == prediction
    assert pipe.config.class_names == NAMES
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert len(out.images) == 2
    assert all(isinstance(im, Image.Image) and im.size == (8, 8) and im.mode == "L"
               for im in out.images)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "FedaugPipeline"
    assert index["prediction_type"] == prediction and index["class_names"] == NAMES


def test_output_types_tuples_and_class_names(tmp_path):
    # Prepare
    folder, _, _ = _saved(tmp_path)
    pipe = FedaugPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)

    def run(**kw):
        return pipe(num_inference_steps=2, generator=torch.Generator().manual_seed(3), **kw)

    # Execute
    pt = run(class_labels=["malignant", 0], output_type="pt").images
    as_np = run(class_labels=[1, "benign"], output_type="np").images
    (as_tuple,) = run(class_labels=torch.tensor([1, 0]), output_type="np", return_dict=False)
    every_class = run(output_type="np").images
    # Assert: names and indices are the same labels; np is pt channels-last, in [0, 1]
    assert pt.shape == (2, 1, 8, 8) and float(pt.min()) >= 0 and float(pt.max()) <= 1
    assert as_np.shape == (2, 8, 8, 1) and as_np.dtype == np.float32
    np.testing.assert_allclose(as_np, pt.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(as_tuple, as_np)
    assert every_class.shape == (3, 8, 8, 1)
    assert pipe.get_label_ids(["normal", 1]) == [2, 1]
    with pytest.raises(ConfigError, match="benign, malignant, normal"):
        run(class_labels=["cat"])
    with pytest.raises(ConfigError, match=r"\[0, 2\]"):
        run(class_labels=[3])
    with pytest.raises(ConfigError, match="output_type"):
        run(output_type="latent")


def test_pipeline_and_sample_images_run_the_same_loop(tmp_path):
    # Prepare: an epsilon model (its DDIM steps depend on the UNet, not just x0)
    folder, unet, sched = _saved(tmp_path, "epsilon")
    pipe = FedaugPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    # Execute: the same seed through both
    via_pipe = pipe(class_labels=[0, 1, 2], num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(5)).images
    via_sampler = sample_images(unet, sched, [0, 1, 2], num_inference_steps=3, seed=5)
    # Assert
    torch.testing.assert_close(via_pipe, (via_sampler + 1) / 2, atol=1e-6, rtol=0)


class _OracleUNet(torch.nn.Module):
    """What a perfectly trained UNet outputs for one known clean image x0 (at fractional
    timesteps too, with sigma interpolated as Euler-type schedulers interpolate it)."""

    def __init__(self, x0: torch.Tensor, alphas: torch.Tensor, prediction: str) -> None:
        super().__init__()
        self.x0, self.alphas, self.prediction = x0, alphas, prediction
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = type("Config", (), {"sample_size": x0.shape[-1],
                                          "in_channels": x0.shape[1], "num_class_embeds": 1})

    device = property(lambda self: self.anchor.device)
    dtype = property(lambda self: self.anchor.dtype)

    def forward(self, x_t, t, class_labels=None):
        t = torch.as_tensor(t, dtype=torch.float32)
        sigmas = ((1 - self.alphas) / self.alphas).sqrt()
        lo = t.floor().long()
        sigma = torch.lerp(sigmas[lo], sigmas[(lo + 1).clamp(max=len(sigmas) - 1)], t - lo)
        a = 1 / (1 + sigma * sigma)
        noise = (x_t - a.sqrt() * self.x0) / (1 - a).sqrt()
        return type("Out", (), {"sample": diffusion_target(self.prediction, self.x0, noise, a)})


FITTING = [DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler,
           EulerDiscreteScheduler, HeunDiscreteScheduler, LMSDiscreteScheduler]


@pytest.mark.parametrize("scheduler_class", FITTING, ids=lambda c: c.__name__)
@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_every_fitting_scheduler_lands_on_what_a_perfect_unet_predicts(prediction,
                                                                        scheduler_class):
    # Prepare: the stock scheduler made from the training schedule's config (whose
    # prediction type is the model's, "edm" included)
    train = build_train_scheduler(GeneratorConfig(image_size=8, channels=1, num_classes=1,
                                                  prediction_type=prediction))
    x0 = torch.rand((2, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9
    scheduler = scheduler_class.from_config(train.config)
    pipe = FedaugPipeline(_OracleUNet(x0, train.alphas_cumprod.float(), prediction), scheduler,
                          prediction_type=prediction)
    pipe.set_progress_bar_config(disable=True)
    # Execute
    images = pipe(class_labels=[0, 0], num_inference_steps=10, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    # Assert: every step's denoised guess is x0, so the sampler ends on it; the pipeline's
    # scheduler keeps its own config
    torch.testing.assert_close(images * 2 - 1, x0, atol=2e-3, rtol=0)
    assert pipe.scheduler is scheduler
    assert scheduler.config.prediction_type == prediction


def test_diffusers_generic_loader_fails_with_the_documented_error(tmp_path):
    # Prepare
    folder, _, _ = _saved(tmp_path)
    # Execute / Assert: diffusers looks _class_name up among its own classes only; the
    # pipeline module documents it and FedaugPipeline.from_pretrained
    with pytest.raises(AttributeError, match="has no attribute FedaugPipeline"):
        DiffusionPipeline.from_pretrained(folder)
    import fedaug.generator.pipeline as module

    assert "DiffusionPipeline.from_pretrained" in module.__doc__
    assert "FedaugPipeline.from_pretrained" in module.__doc__


def test_class_names_come_from_the_model_card_when_the_index_has_none(tmp_path):
    # Prepare: the server writes the card (with "classes") after save_generator
    folder, _, _ = _saved(tmp_path, class_names=None)
    (folder / "model_card.json").write_text(json.dumps({"classes": NAMES}))
    # Execute
    pipe = FedaugPipeline.from_pretrained(folder)
    # Assert
    assert json.loads((folder / "model_index.json").read_text())["class_names"] is None
    assert pipe.class_names == NAMES
    assert read_class_names(folder, 3) == NAMES
    assert read_class_names(folder, 4) == ["0", "1", "2", "3"]  # wrong count: indices


def test_folders_from_before_model_index_still_load(tmp_path):
    # Prepare: a folder as earlier fedaug versions wrote it (no model_index.json)
    folder, unet, _ = _saved(tmp_path, "v_prediction")
    (folder / "model_index.json").unlink()
    (folder / "model_card.json").write_text(json.dumps({"classes": NAMES}))
    # Execute
    loaded_unet, sched, config = load_generator(folder)
    pipe = FedaugPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    # Assert
    assert config.prediction_type == "v_prediction" and isinstance(sched, DDPMScheduler)
    for a, b in zip(unet.state_dict().values(), loaded_unet.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    assert pipe.config.prediction_type == "v_prediction" and pipe.class_names == NAMES
    assert len(pipe(class_labels=["normal"], num_inference_steps=2).images) == 1


def test_save_generator_refuses_class_names_of_the_wrong_count(tmp_path):
    cfg = _cfg()
    with pytest.raises(ConfigError, match="3 classes"):
        save_generator(tmp_path / "g", build_unet(cfg), build_train_scheduler(cfg), cfg,
                       class_names=["a", "b"])


def test_a_model_with_a_null_class_samples_guided_by_default(tmp_path):
    # Prepare: a model trained with label dropout (a null class) and guidance 2 as its default
    cfg = GeneratorConfig(image_size=8, channels=1, num_classes=3, block_out_channels=(8, 16),
                          label_dropout=0.1, guidance_scale=2.0)
    torch.manual_seed(0)
    unet, sched = build_unet(cfg), build_train_scheduler(cfg)
    save_generator(tmp_path / "global", unet, sched, cfg, class_names=NAMES)
    # Execute
    pipe = FedaugPipeline.from_pretrained(tmp_path / "global")
    pipe.set_progress_bar_config(disable=True)
    default = pipe(class_labels=[0, 2], num_inference_steps=3, output_type="pt",
                   generator=torch.Generator().manual_seed(1)).images
    plain = pipe(class_labels=[0, 2], num_inference_steps=3, output_type="pt",
                 generator=torch.Generator().manual_seed(1), guidance_scale=1.0).images
    # Assert: three classes (the null class is not one), the model's guidance by default,
    # the same loop as sample_images
    assert pipe.class_names == NAMES and pipe.num_classes == 3 and pipe.null_label == 3
    assert pipe.config.guidance_scale == 2.0
    assert not torch.allclose(default, plain)
    ref = sample_images(unet, sched, [0, 2], num_inference_steps=3, seed=1,
                        guidance_scale=2.0, null_label=3)
    torch.testing.assert_close(default, (ref + 1) / 2, atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="Class label 3"):
        pipe(class_labels=[3], num_inference_steps=2)


def test_a_model_without_a_null_class_refuses_guidance(tmp_path):
    folder, _, _ = _saved(tmp_path)
    pipe = FedaugPipeline.from_pretrained(folder)
    assert pipe.null_label is None and pipe.config.guidance_scale == 1.0
    with pytest.raises(ConfigError, match="no null class"):
        pipe(class_labels=[0], num_inference_steps=2, guidance_scale=2.0)
