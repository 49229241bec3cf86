"""``fedaug evaluate`` / ``fedaug audit``: does the global generator help, and does it leak?"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from fedaug.atomic import atomic_write_bytes, atomic_write_json
from fedaug.augment import Policy, numpy_augmenter
from fedaug.config import DEFAULT_SAMPLE_STEPS
from fedaug.data import ImageDataset
from fedaug.evaluate.classifier import Classifier, classification_report, train_classifier
from fedaug.evaluate.fidelity import fidelity_report
from fedaug.evaluate.privacy_audit import loss_threshold_attack, memorization_report
from fedaug.generator import load_generator, make_grid, sample_images, to_uint8
from fedaug.generator.generate import model_labels, synthetic_labels
from fedaug.generator.model import diffusion_target

__all__ = ["SAMPLES_PER_CLASS", "STAGES", "diffusion_loss_fn", "privacy_audit",
           "evaluate_generator", "small_site_subset"]

#: The stages of :func:`evaluate_generator`, in order; each gets a progress bar when asked.
STAGES = ("sampling", "TSTR classifier", "TRTR classifier", "small-site seeds", "fidelity",
          "privacy audit")

#: Synthetic samples per class the report trains its TSTR classifier on by default. The
#: number grows with the classes: on the 10-class digits (validation split, same global
#: models) 2,000 samples gave TSTR accuracy 0.836-0.857 and 10,000 gave 0.875-0.906, while on
#: the 2-class PneumoniaMNIST 10,000 samples changed nothing against 2,000.
SAMPLES_PER_CLASS = 1000


def _bar(desc: str, total: int, enabled: bool, unit: str) -> Any:
    """A tqdm bar on stderr for one stage, or a silent stand-in when not ``enabled``."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)


