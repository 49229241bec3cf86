"""``fedaug evaluate`` and ``fedaug audit``: does a global generator help, does it leak?"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedaug.config import DEFAULT_SAMPLE_STEPS
from fedaug.errors import DataError

__all__ = ["QUICK", "register_evaluate", "register_audit"]

#: ``fedaug evaluate --quick``: settings of ``evaluate_generator`` for a fast, rough run.
QUICK = {"epochs": 2, "small_site_seeds": 1, "small_site_epochs": 10}


def register_evaluate(sub: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` to the ``fedaug`` command."""
    ev = sub.add_parser(
        "evaluate", help="does the global generator help? utility, fidelity, privacy",
        description="Train a small CNN on synthetic samples only and test it on the real test "
        "split (TSTR), also with the augmentation policy, next to the same CNN on the real "
        "training split (TRTR); the gain for a small site (mean of 3 seeds, class-balanced "
        "loss) from augmentation and from pretraining on the synthetic samples before "
        "fine-tuning on its records; Frechet distance and precision/recall in the real-data "
        "CNN's feature space; the privacy audit. Writes report.json and report.png into --out. "
        "On a terminal, a progress bar per stage: sampling, TSTR classifier, TRTR classifier, "
        "small-site seeds, fidelity, privacy audit.")
    ev.add_argument("--model", required=True, help="global model folder")
    ev.add_argument("--real", required=True,
                    help="real data with train and test splits: 'digits', a MedMNIST .npz, or a "
                    "folder with train/ and test/")
    ev.add_argument("--num-samples", type=int, default=1000, help="synthetic samples (1000)")
    ev.add_argument("--small-site-size", type=int, default=100,
                    help="records of the simulated small site (100)")
    ev.add_argument("--steps", type=int, default=DEFAULT_SAMPLE_STEPS,
                    help=f"DDIM steps ({DEFAULT_SAMPLE_STEPS})")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", help="folder for report.json and report.png")
    ev.add_argument("--quick", action="store_true",
                    help=f"a fast, rough check: classifier epochs {QUICK['epochs']}, "
                    f"{QUICK['small_site_seeds']} small-site seed, small-site epochs "
                    f"{QUICK['small_site_epochs']}; other settings as given. Its figures are "
                    "noisier and usually lower than a full run's: compare like with like")
    ev.set_defaults(func=_cmd_evaluate)


def register_audit(sub: argparse._SubParsersAction) -> None:
    """Add ``audit`` to the ``fedaug`` command."""
    au = sub.add_parser("audit", help="privacy audit of a global generator",
                        description="Memorization rate (distance to closest training record vs "
                        "to held-out records) and a loss-threshold membership-inference attack "
                        "on the diffusion loss (AUC; 0.5 means no leakage).")
    au.add_argument("--model", required=True, help="global model folder")
    au.add_argument("--data", required=True, help="the training data source (with a test split)")
    au.add_argument("--num-samples", type=int, default=500)
    au.add_argument("--seed", type=int, default=0)
    au.add_argument("--write-card", action="store_true", help="store the result in the model card")
    au.set_defaults(func=_cmd_audit)


def _real_splits(source: str, model_dir: str) -> tuple[Any, Any]:
    from fedaug.data import load_image_source
    from fedaug.generator import load_generator

    _, _, config = load_generator(model_dir)
    train = load_image_source(source, split="train", size=config.image_size)
    test = load_image_source(source, split="test", size=config.image_size)
    if train.image_shape[2] != config.channels or train.num_classes != config.num_classes:
        raise DataError(
            f"The data {source} ({train.num_classes} classes, {train.image_shape[2]} channel(s)) "
            f"does not match the model ({config.num_classes} classes, {config.channels}).",
            fix="Evaluate a model against the data it was trained on.")
    return train, test


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from fedaug.evaluate.report import evaluate_generator, small_site_subset

    train, test = _real_splits(args.real, args.model)
    small = small_site_subset(train, args.small_site_size, seed=args.seed)
    report = evaluate_generator(args.model, train, test, num_samples=args.num_samples,
                                small_site=small, seed=args.seed, steps=args.steps,
                                out_dir=args.out, progress=sys.stderr.isatty(),
                                **(QUICK if args.quick else {}))
    u, f = report["utility"], report["fidelity"]
    print(f"TSTR accuracy {u['tstr']['accuracy']:.3f} (AUC {u['tstr']['roc-auc']:.3f}) vs TRTR "
          f"{u['trtr']['accuracy']:.3f} (AUC {u['trtr']['roc-auc']:.3f}); TSTR with "
          f"augmentation {u['tstr+augment']['accuracy']:.3f}")
    g = report["augmentation-gain"]
    print(f"small site ({g['small-site-size']} records, mean of {g['seeds']} seeds): local "
          f"{g['local']['accuracy']:.3f}, +augment {g['local+augment']['accuracy']:.3f}, "
          f"pretrained on synthetic + fine-tuned with augment "
          f"{g['local+augment+synthetic']['accuracy']:.3f}")
    print(f"fidelity: Frechet distance {f['frechet-distance']:.3f}, precision "
          f"{f['precision']:.3f}, recall {f['recall']:.3f} ({f['extractor']}); fine detail "
          f"{f['detail-ratio']:.2f}x the real images'")
    a = report["privacy-audit"]
    print(f"privacy audit: memorization rate {a['memorization-rate']:.3f}, membership-"
          f"inference AUC {a['membership-inference-auc']:.3f}")
    if args.out:
        print(f"report: {Path(args.out) / 'report.json'}, figure: {Path(args.out) / 'report.png'}")
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from fedaug.evaluate.report import privacy_audit
    from fedaug.generator.card import update_model_card

    train, test = _real_splits(args.data, args.model)
    result = privacy_audit(args.model, train, test, num_samples=args.num_samples,
                           seed=args.seed)
    if args.write_card:
        update_model_card(args.model, {"privacy-audit": result})
    print(json.dumps(result, indent=2))
    return 0
