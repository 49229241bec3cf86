"""The published global model: a diffusers folder plus a model card, written atomically."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord

from fedaug.atomic import atomic_dir
from fedaug.errors import ConfigError
from fedaug.generator import GeneratorConfig, build_train_scheduler, build_unet, save_generator
from fedaug.generator.card import MODEL_CARD

__all__ = ["write_global", "keep_round_checkpoint", "save_server_state",
           "load_server_state", "holds_a_run", "MODEL_CARD", "STATE_FILE"]

STATE_FILE = "server-state.pt"
POLICY_FILE = "policy.json"


def write_global(folder: str | Path, arrays: ArrayRecord, *, gen_config: GeneratorConfig,
                 card: dict[str, Any]) -> Path:
    """Replace ``folder`` (e.g. ``OUT/global``) in one step with the new model and card.

    The folder loads with ``FedaugPipeline.from_pretrained(folder)``, or its parts with
    ``UNet2DModel.from_pretrained(folder, subfolder="unet")`` and
    ``DDPMScheduler.from_pretrained(folder, subfolder="scheduler")``; ``policy.json`` beside
    them is the global augmentation policy.
    """
    unet = build_unet(gen_config)
    unet.load_state_dict(arrays.to_torch_state_dict())
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        save_generator(tmp, unet, build_train_scheduler(gen_config), gen_config,
                       class_names=card.get("classes"))
        full = {"format": "fedaug-model-card", "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **card, "generator": gen_config.to_dict(),
                "parameters": int(sum(p.numel() for p in unet.parameters()))}
        (tmp / MODEL_CARD).write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
        if "policy" in card:  # the global policy, ready for `fedaug augment --policy`
            (tmp / POLICY_FILE).write_text(json.dumps(card["policy"], indent=2) + "\n",
                                           encoding="utf-8")
    return folder


def save_server_state(path: str | Path, *, run: Any, gen_config: GeneratorConfig,
                      raw: ArrayRecord | None, strategy: Any) -> None:
    """The server's resumable state after a round: raw (pre-EMA) weights, strategy state,
    and what they belong to. Written atomically."""
    import io

    import torch

    from fedaug.atomic import atomic_write_bytes

    if raw is None:
        return
    buf = io.BytesIO()
    torch.save({"planned-rounds": run.num_server_rounds, "generator": gen_config.to_dict(),
                "data": run.data, "raw": raw.to_torch_state_dict(),
                "strategy": strategy.checkpoint()}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_server_state(path: str | Path, *, run: Any, gen_config: GeneratorConfig
                      ) -> dict[str, Any] | None:
    """The state to resume from (``raw`` weights, ``strategy`` state, ``finished``), or
    None when there is none.

    Raises
    ------
    ConfigError
        When the state belongs to another setup (rounds, generator or data differ): resuming
        it would mix two runs.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    same = (state.get("planned-rounds") == run.num_server_rounds
            and state.get("generator") == gen_config.to_dict() and state.get("data") == run.data)
    if not same:
        raise ConfigError(
            f"Cannot resume from {path}: it belongs to another run setup (rounds, generator "
            "or data differ).", value={"planned-rounds": state.get("planned-rounds"),
                                       "data": state.get("data")},
            fix="Resume with the same settings, or start the new run in a fresh out-dir.")
    return {"raw": ArrayRecord(state["raw"]), "strategy": state["strategy"],
            "finished": state["strategy"]["rounds-done"] >= run.num_server_rounds}


def holds_a_run(out: str | Path) -> list[str]:
    """What in ``out`` shows an earlier run (server state, a published model, site state)."""
    out = Path(out)
    found = [p for p in (out / "server" / STATE_FILE, out / "global") if p.exists()]
    sites = out / "sites"
    if sites.is_dir() and any(sites.iterdir()):
        found.append(sites)
    return [str(p) for p in found]


def keep_round_checkpoint(folder: str | Path, server_round: int, source: str | Path, *,
                          keep: int = 3) -> Path | None:
    """Copy the just-published global folder to ``folder/round-NNNN`` (atomically) and keep
    only the newest ``keep`` of them (0 keeps none)."""
    import shutil

    from fedaug.atomic import atomic_dir

    if keep <= 0:
        return None
    folder = Path(folder)
    target = folder / f"round-{server_round:04d}"
    with atomic_dir(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    rounds = sorted(p for p in folder.glob("round-*") if p.is_dir())
    for old in rounds[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target
