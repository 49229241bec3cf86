"""Checks of one site's reply, alone: a bad reply is excluded with a reason, never fatal."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from fedaug import keys
from fedaug.augment import Policy
from fedaug.errors import PolicyError

__all__ = ["check_train_reply"]


def check_train_reply(content: RecordDict, reference: ArrayRecord | None, *,
                      max_update_norm: float) -> tuple[str | None, Policy | None]:
    """A reason to exclude this training reply (or None) and its parsed policy.

    Checks the records' names, the exact metric key set (finite scalars), the policy, and
    for a site that trained: a positive count, and parameters with the reference's names
    and shapes, finite, within ``max_update_norm`` (L2) of it.
    """
    if keys.ARRAYS not in content.array_records or len(content.array_records) != 1:
        return "expected exactly one ArrayRecord named 'arrays'", None
    if keys.METRICS not in content.metric_records:
        return "no MetricRecord named 'metrics'", None
    metrics = content[keys.METRICS]
    if set(metrics.keys()) != set(keys.TRAIN_METRICS):
        missing = sorted(set(keys.TRAIN_METRICS) - set(metrics.keys()))
        extra = sorted(set(metrics.keys()) - set(keys.TRAIN_METRICS))
        return f"metrics must be exactly {list(keys.TRAIN_METRICS)} (missing {missing}, " \
               f"unexpected {extra})", None
    values = [metrics[k] for k in keys.TRAIN_METRICS]
    if any(isinstance(v, list) or not np.isfinite(float(v)) for v in values):
        return "metrics are not finite scalars", None
    cfg = content.config_records.get(keys.CONFIG)
    if cfg is None or keys.POLICY not in cfg:
        return "no policy in the reply's config record", None
    try:
        policy = Policy.from_json(str(cfg[keys.POLICY]))
    except PolicyError as err:
        return f"malformed policy: {err}", None
    if cfg.get(keys.STATUS) == keys.STATUS_EXHAUSTED:
        return None, policy
    if not float(metrics[keys.NUM_EXAMPLES]) > 0:
        return f"num-examples must be > 0, got {metrics[keys.NUM_EXAMPLES]}", None
    if reference is None:
        return None, policy
    arrays = content[keys.ARRAYS]
    if set(arrays.keys()) != set(reference.keys()):
        extra = sorted(set(arrays.keys()) - set(reference.keys()))[:3]
        lacking = sorted(set(reference.keys()) - set(arrays.keys()))[:3]
        return f"parameter names differ (unexpected {extra}, missing {lacking})", None
    sq = 0.0
    for k, ref in reference.items():
        a, r = arrays[k].numpy(), ref.numpy()
        if a.shape != r.shape:
            return f"parameter {k} has shape {a.shape}, expected {r.shape}", None
        if not np.all(np.isfinite(a)):
            return f"parameter {k} holds NaN or Inf", None
        sq += float(np.sum((a.astype(np.float64) - r.astype(np.float64)) ** 2))
    if np.sqrt(sq) > max_update_norm:
        return f"update norm {np.sqrt(sq):.3g} exceeds max-update-norm {max_update_norm:g}", None
    return None, policy
