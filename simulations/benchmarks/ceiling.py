"""The generator without privacy or federation: how good can the same UNet get?

Trains the automatic recipe's UNet (``8,16`` at 28x28, EDM, ``lognormal:0.5:1.4``
timesteps) centrally on one data seed's validation-protocol training part (the training
split minus the stratified 20 % that ``quality.py --split validation`` holds out, drawn the
same way), with no DP noise, then measures TSTR on the held-out 20 % as the quality
benchmark does (DDIM 25 steps, 1,000 samples per class in the training part's class mix,
the report's CNN). A reference for docs/dp-recipe.md ("What limits the 28x28 generator"):
never a site's code path, and the test split is not read.

    python simulations/benchmarks/ceiling.py --steps 40,300,1000
    python simulations/benchmarks/ceiling.py --steps 300 --warm-start

Every step is the sites' DP-SGD step (:func:`train_dp`: Poisson batches, per-example
clipping at 0.3, two augmented views per example, the augmentation policy) with a noise
multiplier of 1e-6, so only the noise and the federation are taken away. ``--warm-start``
first pretrains as the server did before the classes' spread (:func:`pretrain_on_central_images`,
300 steps) on the exact class means (no release noise, no spread).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import quality  # the sibling script: the same held-out split
import torch

from fedaug.augment import BatchAugmenter, Policy
from fedaug.evaluate.classifier import classification_report, train_classifier
from fedaug.evaluate.report import SAMPLES_PER_CLASS
from fedaug.generator.model import GeneratorConfig, build_train_scheduler, build_unet
from fedaug.generator.sample import sample_images, to_uint8
from fedaug.generator.train import train_dp
from fedaug.privacy.noise import NoiseSource
from fedaug.server.warmup import pretrain_on_central_images

NOISE_LEVELS = "lognormal:0.5:1.4"


def tstr_of(unet, scheduler, train_labels: np.ndarray, held_out) -> dict:
    prior = np.bincount(train_labels) / len(train_labels)
    counts = np.round(prior * SAMPLES_PER_CLASS * len(prior)).astype(int)
    labels = np.repeat(np.arange(len(prior)), counts)
    images = to_uint8(sample_images(unet, scheduler, labels, num_inference_steps=25, seed=1))
    clf = train_classifier(images, labels, num_classes=len(prior), seed=0)
    r = classification_report(clf, held_out.images, held_out.labels)
    return {"accuracy": round(r["accuracy"], 3), "auc": round(r["roc-auc"], 3),
            "recall": [round(v, 2) for v in r["per-class-recall"]]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--data", default=str(quality.DEFAULT_DATA), help="a MedMNIST .npz")
    p.add_argument("--seed", type=int, default=0, help="data seed (the held-out split)")
    p.add_argument("--steps", default="300",
                   help="comma-separated step counts; TSTR is measured after each")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--model-channels", default="8,16")
    p.add_argument("--warm-start", action="store_true",
                   help="pretrain on the exact class means first, as the server does")
    args = p.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        source, held_out = quality.holdout_source(args.data, args.seed, Path(tmp))
        part = np.load(source)
        x = torch.from_numpy(part["train_images"]).float().div(127.5).sub(1)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        y = torch.from_numpy(part["train_labels"].ravel()).long()
    num_classes = int(y.max()) + 1
    cfg = GeneratorConfig(image_size=x.shape[-1], channels=x.shape[1], num_classes=num_classes,
                          block_out_channels=tuple(int(c) for c in args.model_channels.split(",")),
                          prediction_type="edm")
    unet, scheduler = build_unet(cfg), build_train_scheduler(cfg)
    t0 = time.perf_counter()
    if args.warm_start:
        means = torch.stack([x[y == c].mean(0) for c in range(num_classes)]).numpy()
        pretrain_on_central_images(unet, scheduler, means.astype(np.float32), steps=300, seed=0)
    augmenter = BatchAugmenter(Policy.default("image"))
    done, state = 0, None
    for target in sorted(int(s) for s in args.steps.split(",")):
        state = train_dp(unet, scheduler, x, y, steps=target - done,
                         sample_rate=args.batch_size / len(x), noise_multiplier=1e-6,
                         max_grad_norm=0.3, learning_rate=args.learning_rate,
                         expected_batch_size=args.batch_size, noise=NoiseSource(secure=False),
                         noise_multiplicity=2, noise_levels=NOISE_LEVELS, optimizer_state=state,
                         augment=lambda v, g: augmenter(v, generator=g)).optimizer_state
        done = target
        print(json.dumps({"steps": done, "batch-size": args.batch_size,
                          "learning-rate": args.learning_rate,
                          "warm-start": args.warm_start, "seed": args.seed,
                          **tstr_of(unet, scheduler, y.numpy(), held_out),
                          "seconds": round(time.perf_counter() - t0)}), flush=True)


if __name__ == "__main__":
    main()
