"""Data augmentation: image and text ops, the JSON policy, its aggregation, the engines.

Modules, one concept each: ``schema`` (the ops' parameter schema and checks), ``ops``
(one class per op), ``policy`` (the policy object and its parsing), ``merge`` (policy
aggregation), ``params`` (drawing per-image parameters), ``apply`` (the per-sample
reference path and text augmentation), ``batched`` (the batch engine) with its
``torch_backend`` and ``opencv_backend``, ``functional`` (pure image maths), ``stats``
(distribution shift), ``text`` (EDA functions) and ``search`` (private policy search).
"""

from . import opencv_backend
from .apply import apply_op, apply_policy, apply_text_policy
from .batched import BatchAugmenter, numpy_augmenter
from .merge import aggregate_policies, merge_policies
from .ops import (
    OPS,
    Affine,
    Brightness,
    Contrast,
    CropResize,
    Gamma,
    GaussianBlur,
    GaussianNoise,
    HFlip,
    ImageOp,
    Op,
    RandomDelete,
    RandomInsert,
    RandomSwap,
    Rotate,
    SynonymReplace,
    TextOp,
    VFlip,
    op_from_dict,
)
from .params import BatchParams, draw_op_params, draw_params
from .policy import SCHEMA_VERSION, Policy, Sampling
from .schema import check_seed
from .stats import distribution_shift, format_shift_report

__all__ = [
    "OPS",
    "SCHEMA_VERSION",
    "Affine",
    "BatchAugmenter",
    "BatchParams",
    "Brightness",
    "Contrast",
    "CropResize",
    "GaussianBlur",
    "GaussianNoise",
    "Gamma",
    "HFlip",
    "ImageOp",
    "Op",
    "Policy",
    "RandomDelete",
    "RandomInsert",
    "RandomSwap",
    "Rotate",
    "Sampling",
    "SynonymReplace",
    "TextOp",
    "VFlip",
    "aggregate_policies",
    "apply_op",
    "apply_policy",
    "apply_text_policy",
    "check_seed",
    "distribution_shift",
    "draw_op_params",
    "draw_params",
    "format_shift_report",
    "merge_policies",
    "numpy_augmenter",
    "op_from_dict",
    "opencv_backend",
]
