"""The server's average over rounds (``ema-decay``), compared after the fact on one trained run.

The server publishes an exponential moving average (EMA) of the global weights over rounds;
the raw weights of each round are what the sites' replies averaged to. Given a quality run
that kept every round's published model (``quality.py ... --set keep-checkpoints=100 --out
DIR``; validation split), this script recovers each round's raw weights from consecutive
published ones (``raw_r = (ema_r - d * ema_(r-1)) / (1 - d)`` with the run's decay ``d``,
the first round's published weights being its raw ones), forms other averages, and measures
each as the quality benchmark does: DDIM 25 steps (``--steps``), 1,000 samples per class
in the model card's class prior, the report's CNN and seed, TSTR and fidelity on the run's
held-out part. Every average is post-processing of the same DP releases: nothing is trained
and no budget is spent. A decay equal to the run's reproduces its report (a check of the
inversion).

    python simulations/benchmarks/quality.py --epsilon 10 --seeds 0,1,2 --no-site-decisions \\
        --set keep-checkpoints=100 --out runs/ema
    python simulations/benchmarks/rounds_average.py runs/ema --decays 0.9,0,0.5,0.75,0.95,mean

``mean`` is the plain mean of the rounds' raw weights (Polyak averaging). The test split is
not read: run it on validation-split runs only.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from fedaug.config import DEFAULT_SAMPLE_STEPS
from fedaug.data import load_image_source
from fedaug.evaluate.classifier import classification_report, train_classifier
from fedaug.evaluate.fidelity import fidelity_report
from fedaug.evaluate.report import SAMPLES_PER_CLASS
from fedaug.generator.generate import model_labels
from fedaug.generator.model import load_generator
from fedaug.generator.sample import sample_images, to_uint8


def raw_rounds(published: list[dict[str, torch.Tensor]], decay: float
               ) -> list[dict[str, torch.Tensor]]:
    """Each round's raw weights (float64) from the published EMA of ``decay``."""
    def f64(sd):
        return {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}

    pubs = [f64(p) for p in published]
    raw = [pubs[0]]
    for prev, cur in zip(pubs, pubs[1:], strict=False):
        raw.append({k: (cur[k] - decay * prev[k]) / (1 - decay) if cur[k].is_floating_point()
                    else cur[k] for k in cur})
    return raw


def average(raw: list[dict[str, torch.Tensor]], decay: str) -> dict[str, torch.Tensor]:
    """The EMA of ``decay`` (a number in [0, 1)) started at the first round, as the server
    computes it, or ``"mean"``: the plain mean of the rounds."""
    out = dict(raw[0])
    for r, cur in enumerate(raw[1:], start=1):
        d = r / (r + 1) if decay == "mean" else float(decay)
        out = {k: d * out[k] + (1 - d) * cur[k] if cur[k].is_floating_point() else cur[k]
               for k in out}
    return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}


def measure(model: Path, train, held_out, *, seed: int, steps: int, real_clf) -> dict:
    k = held_out.num_classes
    labels, _ = model_labels(model, SAMPLES_PER_CLASS * k, k, "prior")
    unet, scheduler, config = load_generator(model)
    images = to_uint8(sample_images(unet, scheduler, labels.tolist(), num_inference_steps=steps,
                                    seed=seed, **config.guidance))
    clf = train_classifier(images, labels.astype(np.int64), num_classes=k, seed=seed, epochs=8)
    r = classification_report(clf, held_out.images, held_out.labels)
    fid = fidelity_report(real_clf, held_out.images, held_out.labels, images, labels)
    return {"accuracy": round(r["accuracy"], 3), "auc": round(r["roc-auc"], 3),
            "recall": [round(v, 2) for v in r["per-class-recall"]],
            "frechet-distance": round(fid["frechet-distance"], 2),
            "detail-ratio": round(fid["detail-ratio"], 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("out", type=Path, help="a quality.py --out folder (validation split) whose "
                   "runs kept every round's model")
    p.add_argument("--decays", default="0.9,0,0.5,0.75,0.95,mean",
                   help="comma-separated EMA decays in [0, 1), or mean (default: %(default)s)")
    p.add_argument("--run-decay", type=float, default=0.9,
                   help="the ema-decay the runs were trained with (default: %(default)s)")
    p.add_argument("--steps", type=int, default=DEFAULT_SAMPLE_STEPS,
                   help="DDIM steps, as the runs' sample-steps (default: %(default)s)")
    args = p.parse_args(argv)
    decays = [d.strip() for d in args.decays.split(",")]
    for d in decays:
        if d != "mean" and not 0 <= float(d) < 1:
            p.error(f"--decays: {d} is not in [0, 1) nor 'mean'")
    runs = sorted(r for r in args.out.glob("eps*-seed*") if (r / "data").is_dir())
    if not runs:
        p.error(f"{args.out} holds no validation-split run (eps*-seed*/data/); run quality.py "
                "with --set keep-checkpoints=100 --out there first")
    results = []
    for run in runs:
        rounds = sorted((run / "run" / "checkpoints").glob("round-*"))
        card = json.loads((run / "run" / "global" / "model_card.json").read_text())
        if len(rounds) < card["rounds"]:
            p.error(f"{run} kept {len(rounds)} of its {card['rounds']} rounds' models; rerun "
                    "it with --set keep-checkpoints=100")
        seed = int(run.name.rsplit("seed", 1)[1])
        source = next((run / "data").glob("*.npz"))
        train = load_image_source(str(source), split="train", seed=seed)
        held_out = load_image_source(str(source), split="test", seed=seed)
        real_clf = train_classifier(train.images, train.labels, num_classes=train.num_classes,
                                    seed=seed, epochs=8)
        raw = raw_rounds([load_generator(r)[0].state_dict() for r in rounds], args.run_decay)
        for d in decays:
            folder = run / "rounds-average" / f"decay-{d}"
            if folder.exists():
                shutil.rmtree(folder)
            shutil.copytree(rounds[-1], folder)
            unet, _, _ = load_generator(folder)
            unet.load_state_dict(average(raw, d))
            unet.save_pretrained(folder / "unet")
            row = {"run": run.name, "decay": d, "rounds": len(rounds),
                   **measure(folder, train, held_out, seed=seed, steps=args.steps,
                             real_clf=real_clf)}
            results.append(row)
            print(json.dumps(row), flush=True)
    for d in decays:
        acc = [r["accuracy"] for r in results if r["decay"] == d]
        auc = [r["auc"] for r in results if r["decay"] == d]
        print(f"decay {d}: accuracy mean {np.mean(acc):.3f} worst {min(acc):.3f}; "
              f"AUC mean {np.mean(auc):.3f} worst {min(auc):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
