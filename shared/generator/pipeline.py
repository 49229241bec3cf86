"""The generator as a diffusers pipeline, and the one denoising loop fedaug samples with.

A global model folder (``fedaug-out/global``) holds ``model_index.json`` naming
:class:`FedaugPipeline`, so::

    from fedaug.generator.pipeline import FedaugPipeline

    pipe = FedaugPipeline.from_pretrained("fedaug-out/global")
    images = pipe(class_labels=["benign", "malignant"], num_inference_steps=25).images

The pipeline's scheduler is DDIM (what ``fedaug generate`` samples with). Other diffusers
schedulers of the same noise schedule replace it, e.g.
``pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)``. The model's own
prediction type (``pipe.config.prediction_type``) decides how the UNet output is read,
whatever prediction type the scheduler's config carries: an ``"edm"`` model hands the
scheduler its denoised image as a ``"sample"`` prediction. So every prediction type, EDM's
included, samples with DDIM, DDPM, DPM-Solver++ (multistep and singlestep), UniPC, Euler,
Heun, LMS and LCM; PNDM, Euler-ancestral and KDPM2 read no ``"sample"`` output and fit
``"epsilon"`` and ``"v_prediction"`` models only; ``EDMEulerScheduler`` (another noise
parameterisation) fits none.

``diffusers.DiffusionPipeline.from_pretrained(folder)`` does not load these folders: diffusers
looks the ``_class_name`` of ``model_index.json`` up among its own classes (or in a Python file
inside the folder, which fedaug never writes: a model folder carries no code to run) and fails
with ``module diffusers has no attribute FedaugPipeline``. Import ``FedaugPipeline`` from
``fedaug.generator.pipeline`` and call its ``from_pretrained`` instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from inspect import signature
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from fedaug.config import DEFAULT_SAMPLE_STEPS, PREDICTION_TYPES
from fedaug.errors import ConfigError
from fedaug.generator.model import (
    GENERATOR_FILE,
    load_generator,
    scheduler_output,
    scheduler_prediction_type,
)

__all__ = ["FedaugPipeline", "denoise", "read_class_names", "read_class_prior", "PIPELINE_FILE"]

#: The file diffusers reads a pipeline's components and config from.
PIPELINE_FILE = "model_index.json"
_CARD = "model_card.json"
_OUTPUT_TYPES = ("pil", "np", "pt")


@torch.no_grad()
def denoise(
    unet: torch.nn.Module,
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    class_labels: torch.Tensor,
    *,
    prediction_type: str,
    num_inference_steps: int,
    generator: torch.Generator | list[torch.Generator] | None = None,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
    guidance_scale: float = 1.0,
    null_label: int | None = None,
) -> torch.Tensor:
    """Denoise ``noise`` (N, C, H, W) into images in about [-1, 1], one image per class label.

    ``prediction_type`` is what the UNet outputs (one of ``PREDICTION_TYPES``); ``scheduler``
    may carry any prediction type: when it is not the one :func:`scheduler_output` hands it,
    a copy of it that reads that type steps instead (``scheduler`` itself is left as it is).
    ``progress`` wraps the timesteps (e.g. ``tqdm``).

    Every step: the scheduler scales its sample to the UNet's input ``x_t`` (a no-op for DDIM
    and DDPM, the division by ``sqrt(sigma^2 + 1)`` for Euler-type schedulers), the UNet
    predicts, :func:`scheduler_output` turns an EDM output into the denoised image, and the
    scheduler takes its step.

    With a ``null_label`` and ``guidance_scale`` other than 1 (classifier-free guidance),
    the UNet also predicts for the null label in the same batch and the output is
    ``u + guidance_scale * (c - u)``; every prediction type's denoised image is affine in
    the output with weights summing to one, so guiding the output guides the image. A
    ``guidance_scale`` other than 1 without a ``null_label`` is refused.
    """
    guided = guidance_scale != 1.0
    if guided and null_label is None:
        raise ConfigError(f"Guidance scale {guidance_scale:g} needs a model with a null class; "
                          "this model has no null class, so it samples at 1.",
                          value=guidance_scale, fix="Leave the guidance scale out (or pass 1); "
                          "train with run config label-dropout > 0 to use guidance.")
    wanted = scheduler_prediction_type(prediction_type)
    if scheduler.config.get("prediction_type") != wanted:
        scheduler = type(scheduler).from_config(scheduler.config, prediction_type=wanted)
    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    alphas = scheduler.alphas_cumprod.to(device=noise.device, dtype=torch.float32)
    # only stochastic schedulers (DDPM, ancestral ones) take the generator
    extra = {"generator": generator} if "generator" in signature(scheduler.step).parameters \
        else {}
    x = noise * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    for t in progress(timesteps) if progress is not None else timesteps:
        x_t = scheduler.scale_model_input(x, t)
        if guided:
            both = unet(torch.cat([x_t, x_t]), t, class_labels=torch.cat(
                [class_labels, torch.full_like(class_labels, null_label)])).sample
            cond, uncond = both.chunk(2)
            output = uncond + guidance_scale * (cond - uncond)
        else:
            output = unet(x_t, t, class_labels=class_labels).sample
        output = scheduler_output(prediction_type, output, x_t, _alpha_at(alphas, t))
        x = scheduler.step(output, t, x, **extra).prev_sample
    return x


def _alpha_at(alphas_cumprod: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """The training schedule's ``alpha_cumprod`` at timestep ``t``; between two integer
    timesteps (Euler-type schedulers) its noise level ``sigma = sqrt((1 - a) / a)`` is
    interpolated linearly, as those schedulers interpolate their sigmas."""
    t = torch.as_tensor(t)
    if not t.is_floating_point() or bool(t == t.round()):
        return alphas_cumprod[t.long()]
    t = t.to(device=alphas_cumprod.device, dtype=torch.float32)
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    last = len(alphas_cumprod) - 1
    lo = t.floor().long().clamp(0, last)
    sigma = torch.lerp(sigmas[lo], sigmas[(lo + 1).clamp(max=last)], t - lo)
    return 1 / (1 + sigma * sigma)


def read_class_names(folder: str | Path, num_classes: int) -> list[str]:
    """The class names of a model folder: ``model_index.json``'s ``class_names``, else the
    model card's ``classes``, else ``"0"``, ``"1"``, ... (names of the wrong count are skipped)."""
    folder = Path(folder)
    for file, key in ((PIPELINE_FILE, "class_names"), (_CARD, "classes")):
        try:
            names = json.loads((folder / file).read_text(encoding="utf-8"))[key]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(names, list) and len(names) == num_classes:
            return [str(n) for n in names]
    return [str(i) for i in range(num_classes)]


