"""Quality benchmark: does the federated DP generator help on PneumoniaMNIST?

5 sites, Dirichlet alpha 0.5, epsilon 10 per site (delta 1e-5), then the same at epsilon 1,
with the recipe in simulations/pneumonia.toml (its ``[per-epsilon.1]`` table at epsilon 1;
``--set KEY=VALUE`` overrides both). Reports TSTR accuracy and AUC on the official test
split, the real-data reference (TRTR), the smallest site's gain from the federated synthetic
data, fidelity and wall time.

    python simulations/benchmarks/quality.py                 # both budgets, table
    python simulations/benchmarks/quality.py --epsilon 10 --json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]

from fedaug.config import RunConfig  # noqa: E402
from fedaug.data import load_image_source, partition  # noqa: E402
from fedaug.evaluate.report import evaluate_generator  # noqa: E402
from fedaug.scenario import load_scenario  # noqa: E402
from fedaug.simulations.run import simulate  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"
SCENARIO = ROOT / "simulations" / "pneumonia.toml"


def run_one(*, data: Path, epsilon: float, sites: int, alpha: float, seed: int, out: Path,
            overrides: dict, num_samples: int) -> dict:
    mapping = load_scenario(SCENARIO, {"data": str(data), "epsilon": epsilon, "alpha": alpha,
                                       "seed": seed, "out-dir": str(out), **overrides})
    mapping.pop("num-sites", None)
    run = RunConfig.from_mapping(mapping, source="quality benchmark")
    t0 = time.perf_counter()
    strategy = simulate(run, num_sites=sites, progress=False, audit=False)
    train_s = time.perf_counter() - t0
    train = load_image_source(str(data), split="train", seed=seed)
    test = load_image_source(str(data), split="test", seed=seed)
    parts = partition(train.labels, sites, scheme=run.partition, alpha=alpha, seed=seed)
    smallest = min(parts, key=len)
    report = evaluate_generator(out / "global", train, test, num_samples=num_samples,
                                small_site=train.subset(smallest), seed=seed,
                                steps=run.sample_steps, out_dir=out / "report")
    gain = report["augmentation-gain"]
    return {
        "epsilon": epsilon,
        "epsilon-spent-max": max(s["epsilon"] for s in strategy.site_cards()),
        "sites": sites,
        "alpha": alpha,
        "tstr-accuracy": report["utility"]["tstr"]["accuracy"],
        "tstr-auc": report["utility"]["tstr"]["roc-auc"],
        "tstr-augment-accuracy": report["utility"]["tstr+augment"]["accuracy"],
        "tstr-augment-auc": report["utility"]["tstr+augment"]["roc-auc"],
        "trtr-accuracy": report["utility"]["trtr"]["accuracy"],
        "trtr-auc": report["utility"]["trtr"]["roc-auc"],
        "smallest-site-size": int(len(smallest)),
        "small-site-local-accuracy": gain["local"]["accuracy"],
        "small-site-augment-accuracy": gain["local+augment"]["accuracy"],
        "small-site-synthetic-accuracy": gain["local+augment+synthetic"]["accuracy"],
        "small-site-gain": gain["gain-synthetic"],
        "small-site-gain-over-augment": gain["gain-synthetic-over-augment"],
        "small-site-accuracy-per-seed": {k: gain[k]["accuracy-per-seed"] for k in (
            "local", "local+augment", "local+augment+synthetic")},
        "frechet-distance": report["fidelity"]["frechet-distance"],
        "detail-ratio": report["fidelity"]["detail-ratio"],
        "precision": report["fidelity"]["precision"],
        "recall": report["fidelity"]["recall"],
        "memorization-rate": report["privacy-audit"]["memorization-rate"],
        "membership-inference-auc": report["privacy-audit"]["membership-inference-auc"],
        "train-wall-s": train_s,
        "wall-s": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="PneumoniaMNIST .npz")
    p.add_argument("--epsilon", type=float, action="append",
                   help="budget(s) per site (default: 10 and 1)")
    p.add_argument("--sites", type=int, default=5)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=2000, help="synthetic samples for TSTR")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="run-config override, e.g. --set num-server-rounds=5")
    p.add_argument("--out", type=Path, help="keep outputs here (default: a temporary folder)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    overrides = {}
    for item in args.set:
        k, _, v = item.partition("=")
        overrides[k] = json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = args.out or Path(tmp)
        for eps in args.epsilon or [10.0, 1.0]:
            results.append(run_one(data=args.data, epsilon=eps, sites=args.sites,
                                   alpha=args.alpha, seed=args.seed, out=base / f"eps{eps:g}",
                                   overrides=overrides, num_samples=args.num_samples))
    out = results[0] if len(results) == 1 else {"runs": results, **results[0]}
    if args.json:
        print(json.dumps(out, indent=2, default=float))
        return 0
    print(f"{'epsilon':>8} {'TSTR acc':>9} {'TSTR AUC':>9} {'TRTR acc':>9} {'small site':>22} "
          f"{'FD':>7} {'MIA AUC':>8} {'wall s':>7}")
    for r in results:
        print(f"{r['epsilon']:>8g} {r['tstr-accuracy']:>9.3f} {r['tstr-auc']:>9.3f} "
              f"{r['trtr-accuracy']:>9.3f} {r['small-site-local-accuracy']:>7.3f} -> "
              f"{r['small-site-synthetic-accuracy']:.3f} ({r['small-site-gain']:+.3f}) "
              f"{r['frechet-distance']:>7.3f} {r['membership-inference-auc']:>8.3f} "
              f"{r['wall-s']:>7.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
