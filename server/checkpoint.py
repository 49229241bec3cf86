"""The published global model: a diffusers folder plus a model card, written atomically."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord

from shared.atomic import atomic_dir
from shared.generator import GeneratorConfig, build_train_scheduler, build_unet, save_generator

__all__ = ["write_global", "read_model_card", "update_model_card", "MODEL_CARD"]

MODEL_CARD = "model_card.json"


def write_global(folder: str | Path, arrays: ArrayRecord, *, gen_config: GeneratorConfig,
                 card: dict[str, Any]) -> Path:
    """Replace ``folder`` (e.g. ``OUT/global``) in one step with the new model and card.

    The folder loads with ``UNet2DModel.from_pretrained(folder, subfolder="unet")`` and
    ``DDPMScheduler.from_pretrained(folder, subfolder="scheduler")``.
    """
    unet = build_unet(gen_config)
    unet.load_state_dict(arrays.to_torch_state_dict())
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        save_generator(tmp, unet, build_train_scheduler(gen_config), gen_config)
        full = {"format": "fedaug-model-card", "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **card, "generator": gen_config.to_dict(),
                "parameters": int(sum(p.numel() for p in unet.parameters()))}
        (tmp / MODEL_CARD).write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
    return folder


def read_model_card(folder: str | Path) -> dict[str, Any]:
    """The model card of a global model folder."""
    return json.loads((Path(folder) / MODEL_CARD).read_text(encoding="utf-8"))



def update_model_card(folder: str | Path, extra: dict[str, Any]) -> dict[str, Any]:
    """Merge ``extra`` into the model card of ``folder`` (atomic rewrite of the card)."""
    from shared.atomic import atomic_write_json

    card = read_model_card(folder)
    card.update(extra)
    atomic_write_json(Path(folder) / MODEL_CARD, card)
    return card
