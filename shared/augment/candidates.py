"""Candidate augmentation policies derived from a base policy alone, without any data.

A site's private policy search (``fedaug.client.policy_search``) scores these candidates on
its own records and releases only the index the exponential mechanism picks; the server
rebuilds the same list from the base policy and the seed, so the candidates cost nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedaug.errors import ConfigError, PolicyError

from .ops import ImageOp, Op
from .policy import MAX_MAGNITUDE, Policy, Sampling
from .schema import check_seed

__all__ = ["SCALE_FACTORS", "candidate_labels", "candidate_policies"]

#: Factors applied to every op's probability and range (about the op's identity), in the
#: order the scaled candidates appear (after the base and the no-augmentation policy).
SCALE_FACTORS = (0.5, 1.5, 2.0)
#: Fixed candidates: base, none, one per scale factor, the sampling variant.
_FIXED = ("base", "none", *(f"x{f:g}" for f in SCALE_FACTORS), "sampling")
#: Random extra candidates (beyond the fixed ones) draw their scale factor in this range.
_EXTRA_SCALE = (0.25, 2.5)


def candidate_labels(num_candidates: int = 6) -> list[str]:
    """Short names of the candidates :func:`candidate_policies` returns, in order.

    ``base``, ``none``, ``x0.5``, ``x1.5``, ``x2``, ``sampling``, then ``random-1``,
    ``random-2``, ... for the seeded extras.
    """
    _check_num_candidates(num_candidates)
    extra = [f"random-{i}" for i in range(1, num_candidates - len(_FIXED) + 1)]
    return [*_FIXED, *extra][:num_candidates]


def candidate_policies(base: Policy, *, num_candidates: int = 6, seed: int = 0) -> list[Policy]:
    """Derive candidate policies from ``base`` alone (no data is read).

    Parameters
    ----------
    base : Policy
        An image policy with at least one op.
    num_candidates : int, default 6
        At least 2. The first six are fixed (the first ``num_candidates`` of them are
        used when fewer are asked for): the base itself; no augmentation; the base with
        every op's ``p`` and range scaled by 0.5, 1.5 and 2 about the op's identity
        (:data:`SCALE_FACTORS`; values clamped to each field's bounds); and the sampling
        variant: a base without sampling gets RandAugment (``num_ops = min(2, len(ops))``,
        magnitude 30, i.e. the ops' own ranges), a base with sampling gets it removed.
        Beyond six, each extra candidate scales the base by a factor drawn in
        ``[0.25, 2.5]`` and samples with RandAugment or TrivialAugment, ``num_ops`` and
        magnitude drawn too, all from ``seed``.
    seed : int, default 0
        Seeds the extra candidates only; the same base, count and seed give the same list.

    Returns
    -------
    list of Policy
        ``num_candidates`` valid image policies (named by :func:`candidate_labels`).

    Raises
    ------
    PolicyError
        ``base`` is not an image policy or has no ops.
    ConfigError
        ``num_candidates`` or ``seed`` is invalid.
    """
    _check_base(base)
    _check_num_candidates(num_candidates)
    seed = check_seed(seed)
    out = [base, Policy(modality="image", border=base.border)]
    out += [_scaled(base, f, base.sampling) for f in SCALE_FACTORS]
    if base.sampling is None:
        sampling = Sampling("randaugment", num_ops=min(2, len(base.ops)), magnitude=MAX_MAGNITUDE)
        out.append(Policy(modality="image", ops=base.ops, sampling=sampling, border=base.border))
    else:
        out.append(Policy(modality="image", ops=base.ops, border=base.border))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EA7C4]))
    while len(out) < num_candidates:
        factor = float(rng.uniform(*_EXTRA_SCALE))
        kind = ("randaugment", "trivialaugment")[int(rng.integers(2))]
        num_ops = int(rng.integers(1, len(base.ops) + 1))
        magnitude = round(float(rng.uniform(5.0, MAX_MAGNITUDE)), 3)
        out.append(_scaled(base, factor, Sampling(kind, num_ops=num_ops, magnitude=magnitude)))
    return out[:num_candidates]


def _scaled(base: Policy, factor: float, sampling: Sampling | None) -> Policy:
    return Policy(modality="image", ops=tuple(_scale_op(op, factor) for op in base.ops),
                  sampling=sampling, border=base.border)


def _scale_op(op: Op, factor: float) -> Op:
    """``op`` with ``p`` times ``factor`` and every range moved about its identity."""
    kwargs: dict[str, Any] = {}
    for name, spec in type(op).FIELDS.items():
        value = getattr(op, name)
        ident = 0.0 if name == "p" else _field_identity(op, name)
        if spec.kind == "number":
            kwargs[name] = spec.clamp(ident + factor * (value - ident))
        else:
            kwargs[name] = tuple(spec.clamp(ident + factor * (v - ident)) for v in value)
    return type(op)(**kwargs)


def _field_identity(op: Op, name: str) -> float:
    """The value of field ``name`` that leaves an image unchanged.

    Single numbers (``limit``, ``shear``, ``translate``) are largest deviations from 0;
    a range's identity is the op's ``IDENTITY`` of the same name (``factor`` 1, ``sigma``
    0, ``std`` 0, ``gamma`` 1) or 1 for a ``scale`` (crop fraction, zoom).
    """
    spec = type(op).FIELDS[name]
    if spec.kind == "number":
        return 0.0
    identity = getattr(type(op), "IDENTITY", {})
    if name in identity:
        return float(identity[name])
    if name == "scale":
        return 1.0
    raise PolicyError(  # pragma: no cover - guards a future op
        [f"ops.{op.op}.{name}: no known identity value, so this op cannot be scaled"],
        fix="Teach fedaug.augment.candidates._field_identity the op's identity value.",
    )


def _check_num_candidates(n: Any, *, minimum: int = 2) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < minimum:
        raise ConfigError(f"num_candidates must be an integer >= {minimum}.", value=n,
                          fix="Use the default 6.")


def _check_base(base: Any) -> None:
    if not isinstance(base, Policy) or base.modality != "image":
        raise PolicyError([f"base: must be an image Policy, got {base!r:.60}"],
                          fix="Search image policies only; start from Policy.default('image').")
    if not base.ops:
        raise PolicyError(["base.ops: the base policy has no ops, so every candidate would be "
                           "'no augmentation'"], fix="Start from Policy.default('image').")
    if not all(isinstance(op, ImageOp) for op in base.ops):  # pragma: no cover - Policy checks
        raise PolicyError(["base.ops: every op must be an image op"])
