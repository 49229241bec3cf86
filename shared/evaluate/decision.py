"""Should this site use the federation's synthetic data? A decision a site can trust.

A site receives a global generator and must decide whether training its own classifier
with the generator's synthetic data is better than training on its records alone. A
test on someone else's data does not answer that: the generator may help the federation
on average and still hurt this site (another scanner, other classes, other prevalence).
So the site answers it on its OWN data, without touching its test split:

1. The site's own records are split for validation by stratified cross-validation
   (``folds``, default 3): each fold is held out in turn and scored by options trained on
   the other folds, so every record is a validation record once and the interval below
   rests on all of them. ``folds=1`` carves one stratified validation part instead
   (``val_fraction`` of each class; a class with a single record stays in training).
2. Three options are trained on the training part (the local part), over ``seeds`` seeds and
   with the same class-balanced loss and sample-level augmentation policy (the global
   model's ``policy.json`` or model card policy when present, else the default; the local
   training runs ``site_epochs`` epochs, fewer on a site large enough to pass
   :data:`MAX_SITE_STEPS` steps):

   * ``local`` -- the local part alone;
   * ``synthetic-pretrain`` -- pretrained on the synthetic samples, then fine-tuned on
     the local part (the same budget as ``local`` for the fine-tuning);
   * ``synthetic-mix`` -- trained from scratch on the local part and the synthetic
     samples together (at least as many optimizer steps as ``local``, and at least the
     pretraining's passes over the synthetic set).

3. Each option's validation score (accuracy, or the balanced accuracy: the mean recall
   over the classes present) is reported as the mean over seeds and the worst seed. The
   gain of a synthetic option over ``local`` gets a paired bootstrap interval:
   validation records and seeds are resampled together, and both options are scored on
   the same draw, so record difficulty and seed luck cancel out.
4. The recommendation is ``"use <option>"`` only when that option's interval lies above
   ``-margin`` (by default 0: superiority); otherwise ``"do not use"``. Two synthetic
   options are compared with ``local`` on the same validation records, so each interval
   is taken at the Bonferroni level ``1 - (1 - confidence) / 2``: picking the better of
   two noisy options must not turn noise into a recommendation. Among options whose
   interval clears the bar, the one with the higher lower end is recommended.
5. A site that lacks some of the federation's classes cannot measure, on its own records,
   what the synthetic data gives it on those classes, and its local data alone never
   predicts them. For such a site the test on the present classes is one of
   non-inferiority: an option is recommended for the classes the site lacks when its
   interval's lower end lies above ``-absent_margin`` (default 0.05, five points), i.e.
   when it costs the present classes at most that much at the interval's level.

:func:`site_decision` loads the site's data and samples the generator;
:func:`decide_cv` (cross-validated) and :func:`decide` (one held-out part) are the same
decision on arrays (any synthetic set, e.g. for tests or for samples drawn earlier).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedaug.augment import Policy, numpy_augmenter
from fedaug.config import (
    DECISION_METRICS,
    DEFAULT_DECISION_FOLDS,
    DEFAULT_DECISION_MARGIN,
    DEFAULT_DECISION_METRIC,
    DEFAULT_SAMPLE_STEPS,
)
from fedaug.data import ImageDataset
from fedaug.errors import ConfigError, DataError
from fedaug.evaluate.classifier import train_classifier

__all__ = ["OPTIONS", "MIN_RECORDS", "decide", "decide_cv",
           "stratified_folds", "site_decision", "stratified_split",
           "model_policy", "format_decision"]

#: The compared options, baseline first.
OPTIONS = ("local", "synthetic-pretrain", "synthetic-mix")
#: Fewest records the local part and the validation part may each have.
MIN_RECORDS = 8
#: Local training budget (as the small-site figures of ``fedaug evaluate``).
SITE_EPOCHS, SITE_BATCH, PRETRAIN_EPOCHS, PRETRAIN_BATCH = 30, 16, 8, 64
#: Most optimizer steps of the local training (a site of more than
#: ``MAX_SITE_STEPS * SITE_BATCH / SITE_EPOCHS`` records trains fewer than ``SITE_EPOCHS``
#: epochs): the decision's cost stops growing with the site's size.
MAX_SITE_STEPS = 1500
#: Learning rate of the fine-tuning on the local part.
FINETUNE_LR = 5e-4
#: Largest loss on the classes present that a site lacking classes accepts (point 5 above).
ABSENT_MARGIN = 0.05
#: Bootstrap draws of the gain's interval.
BOOTSTRAP = 4000


def _int_at_least(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ConfigError(f"`{name}` must be an int >= {low}.", value=value,
                          fix=f"pass {name} as a whole number of at least {low}.")
    return int(value)


def stratified_split(labels: np.ndarray, val_fraction: float, *, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (local, validation): ``round(val_fraction * n_c)`` of each class to
    validation, at least one when the class has two records or more, and at least one
    left in the local part; a class with one record stays local."""
    if (isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float)
            or not 0 < val_fraction < 1):
        raise ConfigError("`val_fraction` must lie strictly between 0 and 1.",
                          value=val_fraction, fix="pass e.g. 0.3 (30% of each class).")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    local, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, round(val_fraction * len(idx))))
        val.append(idx[:n_val])
        local.append(idx[n_val:])
    return (np.sort(np.concatenate(local)).astype(np.int64),
            np.sort(np.concatenate(val)).astype(np.int64))


