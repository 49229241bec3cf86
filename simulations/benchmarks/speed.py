"""Speed and scale benchmark: DP vs non-DP training, fast sampler vs DDPM, 100 simulated
sites, traffic per site and round. Everything measured side by side in one run.

    python simulations/benchmarks/speed.py            # table
    python simulations/benchmarks/speed.py --json     # one JSON object
    python simulations/benchmarks/speed.py --quick    # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]

from fedaug.config import RunConfig  # noqa: E402
from fedaug.data import load_digits_builtin, load_medmnist, partition  # noqa: E402
from fedaug.evaluate import (  # noqa: E402
    classification_report,
    frechet_distance,
    train_classifier,
)
from fedaug.generator import (  # noqa: E402
    GeneratorConfig,
    build_train_scheduler,
    build_unet,
    load_generator,
    sample_images,
    sample_rate_for,
    to_uint8,
    train_dp,
    train_nondp,
)
from fedaug.generator.recipe import resolve_for_data  # noqa: E402
from fedaug.privacy import NoiseSource  # noqa: E402
from fedaug.scenario import load_scenario  # noqa: E402


def _model(run: RunConfig, data) -> tuple:
    cfg = GeneratorConfig(image_size=data.image_shape[0], channels=data.image_shape[2],
                          num_classes=data.num_classes, block_out_channels=run.channels_tuple,
                          layers_per_block=run.layers_per_block,
                          prediction_type=run.prediction_type)
    torch.manual_seed(0)
    return build_unet(cfg), build_train_scheduler(cfg), cfg


def _pneumonia_path() -> Path:
    return ROOT.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"


def pneumonia_scenario_run() -> RunConfig:
    """The generator settings of the quality scenario (simulations/pneumonia.toml).

    Its sites of 512 films or more take Poisson steps of expected size ``batch-size`` (512),
    so a step of that size on the 28x28 films is the DP step that run actually takes.
    """
    scenario = load_scenario(ROOT / "simulations" / "pneumonia.toml")
    scenario.pop("num-sites", None)
    run = RunConfig.from_mapping(scenario, source="simulations/pneumonia.toml")
    return resolve_for_data(run, load_medmnist(_pneumonia_path(), split="train"))


def bench_training(run: RunConfig, *, steps: int, batch: int, data=None,
                   threads: tuple[int, ...] = (1, 2)) -> dict:
    """The generator's DP-SGD step against the same model, batch and K without DP.

    Both sides run ``steps`` steps of the same objective (K draws per example); the DP side
    is the sites' own ``train_dp`` (Poisson batches of expected size ``batch``, per-example
    gradients, clipping, noise), the other a plain ``train_nondp`` step. Each side runs at
    every torch thread count n in ``threads``. ``dp-over-nondp`` compares each side at its
    fastest setting on this machine; ``dp-over-nondp-1-core`` compares both on one thread
    (``threads`` must include 1).
    Configurations are interleaved, three passes; the median of each counts.
    """
    data = data if data is not None else load_digits_builtin(split="train")
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.from_numpy(data.labels)
    k = run.noise_multiplicity
    before = torch.get_num_threads()
    # "dp" draws from the secure source (ChaCha20, the default); "dp-os" from torch's
    # generator seeded from os.urandom: their ratio is what the secure source costs
    configs = [(mode, n) for mode in ("nondp", "dp") for n in threads] + [("dp-os", 1)]
    rates: dict[str, list[float]] = {}
    try:
        for _ in range(3):
            for mode, n in configs:
                torch.set_num_threads(n)
                unet, sched, _ = _model(run, data)
                if mode.startswith("dp"):
                    q = sample_rate_for(len(x), batch)
                    r = train_dp(unet, sched, x, y, steps=steps, sample_rate=q,
                                 noise_multiplier=1.0, max_grad_norm=run.max_grad_norm,
                                 learning_rate=run.learning_rate, noise_multiplicity=k,
                                 expected_batch_size=q * len(x),
                                 noise=NoiseSource(secure=mode == "dp"))
                    rate = r.examples_seen / r.seconds
                else:
                    r = train_nondp(unet, sched, x, y, steps=steps, batch_size=batch,
                                    learning_rate=run.learning_rate, noise_multiplicity=k)
                    rate = steps * batch / r.seconds
                rates.setdefault(f"{mode}-{n}-threads", []).append(rate)
    finally:
        torch.set_num_threads(before)
    med = {key: float(np.median(v)) for key, v in rates.items()}
    best_nondp = max((f"nondp-{n}-threads" for n in threads), key=med.__getitem__)
    best_dp = max((f"dp-{n}-threads" for n in threads), key=med.__getitem__)
    nondp, dp = med[best_nondp], med[best_dp]
    return {"nondp-examples-per-s": nondp, "dp-examples-per-s": dp, "dp-over-nondp": nondp / dp,
            "nondp-setting": best_nondp, "dp-setting": best_dp,
            "dp-over-nondp-1-core": med["nondp-1-threads"] / med["dp-1-threads"],
            "secure-noise-cost-1-core": med["dp-os-1-threads"] / med["dp-1-threads"] - 1.0,
            "examples-per-s": med, "noise-multiplicity": k, "batch": batch,
            "image-size": int(data.image_shape[0])}


def default_run_site(run: RunConfig):
    """The median-sized site of the default ``fedaug simulate`` scenario (built-in digits).

    With the default ``batch-size`` every site of that run takes full-batch DP steps
    (q = 1), so one step on this site is the DP step the default run actually takes.
    """
    scenario = load_scenario(ROOT / "simulations" / "default.toml")
    data = load_digits_builtin(split="train")
    parts = partition(data.labels, int(scenario["num-sites"]), scheme=scenario["partition"],
                      alpha=float(scenario["alpha"]), seed=int(scenario["seed"]))
    site = data.subset(sorted(parts, key=len)[len(parts) // 2])
    return site, min(run.batch_size, len(site.labels))


def bench_sampling(run: RunConfig, *, train_steps: int, n: int, ddim_steps: int,
                   sweep: tuple[int, ...] = (50, 10), seeds: tuple[int, ...] = (1, 2)) -> dict:
    """DDIM at ``ddim_steps`` against 1000-step DDPM on one (non-DP trained) model.

    Frechet distances are the mean over ``seeds`` (sample sets differ by seed by a few per
    cent); ``sweep`` adds other DDIM step counts for the table.
    """
    data = load_digits_builtin(split="train")
    test = load_digits_builtin(split="test")
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.from_numpy(data.labels)
    unet, sched, _ = _model(run, data)
    train_nondp(unet, sched, x, y, steps=train_steps, batch_size=128, learning_rate=2e-3)
    labels = (np.arange(n) % data.num_classes).tolist()
    clf = train_classifier(data.images, data.labels, num_classes=data.num_classes, epochs=8)
    real = clf.features(test.images)

    def run_sampler(sampler: str, steps: int) -> tuple[float, float]:
        fds, secs = [], 0.0
        for seed in seeds:
            t0 = time.perf_counter()
            imgs = to_uint8(sample_images(unet, sched, labels, num_inference_steps=steps,
                                          sampler=sampler, seed=seed))
            secs += time.perf_counter() - t0
            fds.append(frechet_distance(real, clf.features(imgs)))
        return n * len(seeds) / secs, float(np.mean(fds))

    slow_rate, fd_slow = run_sampler("ddpm", 1000)
    fast_rate, fd_fast = run_sampler("ddim", ddim_steps)
    sweep_out = {}
    for steps in sweep:
        rate, fd = run_sampler("ddim", steps)
        sweep_out[str(steps)] = {"samples-per-s": rate, "speedup": rate / slow_rate,
                                 "frechet": fd}
    return {"ddim-steps": ddim_steps, "ddim-samples-per-s": fast_rate,
            "ddpm-samples-per-s": slow_rate, "sampler-speedup": fast_rate / slow_rate,
            "ddim-frechet": fd_fast, "ddpm-frechet": fd_slow,
            "frechet-ratio": fd_fast / fd_slow if fd_slow > 0 else float("nan"),
            "num-samples": n, "ddim-sweep": sweep_out}


def bench_float16_quality(run: RunConfig, *, rounds: int, repeats: int, n: int) -> dict:
    """The same federation (default 5 sites, built-in digits) with float32 and float16
    transfer, ``repeats`` runs each, interleaved; TSTR accuracy and Frechet distance of
    ``n`` samples of each global model.

    DP noise is drawn from OS entropy, so no two runs are equal even in float32: the
    float32 runs' own spread is the yardstick a float16 loss must exceed to be measurable.
    """
    from fedaug.simulations.run import simulate

    train = load_digits_builtin(split="train")
    test = load_digits_builtin(split="test")
    clf = train_classifier(train.images, train.labels, num_classes=train.num_classes,
                           epochs=8)
    real = clf.features(test.images)
    labels = (np.arange(n) % train.num_classes).tolist()
    out: dict[str, dict[str, list[float]]] = {}
    for dtype in ("float32", "float16") * repeats:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = RunConfig.from_mapping({**run.to_mapping(), "out-dir": tmp,
                                          "num-server-rounds": rounds,
                                          "transfer-dtype": dtype}, source="benchmark")
            simulate(cfg, num_sites=5, progress=False, audit=False)
            unet, sched, _ = load_generator(Path(tmp) / "global")
            imgs = to_uint8(sample_images(unet, sched, labels, seed=1))
        ys = np.asarray(labels)
        synth = train_classifier(imgs, ys, num_classes=train.num_classes, epochs=8)
        acc = float(classification_report(synth, test.images, test.labels)["accuracy"])
        fd = frechet_distance(real, clf.features(imgs))
        entry = out.setdefault(dtype, {"tstr-accuracy": [], "frechet": []})
        entry["tstr-accuracy"].append(acc)
        entry["frechet"].append(fd)
    return {"rounds": rounds, "runs-per-dtype": repeats, **out}


_CHILD = r"""
import json, sys, time
def peak_rss_mb():
    # VmHWM of this process's own address space: getrusage's ru_maxrss survives execve on
    # Linux, so a child started by a large parent would report the parent's size.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