def diffusion_loss_fn(unet: Any, scheduler: Any, *, draws: int = 8, seed: int = 0
                      ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Per-example denoising loss averaged over ``draws`` fixed (timestep, noise) draws.

    The same draws score every example, so members and non-members are scored alike
    (the loss-threshold membership attack of Yeom et al. 2018, on the diffusion loss).
    """
    alphas = scheduler.alphas_cumprod.float()
    t_max = scheduler.config.num_train_timesteps
    g = torch.Generator().manual_seed(seed)
    ts = torch.linspace(0, t_max - 1, draws).long()

    @torch.no_grad()
    def loss(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        x0 = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        y = torch.from_numpy(np.asarray(labels)).long()
        total = torch.zeros(len(x0))
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
        for t in ts:
            noise = torch.randn(x0.shape, generator=gen)
            a = alphas[t]
            noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
            pred = unet(noisy, t.expand(len(x0)), class_labels=y).sample
            target = diffusion_target(scheduler.config.prediction_type, x0, noise, a)
            total += ((pred - target) ** 2).mean(dim=(1, 2, 3))
        return (total / len(ts)).numpy()

    return loss


def _sample(model_dir: str | Path, labels: np.ndarray, *, steps: int, seed: int,
            progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    unet, scheduler, config = load_generator(model_dir)
    images = to_uint8(sample_images(unet, scheduler, labels.tolist(), num_inference_steps=steps,
                                    seed=seed, progress=progress, **config.guidance))
    return images, labels.astype(np.int64)


def privacy_audit(model_dir: str | Path, train: ImageDataset, holdout: ImageDataset, *,
                  num_samples: int = 500, steps: int = DEFAULT_SAMPLE_STEPS, seed: int = 0,
                  synthetic: tuple[np.ndarray, np.ndarray] | None = None,
                  progress: bool = False) -> dict[str, Any]:
    """Memorization (distance to closest record, train vs holdout) and a membership-
    inference attack (loss threshold on the diffusion loss) against the global generator.

    ``train`` should be the records the generator was trained on (all sites' training
    data), ``holdout`` real records it never saw. ``progress`` shows a bar of the two
    parts on stderr (and the sampling bar when samples are drawn here).
    """
    unet, scheduler, config = load_generator(model_dir)
    if synthetic is None:
        synthetic = _sample(model_dir, synthetic_labels(num_samples, config.num_classes),
                            steps=steps, seed=seed, progress=progress)
    with _bar("privacy audit", 2, progress, "part") as bar:
        mem = memorization_report(synthetic[0], train.images, holdout.images, seed=seed)
        bar.update(1)
        n = min(len(train), len(holdout), 1000)
        rng = np.random.default_rng(seed)
        mi = rng.choice(len(train), n, replace=False)
        ni = rng.choice(len(holdout), n, replace=False)
        attack = loss_threshold_attack(diffusion_loss_fn(unet, scheduler, seed=seed),
                                       (train.images[mi], train.labels[mi]),
                                       (holdout.images[ni], holdout.labels[ni]))
        bar.update(1)
    return {
        "memorization-rate": mem["memorization-rate"],
        "dcr-train-median": mem["dcr-train-median"],
        "dcr-holdout-median": mem["dcr-holdout-median"],
        "membership-inference-auc": attack["auc"],
        "membership-inference-advantage": attack["advantage"],
        "num-synthetic": int(len(synthetic[0])),
        "num-members": n,
        "num-nonmembers": n,
        "definition": "memorization-rate: fraction of synthetic samples whose nearest "
                      "training record is closer than half their nearest holdout record; "
                      "membership-inference-auc: loss-threshold attack on the per-example "
                      "diffusion loss (0.5 = no leakage)",
    }


def small_site_subset(data: ImageDataset, size: int, *, seed: int = 0) -> ImageDataset:
    """A small site: ``size`` random training records (at least one per class if possible)."""
    rng = np.random.default_rng(seed)
    first = [rng.choice(np.flatnonzero(data.labels == c)) for c in range(data.num_classes)
             if np.any(data.labels == c)]
    rest = rng.permutation(np.setdiff1d(np.arange(len(data)), first))
    idx = np.sort(np.concatenate([first, rest[:max(0, size - len(first))]]).astype(np.int64))
    return data.subset(idx)


#: Small-site training: every classifier gets the same number of optimizer steps (epochs x
#: ceil(N / batch)); 8 epochs of batch 64 would be 8 steps on 44 records, an undertrained
#: baseline that makes any other variant look good.
SMALL_SITE_EPOCHS, SMALL_SITE_BATCH = 30, 16
#: Fine-tuning the synthetic-pretrained classifier on the site's records.
FINETUNE_LR = 5e-4
#: Classifier seeds averaged per small-site figure (a few dozen records swing a single
#: seed's accuracy by several points).
SMALL_SITE_SEEDS = 3
#: Loss weighting of every small-site classifier (see train_classifier). Small sites are
#: often almost one class (3 normal and 192 pneumonia films in one benchmark partition);
#: unweighted, every variant there predicted the majority class, and a baseline that
#: ignores the imbalance flatters whatever is compared with it.
SMALL_SITE_CLASS_WEIGHT: str | None = "balanced"


def small_site_gain(small_site: ImageDataset, test: ImageDataset, syn_x: np.ndarray,
                    syn_y: np.ndarray, *, pretrained: Classifier | None = None,
                    policy: Policy | None = None, seed: int = 0, epochs: int = 8,
                    seeds: int = SMALL_SITE_SEEDS, site_epochs: int = SMALL_SITE_EPOCHS,
                    progress: Callable[[int], object] | None = None) -> dict[str, Any]:
    """What the federation's synthetic data is worth to one small site.

    Three classifiers, each the mean of ``seeds`` seeds (:data:`SMALL_SITE_SEEDS`), all
    with the same training budget (``site_epochs``) and loss weighting
    (:data:`SMALL_SITE_CLASS_WEIGHT`) on the site's records: ``local`` (its records only),
    ``local+augment`` (with the sample-level ``policy``) and ``local+augment+synthetic``
    (pretrained on the synthetic samples for ``epochs``, then fine-tuned on its records
    with the policy: how a site uses a synthetic set far larger and cleaner than its own
    data). ``pretrained`` is reused for the first seed (the TSTR classifier); others are
    pretrained with their own seed. ``progress(1)`` is called after each seed.
    """
    policy = policy or Policy.default("image")
    k = test.num_classes
    runs: dict[str, list[dict]] = {"local": [], "local+augment": [],
                                   "local+augment+synthetic": []}
    for s in range(seed, seed + seeds):
        kw = {"num_classes": k, "seed": s, "epochs": site_epochs,
              "batch_size": SMALL_SITE_BATCH, "class_weight": SMALL_SITE_CLASS_WEIGHT}
        pre = pretrained if (s == seed and pretrained is not None) else train_classifier(
            syn_x, syn_y, num_classes=k, seed=s, epochs=epochs)
        clfs = {
            "local": train_classifier(small_site.images, small_site.labels, **kw),
            "local+augment": train_classifier(small_site.images, small_site.labels,
                                              augment=numpy_augmenter(policy, s), **kw),
            "local+augment+synthetic": train_classifier(
                small_site.images, small_site.labels, augment=numpy_augmenter(policy, s),
                init=pre, lr=FINETUNE_LR, **kw),
        }
        for name, clf in clfs.items():
            runs[name].append(classification_report(clf, test.images, test.labels))
        if progress is not None:
            progress(1)
    accs = {name: _mean_report(rs) for name, rs in runs.items()}
    return {
        "small-site-size": int(len(small_site)),
        "seeds": seeds,
        **accs,
        "gain-augment": accs["local+augment"]["accuracy"] - accs["local"]["accuracy"],
        "gain-synthetic": accs["local+augment+synthetic"]["accuracy"] - accs["local"]["accuracy"],
        "gain-synthetic-over-augment": (accs["local+augment+synthetic"]["accuracy"]
                                        - accs["local+augment"]["accuracy"]),
    }


def _mean_report(reports: list[dict]) -> dict[str, Any]:
    """The mean of several classification reports, with the accuracy of each."""
    return {
        "accuracy": float(np.mean([r["accuracy"] for r in reports])),
        "roc-auc": float(np.mean([r["roc-auc"] for r in reports])),
        "per-class-recall": np.mean([r["per-class-recall"] for r in reports], axis=0).tolist(),
        "num-examples": reports[0]["num-examples"],
        "accuracy-per-seed": [float(r["accuracy"]) for r in reports],
    }


def evaluate_generator(model_dir: str | Path, train: ImageDataset, test: ImageDataset, *,
                       num_samples: int | None = None, small_site: ImageDataset | None = None,
                       policy: Policy | None = None, steps: int = DEFAULT_SAMPLE_STEPS, seed: int = 0,
                       epochs: int = 8, small_site_seeds: int = SMALL_SITE_SEEDS,
                       small_site_epochs: int = SMALL_SITE_EPOCHS,
                       out_dir: str | Path | None = None, audit: bool = True,
                       labels: str = "prior", progress: bool = False) -> dict[str, Any]:
    """The full report: utility (TSTR, TSTR with the sample-level ``policy`` applied to the
    synthetic training set, and TRTR), augmentation gain for a small site,
    fidelity in a real-data classifier's feature space, and the privacy audit.

    ``epochs`` trains the TSTR and TRTR classifiers (and pretrains the small site's);
    ``small_site_seeds`` and ``small_site_epochs`` set the small-site figures (see
    :func:`small_site_gain`). ``progress`` shows one tqdm bar per stage (:data:`STAGES`)
    on stderr. The settings are recorded in the report. Writes ``report.json`` and
    ``report.png`` into ``out_dir`` when given.

    ``num_samples`` defaults to :data:`SAMPLES_PER_CLASS` per class; the fidelity scores and
    the small site's pretraining use the same samples, so their values depend on the count.
    The synthetic labels follow the model card's class prior (the federation's class mix,
    from the sites' noised counts) with ``labels="prior"``, as ``fedaug generate`` draws
    them; ``"balanced"`` (and a model without a prior) spreads them evenly over the
    classes.
    """
    t0 = time.perf_counter()
    _, _, config = load_generator(model_dir)
    k = config.num_classes
    if num_samples is None:
        num_samples = SAMPLES_PER_CLASS * k
    drawn, from_prior = model_labels(model_dir, num_samples, k, labels)
    syn_x, syn_y = _sample(model_dir, drawn, steps=steps, seed=seed, progress=progress)
    kw = {"num_classes": k, "seed": seed, "epochs": epochs}
    with _bar("TSTR classifier", 2 * epochs, progress, "epoch") as bar:
        syn_clf = train_classifier(syn_x, syn_y, progress=bar.update, **kw)
        syn_aug_clf = train_classifier(syn_x, syn_y, augment=numpy_augmenter(
            policy or Policy.default("image"), seed), progress=bar.update, **kw)
    with _bar("TRTR classifier", epochs, progress, "epoch") as bar:
        real_clf = train_classifier(train.images, train.labels, progress=bar.update, **kw)
    report: dict[str, Any] = {
        "model": str(model_dir),
        "num-synthetic": int(len(syn_x)),
        "settings": {"num-samples": num_samples, "steps": steps, "seed": seed,
                     "synthetic-labels": ("the model's class prior" if from_prior
                                          else "balanced"),
                     "epochs": epochs, "small-site-seeds": small_site_seeds,
                     "small-site-epochs": small_site_epochs},
        "utility": {
            "tstr": classification_report(syn_clf, test.images, test.labels),
            "tstr+augment": classification_report(syn_aug_clf, test.images, test.labels),
            "trtr": classification_report(real_clf, test.images, test.labels),
        },
    }
    if small_site is not None:
        with _bar("small-site seeds", small_site_seeds, progress, "seed") as bar:
            report["augmentation-gain"] = small_site_gain(
                small_site, test, syn_x, syn_y, pretrained=syn_clf, policy=policy, seed=seed,
                epochs=epochs, seeds=small_site_seeds, site_epochs=small_site_epochs,
                progress=bar.update)
    classes = len(np.union1d(test.labels, syn_y))
    with _bar("fidelity", classes + 1, progress, "class") as bar:
        report["fidelity"] = fidelity_report(real_clf, test.images, test.labels, syn_x, syn_y,
                                             progress=bar.update)
    if audit:
        report["privacy-audit"] = privacy_audit(model_dir, train, test, seed=seed,
                                                synthetic=(syn_x, syn_y), progress=progress)
    card = Path(model_dir) / "model_card.json"
    if card.is_file():
        report["model-card-sites"] = json.loads(card.read_text(encoding="utf-8")).get("sites")
    report["wall-s"] = time.perf_counter() - t0
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_json(out / "report.json", report)
        buf = io.BytesIO()
        report_figure(syn_x, syn_y, test, report).save(buf, format="PNG")
        atomic_write_bytes(out / "report.png", buf.getvalue())
    return report


def report_figure(syn_x: np.ndarray, syn_y: np.ndarray, real: ImageDataset,
                  report: dict[str, Any], *, per_class: int = 8) -> Image.Image:
    """Per class: real samples (left) beside synthetic ones (right); below, accuracy bars."""
    k = real.num_classes
    pick_real = np.concatenate([np.flatnonzero(real.labels == c)[:per_class] for c in range(k)])
    pick_syn = np.concatenate([np.flatnonzero(syn_y == c)[:per_class] for c in range(k)])
    scale = max(1, 96 // real.images.shape[1])
    left = make_grid(real.images[pick_real], rows=k, scale=scale).convert("RGB")
    right = make_grid(syn_x[pick_syn], rows=k, scale=scale).convert("RGB")
    bars = {"TRTR (real)": report["utility"]["trtr"]["accuracy"],
            "TSTR (synthetic)": report["utility"]["tstr"]["accuracy"]}
    for name, r in report.get("augmentation-gain", {}).items():
        if isinstance(r, dict) and "accuracy" in r:
            bars[f"small site: {name}"] = r["accuracy"]
    width = left.width + right.width + 30
    bar_h = 22
    canvas = Image.new("RGB", (max(width, 520), max(left.height, right.height) + 40
                               + bar_h * len(bars) + 20), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((5, 5), "real", fill="black")
    draw.text((left.width + 25, 5), "synthetic", fill="black")
    canvas.paste(left, (5, 25))
    canvas.paste(right, (left.width + 25, 25))
    y0 = max(left.height, right.height) + 35
    for i, (name, acc) in enumerate(bars.items()):
        y = y0 + i * bar_h
        draw.text((5, y + 4), f"{name}: {acc:.3f}", fill="black")
        draw.rectangle([230, y + 3, 230 + int(260 * acc), y + bar_h - 5], fill=(60, 110, 200))
    return canvas
