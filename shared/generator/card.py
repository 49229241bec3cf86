"""The model card beside a published generator: what it was trained on, and at what cost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedaug.atomic import atomic_write_json

__all__ = ["MODEL_CARD", "read_model_card", "update_model_card"]

MODEL_CARD = "model_card.json"


def read_model_card(folder: str | Path) -> dict[str, Any]:
    """The model card of a global model folder."""
    return json.loads((Path(folder) / MODEL_CARD).read_text(encoding="utf-8"))


def update_model_card(folder: str | Path, extra: dict[str, Any]) -> dict[str, Any]:
    """Merge ``extra`` into the model card of ``folder`` (atomic rewrite of the card)."""
    card = read_model_card(folder)
    card.update(extra)
    atomic_write_json(Path(folder) / MODEL_CARD, card)
    return card
