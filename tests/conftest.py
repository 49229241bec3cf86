"""Shared fixtures: the real data beside the repo, tiny settings, one torch thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the repository (real MedMNIST, SMS, WordNet)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is missing (it sits beside the repo)")
    return SHARED_DATA


#: Run-config overrides that keep a federation tiny but on real code paths.
TINY = {
    "model-channels": "8,16",
    "local-steps": 2,
    "batch-size": 32,
    "noise-multiplicity": 2,
    "sample-steps": 2,
    "samples-per-class": 2,
    "warmup-steps": 5,
    "public-steps": 5,
}


@pytest.fixture(autouse=True)
def _fresh_fedaug_logger():
    """A CLI run in one test routes fedaug's loggers to its own handler and stops their
    propagation; give every test the default (propagating, so caplog sees the lines)."""
    import logging

    yield
    ours = logging.getLogger("fedaug")
    ours.handlers[:] = []
    ours.propagate = True
    ours.setLevel(logging.NOTSET)
