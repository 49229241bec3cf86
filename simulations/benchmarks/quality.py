"""Quality benchmark: does the federated DP generator help, on data nobody tuned for?

A federation of ``--sites`` simulated sites (Dirichlet ``--alpha`` label skew) trains with the
automatic recipe (docs/dp-recipe.md) unless ``--scenario`` or ``--set`` gives keys, once per
data seed and budget. For each run it reports TSTR accuracy, balanced accuracy (the mean
recall over the classes) and AUC, the real-data reference (TRTR), fidelity, each site's
decision on the synthetic data (``fedaug evaluate --site-data``: validation on a part of its
own records) and what that decision does on records no site saw, and the wall time; then the
mean and the worst over the runs.

The validation protocol (``--split``):

* ``validation`` (the default; for comparing recipes and variants): a stratified 20 % of the
  training split, drawn with the data seed, is held out. The federation trains on the other
  80 % and every figure is measured on the held-out part. The test split is not read.
* ``test`` (for a reported figure, once per figure): the federation trains on the whole
  training split and the figures are measured on the official test split.

    python simulations/benchmarks/quality.py --epsilon 10 --seeds 0,1,2
    python simulations/benchmarks/quality.py --data digits --split test --seeds 0,1,2
    python simulations/benchmarks/quality.py --data ../shared/data/medmnist/breastmnist.npz \\
        --sites 3 --epsilon 10 --json

``--colour-map`` runs the three-channel path on a grayscale set: every grey level of both
splits is mapped through a fixed colour map (:data:`COLOUR_MAP`, viridis), and the
federation, its warm start, sampler and evaluation all see RGB images. The same command
without it is the grayscale reference.

``--eval-seeds`` evaluates each trained model several times (the sampler's draws and the
report's classifiers seeded by each value in turn; the model itself is trained once): the
spread of those figures is the evaluation's own share of a run's figure, beside the
training's (other data seeds). With ``--reuse-models`` it re-evaluates the models of an
earlier ``--out``; each evaluation writes ``report-evalN`` beside the run's ``report``. The
summary's mean and worst are then taken over every evaluation of every model.

    python simulations/benchmarks/quality.py --epsilon 10 --seeds 0 --no-site-decisions \\
        --out DIR --reuse-models --eval-seeds 100,101,102,103,104
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]

from fedaug.config import DECISION_METRICS, DEFAULT_DECISION_METRIC, RunConfig  # noqa: E402
from fedaug.data import ImageDataset, load_image_source  # noqa: E402
from fedaug.evaluate.decision import stratified_split  # noqa: E402
from fedaug.evaluate.report import evaluate_generator  # noqa: E402
from fedaug.scenario import load_scenario  # noqa: E402
from fedaug.simulations.run import decide_sites, simulate  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"
#: ``--colour-map``'s colours at grey levels 0, 1/4, 1/2, 3/4 and 1 (viridis), linear between.
COLOUR_MAP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98],
                       [253, 231, 37]], dtype=np.float64)
#: Share of the training split held out as validation data.
VALIDATION_FRACTION = 0.2


def holdout_source(data: str, seed: int, folder: Path) -> tuple[str, ImageDataset]:
    """Write the training split minus a stratified validation part as a MedMNIST-style
    ``.npz`` (named like the source, so class names carry over) and return its path and the
    validation part. The federation reads only the file's train split."""
    train = load_image_source(data, split="train", seed=seed)
    keep, val = stratified_split(train.labels, VALIDATION_FRACTION, seed=seed)
    path = folder / f"{Path(data).stem}.npz"
    folder.mkdir(parents=True, exist_ok=True)
    images = train.images[..., 0] if train.images.shape[-1] == 1 else train.images
    np.savez(path, train_images=images[keep], train_labels=train.labels[keep][:, None],
             test_images=images[val], test_labels=train.labels[val][:, None])
    return str(path), train.subset(val)


