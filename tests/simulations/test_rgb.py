"""Three-channel images end to end: a colour-mapped copy of real images through the warm
start, DP training, aggregation, sampling, grids, generation, evaluation and a site's
decision, as the grayscale path is."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from conftest import TINY
from fedaug.config import RunConfig
from fedaug.data import load_digits_builtin, load_image_source
from fedaug.evaluate.decision import site_decision
from fedaug.evaluate.report import evaluate_generator
from fedaug.generator.generate import generate
from fedaug.generator.pipeline import FedaugPipeline
from fedaug.simulations.run import simulate


def _colour_mapped(gray: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 1) -> (N, H, W, 3) through a blue-to-yellow colour map: every channel
    differs, so a model that mixed or dropped channels would show it."""
    v = gray[..., 0].astype(np.float32) / 255.0
    rgb = np.stack([v, 0.3 + 0.5 * v, 1.0 - v], axis=-1)
    return np.clip(np.round(255 * rgb), 0, 255).astype(np.uint8)


def _rgb_npz(path, seed=0):
    """300 training and 100 test digits (small sites keep the decisions quick)."""
    train = load_digits_builtin(split="train", seed=seed).subset(np.arange(300))
    test = load_digits_builtin(split="test", seed=seed).subset(np.arange(100))
    np.savez(path, train_images=_colour_mapped(train.images), train_labels=train.labels[:, None],
             test_images=_colour_mapped(test.images), test_labels=test.labels[:, None])
    return path


def test_rgb_federation_end_to_end(tmp_path):
    # Prepare: a MedMNIST-style RGB file derived from the digits
    data = str(_rgb_npz(tmp_path / "rgbdigits.npz"))
    run = RunConfig.from_mapping({**TINY, "data": data, "out-dir": str(tmp_path / "out"),
                                  "num-server-rounds": 2}, source="test")

    # Execute
    strategy = simulate(run, num_sites=2, progress=False, audit=False, site_decisions=True)

    # Assert: the model, the card, both PNGs and the samples are three-channel
    out = tmp_path / "out"
    assert len(strategy.rounds) == 2 and all(r.aggregated == 2 for r in strategy.rounds)
    card = json.loads((out / "global" / "model_card.json").read_text())
    assert card["image-shape"] == [8, 8, 3]
    assert card["recipe-auto"]["prediction-type"]["value"] == "edm"
    pipe = FedaugPipeline.from_pretrained(out / "global")
    assert pipe.unet.config.in_channels == 3 and pipe.unet.config.out_channels == 3
    for png in ("central_images.png", "sample_grid.png"):
        with Image.open(out / png) as im:
            assert im.mode == "RGB"
    x, y, _ = generate(out / "global", num_samples=20, seed=0, steps=2, progress=False)
    assert x.shape == (20, 8, 8, 3) and x.dtype == np.uint8
    # the channels are not copies of one another (a grayscale model would give equal ones)
    assert not (np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 1], x[..., 2]))
    # the site decisions ran on the three-channel sites
    sites = json.loads((out / "site-decisions.json").read_text())["sites"]
    assert [s["site"] for s in sites] == ["site-0", "site-1"]
    assert all(s["recommendation"] for s in sites)

    # Execute / Assert: evaluation and a site's own decision on RGB data
    train = load_image_source(data, split="train")
    test = load_image_source(data, split="test")
    report = evaluate_generator(out / "global", train, test, num_samples=50, steps=2,
                                epochs=1, audit=False)
    assert 0.0 <= report["utility"]["tstr"]["accuracy"] <= 1.0
    assert report["fidelity"]["frechet-distance"] >= 0.0
    d = site_decision(out / "global", train.subset(np.arange(120)), seeds=1, num_samples=30,
                      steps=2, epochs=1, site_epochs=2)
    # cross-validated: every one of the 120 records is validated once
    assert d["synthetic-records"] == 30 and d["validation-records"] == 120 and d["folds"] == 3
