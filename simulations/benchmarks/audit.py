"""Empirical DP audit of one site: accounted epsilon next to the one-run lower bound.

For each scenario (the default ``fedaug simulate`` scenario on the built-in digits, and the
PneumoniaMNIST scenario when ../shared/data holds it) and each budget, the median-sized site
of the scenario's partition plans its run exactly as a site does (its noisy count release, its
warm-start release, then ``plan_round`` for all rounds of the run, through the client's own
code), and its whole DP-SGD run is audited once with white-box gradient canaries (and, on
the digits, once with mislabelled input-space canaries). Every row prints the accounted
epsilon of the audited DP-SGD run, the empirical 95% lower bound and the wall time.

    python simulations/benchmarks/audit.py                # both scenarios, epsilon 10 and 1
    python simulations/benchmarks/audit.py --quick        # digits only, fewer canaries
    python simulations/benchmarks/audit.py --json         # one JSON object
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]

from fedaug.client.count import released_count  # noqa: E402
from fedaug.client.site import SiteContext, load_site_data, open_ledger  # noqa: E402
from fedaug.client.train import plan_round  # noqa: E402
from fedaug.config import RunConfig  # noqa: E402
from fedaug.data import load_image_source, partition  # noqa: E402
from fedaug.evaluate.dp_audit import (  # noqa: E402
    DPTrainingPlan,
    audit_gradient_canaries,
    audit_input_canaries,
    site_augmenter,
    site_generator,
)
from fedaug.generator.recipe import resolve_for_data  # noqa: E402
from fedaug.privacy.planner import warmup_noise_multipliers  # noqa: E402
from fedaug.scenario import load_scenario  # noqa: E402

PNEUMONIA = ROOT.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"


def median_site(run: RunConfig, num_sites: int) -> int:
    """The partition index of the median-sized site of the scenario."""
    full = load_image_source(run.data, split="train", size=run.image_size or None,
                             seed=run.seed, labels=run.labels or None)
    parts = partition(full.labels, num_sites, scheme=run.partition, alpha=run.alpha,
                      seed=run.seed)
    return int(np.argsort([len(p) for p in parts], kind="stable")[num_sites // 2])


def site_plan(scenario: Path, epsilon: float, workdir: Path, *, data: str | None = None
              ) -> tuple[RunConfig, object, DPTrainingPlan, dict]:
    """The median site's data and its DP-SGD plan for the whole run, as the site itself
    derives it."""
    overrides = {"epsilon": epsilon, **({"data": data} if data else {})}
    mapping = load_scenario(scenario, overrides)
    num_sites = int(mapping.pop("num-sites", 1))
    run = RunConfig.from_mapping(mapping, source=str(scenario))
    index = median_site(run, num_sites)
    site = SiteContext(name=f"site-{index}", state_dir=workdir / "state", data=run.data,
                       partition_id=index, num_partitions=num_sites, epsilon_budget=epsilon,
                       delta=run.delta, registry_dir=workdir / "registry", labels=run.labels)
    records = load_site_data(site, run)
    run = resolve_for_data(run, records)
    ledger, planner = open_ledger(site, records)
    run_id = "audit"
    count = released_count(site, ledger, planner, num_examples=len(records), run_id=run_id,
                           server_round=1)
    if run.warmup_noise_multiplier > 0:  # the warm-start releases spend before DP-SGD
        sigmas = warmup_noise_multipliers(run.warmup_noise_multiplier, planner,
                                          spread=run.warmup_spread > 0)
        if sigmas is not None:
            for sigma_w, release in zip(sigmas, ("warm-start", "warm-start-spread"), strict=True):
                if sigma_w is not None:
                    ledger.append(mechanism="gaussian", noise_multiplier=sigma_w,
                                  sample_rate=1.0, steps=1, run=run_id, round=0,
                                  release=release)
    settings = run.train_settings()
    rp = plan_round(site, ledger, planner, settings, count=count, run_id=run_id,
                    server_round=1, num_rounds=run.num_server_rounds)
    plan = DPTrainingPlan(noise_multiplier=rp.noise_multiplier, sample_rate=rp.sample_rate,
                          steps=rp.steps * run.num_server_rounds,
                          max_grad_norm=settings.max_grad_norm,
                          learning_rate=settings.learning_rate,
                          expected_batch_size=rp.expected_batch_size, delta=run.delta,
                          noise_multiplicity=settings.noise_multiplicity,
                          noise_levels=settings.noise_levels,
                          augment=settings.augment, rounds=run.num_server_rounds,
                          budget=epsilon)
    spent_before = ledger.epsilon()
    ledger.append(mechanism="dp-sgd", noise_multiplier=plan.noise_multiplier,
                  sample_rate=plan.sample_rate, steps=plan.steps, run=run_id, round=1,
                  release="dp-sgd")
    info = {"site": index, "records": len(records), "released-count": round(count, 1),
            "epsilon-before-dp-sgd": spent_before, "site-epsilon-total": ledger.epsilon()}
    return run, records, plan, info


def audit_site(label: str, scenario: Path, epsilon: float, *, num_canaries: int,
               input_canaries: int, data: str | None = None) -> list[dict]:
    """Audit the median site of ``scenario`` at ``epsilon``: one row per audit."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run, records, plan, info = site_plan(scenario, epsilon, Path(tmp), data=data)
    unet, scheduler, config = site_generator(run, records)
    augment = site_augmenter(run) if plan.augment else None
    audits = [("gradient", lambda: audit_gradient_canaries(
        unet, scheduler, records, plan, num_canaries=num_canaries, augment=augment, seed=0))]
    if input_canaries:
        audits.append(("input (mislabelled)", lambda: audit_input_canaries(
            unet, scheduler, records, plan, num_canaries=input_canaries, kind="mislabelled",
            augment=augment, seed=0)))
    for kind, audit in audits:
        report = audit()
        r = report.result
        rows.append({
            "scenario": label, "budget": epsilon, "canaries": kind,
            "num-canaries": r.num_canaries, **info,
            "noise-multiplier": plan.noise_multiplier, "sample-rate": plan.sample_rate,
            "steps": plan.steps, "image-size": config.image_size,
            "accounted-epsilon": report.accounted_epsilon, "delta": plan.delta,
            "epsilon-lower-bound": r.epsilon_lower, "num-guesses": r.num_guesses,
            "num-correct": r.num_correct, "verdict": report.verdict,
            "seconds": report.seconds,
        })
        print(f"  {label}, eps {epsilon:g}, {kind}: accounted {report.accounted_epsilon:.3f}, "
              f"lower bound {r.epsilon_lower:.3f}, {report.seconds:.0f} s", file=sys.stderr,
              flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="digits only, fewer canaries")
    p.add_argument("--epsilons", default="10,1", help="budgets (10,1)")
    p.add_argument("--num-canaries", type=int, default=2000, help="gradient canaries (2000)")
    p.add_argument("--input-canaries", type=int, default=200,
                   help="input-space canaries on the digits (200; 0 = skip)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    epsilons = [float(e) for e in args.epsilons.split(",") if e.strip()]
    m = 500 if args.quick else args.num_canaries
    t0 = time.perf_counter()
    rows = []
    for eps in epsilons:
        rows += audit_site("digits (default)", ROOT / "simulations" / "default.toml", eps,
                           num_canaries=m, input_canaries=0 if args.quick else args.input_canaries)
    if not args.quick and PNEUMONIA.exists():
        for eps in epsilons:
            rows += audit_site("PneumoniaMNIST", ROOT / "simulations" / "pneumonia.toml", eps,
                               num_canaries=m, input_canaries=0, data=str(PNEUMONIA))
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
        "rows": rows, "seconds": time.perf_counter() - t0,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'scenario':<18} {'eps':>4} {'canaries':<20} {'m':>5} {'site':>4} {'records':>7} "
          f"{'sigma':>6} "
          f"{'q':>6} {'steps':>5} {'accounted':>9} {'lower':>6} {'verdict':<10} {'time':>6}")
    for r in rows:
        print(f"{r['scenario']:<18} {r['budget']:>4g} {r['canaries']:<20} {r['num-canaries']:>5} "
              f"{r['site']:>4} {r['records']:>7} {r['noise-multiplier']:>6.3f} "
              f"{r['sample-rate']:>6.3f} "
              f"{r['steps']:>5} {r['accounted-epsilon']:>9.3f} {r['epsilon-lower-bound']:>6.3f} "
              f"{r['verdict']:<10} {r['seconds']:>5.0f}s")
    print(result["machine"])
    print(f"total {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
