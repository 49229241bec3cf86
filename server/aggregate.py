"""How site models combine: the example-weighted mean, or a robust coordinate-wise rule."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

__all__ = ["AGGREGATIONS", "TRIM_FRACTION", "aggregate_arrays"]

AGGREGATIONS = ("mean", "median", "trimmed-mean")
#: The share of values the trimmed mean drops at each end, per coordinate.
TRIM_FRACTION = 0.2


def aggregate_arrays(records: list[ArrayRecord], weights: list[float], *,
                     rule: str = "mean") -> ArrayRecord:
    """Combine the sites' parameters (all with the same names and shapes).

    ``"mean"`` weights each site by ``weights`` (the sites' released, noisy counts);
    ``"median"`` and ``"trimmed-mean"`` ignore the weights and bound what a few poisoned
    sites can do, coordinate by coordinate. Arithmetic in float64; floating results are
    float32.
    """
    if rule not in AGGREGATIONS:
        raise ValueError(f"rule must be one of {AGGREGATIONS}, got {rule!r}")
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    out: dict[str, Array] = {}
    for name in records[0].keys():
        stack = np.stack([r[name].numpy() for r in records])
        if rule == "mean":
            agg = np.tensordot(w, stack.astype(np.float64), axes=1)
        elif rule == "median":
            agg = np.median(stack, axis=0)
        else:
            k = int(len(stack) * TRIM_FRACTION)
            agg = np.sort(stack, axis=0)[k:len(stack) - k].mean(axis=0)
        dtype = np.float32 if np.issubdtype(stack.dtype, np.floating) else stack.dtype
        out[name] = Array(np.asarray(agg, dtype=dtype))
    return ArrayRecord(out)