import torch; torch.set_num_threads({threads})
from fedaug.config import RunConfig
from fedaug.simulations.run import simulate
run = RunConfig.from_mapping({mapping!r}, source="benchmark")
t0 = time.perf_counter()
s = simulate(run, num_sites={sites}, progress=False, audit=False)
print(json.dumps({{"wall-s": time.perf_counter() - t0,
  "peak-rss-mb": peak_rss_mb(),
  "rounds": len(s.rounds), "aggregated": [r.aggregated for r in s.rounds],
  "bytes-down": s.rounds[-1].bytes_down_per_site, "bytes-up": s.rounds[-1].bytes_up_per_site}}))
"""


def bench_scale(run: RunConfig, *, sites: int, selected: int, rounds: int, threads: int,
                transfer: str = "float32") -> dict:
    """A simulated federation in a fresh process; its peak RSS and traffic per site."""
    with tempfile.TemporaryDirectory() as tmp:
        mapping = {**run.to_mapping(), "out-dir": tmp, "num-server-rounds": rounds,
                   "fraction-train": selected / sites, "min-sites": min(selected, 2),
                   "local-steps": 2, "samples-per-class": 1, "sample-steps": 5,
                   "transfer-dtype": transfer}
        code = _CHILD.format(root=str(ROOT), threads=threads, mapping=mapping, sites=sites)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        return json.loads(proc.stdout.strip().splitlines()[-1])


def _train_row(label: str, r: dict) -> tuple[str, str, str, str]:
    return (label, f"{r['dp-examples-per-s']:.1f} ex/s ({r['dp-setting'][3:]})",
            f"non-DP {r['nondp-examples-per-s']:.1f} ex/s ({r['nondp-setting'][6:]})",
            f"{r['dp-over-nondp']:.2f}x slower (1 thread: {r['dp-over-nondp-1-core']:.2f}x; "
            f"secure noise {100 * r['secure-noise-cost-1-core']:+.1f}%)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="fewer steps and samples")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    p.add_argument("--training-only", action="store_true",
                   help="only the DP-vs-non-DP step rows (with the secure noise source's cost)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = resolve_for_data(RunConfig(), load_digits_builtin(split="train"))
    q = args.quick
    t0 = time.perf_counter()
    # training: each side at every thread count this machine offers (up to 2)
    tt = (1, 2) if (os.cpu_count() or 1) >= 2 else (1,)
    train = bench_training(run, steps=3 if q else 30, batch=64, threads=tt)
    site, site_batch = default_run_site(run)
    site_train = bench_training(run, steps=2 if q else max(8, 7680 // site_batch),
                                batch=site_batch, data=site, threads=tt)
    pneumonia = scenario_step = None
    if _pneumonia_path().exists():  # the quality scenario's 28x28 images, when beside us
        pneu = load_medmnist(_pneumonia_path(), split="train")
        pneumonia = bench_training(run, steps=2 if q else 10, batch=64, data=pneu, threads=tt)
        scen = pneumonia_scenario_run()
        scenario_step = bench_training(scen, steps=1 if q else 4, batch=scen.batch_size,
                                       data=pneu, threads=tt)
    if args.training_only:
        rows = [_train_row(label, r) for label, r in (
            ("DP-SGD step, 8x8, batch 64", train), (f"  default run, batch {site_batch}",
                                                    site_train),
            ("DP-SGD step, 28x28, b 64", pneumonia),
            ("  quality scenario", scenario_step)) if r is not None]
        for r in rows:
            print(f"{r[0]:<26} {r[1]:<24} {r[2]:<28} {r[3]}")
        return 0
    sampling = bench_sampling(run, train_steps=100 if q else 1500, n=20 if q else 200,
                              ddim_steps=run.sample_steps)
    small = bench_scale(run, sites=10, selected=10, rounds=1, threads=args.threads)
    big = bench_scale(run, sites=100, selected=10, rounds=2 if q else 3, threads=args.threads)
    half = bench_scale(run, sites=10, selected=10, rounds=1, threads=args.threads,
                       transfer="float16")
    f16 = bench_float16_quality(run, rounds=2 if q else 15, repeats=1 if q else 2,
                                n=100 if q else 500)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"torch {torch.__version__}, {args.threads} thread(s)",
        # the headline: the slowest of the DP steps the shipped recipes take
        "dp-over-nondp": max(r["dp-over-nondp"] for r in (site_train, scenario_step) if r),
        "dp-over-nondp-measures": "default run" + (" and quality scenario" if scenario_step
                                                    else ""),
        **{f"batch-64-{k}": v for k, v in train.items()},
        **{f"default-run-{k}": v for k, v in site_train.items()},
        **({f"pneumonia-{k}": v for k, v in pneumonia.items()} if pneumonia else {}),
        **({f"quality-scenario-{k}": v for k, v in scenario_step.items()}
           if scenario_step else {}),
        **sampling,
        "sites-10-peak-rss-mb": small["peak-rss-mb"],
        "sites-100-peak-rss-mb": big["peak-rss-mb"],
        "sites-100-wall-s": big["wall-s"],
        "sites-100-aggregated-per-round": big["aggregated"],
        "bytes-per-site-round": big["bytes-up"] + big["bytes-down"],
        "bytes-per-site-round-float16": half["bytes-up"] + half["bytes-down"],
        "float16-quality": f16,
        "wall-s": time.perf_counter() - t0,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    rows = [
        *[_train_row(label, r) for label, r in (
            ("DP-SGD step, 8x8, batch 64", train),
            (f"  default run, batch {site_batch}", site_train),
            ("DP-SGD step, 28x28, b 64", pneumonia),
            (f"  quality scenario, b {scenario_step and scenario_step['batch']}",
             scenario_step)) if r is not None],
        (f"DDIM {sampling['ddim-steps']} steps", f"{sampling['ddim-samples-per-s']:.1f} samples/s",
         f"DDPM 1000: {sampling['ddpm-samples-per-s']:.2f}/s",
         f"{sampling['sampler-speedup']:.1f}x faster, FD ratio {sampling['frechet-ratio']:.2f}"),
        *[(f"  DDIM {k} steps", f"{v['samples-per-s']:.1f} samples/s", f"FD {v['frechet']:.2f}",
           f"{v['speedup']:.1f}x") for k, v in sampling["ddim-sweep"].items()],
        ("100 sites, 10 per round", f"peak RSS {big['peak-rss-mb']:.0f} MB",
         f"10 sites: {small['peak-rss-mb']:.0f} MB", f"{big['wall-s']:.0f} s"),
        ("traffic per site-round", f"{result['bytes-per-site-round'] / 1e3:.0f} kB",
         f"float16: {result['bytes-per-site-round-float16'] / 1e3:.0f} kB",
         f"{result['bytes-per-site-round-float16'] / result['bytes-per-site-round']:.2f}x"),
    ]
    for dtype in ("float32", "float16"):
        d = f16[dtype]
        rows.append((f"  {dtype}, {f16['rounds']} rounds", "TSTR acc " + ", ".join(
            f"{a:.3f}" for a in d["tstr-accuracy"]), "FD " + ", ".join(
            f"{v:.2f}" for v in d["frechet"]), f"{len(d['frechet'])} run(s)"))
    print(result["machine"])
    for r in rows:
        print(f"{r[0]:<26} {r[1]:<24} {r[2]:<28} {r[3]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