def read_class_prior(folder: str | Path, num_classes: int) -> list[float] | None:
    """The class proportions of a model folder's card (``class-prior``: what the server
    derived from the sites' noised class counts), or None when the card has none (no warm
    start, an older model) or they do not fit ``num_classes``."""
    try:
        card = json.loads((Path(folder) / _CARD).read_text(encoding="utf-8"))
        prior = [float(p) for p in card["class-prior"]["proportions"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(prior) != num_classes or not all(np.isfinite(prior)) or min(prior) < 0 \
            or sum(prior) <= 0:
        return None
    return [p / sum(prior) for p in prior]


class FedaugPipeline(DiffusionPipeline):
    r"""Class-conditional image generation with a fedaug generator.

    Parameters
    ----------
    unet : UNet2DModel
        The class-conditional UNet (``num_class_embeds`` classes).
    scheduler : SchedulerMixin
        The sampler: DDIM when loaded from a model folder; the module docstring lists the
        others that fit (those of the training schedule's betas that read the prediction
        type :func:`~fedaug.generator.model.scheduler_prediction_type` gives).
    class_names : list of str, optional
        One name per class, so ``class_labels`` may name classes (``"malignant"``).
    prediction_type : str, optional
        What the UNet predicts: ``"sample"``, ``"epsilon"``, ``"v_prediction"`` or ``"edm"``
        (see :class:`~fedaug.generator.model.GeneratorConfig`); default: the scheduler's.
    guidance_scale : float (default: 1.0)
        The classifier-free guidance scale calls use unless they give one (1: none).
    null_label : int, optional
        The UNet's "no class" label (its last class embedding) where it was trained with
        label dropout; ``None``: no null class, so no guidance.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin,
                 class_names: list[str] | None = None, prediction_type: str | None = None,
                 guidance_scale: float = 1.0, null_label: int | None = None) -> None:
        super().__init__()
        if prediction_type is None:
            prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}.",
                              value=prediction_type)
        num = unet.config.num_class_embeds
        if null_label is not None:
            if num is None or null_label != num - 1:
                raise ConfigError("null_label must be the UNet's last class embedding.",
                                  value=null_label)
            num -= 1
        if class_names is not None:
            class_names = [str(n) for n in class_names]
            if num is not None and len(class_names) != num:
                raise ConfigError(f"class_names must name the UNet's {num} classes.",
                                  value=class_names)
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(class_names=class_names, prediction_type=prediction_type,
                                guidance_scale=float(guidance_scale), null_label=null_label)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any
                        ) -> FedaugPipeline:
        """Load a model folder (e.g. ``fedaug-out/global``), as diffusers loads any pipeline.

        A local folder written before fedaug wrote ``model_index.json`` loads too (UNet,
        DDIM scheduler and prediction type from its ``fedaug_generator.json``), and class
        names missing from ``model_index.json`` come from the folder's model card.
        """
        folder = Path(pretrained_model_name_or_path)
        local = folder.is_dir()
        if local and not (folder / PIPELINE_FILE).is_file() and (folder / GENERATOR_FILE).is_file():
            from diffusers import DDIMScheduler

            unet, scheduler, config = load_generator(folder)
            pipe = cls(unet, DDIMScheduler.from_config(scheduler.config),
                       prediction_type=config.prediction_type,
                       guidance_scale=config.guidance_scale, null_label=config.null_label)
        else:
            from diffusers.utils import is_accelerate_available

            # without accelerate, diffusers would warn that it cannot load with low memory
            kwargs.setdefault("low_cpu_mem_usage", is_accelerate_available())
            pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if local and pipe.config.class_names is None and pipe.unet.config.num_class_embeds:
            names = read_class_names(folder, pipe.num_classes)
            if not all(n == str(i) for i, n in enumerate(names)):
                pipe.register_to_config(class_names=names)
        return pipe

    @property
    def num_classes(self) -> int:
        """The model's classes (its class embeddings less the null class)."""
        return (self.unet.config.num_class_embeds or 1) - (self.null_label is not None)

    @property
    def null_label(self) -> int | None:
        """The null class's label (classifier-free guidance), ``None`` where there is none."""
        return self.config.get("null_label")

    @property
    def class_names(self) -> list[str]:
        """One name per class (``"0"``, ``"1"``, ... when the model has none)."""
        if self.config.class_names is not None:
            return list(self.config.class_names)
        return [str(i) for i in range(self.num_classes)]

    def get_label_ids(self, label: int | str | Sequence[int | str]) -> list[int]:
        """Class indices of class names or indices (as diffusers' ``DiTPipeline``)."""
        if isinstance(label, (str, int)) or not isinstance(label, Iterable):
            label = [label]
        names = self.class_names
        ids = []
        for item in label:
            if isinstance(item, torch.Tensor):
                item = item.item()
            if isinstance(item, str) and item in names:
                ids.append(names.index(item))
                continue
            if isinstance(item, (int, np.integer)) and not isinstance(item, bool) \
                    and 0 <= int(item) < len(names):
                ids.append(int(item))
                continue
            raise ConfigError(
                f"Class label {item!r} is neither a class index in [0, {len(names) - 1}] nor a "
                f"class name ({', '.join(names)}).", fix="Pass class indices or names.")
        return ids

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | Sequence[int | str] | torch.Tensor | None = None,
        num_inference_steps: int = DEFAULT_SAMPLE_STEPS,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        guidance_scale: float | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate one image per class label.

        Parameters
        ----------
        class_labels : int, str or sequence of them, optional
            Class indices or class names; default: one image of every class.
        num_inference_steps : int (default: 25)
            Denoising steps of the scheduler.
        generator : torch.Generator or list of them, optional
            For reproducible noise (one generator per image in a list).
        output_type : str (default: "pil")
            ``"pil"`` (list of PIL images), ``"np"`` (float array N, H, W, C in [0, 1]) or
            ``"pt"`` (float tensor N, C, H, W in [0, 1]).
        return_dict : bool (default: True)
            Return an ``ImagePipelineOutput`` (else the tuple ``(images,)``).
        guidance_scale : float, optional
            Classifier-free guidance scale (1: none); default: the model's own
            (``pipe.config.guidance_scale``). Needs a model trained with a null class.

        Examples
        --------
        >>> pipe = FedaugPipeline.from_pretrained("fedaug-out/global")
        >>> pipe(class_labels=[0, 1], generator=torch.manual_seed(0)).images[0].save("x.png")
        """
        if output_type not in _OUTPUT_TYPES:
            raise ConfigError(f"output_type must be one of {', '.join(_OUTPUT_TYPES)}.",
                              value=output_type)
        if class_labels is None:
            class_labels = list(range(len(self.class_names)))
        elif isinstance(class_labels, torch.Tensor):
            class_labels = class_labels.flatten().tolist()
        labels = self.get_label_ids(class_labels)
        if guidance_scale is None:
            guidance_scale = self.config.get("guidance_scale", 1.0)
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        device = self._execution_device
        noise = randn_tensor((len(labels), self.unet.config.in_channels, *size),
                             generator=generator, device=device, dtype=self.unet.dtype)
        image = denoise(self.unet, self.scheduler, noise,
                        torch.tensor(labels, dtype=torch.long, device=device),
                        prediction_type=self.config.prediction_type,
                        num_inference_steps=num_inference_steps, generator=generator,
                        progress=self.progress_bar, guidance_scale=guidance_scale,
                        null_label=self.null_label)
        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
