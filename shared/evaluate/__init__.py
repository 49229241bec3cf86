"""Evaluation: downstream classifier (TSTR / TRTR), fidelity metrics and privacy audit."""

from fedaug.evaluate.classifier import (
    Classifier,
    classification_report,
    train_classifier,
    tstr,
)
from fedaug.evaluate.fidelity import (
    FeatureExtractor,
    fidelity_report,
    frechet_distance,
    pixel_statistics,
    precision_recall,
)
from fedaug.evaluate.privacy_audit import (
    loss_threshold_attack,
    membership_inference_auc,
    memorization_report,
)

__all__ = [
    "Classifier",
    "FeatureExtractor",
    "classification_report",
    "fidelity_report",
    "frechet_distance",
    "pixel_statistics",
    "loss_threshold_attack",
    "membership_inference_auc",
    "memorization_report",
    "precision_recall",
    "train_classifier",
    "tstr",
]
