"""A small seeded CNN for downstream accuracy, TSTR / TRTR and fidelity features."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn import functional as F

from fedaug.errors import ConfigError, DataError

__all__ = [
    "Classifier",
    "classification_report",
    "train_classifier",
    "tstr",
]

#: Channel widths of the three convolution blocks; the last one is the feature size.
_WIDTHS = (16, 32, 64)
_MIN_SIDE = 8
#: Images at least this large start with a stride-2 convolution instead of conv + pool.
_STRIDED_STEM_SIDE = 16


def _check_images(images: Any, *, name: str = "images") -> np.ndarray:
    """Return ``images`` if it is a uint8 array (N, H, W, C), C in {1, 3}, H, W >= 8."""
    if not isinstance(images, np.ndarray):
        raise DataError(
            f"`{name}` must be a numpy array.",
            value=type(images).__name__,
            fix="pass np.asarray(images, dtype=np.uint8) of shape (N, H, W, C).",
        )
    if images.dtype != np.uint8:
        raise DataError(
            f"`{name}` must have dtype uint8 (pixel values 0..255).",
            value=str(images.dtype),
            fix="scale to 0..255 and cast with .astype(np.uint8).",
        )
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(
            f"`{name}` must have shape (N, H, W, C) with C = 1 or 3.",
            value=images.shape,
            fix="add a channel axis to grayscale images with images[..., None].",
        )
    if len(images) == 0:
        raise DataError(f"`{name}` is empty.", value=images.shape, fix="pass at least one image.")
    if min(images.shape[1:3]) < _MIN_SIDE:
        raise DataError(
            f"`{name}` must be at least {_MIN_SIDE}x{_MIN_SIDE} pixels.",
            value=images.shape,
            fix="upsample the images or use a larger data set.",
        )
    return images


def _check_labels(labels: Any, *, n: int, num_classes: int, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as int64 (N,) after checking length and range."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        raise DataError(
            f"`{name}` must have shape (N,).",
            value=labels.shape,
            fix="flatten MedMNIST-style (N, 1) labels with labels.ravel().",
        )
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"`{name}` must be an integer array of shape ({n},), one label per image.",
            value=f"{labels.dtype} {labels.shape}",
            fix="pass int64 labels aligned with the images.",
        )
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"`{name}` must lie in [0, num_classes={num_classes}).",
            value=(int(labels.min()), int(labels.max())),
            fix="remap labels to 0..num_classes-1 or raise num_classes.",
        )
    return labels.astype(np.int64, copy=False)


def _positive(name: str, value: Any, *, kind: type = int) -> None:
    if not isinstance(value, kind) or isinstance(value, bool) or not value > 0:
        raise ConfigError(
            f"`{name}` must be a positive {kind.__name__}.",
            value=value,
            fix=f"set {name} > 0.",
        )


class _SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks, global average pooling, linear.

    The first two blocks halve the resolution (max pooling; on images of side >= 16 the
    first convolution has stride 2 instead, which is the same path at a third of the cost).
    """

    def __init__(self, in_channels: int, num_classes: int, *, strided_stem: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for i, width in enumerate(_WIDTHS):
            stride = 2 if (i == 0 and strided_stem) else 1
            layers += [
                nn.Conv2d(prev, width, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if i < len(_WIDTHS) - 1 and stride == 1:
                layers.append(nn.MaxPool2d(2))
            prev = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(prev, num_classes)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Initialise every weight from ``generator`` (not from torch's global RNG)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=generator)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                nn.init.uniform_(m.weight, -bound, bound, generator=generator)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Classifier:
    """A trained :class:`_SmallCNN` plus the input normalisation it was trained with.

    Build it with :func:`train_classifier`. Inputs to every method are uint8 images of the
    training shape (N, H, W, C).

    Parameters
    ----------
    module : torch.nn.Module
        The trained network (kept in eval mode).
    image_shape : tuple of int
        (H, W, C) of the training images; other shapes are refused.
    mean, std : numpy.ndarray
        Per-channel mean and standard deviation of the training pixels in [0, 1].
    num_classes : int
        Number of output classes K.
    description : str
        One line naming the network and what it was trained on (used in reports).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        image_shape: tuple[int, int, int],
        mean: np.ndarray,
        std: np.ndarray,
        num_classes: int,
        description: str,
    ) -> None:
        self.module = module.eval()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.num_classes = int(num_classes)
        self.description = description

    @property
    def feature_dim(self) -> int:
        """Size D of the penultimate (globally pooled) feature vector."""
        return _WIDTHS[-1]

    def _to_tensor(self, images: np.ndarray) -> torch.Tensor:
        x = images.astype(np.float32) / 255.0
        x = (x - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    def _check(self, images: Any) -> np.ndarray:
        images = _check_images(images)
        if images.shape[1:] != self.image_shape:
            raise DataError(
                f"images must have the training shape (N, {', '.join(map(str, self.image_shape))}).",
                value=images.shape,
                fix="resize the images, or train a classifier on images of this shape.",
            )
        return images

    @torch.inference_mode()
    def _run(self, images: Any, fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int):
        images = self._check(images)
        _positive("batch_size", batch_size)
        self.module.eval()
        out = [
            fn(self._to_tensor(images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(out).numpy()

    def predict_proba(self, images: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
        """Class probabilities, float array (N, K) whose rows sum to 1."""
        return self._run(images, lambda x: F.softmax(self.module(x), dim=1), batch_size)

    def predict(self, images: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
        """Most likely class, int64 array (N,)."""
        return self.predict_proba(images, batch_size=batch_size).argmax(axis=1).astype(np.int64)

    def features(self, images: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
        """Penultimate-layer features, float array (N, D); the fidelity feature extractor."""
        return self._run(images, self.module.features, batch_size).astype(np.float64)


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    augment: Callable[[np.ndarray], np.ndarray] | None = None,
    init: Classifier | None = None,
    class_weight: str | None = None,
    progress: Callable[[int], object] | None = None,
) -> Classifier:
    """Train the small CNN with Adam and cross-entropy; fully determined by ``seed``.

    The learning rate follows a one-cycle schedule (warm-up to ``lr``, then cosine decay to
    about zero), which makes the short default run converge reliably.

    Parameters
    ----------
    images : numpy.ndarray
        uint8 (N, H, W, C), C = 1 or 3, H, W >= 8.
    labels : numpy.ndarray
        int (N,) in [0, num_classes).
    num_classes : int
        Number of classes K (>= 2).
    epochs : int, default 8
        Passes over the data.
    batch_size : int, default 64
        Mini-batch size.
    lr : float, default 2e-3
        Adam learning rate.
    seed : int, default 0
        Seeds the weight initialisation and the batch order (an explicit torch.Generator).
        Runs with the same seed and the same torch thread count are bit-identical.
    augment : callable, optional
        Applied to every uint8 training batch (n, H, W, C) before it is used and must return
        a uint8 array of the same shape. It owns its randomness: seed it yourself (for
        example a closure over a seeded ``np.random.Generator``) to replay a run.
    init : Classifier, optional
        Fine-tune a copy of this trained classifier (its weights and input normalisation)
        instead of starting from scratch; ``init`` itself is left unchanged. This is how a
        site uses synthetic data: pretrain on it, then fine-tune on its own records.
    class_weight : {None, "balanced"}, optional
        ``"balanced"`` weights each class's loss by ``N / (K * N_c)`` (as scikit-learn's
        ``class_weight="balanced"``), so a class with few records is not drowned by the
        others.
    progress : callable, optional
        Called as ``progress(1)`` after each epoch, e.g. a tqdm bar's ``update``.

    Returns
    -------
    Classifier
        The trained network with its input normalisation.
    """
    images = _check_images(images)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ConfigError(
            "`num_classes` must be an int >= 2.",
            value=num_classes,
            fix="pass the number of classes.",
        )
    labels = _check_labels(labels, n=len(images), num_classes=num_classes)
    if class_weight not in (None, "balanced"):
        raise ConfigError("`class_weight` must be None or 'balanced'.", value=class_weight,
                          fix="pass class_weight='balanced' or leave it out.")
    _positive("epochs", epochs)
    _positive("batch_size", batch_size)
    _positive("lr", float(lr) if isinstance(lr, int | float) else lr, kind=float)

    gen = torch.Generator().manual_seed(int(seed))
    if init is not None:
        if init.image_shape != tuple(images.shape[1:]) or init.num_classes != num_classes:
            raise DataError(
                "`init` was trained on another image shape or number of classes.",
                value=f"{init.image_shape}, {init.num_classes} classes",
                fix="fine-tune on images and labels like the ones `init` was trained on.",
            )
        module = copy.deepcopy(init.module)
        mean, std = init.mean, init.std
    else:
        module = _SmallCNN(
            images.shape[-1],
            num_classes,
            strided_stem=min(images.shape[1:3]) >= _STRIDED_STEM_SIDE,
        )
        module.reset_parameters(gen)
        pixels = images.astype(np.float32) / 255.0
        mean = pixels.mean(axis=(0, 1, 2))
        std = np.maximum(pixels.std(axis=(0, 1, 2)), 1e-3)
    clf = Classifier(
        module,
        image_shape=images.shape[1:],
        mean=mean,
        std=std,
        num_classes=num_classes,
        description=(
            f"small CNN {_WIDTHS} penultimate features (D={_WIDTHS[-1]}), "
            f"{'fine-tuned' if init is not None else 'trained'} {epochs} epochs on "
            f"{len(images)} images (seed {seed})"
        ),
    )
    optimizer = torch.optim.Adam(module.parameters(), lr=float(lr))
    steps = epochs * math.ceil(len(images) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=float(lr), total_steps=steps)
    y_all = torch.from_numpy(labels)
    weight = None
    if class_weight == "balanced":
        counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
        weight = torch.tensor(len(labels) / (num_classes * np.maximum(counts, 1)),
                              dtype=torch.float32)
    module.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen).numpy()
        for start in range(0, len(images), batch_size):
            idx = order[start : start + batch_size]
            batch = images[idx]
            if augment is not None:
                batch = _apply_augment(augment, batch)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(module(clf._to_tensor(batch)), y_all[idx], weight=weight)
            loss.backward()
            optimizer.step()
            schedule.step()
        if progress is not None:
            progress(1)
    module.eval()
    return clf


def _apply_augment(augment: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> np.ndarray:
    out = augment(batch)
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != batch.shape:
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise DataError(
            f"`augment` must return a uint8 array of the batch shape {batch.shape}.",
            value=got,
            fix="return np.clip(result, 0, 255).astype(np.uint8) with the input's shape.",
        )
    return out


def _roc_auc(labels: np.ndarray, proba: np.ndarray) -> float:
    """Binary: AUC of class 1. Multi-class: macro one-vs-rest over classes present."""
    if proba.shape[1] == 2:
        if len(np.unique(labels)) < 2:
            return float("nan")
        return float(roc_auc_score(labels, proba[:, 1]))
    aucs = [
        roc_auc_score(labels == k, proba[:, k])
        for k in range(proba.shape[1])
        if 0 < np.sum(labels == k) < len(labels)
    ]
    return float(np.mean(aucs)) if aucs else float("nan")


def classification_report(clf: Classifier, images: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, ROC-AUC and per-class recall of ``clf`` on a labelled test set.

    Returns
    -------
    dict
        ``accuracy`` (float), ``roc-auc`` (binary: AUC of the class-1 probability;
        multi-class: macro average of one-vs-rest AUCs over the classes present in
        ``labels``, which equals sklearn's ``multi_class="ovr"`` when all are present;
        NaN when fewer than two classes are present), ``per-class-recall`` (list of K
        floats, NaN for a class absent from ``labels``) and ``num-examples``.
    """
    images = clf._check(images)
    labels = _check_labels(labels, n=len(images), num_classes=clf.num_classes)
    proba = clf.predict_proba(images)
    pred = proba.argmax(axis=1)
    recall = [
        float(np.mean(pred[labels == k] == k)) if np.any(labels == k) else float("nan")
        for k in range(clf.num_classes)
    ]
    return {
        "accuracy": float(np.mean(pred == labels)),
        "roc-auc": _roc_auc(labels, proba),
        "per-class-recall": recall,
        "num-examples": len(labels),
    }


def tstr(
    synthetic_images: np.ndarray,
    synthetic_labels: np.ndarray,
    real_train_images: np.ndarray,
    real_train_labels: np.ndarray,
    real_test_images: np.ndarray,
    real_test_labels: np.ndarray,
    *,
    num_classes: int,
    seed: int = 0,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 2e-3,
) -> dict:
    """Train-on-synthetic / test-on-real against the train-on-real baseline.

    The same CNN, hyper-parameters and seed are trained once on the synthetic set and once
    on the real train split; both are scored on the real test split.

    Returns
    -------
    dict
        ``tstr`` and ``trtr``: each a :func:`classification_report` dict.
    """
    kwargs = {
        "num_classes": num_classes,
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
    }
    on_synthetic = train_classifier(synthetic_images, synthetic_labels, **kwargs)
    on_real = train_classifier(real_train_images, real_train_labels, **kwargs)
    return {
        "tstr": classification_report(on_synthetic, real_test_images, real_test_labels),
        "trtr": classification_report(on_real, real_test_images, real_test_labels),
    }
