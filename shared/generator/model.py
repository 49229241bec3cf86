"""The class-conditional diffusion generator: a small diffusers UNet and its schedulers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from fedaug.config import PREDICTION_TYPES
from fedaug.errors import ConfigError, DataError

__all__ = [
    "GeneratorConfig",
    "build_unet",
    "build_train_scheduler",
    "build_sample_scheduler",
    "save_generator",
    "load_generator",
    "GENERATOR_FILE",
    "PREDICTION_TYPES",
    "diffusion_target",
    "forward_diffuse",
    "scheduler_output",
    "scheduler_prediction_type",
    "drop_labels",
]

GENERATOR_FILE = "fedaug_generator.json"
_FLAT = "generator-"


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything needed to rebuild the generator's UNet and noise schedule.

    Parameters
    ----------
    image_size : int
        Height and width the model works at (data is resized to it).
    channels : int
        Image channels (1 grayscale, 3 RGB).
    num_classes : int
        Number of classes; the UNet gets one learned class embedding per class.
    block_out_channels : tuple of int (default: (32, 64))
        Channels per UNet level; no attention blocks (they cost the most under DP-SGD on CPU,
        and Opacus's hook-based per-sample gradients are wrong after diffusers' attention).
    layers_per_block : int (default: 1)
        ResNet layers per level.
    num_train_timesteps : int (default: 1000)
        DDPM steps.
    beta_schedule : str (default: "squaredcos_cap_v2")
        DDPM beta schedule.
    prediction_type : str (default: "sample")
        What the UNet predicts: ``"sample"`` (the clean image x0), ``"epsilon"`` (the noise)
        ``"v_prediction"`` (``sqrt(a) * noise - sqrt(1 - a) * x0``, whose implied x0 is
        close to the noisy input at low noise and to the prediction at high noise) or
        ``"edm"`` (EDM's preconditioning, see :func:`diffusion_target`). Under
        DP-SGD x0-prediction learns far faster on small data than epsilon (see
        docs/dp-recipe.md).
    label_dropout : float (default: 0.0)
        Classifier-free guidance's training half: the probability with which each training
        example's class label is replaced by an extra "no class" label (the UNet then has
        ``num_classes + 1`` class embeddings, the last one that null label). 0: no null
        class.
    guidance_scale : float (default: 1.0)
        Classifier-free guidance's sampling half, the default of every sampler of this
        model: the output is ``u + w * (c - u)`` for the class-conditional output ``c`` and
        the null label's ``u``; 1 samples the class-conditional model as it is, larger values
        push samples away from the unconditional model. Needs ``label_dropout > 0``.
    """

    image_size: int
    channels: int
    num_classes: int
    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "sample"
    label_dropout: float = 0.0
    guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.label_dropout < 1.0:
            problems.append(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if not 0.0 <= self.guidance_scale <= 100.0:
            problems.append(f"guidance_scale must be in [0, 100], got {self.guidance_scale}")
        elif self.guidance_scale != 1.0 and self.label_dropout <= 0.0:
            problems.append(f"guidance_scale {self.guidance_scale} needs a null class "
                            "(label_dropout > 0); a model trained without one samples at 1")
        levels = len(self.block_out_channels)
        if self.prediction_type not in PREDICTION_TYPES:
            problems.append(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, "
                            f"got {self.prediction_type!r}")
        if self.channels not in (1, 3):
            problems.append(f"channels must be 1 or 3, got {self.channels}")
        if self.num_classes < 1:
            problems.append(f"num_classes must be >= 1, got {self.num_classes}")
        if self.image_size % (2 ** (levels - 1)):
            problems.append(
                f"image_size {self.image_size} must be divisible by 2**{levels - 1} for "
                f"{levels} UNet levels"
            )
        groups = _norm_groups(self.block_out_channels)
        if any(c % groups for c in self.block_out_channels):
            problems.append(f"block_out_channels {self.block_out_channels} must share a "
                            "group-norm group count")
        if problems:
            raise ConfigError("Invalid generator configuration: " + "; ".join(problems) + ".",
                              fix="Pick channels that are multiples of 4 and a size divisible "
                              "by 2**(levels-1).")

    @property
    def null_label(self) -> int | None:
        """The null class's label (``num_classes``) where the model has one, else ``None``."""
        return self.num_classes if self.label_dropout > 0 else None

    @property
    def guidance(self) -> dict[str, Any]:
        """The model's own classifier-free guidance, as keyword arguments of
        :func:`~fedaug.generator.sample.sample_images` and
        :func:`~fedaug.generator.pipeline.denoise`."""
        return {"guidance_scale": self.guidance_scale, "null_label": self.null_label}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GeneratorConfig:
        d = dict(d)
        d["block_out_channels"] = tuple(d["block_out_channels"])
        return cls(**d)

    def to_flat(self) -> dict[str, int | str]:
        """Scalar ``generator-*`` keys for a Flower ConfigRecord (which holds no nesting)."""
        d = self.to_dict()
        d["block_out_channels"] = ",".join(str(c) for c in self.block_out_channels)
        return {_FLAT + k.replace("_", "-"): v for k, v in d.items()}

    @classmethod
    def from_flat(cls, mapping: Any) -> GeneratorConfig:
        """Inverse of :meth:`to_flat`; ignores other keys of the record."""
        d = {k[len(_FLAT):].replace("-", "_"): v for k, v in dict(mapping).items()
             if k.startswith(_FLAT)}
        try:
            d["block_out_channels"] = tuple(int(c) for c in str(d["block_out_channels"]).split(","))
            return cls(**d)
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"The server's generator config is incomplete or malformed: {err}.",
                              value=d, fix="Use matching fedaug versions on server and sites.") from err