def _balancing_weights(labels: np.ndarray) -> np.ndarray:
    """Per-record weights whose mean over ``hits * weights`` is the balanced accuracy (the
    mean recall over the classes present in ``labels``)."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    per_class = dict(zip(classes.tolist(), counts.tolist(), strict=True))
    return np.array([len(labels) / (len(classes) * per_class[c]) for c in labels.tolist()])


def _bootstrap_gain(diff: np.ndarray, *, draws: int, level: float, seed: int
                    ) -> tuple[float, float]:
    """Percentile interval of the mean of ``diff`` (seeds x records), resampling seeds and
    records with replacement (a draw's mean is ``c_s^T D c_r / (S N)`` with multinomial
    counts ``c_s``, ``c_r``)."""
    s, n = diff.shape
    rng = np.random.default_rng(seed)
    cs = rng.multinomial(s, np.full(s, 1 / s), size=draws).astype(np.float64)
    cr = rng.multinomial(n, np.full(n, 1 / n), size=draws).astype(np.float64)
    means = np.einsum("bs,sn,bn->b", cs, diff.astype(np.float64), cr) / (s * n)
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(lo), float(hi)


def decide(local: ImageDataset, validation: ImageDataset, syn_x: np.ndarray,
           syn_y: np.ndarray, *, num_classes: int, seeds: int = 3, seed: int = 0,
           policy: Policy | None = None, epochs: int = PRETRAIN_EPOCHS,
           site_epochs: int = SITE_EPOCHS, confidence: float = 0.95,
           bootstrap: int = BOOTSTRAP, progress: Callable[[int], object] | None = None,
           test: ImageDataset | None = None, absent_margin: float = ABSENT_MARGIN,
           margin: float = DEFAULT_DECISION_MARGIN,
           metric: str = DEFAULT_DECISION_METRIC) -> dict[str, Any]:
    """The decision on arrays: train the three :data:`OPTIONS` on ``local`` over
    ``seeds`` seeds, score them on ``validation``, bootstrap the gains (module docstring).

    ``test``: records the decision never sees (a benchmark's test split); each option's
    mean accuracy on them is added as ``test-accuracy``, to check the decision afterwards.

    ``metric``: what the options are scored by on ``validation`` (:data:`fedaug.config.DECISION_METRICS`):
    ``accuracy``, or ``balanced-accuracy``, the mean recall over the classes present (each
    record weighted by the inverse of its class's count), for a site whose own class mix is
    not the one it will meet. Each option reports both; the gain and interval the decision
    rests on are ``metric``'s, the other metric's are added as ``<metric>-gain`` and
    ``<metric>-gain-interval``.

    ``margin``: the loss a site with every class accepts (point 4 of the module docstring):
    0 asks for superiority (the interval above 0), a margin m for non-inferiority (the
    interval's lower end above -m); ``absent_margin`` is the same for a site that lacks
    classes (point 5).

    ``syn_x``/``syn_y``: the synthetic images (uint8 N, H, W, C, the site's shape) and
    labels in ``[0, num_classes)``. ``progress(1)`` is called after each seed.
    """
    seeds = _int_at_least("seeds", seeds, 1)
    site = ImageDataset(np.concatenate([local.images, validation.images]),
                        np.concatenate([local.labels, validation.labels]),
                        local.class_names, local.name)
    n = len(local)
    splits = [(np.arange(n), np.arange(n, n + len(validation)))]
    return _decide(site, splits, syn_x, syn_y, num_classes=num_classes, seeds=seeds,
                   seed=seed, policy=policy, epochs=epochs, site_epochs=site_epochs,
                   confidence=confidence, bootstrap=bootstrap, progress=progress, test=test,
                   absent_margin=absent_margin, margin=margin, metric=metric)


def decide_cv(site: ImageDataset, syn_x: np.ndarray, syn_y: np.ndarray, *, num_classes: int,
              folds: int = 3, seeds: int = 1, seed: int = 0, policy: Policy | None = None,
              epochs: int = PRETRAIN_EPOCHS, site_epochs: int = SITE_EPOCHS,
              confidence: float = 0.95, bootstrap: int = BOOTSTRAP,
              progress: Callable[[int], object] | None = None,
              test: ImageDataset | None = None, absent_margin: float = ABSENT_MARGIN,
              margin: float = DEFAULT_DECISION_MARGIN,
              metric: str = DEFAULT_DECISION_METRIC) -> dict[str, Any]:
    """The decision by stratified ``folds``-fold cross-validation on all of ``site``'s
    records: each fold is scored by the options trained on the other folds (``seeds``
    classifier seeds each), so every record is a validation record once, and the gains'
    interval rests on all of them instead of a held-out part (module docstring, point 1).
    Arguments as :func:`decide`; ``progress(1)`` is called after each fold and seed.
    """
    folds = _int_at_least("folds", folds, 2)
    seeds = _int_at_least("seeds", seeds, 1)
    return _decide(site, _splits(site.labels, folds=folds, seed=seed), syn_x, syn_y,
                   num_classes=num_classes, seeds=seeds, seed=seed, policy=policy,
                   epochs=epochs, site_epochs=site_epochs, confidence=confidence,
                   bootstrap=bootstrap, progress=progress, test=test,
                   absent_margin=absent_margin, margin=margin, metric=metric)


def stratified_folds(labels: np.ndarray, folds: int, *, seed: int = 0) -> list[np.ndarray]:
    """``folds`` disjoint index sets covering every record, each class dealt round-robin
    over the folds in a random order (a class with fewer records than folds is in some
    folds only)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(folds)]
    start = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        for j, i in enumerate(idx):
            parts[(start + j) % folds].append(int(i))
        start += len(idx)  # the next class starts where this one stopped: folds stay even
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


Splits = list[tuple[np.ndarray, np.ndarray]]


def _splits(labels: np.ndarray, *, folds: int, val_fraction: float = 0.3, seed: int = 0
            ) -> Splits:
    """(training, validation) index pairs: ``folds`` cross-validation folds, or with
    ``folds=1`` one stratified part of ``val_fraction``."""
    if folds == 1:
        return [stratified_split(labels, val_fraction, seed=seed)]
    every = np.arange(len(labels))
    return [(np.setdiff1d(every, part), part)
            for part in stratified_folds(labels, folds, seed=seed)]


def _check_splits(splits: Splits, records: int) -> None:
    """Every training and validation part has at least :data:`MIN_RECORDS` records."""
    for f, (train, val) in enumerate(splits):
        for name, n in (("training", len(train)), ("validation", len(val))):
            if n < MIN_RECORDS:
                raise DataError(f"The site's data ({records} records) is too small to "
                                f"validate on: split {f} has a {name} part of {n} records, "
                                f"fewer than {MIN_RECORDS}.", value=records,
                                fix="use a site with more records, or change "
                                "--folds/--val-fraction.")


def _decide(site: ImageDataset, splits: Splits, syn_x: np.ndarray, syn_y: np.ndarray, *,
            num_classes: int, seeds: int, seed: int, policy: Policy | None, epochs: int,
            site_epochs: int, confidence: float, bootstrap: int,
            progress: Callable[[int], object] | None, test: ImageDataset | None,
            absent_margin: float, margin: float, metric: str) -> dict[str, Any]:
    """The decision over ``splits`` of ``site``: options trained on each training part
    score its validation part (every split checked before any training)."""
    _check(site, syn_x, syn_y, num_classes=num_classes, confidence=confidence,
           bootstrap=bootstrap, metric=metric)
    _check_splits(splits, len(site))
    syn_x, syn_y = np.asarray(syn_x), np.asarray(syn_y).astype(np.int64).reshape(-1)
    validated = np.concatenate([val for _, val in splits])
    hits = {o: np.zeros((seeds, len(site))) for o in OPTIONS}
    test_hits: dict[str, list] = {o: [] for o in OPTIONS}
    settings: dict[str, Any] = {}
    for f, (train, val) in enumerate(splits):
        split_hits, split_test, settings = _score_options(
            site.subset(train), site.subset(val), syn_x, syn_y, k=num_classes,
            seeds=range(seed + f * seeds, seed + (f + 1) * seeds),
            policy=policy or Policy.default("image"), epochs=epochs,
            site_epochs=site_epochs, test=test, progress=progress)
        for o in OPTIONS:
            hits[o][:, val] = split_hits[o]
            test_hits[o].extend(split_test[o])
    folds = len(splits)
    return _verdict({o: h[:, validated] for o, h in hits.items()}, site.labels[validated],
                    set(np.unique(site.labels).tolist()), test_hits,
                    num_classes=num_classes, seed=seed, confidence=confidence,
                    bootstrap=bootstrap, absent_margin=absent_margin, margin=margin,
                    metric=metric,
                    records={"local-records": int(len(splits[0][0])),
                             "validation-records": int(len(validated)),
                             "synthetic-records": int(len(syn_x)), "seeds": seeds,
                             "folds": folds},
                    settings={"seed": seed, "epochs": epochs, "bootstrap": bootstrap,
                              **settings},
                    validated_on="a stratified part of the site's own training records"
                    if folds == 1 else f"each of {folds} stratified folds of the site's own "
                    "training records, scored by options trained on the others")


def _check(local: ImageDataset, syn_x: np.ndarray, syn_y: np.ndarray, *, num_classes: int,
           confidence: float, bootstrap: int, metric: str) -> None:
    _int_at_least("bootstrap", bootstrap, 100)
    if metric not in DECISION_METRICS:
        raise ConfigError(f"`metric` must be one of {', '.join(DECISION_METRICS)}.",
                          value=metric,
                          fix="pass accuracy or balanced-accuracy.")
    if isinstance(confidence, bool) or not isinstance(confidence, float) or not 0 < confidence < 1:
        raise ConfigError("`confidence` must lie strictly between 0 and 1.", value=confidence,
                          fix="pass e.g. 0.95.")
    syn_x, syn_y = np.asarray(syn_x), np.asarray(syn_y).astype(np.int64).reshape(-1)
    if syn_x.dtype != np.uint8 or syn_x.shape[1:] != local.images.shape[1:]:
        raise DataError("The synthetic images do not match the site's images (uint8, same "
                        "height, width and channels).",
                        value=(str(syn_x.dtype), syn_x.shape[1:], local.images.shape[1:]),
                        fix="sample the generator the site's data belongs to.")
    if len(syn_x) == 0 or len(syn_y) != len(syn_x) or syn_y.min() < 0 or syn_y.max() >= num_classes:
        raise DataError(f"Synthetic labels must be one per image, in [0, {num_classes}).",
                        value=(len(syn_x), len(syn_y)), fix="pass the generator's labels.")


def _score_options(local: ImageDataset, validation: ImageDataset, syn_x: np.ndarray,
                   syn_y: np.ndarray, *, k: int, seeds: range, policy: Policy, epochs: int,
                   site_epochs: int, test: ImageDataset | None,
                   progress: Callable[[int], object] | None
                   ) -> tuple[dict[str, np.ndarray], dict[str, list], dict[str, Any]]:
    """Train the three :data:`OPTIONS` on ``local`` once per seed; their hits on
    ``validation`` (seeds x records), on ``test`` (one array per seed) and the budgets."""
    n_local, n_mix = len(local), len(local) + len(syn_x)
    # a large site reaches the step cap in fewer passes over its records
    per_epoch = math.ceil(n_local / SITE_BATCH)
    site_epochs = max(1, min(site_epochs, math.ceil(MAX_SITE_STEPS / per_epoch)))
    site_steps = site_epochs * per_epoch
    mix_epochs = max(epochs, math.ceil(site_steps / math.ceil(n_mix / PRETRAIN_BATCH)))
    mix_x = np.concatenate([local.images, syn_x])
    mix_y = np.concatenate([local.labels, syn_y])
    correct: dict[str, list] = {o: [] for o in OPTIONS}
    test_correct: dict[str, list] = {o: [] for o in OPTIONS}
    for s in seeds:
        site = {"num_classes": k, "seed": s, "epochs": site_epochs, "batch_size": SITE_BATCH,
                "class_weight": "balanced", "augment": numpy_augmenter(policy, s)}
        pre = train_classifier(syn_x, syn_y, num_classes=k, seed=s, epochs=epochs,
                               batch_size=PRETRAIN_BATCH)
        clfs = {
            "local": train_classifier(local.images, local.labels, **site),
            "synthetic-pretrain": train_classifier(local.images, local.labels, init=pre,
                                                   lr=FINETUNE_LR, **site),
            "synthetic-mix": train_classifier(
                mix_x, mix_y, num_classes=k, seed=s, epochs=mix_epochs,
                batch_size=PRETRAIN_BATCH, class_weight="balanced",
                augment=numpy_augmenter(policy, s)),
        }
        for name, clf in clfs.items():
            correct[name].append(clf.predict(validation.images) == validation.labels)
            if test is not None:
                test_correct[name].append(clf.predict(test.images) == test.labels)
        if progress is not None:
            progress(1)
    hits = {o: np.asarray(v, dtype=np.float64) for o, v in correct.items()}
    return hits, test_correct, {"site-epochs": site_epochs, "mix-epochs": mix_epochs}


def _verdict(hits: dict[str, np.ndarray], labels: np.ndarray, present: set[int],
             test_hits: dict[str, list], *, num_classes: int, seed: int, confidence: float,
             bootstrap: int, absent_margin: float, margin: float, metric: str,
             records: dict[str, Any],
             settings: dict[str, Any], validated_on: str) -> dict[str, Any]:
    """Scores, paired-bootstrap gains and the recommendation from the options' validation
    hits (seeds x records, ``labels`` the records' classes; module docstring, 3-5)."""
    weights = {"accuracy": np.ones(len(labels)),
               "balanced-accuracy": _balancing_weights(labels)}
    level = 1 - (1 - confidence) / (len(OPTIONS) - 1)
    options: dict[str, Any] = {}
    for i, name in enumerate(OPTIONS):
        scores = {m: (hits[name] * w).mean(axis=1) for m, w in weights.items()}  # per seed
        per_seed = scores[metric]
        entry: dict[str, Any] = {"accuracy": float(scores["accuracy"].mean()),
                                 "balanced-accuracy": float(scores["balanced-accuracy"].mean()),
                                 "score": float(per_seed.mean()),
                                 "worst-seed-score": float(per_seed.min()),
                                 "score-per-seed": [float(a) for a in per_seed]}
        if test_hits[name]:
            entry["test-accuracy"] = float(np.mean(test_hits[name]))
        if name != "local":
            for m, w in weights.items():
                diff = (hits[name] - hits["local"]) * w
                lo, hi = _bootstrap_gain(diff, draws=bootstrap, level=level,
                                         seed=seed + 1000 * i)
                if m == metric:
                    entry["gain"], entry["gain-interval"] = float(diff.mean()), [lo, hi]
                else:
                    entry[f"{m}-gain"] = float(diff.mean())
                    entry[f"{m}-gain-interval"] = [lo, hi]
        options[name] = entry
    synthetic = [o for o in OPTIONS if o != "local"]
    best = max(synthetic, key=lambda o: (options[o]["score"], options[o]["gain-interval"][0]))
    absent = sorted(set(range(num_classes)) - present)
    # non-inferiority: a site lacking classes, and (margin > 0) every site
    bar = -absent_margin if absent else -margin

    def choose(interval_key: str) -> str | None:
        cleared = [o for o in synthetic if options[o][interval_key][0] > bar]
        return max(cleared, key=lambda o: options[o][interval_key][0]) if cleared else None

    chosen = choose("gain-interval")
    # what the other metric would have chosen, to compare the two rules afterwards
    other = {m: choose(f"{m}-gain-interval") for m in DECISION_METRICS if m != metric}
    recommendation = f"use {chosen}" if chosen else "do not use"
    if chosen and absent and options[chosen]["gain-interval"][0] <= 0:
        recommendation += f" (for the {len(absent)} class(es) this site lacks)"
    elif chosen and options[chosen]["gain-interval"][0] <= 0:
        recommendation += (f" (no more than {margin:.0%} below local alone at the interval's "
                           "level)")
    return {
        "options": options,
        "best-synthetic-option": best,
        "gain": options[best]["gain"],
        "gain-interval": options[best]["gain-interval"],
        "interval-level": level,
        "confidence": confidence,
        "recommendation": recommendation,
        "recommended-option": chosen,
        "use-synthetic": chosen is not None,
        **{f"{m}-recommended-option": o for m, o in other.items()},
        "rule": (f"non-inferiority on the classes present (margin {absent_margin:g}): the "
                 "site lacks classes" if absent else
                 f"non-inferiority (margin {margin:g})" if margin > 0 else
                 "superiority (interval above 0)"),
        **records,
        "classes-absent-at-site": absent,
        "settings": settings,
        "metric": metric,
        "definition": f"validation {metric} on {validated_on}; gain = option minus local, "
                      "paired over records and seeds; interval: paired bootstrap over "
                      f"validation records and seeds at {level:.3f} (Bonferroni over "
                      f"{len(synthetic)} synthetic options for {confidence:.2f} overall); "
                      "'use' only when its lower end is above 0",
    }


def model_policy(model_dir: str | Path) -> tuple[Policy, str]:
    """The global model's augmentation policy and where it came from: ``policy.json``,
    else the model card's ``policy``, else the default image policy."""
    import json

    folder = Path(model_dir)
    if (folder / "policy.json").is_file():
        return Policy.from_json((folder / "policy.json").read_text(encoding="utf-8")), "policy.json"
    card = folder / "model_card.json"
    if card.is_file():
        raw = json.loads(card.read_text(encoding="utf-8")).get("policy")
        if raw is not None:
            return Policy.from_dict(raw), "model card"
    return Policy.default("image"), "default"


def _match_site(site: ImageDataset, names: list[str], channels: int, source: str
                ) -> ImageDataset:
    """The site's data with labels in the model's class indices (matched by name when the
    site's class names are the model's or a subset of them)."""
    k = len(names)
    if site.image_shape[2] != channels:
        raise DataError(f"The site's data {source} has {site.image_shape[2]} channel(s); the "
                        f"model generates {channels}.", value=site.image_shape,
                        fix="pass the site's data in the model's modality (grayscale/RGB).")
    if set(site.class_names) <= set(names):
        remap = np.array([names.index(n) for n in site.class_names], dtype=np.int64)
        return ImageDataset(site.images, remap[site.labels], tuple(names), site.name)
    if site.num_classes == k:
        return ImageDataset(site.images, site.labels, tuple(names), site.name)
    raise DataError(f"The site's data {source} has classes {list(site.class_names)}, which "
                    f"do not match the model's {k} classes {names}.",
                    value=site.num_classes,
                    fix="name the site's class folders as the model's classes, or pass the "
                    "data the federation was trained for.")


def site_decision(model_dir: str | Path, site_data: str | Path | ImageDataset, *,
                  folds: int = DEFAULT_DECISION_FOLDS, val_fraction: float = 0.3,
                  seeds: int | None = None, num_samples: int = 1000,
                  seed: int = 0, site_labels: str | Path | None = None,
                  steps: int = DEFAULT_SAMPLE_STEPS, epochs: int = PRETRAIN_EPOCHS,
                  site_epochs: int = SITE_EPOCHS, confidence: float = 0.95,
                  bootstrap: int = BOOTSTRAP, progress: bool = False,
                  synthetic: tuple[np.ndarray, np.ndarray] | None = None,
                  test: ImageDataset | None = None, metric: str = DEFAULT_DECISION_METRIC,
                  margin: float = DEFAULT_DECISION_MARGIN) -> dict[str, Any]:
    """Decide whether the site holding ``site_data`` should use ``model_dir``'s synthetic
    data (module docstring). ``site_data``: a source for
    :func:`fedaug.data.load_image_source` (its ``train`` split only, resized to the
    model's size; ``site_labels`` for a DICOM folder) or an :class:`ImageDataset`.
    ``num_samples`` synthetic samples are drawn, balanced over the classes (not in the
    federation's class mix: a site's own mix differs, and a site lacking a class needs
    that class), unless ``synthetic`` (images, labels) gives them (several sites deciding
    on one draw).
    ``folds`` >= 2: cross-validation on all the site's records (:func:`decide_cv`, ``seeds``
    classifier seeds per fold, default 1); ``folds=1``: one stratified validation part of
    ``val_fraction`` (:func:`decide`, ``seeds`` default 3). ``test``, ``metric`` and
    ``margin``: see :func:`decide`.
    """
    from fedaug.data import load_image_source
    from fedaug.generator import load_generator
    from fedaug.generator.generate import generate
    from fedaug.generator.pipeline import read_class_names

    num_samples = _int_at_least("num_samples", num_samples, 1)
    _, _, config = load_generator(model_dir)
    names = read_class_names(model_dir, config.num_classes)
    source = site_data.name if isinstance(site_data, ImageDataset) else str(site_data)
    if not isinstance(site_data, ImageDataset):
        site_data = load_image_source(site_data, split="train", size=config.image_size,
                                      labels=site_labels or None)
    elif site_data.image_shape[:2] != (config.image_size, config.image_size):
        raise DataError(f"The site's images are {site_data.image_shape[:2]}; the model's "
                        f"are {config.image_size} x {config.image_size}.",
                        value=site_data.image_shape, fix="resize them to the model's size.")
    site = _match_site(site_data, names, config.channels, source)
    folds = _int_at_least("folds", folds, 1)
    splits = _splits(site.labels, folds=folds, val_fraction=val_fraction, seed=seed)
    _check_splits(splits, len(site))  # before sampling the generator
    seeds = _int_at_least("seeds", seeds if seeds is not None else (3 if folds == 1 else 1), 1)
    policy, policy_source = model_policy(model_dir)
    if synthetic is None:
        syn_x, syn_y, _ = generate(model_dir, num_samples=num_samples, seed=seed, steps=steps,
                                   labels="balanced", progress=progress)
    else:
        syn_x, syn_y = synthetic
        num_samples = len(syn_x)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=seeds * folds, desc="decision", unit="fit", dynamic_ncols=True)
    try:
        result = _decide(site, splits, syn_x, syn_y, num_classes=config.num_classes,
                         seeds=seeds, seed=seed, policy=policy, epochs=epochs,
                         site_epochs=site_epochs, confidence=confidence, bootstrap=bootstrap,
                         progress=None if bar is None else bar.update, test=test,
                         absent_margin=ABSENT_MARGIN, margin=margin, metric=metric)
    finally:
        if bar is not None:
            bar.close()
    return {"model": str(model_dir), "site-data": source,
            "val-fraction": val_fraction if folds == 1 else None,
            "policy": policy_source, "num-samples": num_samples, "steps": steps, **result}


def format_decision(d: dict[str, Any]) -> str:
    """A short table of the options and the recommendation."""
    metric = "val acc" if d.get("metric", "accuracy") == "accuracy" else "val bal"
    lines = [f"{'option':<20}{metric:>9}{'worst seed':>12}{'gain':>9}  interval "
             f"({d['interval-level']:.1%})"]
    for name, o in d["options"].items():
        gain = f"{o['gain']:+9.3f}" if "gain" in o else f"{'':>9}"
        ci = "[{:+.3f}, {:+.3f}]".format(*o["gain-interval"]) if "gain-interval" in o else ""
        lines.append(f"{name:<20}{o['score']:>9.3f}{o['worst-seed-score']:>12.3f}"
                     f"{gain}  {ci}")
    if d.get("folds", 1) > 1:
        lines.append(f"site: {d['validation-records']} records, each validated once by "
                     f"{d['folds']}-fold cross-validation (about {d['local-records']} training "
                     f"each), {d['synthetic-records']} synthetic, {d['seeds']} seed(s) per fold")
    else:
        lines.append(f"site: {d['local-records']} local + {d['validation-records']} "
                     f"validation records, {d['synthetic-records']} synthetic, "
                     f"{d['seeds']} seed(s)")
    lines.append(f"recommendation: {d['recommendation']}")
    return "\n".join(lines)
