"""The parameter schema of augmentation ops: numeric fields, their bounds, their checks.

A :class:`Field` validates one number or one ``[low, high]`` range and clamps a derived
value (a merged average, a scaled range) back into its bounds. :func:`check_fields` is
the one validator of an op's fields and :func:`check_seed` the one seed check of the
augment package. Every problem starts with its path (``ops.2.rotate.limit: ...``) so a
:class:`~fedaug.errors.PolicyError` can list them all at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedaug.errors import ConfigError

__all__ = ["Field", "P", "check_fields", "check_seed", "is_number", "show"]


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or float (a bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def show(value: Any) -> str:
    """A short ``repr`` of ``value`` with its type, for problem messages."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _fmt(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Field:
    """Schema of one numeric field: a number, or a ``[low, high]`` range, within bounds.

    Parameters
    ----------
    kind : str
        ``"number"`` or ``"range"``.
    lo, hi : float
        Bounds of the value (of both endpoints for a range).
    lo_open : bool, default False
        Whether ``lo`` itself is excluded (a zoom or a crop fraction of 0 is meaningless).
    """

    kind: str
    lo: float
    hi: float
    lo_open: bool = False

    def _bounds(self) -> str:
        return f"{'(' if self.lo_open else '['}{_fmt(self.lo)}, {_fmt(self.hi)}]"

    def _inside(self, x: float) -> bool:
        return (x > self.lo if self.lo_open else x >= self.lo) and x <= self.hi

    def check(self, value: Any, path: str) -> tuple[str | None, Any]:
        """Return ``(problem, cleaned_value)``; ``problem`` is None when the value is valid.

        The cleaned value is a float, or a ``(low, high)`` tuple of floats for a range.
        """
        if self.kind == "number":
            if not is_number(value):
                return f"{path}: must be a number, got {show(value)}", None
            if not math.isfinite(value):
                return f"{path}: must be a finite number, got {value!r}", None
            if not self._inside(value):
                return f"{path}: must be in {self._bounds()}, got {value!r}", None
            return None, float(value)
        ok_shape = isinstance(value, (list, tuple)) and len(value) == 2
        if not ok_shape or not all(is_number(v) for v in value):
            return f"{path}: must be a list [low, high] of two numbers, got {show(value)}", None
        low, high = value
        if not (math.isfinite(low) and math.isfinite(high)):
            return f"{path}: must be finite numbers, got {list(value)!r}", None
        if not (self._inside(low) and self._inside(high)):
            return f"{path}: values must be in {self._bounds()}, got {list(value)!r}", None
        if low > high:
            return f"{path}: low must be <= high, got {list(value)!r}", None
        return None, (float(low), float(high))

    def clamp(self, x: float) -> float:
        """``x`` rounded to 6 decimals and clamped into the bounds.

        An open lower bound keeps 1% of the span above it, so the result always passes
        :meth:`check`. Rounding keeps derived values readable on the wire (1.2, not
        1.2000000000000002) and makes them independent of summation order.
        """
        lo = self.lo + 0.01 * (self.hi - self.lo) if self.lo_open else self.lo
        return float(min(self.hi, max(lo, round(x, 6))))


#: The probability field every op has.
P = Field("number", 0.0, 1.0)


def check_fields(
    specs: Mapping[str, Field], values: Mapping[str, Any], base: str
) -> tuple[list[str], dict[str, Any]]:
    """Check ``values[name]`` against ``specs[name]`` for every name present in ``values``.

    Returns
    -------
    tuple
        ``(problems, cleaned)``: each problem's path is ``{base}.{name}``; ``cleaned`` holds
        the valid values only.
    """
    problems: list[str] = []
    cleaned: dict[str, Any] = {}
    for name, spec in specs.items():
        if name not in values:
            continue
        problem, clean = spec.check(values[name], f"{base}.{name}")
        if problem:
            problems.append(problem)
        else:
            cleaned[name] = clean
    return problems, cleaned


def check_seed(seed: Any) -> int:
    """Return ``seed`` as an int; raise :class:`ConfigError` unless it is an integer >= 0."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ConfigError("seed must be an integer >= 0.", value=seed,
                          fix="Pass seed=<int>, e.g. seed=0.")
    return int(seed)