def colour_mapped_source(data: str, folder: Path, seed: int) -> str:
    """Write a three-channel copy of a grayscale source's train and test splits, each grey
    level mapped through :data:`COLOUR_MAP`, as a MedMNIST-style ``.npz`` named like the
    source (class names carry over); returns its path."""
    train = load_image_source(data, split="train", seed=seed)
    test = load_image_source(data, split="test", seed=seed)
    if train.images.shape[-1] != 1:
        raise SystemExit(f"--colour-map needs grayscale images; {data} has "
                         f"{train.images.shape[-1]} channels.")
    grey = np.linspace(0, 255, len(COLOUR_MAP))
    lut = np.stack([np.interp(np.arange(256), grey, COLOUR_MAP[:, c]) for c in range(3)],
                   axis=1).round().astype(np.uint8)
    path = folder / f"{Path(data).stem}.npz"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(path, train_images=lut[train.images[..., 0]], train_labels=train.labels[:, None],
             test_images=lut[test.images[..., 0]], test_labels=test.labels[:, None])
    return str(path)


def run_one(*, data: str, epsilon: float, sites: int, alpha: float, seed: int, out: Path,
            split: str, scenario: Path | None, overrides: dict, num_samples: int | None,
            site_decisions: bool = True, decision_metric: str = DEFAULT_DECISION_METRIC,
            colour_map: bool = False, reuse_models: bool = False,
            eval_seed: int | None = None) -> dict:
    given = {"epsilon": epsilon, "alpha": alpha, "seed": seed, "out-dir": str(out / "run"),
             **overrides}
    name = Path(data).stem
    if colour_map:
        data = colour_mapped_source(data, out / "rgb", seed)
    if split == "validation":
        source, evaluation = holdout_source(data, seed, out / "data")
    else:
        source, evaluation = data, load_image_source(data, split="test", seed=seed)
    given["data"] = source
    mapping = load_scenario(scenario, given) if scenario else given
    mapping.pop("num-sites", None)
    run = RunConfig.from_mapping(mapping, source="quality benchmark")
    model = Path(run.out_dir) / "global"
    t0 = time.perf_counter()
    if reuse_models and (model / "model_card.json").is_file():
        train_s = None  # trained by an earlier run into the same --out
    else:
        simulate(run, num_sites=sites, progress=False, audit=False)
        train_s = time.perf_counter() - t0
    train = load_image_source(source, split="train", seed=seed)
    # the sampler's and the report's classifiers' seed: the data seed unless --eval-seeds
    draw = seed if eval_seed is None else eval_seed
    report = evaluate_generator(model, train, evaluation, num_samples=num_samples, seed=draw,
                                steps=run.sample_steps,
                                out_dir=out / ("report" if eval_seed is None
                                               else f"report-eval{eval_seed}"),
                                small_site=None, audit=False)
    decisions = (decide_sites(run, num_sites=sites, test=evaluation, metric=decision_metric)
                 if site_decisions else [])
    per_site = []
    for d in decisions:
        if d["recommendation"] is None:
            continue
        opts = d["options"]
        chosen = d["option"] if d["use-synthetic"] else "local"
        # what each metric's rule would have chosen (the run's metric decided)
        by_metric = {m: d["option"] if m == decision_metric and d["use-synthetic"]
                     else d.get(f"{m}-recommended-option") or "local"
                     for m in DECISION_METRICS}
        per_site.append({
            "site": d["site"], "records": d["records"], "recommendation": d["recommendation"],
            "classes-absent": d["classes-absent-at-site"],
            "validation-gain": d["gain"] if chosen != "local" else 0.0,
            # what the recommended use does on records no site saw
            "held-out-local-accuracy": opts["local"]["test-accuracy"],
            "held-out-gain": opts[chosen]["test-accuracy"] - opts["local"]["test-accuracy"],
            "held-out-gain-by-metric": {
                m: opts[o]["test-accuracy"] - opts["local"]["test-accuracy"]
                for m, o in by_metric.items()},
            "held-out-gain-if-always-used": max(
                opts[o]["test-accuracy"] for o in ("synthetic-pretrain", "synthetic-mix"))
            - opts["local"]["test-accuracy"],
        })
    card = json.loads((model / "model_card.json").read_text())
    tstr = report["utility"]["tstr"]
    return {
        "data": name + (" (colour-mapped RGB)" if colour_map else ""),
        "split": split,
        "epsilon": epsilon,
        "seed": seed,
        "eval-seed": draw,
        "epsilon-spent-max": max(s["epsilon"] for s in card["sites"]),
        "sites": sites,
        "alpha": alpha,
        "recipe": {k: v["value"] for k, v in card.get("recipe-auto", {}).items()},
        "tstr-accuracy": report["utility"]["tstr"]["accuracy"],
        "tstr-auc": report["utility"]["tstr"].get("roc-auc"),
        # the mean recall over the classes: weighs each class as a split of any mix would
        "tstr-balanced-accuracy": float(np.nanmean(tstr["per-class-recall"])),
        "tstr-recall": tstr["per-class-recall"],
        "trtr-accuracy": report["utility"]["trtr"]["accuracy"],
        "trtr-auc": report["utility"]["trtr"].get("roc-auc"),
        "majority-class": float(np.bincount(evaluation.labels).max() / len(evaluation)),
        "frechet-distance": report["fidelity"]["frechet-distance"],
        "precision": report["fidelity"]["precision"],
        "recall": report["fidelity"]["recall"],
        "per-site": per_site,
        "site-worst-held-out-gain": min((s["held-out-gain"] for s in per_site), default=None),
        "site-mean-held-out-gain": (float(np.mean([s["held-out-gain"] for s in per_site]))
                                    if per_site else None),
        **{f"site-{stat}-held-out-gain-{m}": f([s["held-out-gain-by-metric"][m]
                                                 for s in per_site])
           for m in DECISION_METRICS for stat, f in (("worst", min), ("mean", np.mean))
           if per_site},
        "train-wall-s": train_s,
        "wall-s": time.perf_counter() - t0,
    }


