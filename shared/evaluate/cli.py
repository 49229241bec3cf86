"""``fedaug evaluate`` and ``fedaug audit``: does a global generator help, does it leak?"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedaug.config import (
    DECISION_METRICS,
    DEFAULT_DECISION_FOLDS,
    DEFAULT_DECISION_MARGIN,
    DEFAULT_DECISION_METRIC,
    DEFAULT_SAMPLE_STEPS,
    LABEL_MODES,
)
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
    ev.add_argument("--real",
                    help="real data with train and test splits: 'digits', a MedMNIST .npz, or a "
                    "folder with train/ and test/ (required unless --site-data)")
    ev.add_argument("--num-samples", type=int,
                    help="synthetic samples (default: 1000 per class for the report, drawn in "
                    "--labels proportions; 1000 balanced for a site's decision)")
    ev.add_argument("--labels", choices=LABEL_MODES, default="prior",
                    help="the report's synthetic classes: prior (default) in the federation's "
                    "proportions from the model card (even when it has none), balanced the "
                    "same number of each; a site's decision always draws them balanced")
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
    site = ev.add_argument_group(
        "a site's decision (--site-data)",
        "Instead of the report: should this site use the synthetic data? By cross-validation "
        "on the site's OWN training records (its test data is never read): local alone vs "
        "pretrained on synthetic then fine-tuned vs mixed, each fold scored by options "
        "trained on the others; the gain's paired bootstrap interval; 'use <option>' only "
        "when its lower end is above 0. Writes decision.json into --out.")
    site.add_argument("--site-data", help="the site's data source (its train split only)")
    site.add_argument("--site-labels", help="labels CSV of a DICOM folder --site-data")
    site.add_argument("--folds", type=int, default=DEFAULT_DECISION_FOLDS,
                      help=f"cross-validation folds ({DEFAULT_DECISION_FOLDS}); 1 = one "
                      "held-out part of --val-fraction instead")
    site.add_argument("--val-fraction", type=float, default=0.3,
                      help="with --folds 1: fraction of each class held out (0.3)")
    site.add_argument("--seeds", type=int, default=None,
                      help="classifier seeds per option: per fold (default 1), or 3 with "
                      "--folds 1")
    site.add_argument("--margin", type=float, default=DEFAULT_DECISION_MARGIN,
                      help="largest loss against local alone a site with every class "
                      f"accepts, at the interval's level ({DEFAULT_DECISION_MARGIN:g}; 0 asks "
                      "for a gain)")
    site.add_argument("--metric", choices=DECISION_METRICS, default=DEFAULT_DECISION_METRIC,
                      help="what the options are scored by on the validation records: "
                      "balanced-accuracy (the default: the mean recall over the classes "
                      "present, each class counting the same whatever the site's own mix), "
                      "or accuracy")
    ev.set_defaults(func=_cmd_evaluate)


def register_audit(sub: argparse._SubParsersAction) -> None:
    """Add ``audit`` to the ``fedaug`` command."""
    au = sub.add_parser("audit", help="privacy audit of a global generator",
                        description="Memorization rate (distance to closest training record vs "
                        "to held-out records) and a loss-threshold membership-inference attack "
                        "on the diffusion loss (AUC; 0.5 means no leakage). With --dp: an "
                        "empirical lower bound on a site's epsilon from one DP training run "
                        "with canaries (docs/audit.md); exit status 1 when it exceeds the "
                        "accounted epsilon, i.e. the mechanism is broken.")
    au.add_argument("--model", help="global model folder (required without --dp; with --dp "
                    "the model the site trains from, default the run config's initial model)")
    au.add_argument("--data", help="the training data source (with a test split; required "
                    "without --dp; with --dp the site's data, default the run config's)")
    au.add_argument("--num-samples", type=int, default=500)
    au.add_argument("--seed", type=int, default=0)
    au.add_argument("--write-card", action="store_true",
                    help="store the result in the model card (its figures are computed on "
                    "your exact records, not DP releases: do not publish a card holding them)")
    dp = au.add_argument_group("empirical DP audit (--dp)")
    dp.add_argument("--dp", action="store_true",
                    help="audit a site's DP-SGD run with canaries (one-run method of Steinke, "
                    "Nasr & Jagielski 2023) instead of the membership-inference audit")
    dp.add_argument("--config", help="scenario TOML whose [fedaug] table is the run config "
                    "(e.g. simulations/default.toml)")
    dp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="run-config override (repeatable)")
    dp.add_argument("--site", type=int, help="audit this simulated site's partition "
                    "(default: the whole data source is the site's data)")
    dp.add_argument("--num-sites", type=int, help="sites of the partition (default: the "
                    "scenario's num-sites)")
    dp.add_argument("--max-records", type=int, help="keep the site's first N records")
    dp.add_argument("--epsilon", type=float, help="budget the site plans sigma for (default: "
                    "the run config's)")
    dp.add_argument("--delta", type=float, help="the site's delta (default: the run config's)")
    dp.add_argument("--rounds", type=int, help="rounds the site plans for (default: the run "
                    "config's num-server-rounds)")
    dp.add_argument("--noise-multiplier", type=float, help="explicit sigma instead of planning")
    dp.add_argument("--sample-rate", type=float, help="explicit Poisson rate q")
    dp.add_argument("--steps", type=int, help="explicit total DP-SGD steps")
    dp.add_argument("--canaries", choices=("gradient", "input"), default="gradient",
                    help="white-box gradient canaries (audits the implementation, default) or "
                    "input-space canaries scored on the trained model")
    dp.add_argument("--input-canary", choices=("mislabelled", "noise"), default="mislabelled",
                    help="kind of input-space canary (mislabelled)")
    dp.add_argument("--num-canaries", type=int,
                    help="canaries per run (1000 gradient, 200 input)")
    dp.add_argument("--runs", type=int, default=1,
                    help="independent runs whose canaries are pooled (1)")
    dp.add_argument("--canary-norm", type=float,
                    help="gradient canary norm before clipping (100 x the clipping norm)")
    dp.add_argument("--guesses", metavar="K[,K...]",
                    help="guess counts k (k in, k out) tested, fixed before the run "
                    "(default 10, 20, 50, ... and m/2)")
    dp.add_argument("--confidence", type=float, default=0.95,
                    help="confidence of the lower bound (0.95)")
    dp.add_argument("--out", help="folder for dp-audit.json, dp-audit.png and the raw scores")
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


def _cmd_site_decision(args: argparse.Namespace) -> int:
    from fedaug.atomic import atomic_write_json
    from fedaug.evaluate.decision import format_decision, site_decision

    quick = {"epochs": QUICK["epochs"], "site_epochs": QUICK["small_site_epochs"]}
    decision = site_decision(args.model, args.site_data, site_labels=args.site_labels,
                             folds=args.folds, val_fraction=args.val_fraction,
                             seeds=args.seeds, margin=args.margin,
                             seed=args.seed, steps=args.steps, metric=args.metric,
                             progress=sys.stderr.isatty(),
                             **({} if args.num_samples is None
                                else {"num_samples": args.num_samples}),
                             **(quick if args.quick else {}))
    print(format_decision(decision))
    if args.out:
        atomic_write_json(Path(args.out) / "decision.json", decision)
        print(f"decision: {Path(args.out) / 'decision.json'}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from fedaug.evaluate.report import evaluate_generator, small_site_subset

    if args.site_data:
        return _cmd_site_decision(args)
    if not args.real:
        from fedaug.errors import ConfigError

        raise ConfigError("fedaug evaluate needs --real (the report) or --site-data (a "
                          "site's decision).", fix="Pass one of them.")
    train, test = _real_splits(args.real, args.model)
    small = small_site_subset(train, args.small_site_size, seed=args.seed)
    report = evaluate_generator(args.model, train, test, num_samples=args.num_samples,
                                small_site=small, seed=args.seed, steps=args.steps,
                                out_dir=args.out, labels=args.labels,
                                progress=sys.stderr.isatty(),
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
    if args.dp:
        from fedaug.evaluate.dp_audit import run_dp_audit_command

        return run_dp_audit_command(args)
    from fedaug.errors import ConfigError
    from fedaug.evaluate.report import privacy_audit
    from fedaug.generator.card import update_model_card

    if not args.model or not args.data:
        raise ConfigError("fedaug audit needs --model and --data (the membership-inference "
                          "audit of a global model).",
                          value={"--model": args.model, "--data": args.data},
                          fix="Pass both, or --dp for the empirical DP audit of a site.")
    train, test = _real_splits(args.data, args.model)
    result = privacy_audit(args.model, train, test, num_samples=args.num_samples,
                           seed=args.seed)
    if args.write_card:
        update_model_card(args.model, {"privacy-audit": result})
    print(json.dumps(result, indent=2))
    return 0
