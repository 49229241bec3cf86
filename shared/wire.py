"""Parameters on the wire: ArrayRecords in float32 or float16, and their size in bytes."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

__all__ = ["to_wire", "record_nbytes", "cast_record"]


def to_wire(state_dict: dict[str, torch.Tensor], dtype: str = "float32") -> ArrayRecord:
    """A state dict as an ArrayRecord; floating tensors cast to ``dtype``."""
    target = {"float32": torch.float32, "float16": torch.float16}[dtype]
    return ArrayRecord({k: (v.detach().cpu().to(target) if v.is_floating_point() else v.cpu())
                        for k, v in state_dict.items()})


def cast_record(record: ArrayRecord, dtype: str) -> ArrayRecord:
    """The same arrays with floating ones cast to ``dtype`` (numpy)."""
    out = {}
    for k, a in record.items():
        arr = a.numpy()
        out[k] = Array(arr.astype(dtype) if np.issubdtype(arr.dtype, np.floating) else arr)
    return ArrayRecord(out)


def record_nbytes(record: ArrayRecord) -> int:
    """Bytes of array payload in ``record`` (what a round moves per site and direction)."""
    return int(sum(len(a.data) for a in record.values()))