def summarize(results: list[dict]) -> dict:
    """Mean and worst (lowest accuracy/AUC/gain, longest time) over the runs of one budget."""
    out = {}
    for key, worst in (("tstr-accuracy", min), ("tstr-auc", min),
                       ("tstr-balanced-accuracy", min), ("trtr-accuracy", min),
                       ("site-worst-held-out-gain", min), ("site-mean-held-out-gain", min),
                       *((f"site-{stat}-held-out-gain-{m}", min) for m in DECISION_METRICS
                         for stat in ("worst", "mean")),
                       ("train-wall-s", max)):
        values = [r[key] for r in results if r.get(key) is not None]
        if values:
            out[key] = {"mean": float(np.mean(values)), "worst": float(worst(values)),
                        "runs": values}
    return out


def evaluation_spread(results: list[dict]) -> dict:
    """Per trained model (budget and data seed) evaluated under several ``--eval-seeds``: the
    mean, standard deviation (ddof 1), lowest and highest of its figures over those seeds,
    the part of a run's figure that is the evaluation's own draw."""
    out: dict[str, dict] = {}
    for key in sorted({(r["epsilon"], r["seed"]) for r in results}):
        rows = [r for r in results if (r["epsilon"], r["seed"]) == key]
        if len(rows) < 2:
            continue
        out[f"eps{key[0]:g}-seed{key[1]}"] = {
            m: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)),
                "lowest": float(min(v)), "highest": float(max(v)), "runs": v}
            for m in ("tstr-accuracy", "tstr-auc", "tstr-balanced-accuracy")
            if len(v := [r[m] for r in rows if r.get(m) is not None]) == len(rows)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA),
                   help="'digits', a MedMNIST .npz or an image folder (default PneumoniaMNIST)")
    p.add_argument("--epsilon", type=float, action="append",
                   help="budget(s) per site (default: 10 and 1)")
    p.add_argument("--sites", type=int, default=5)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--seeds", default="0", help="data seeds, comma-separated (default 0)")
    p.add_argument("--split", choices=("validation", "test"), default="validation",
                   help="where figures are measured (module docstring)")
    p.add_argument("--scenario", type=Path, help="a scenario TOML instead of the automatic "
                   "recipe alone")
    p.add_argument("--num-samples", type=int,
                   help="synthetic samples for TSTR (default: 1000 per class)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="run-config override, e.g. --set num-server-rounds=5")
    p.add_argument("--out", type=Path, help="keep outputs here (default: a temporary folder)")
    p.add_argument("--no-site-decisions", action="store_true",
                   help="skip the sites' decisions (a quicker comparison of generators)")
    p.add_argument("--decision-metric", choices=DECISION_METRICS,
                   default=DEFAULT_DECISION_METRIC,
                   help="what the sites' decisions score their options by (the other "
                   "metric's choice is reported beside it)")
    p.add_argument("--colour-map", action="store_true",
                   help="map a grayscale set's grey levels to RGB through a fixed colour "
                   "map (viridis) and run the three-channel path on it")
    p.add_argument("--reuse-models", action="store_true",
                   help="evaluate and decide again on the global models an earlier run "
                   "left in --out instead of training them (train s is then blank)")
    p.add_argument("--eval-seeds", metavar="SEEDS",
                   help="evaluate each model once per seed given (comma-separated): the "
                   "sampler's draws and the report's classifiers; default: once, with the "
                   "data seed. The model is trained once (or reused with --reuse-models); "
                   "the spread over these seeds is the evaluation's own, not the training's")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    overrides = dict(item.partition("=")[::2] for item in args.set)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    eval_seeds: list[int | None] = (
        [int(s) for s in args.eval_seeds.split(",") if s.strip()] if args.eval_seeds
        else [None])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = args.out or Path(tmp)
        for eps in args.epsilon or [10.0, 1.0]:
            for seed in seeds:
                for i, eval_seed in enumerate(eval_seeds):
                    results.append(run_one(data=args.data, epsilon=eps, sites=args.sites,
                                           alpha=args.alpha, seed=seed, split=args.split,
                                           out=base / f"eps{eps:g}-seed{seed}",
                                           scenario=args.scenario, overrides=overrides,
                                           num_samples=args.num_samples,
                                           # the sites' decisions do not depend on it
                                           site_decisions=not args.no_site_decisions
                                           and i == 0,
                                           decision_metric=args.decision_metric,
                                           colour_map=args.colour_map,
                                           # later evaluations reuse the model just trained
                                           reuse_models=args.reuse_models or i > 0,
                                           eval_seed=eval_seed))
    budgets = sorted({r["epsilon"] for r in results}, reverse=True)
    summary = {f"{b:g}": summarize([r for r in results if r["epsilon"] == b]) for b in budgets}
    spread = evaluation_spread(results)
    if args.json:
        print(json.dumps({"runs": results, "summary": summary,
                          **({"evaluation-spread": spread} if spread else {})},
                         indent=2, default=float))
        return 0
    print(f"{'eps':>5} {'seed':>4} {'TSTR acc':>9} {'TSTR AUC':>9} {'TSTR bal':>9} "
          f"{'TRTR acc':>9} {'majority':>9} {'site gain worst/mean':>21} {'FD':>7} {'train s':>8}")
    for r in results:
        auc = "-" if r["tstr-auc"] is None else f"{r['tstr-auc']:.3f}"
        worst = r["site-worst-held-out-gain"]
        mean = r["site-mean-held-out-gain"]
        gains = "-" if worst is None else f"{worst:+.3f} / {mean:+.3f}"
        train_s = "-" if r["train-wall-s"] is None else f"{r['train-wall-s']:.0f}"
        seed = f"{r['seed']}" + ("" if r["eval-seed"] == r["seed"] else f"/e{r['eval-seed']}")
        print(f"{r['epsilon']:>5g} {seed:>4} {r['tstr-accuracy']:>9.3f} {auc:>9} "
              f"{r['tstr-balanced-accuracy']:>9.3f} {r['trtr-accuracy']:>9.3f} "
              f"{r['majority-class']:>9.3f} {gains:>21} "
              f"{r['frechet-distance']:>7.3f} {train_s:>8}")
    for r in results:
        for site in r["per-site"]:
            gains = ", ".join(f"{m} {g:+.3f}" for m, g in site["held-out-gain-by-metric"].items())
            print(f"  eps {r['epsilon']:g} seed {r['seed']} {site['site']:<8} "
                  f"{site['records']:>6} records, lacks {len(site['classes-absent'])}: "
                  f"{site['recommendation']}; held-out gain as decided by {gains}; if always "
                  f"used {site['held-out-gain-if-always-used']:+.3f}")
    for b, s in summary.items():
        parts = [f"{k} mean {v['mean']:.3f} worst {v['worst']:.3f}" for k, v in s.items()]
        print(f"epsilon {b} ({args.split} split): " + "; ".join(parts))
    for run, figures in spread.items():
        parts = [f"{k} {v['mean']:.3f} +- {v['sd']:.3f} ({v['lowest']:.3f}-{v['highest']:.3f})"
                 for k, v in figures.items()]
        print(f"{run} over {len(eval_seeds)} evaluation seeds: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