#: The data scale of EDM's preconditioning (Karras et al. 2022, "Elucidating the Design Space
#: of Diffusion-Based Generative Models"), its value for images in [-1, 1].
EDM_SIGMA_DATA = 0.5


def _edm_scales(alpha_cumprod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM's c_skip and c_out at ``x_t = sqrt(a) x0 + sqrt(1 - a) noise``, written for x_t
    (EDM's x0 + sigma * noise is x_t / sqrt(a), sigma^2 = (1 - a) / a): the denoised image is
    ``skip * x_t + out * F``; also returns ``sqrt(1 - a + sigma_data^2 a)``."""
    a = alpha_cumprod
    sd = EDM_SIGMA_DATA
    norm = (1 - a + sd * sd * a).sqrt()
    return sd * sd * a.sqrt() / norm ** 2, sd * (1 - a).sqrt() / norm, norm


def forward_diffuse(x0: torch.Tensor, noise: torch.Tensor, alpha_cumprod: torch.Tensor
                    ) -> torch.Tensor:
    """The noisy image ``x_t = sqrt(a) x0 + sqrt(1 - a) noise`` (``a`` broadcastable): the
    one forward-diffusion formula of training, per-example gradients and evaluation."""
    return alpha_cumprod.sqrt() * x0 + (1 - alpha_cumprod).sqrt() * noise


def diffusion_target(prediction_type: str, x0: torch.Tensor, noise: torch.Tensor,
                     alpha_cumprod: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to output for ``x_t = sqrt(a) x0 + sqrt(1 - a) noise``
    (``alpha_cumprod`` = a, broadcastable), as diffusers' schedulers read it after
    :func:`scheduler_output`.

    ``"edm"``: the UNet output F gives ``x0 = c_skip * x_t + c_out * F`` with EDM's
    ``sigma_data`` = 0.5, so the denoised image is mostly the network's guess at high noise and
    mostly the input at low noise; the target ``(x0 - c_skip x_t) / c_out`` has unit scale at
    every noise level. With ``sigma_data`` = 1 the same formula is minus v-prediction, whose
    hand-over from guess to input sits at a four times higher noise variance.
    """
    if prediction_type == "sample":
        return x0
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return alpha_cumprod.sqrt() * noise - (1 - alpha_cumprod).sqrt() * x0
    if prediction_type == "edm":
        a, sd = alpha_cumprod, EDM_SIGMA_DATA
        _, _, norm = _edm_scales(a)
        return ((1 - a).sqrt() * x0 / sd - sd * a.sqrt() * noise) / norm
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def scheduler_output(prediction_type: str, output: torch.Tensor, x_t: torch.Tensor,
                     alpha_cumprod: torch.Tensor) -> torch.Tensor:
    """The UNet output as a diffusers scheduler of :func:`scheduler_prediction_type` reads it:
    the output itself for diffusers' own types, the denoised image for ``"edm"``."""
    if prediction_type != "edm":
        return output
    skip, out, _ = _edm_scales(alpha_cumprod)
    return skip * x_t + out * output


def scheduler_prediction_type(prediction_type: str) -> str:
    """The diffusers ``prediction_type`` a sampling scheduler needs for :func:`scheduler_output`."""
    return "sample" if prediction_type == "edm" else prediction_type


def _norm_groups(channels: tuple[int, ...]) -> int:
    """Most group-norm groups (up to 8) that divide every level with >= 2 channels a group."""
    for g in (8, 4, 2, 1):
        if all(c % g == 0 and c // g >= 2 for c in channels):
            return g
    return 1


def build_unet(config: GeneratorConfig) -> UNet2DModel:
    """A class-conditional ``UNet2DModel`` without attention, sized for CPU."""
    levels = len(config.block_out_channels)
    return UNet2DModel(
        sample_size=config.image_size,
        in_channels=config.channels,
        out_channels=config.channels,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        add_attention=False,
        norm_num_groups=_norm_groups(config.block_out_channels),
        num_class_embeds=config.num_classes + (config.null_label is not None),
        num_train_timesteps=config.num_train_timesteps,
    )


def drop_labels(labels: torch.Tensor, label_dropout: float, null_label: int | None, *,
                generator: torch.Generator) -> torch.Tensor:
    """``labels`` with each one replaced by ``null_label`` with probability
    ``label_dropout`` (one uniform draw per label from ``generator``); unchanged (and no
    draw) where there is no null class."""
    if null_label is None or label_dropout <= 0 or labels.numel() == 0:
        return labels
    u = torch.rand(labels.shape, generator=generator, device=labels.device)
    return torch.where(u < label_dropout, torch.full_like(labels, null_label), labels)


def build_train_scheduler(config: GeneratorConfig) -> DDPMScheduler:
    """The DDPM noise schedule used for training (and for 1000-step reference sampling)."""
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        clip_sample=True,
    )


def build_sample_scheduler(train_scheduler: DDPMScheduler) -> DDIMScheduler:
    """The fast sampler (DDIM), sharing the training schedule's betas."""
    return DDIMScheduler.from_config(train_scheduler.config)


def save_generator(folder: str | Path, unet: UNet2DModel, scheduler: DDPMScheduler,
                   config: GeneratorConfig, *, class_names: Sequence[str] | None = None) -> None:
    """Write a diffusers pipeline folder: ``unet/``, ``scheduler/`` (the training schedule),
    our config file and ``model_index.json``, which names
    :class:`~fedaug.generator.pipeline.FedaugPipeline` with a DDIM sampler, the class names
    (one per class; ``None`` leaves them to the folder's model card) and the prediction
    type, so ``FedaugPipeline.from_pretrained(folder)`` loads it."""
    import diffusers

    if class_names is not None:
        class_names = [str(n) for n in class_names]
        if len(class_names) != config.num_classes:
            raise ConfigError(f"class_names must name the generator's {config.num_classes} "
                              "classes.", value=class_names)
    folder = Path(folder)
    unet.save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")
    (folder / GENERATOR_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n",
                                         encoding="utf-8")
    # What FedaugPipeline(...).save_config writes (fedaug.generator.pipeline imports this
    # module, so it is written here rather than through the class).
    index = {"_class_name": "FedaugPipeline", "_diffusers_version": diffusers.__version__,
             "class_names": class_names, "prediction_type": config.prediction_type,
             "guidance_scale": config.guidance_scale, "null_label": config.null_label,
             "scheduler": ["diffusers", "DDIMScheduler"], "unet": ["diffusers", "UNet2DModel"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n",
                                             encoding="utf-8")


def load_generator(folder: str | Path, *, device: str | torch.device = "cpu"
                   ) -> tuple[UNet2DModel, DDPMScheduler, GeneratorConfig]:
    """Load what :func:`save_generator` wrote (e.g. ``OUT/global``)."""
    folder = Path(folder)
    cfg_path = folder / GENERATOR_FILE
    if not (folder / "unet").is_dir() or not cfg_path.is_file():
        raise DataError(
            f"{folder} is not a fedaug generator folder (needs unet/, scheduler/ and "
            f"{GENERATOR_FILE}).",
            fix="Pass the global/ folder a `fedaug simulate` or server run wrote, e.g. "
            "fedaug-out/global.",
        )
    config = GeneratorConfig.from_dict(json.loads(cfg_path.read_text(encoding="utf-8")))
    unet = UNet2DModel.from_pretrained(folder, subfolder="unet", low_cpu_mem_usage=False).to(device)
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    unet.eval()
    return unet, scheduler, config
