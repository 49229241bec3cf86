"""The augmentation policy: a frozen, strictly validated, JSON-serialisable list of ops.

Schema (version 1)::

    {"schema_version": 1,
     "modality": "image" | "text",
     "ops": [{"op": "rotate", "p": 0.5, "limit": 15.0}, ...],
     "sampling": null | {"kind": "randaugment" | "trivialaugment",
                         "num_ops": N, "magnitude": M}}

Every key is required and no other key is accepted. Each op kind may appear once; ops run
in the canonical order of :data:`fedaug.augment.ops.OPS` whatever their list order
(geometric ops composed into one warp, then blur, brightness/contrast, gamma, noise).

Sampling. With ``sampling = null`` each op is applied independently with its ``p``. With
sampling, each sample gets ``num_ops`` distinct ops drawn uniformly from the list and
applies them (their ``p`` is then not used). Magnitude mapping: with ``m = M / 30``
(``randaugment``: fixed; ``trivialaugment``: ``m`` drawn uniformly in ``[0, M / 30]`` per
sample), every drawn parameter ``v`` of a chosen op is moved towards the op's identity:
``identity + m * (v - identity)``. ``M = 30`` uses the op's full range, ``M = 0`` changes
nothing, ``M = 15`` halves every range about its identity (rotation within +-limit/2,
brightness 0.8-1.2 becomes 0.9-1.1, crop scale 0.7-0.9 becomes 0.85-0.95, text ``alpha``
halved). Flips have no magnitude.

The policy travels as a JSON string; :meth:`Policy.from_json` is the network entry point
and raises nothing but :class:`~fedaug.errors.PolicyError`.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedaug.errors import ConfigError, DataError, PolicyError

from . import functional as F
from .ops import (
    OPS,
    Brightness,
    Contrast,
    CropResize,
    GaussianNoise,
    Op,
    RandomDelete,
    RandomInsert,
    RandomSwap,
    Rotate,
    SynonymReplace,
    _Field,
    _is_number,
    _show,
    op_from_dict,
)

__all__ = [
    "SCHEMA_VERSION",
    "MODALITIES",
    "SAMPLING_KINDS",
    "MAX_MAGNITUDE",
    "MIN_MERGED_P",
    "Sampling",
    "Policy",
    "merge_policies",
    "apply_policy",
    "apply_text_policy",
]

SCHEMA_VERSION = 1
MODALITIES = ("image", "text")
SAMPLING_KINDS = ("randaugment", "trivialaugment")
MAX_MAGNITUDE = 30.0
#: Merged ops with a probability below this are dropped by :func:`merge_policies`.
MIN_MERGED_P = 0.05
#: Longest JSON text :meth:`Policy.from_json` accepts (a full policy is about 1 kB).
MAX_JSON_CHARS = 65536

_TOP_KEYS = ("schema_version", "modality", "ops", "sampling")
_SAMPLING_KEYS = ("kind", "num_ops", "magnitude")
_MAGNITUDE = _Field("number", 0.0, MAX_MAGNITUDE)


def _sampling_problems(kind: Any, num_ops: Any, magnitude: Any, path: str) -> list[str]:
    problems = []
    if kind not in SAMPLING_KINDS:
        problems.append(f"{path}.kind: must be one of {', '.join(SAMPLING_KINDS)}, got {_show(kind)}")
    if not isinstance(num_ops, int) or isinstance(num_ops, bool):
        problems.append(f"{path}.num_ops: must be an integer, got {_show(num_ops)}")
    elif not 1 <= num_ops <= len(OPS):
        problems.append(f"{path}.num_ops: must be in [1, {len(OPS)}], got {num_ops!r}")
    problem, _ = _MAGNITUDE.check(magnitude, f"{path}.magnitude")
    if problem:
        problems.append(problem)
    return problems


@dataclass(frozen=True)
class Sampling:
    """RandAugment / TrivialAugment-style op sampling (see the module docstring).

    Parameters
    ----------
    kind : str
        ``"randaugment"`` (fixed magnitude) or ``"trivialaugment"`` (magnitude drawn
        uniformly in ``[0, magnitude]`` per sample).
    num_ops : int, default 2
        Distinct ops applied per sample, at most the number of ops in the policy.
    magnitude : float, default 9.0
        Strength in ``[0, 30]``; ``m = magnitude / 30`` scales every op's range.
    """

    kind: str
    num_ops: int = 2
    magnitude: float = 9.0

    def __post_init__(self) -> None:
        problems = _sampling_problems(self.kind, self.num_ops, self.magnitude, "sampling")
        if problems:
            raise PolicyError(problems)
        object.__setattr__(self, "magnitude", float(self.magnitude))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"kind": self.kind, "num_ops": self.num_ops, "magnitude": self.magnitude}


def _cross_problems(
    modality: str, ops: Sequence[tuple[int, Op]], *, n_ops: int, num_ops: int | None
) -> list[str]:
    """Problems that involve several fields: op modality, duplicates, ``num_ops`` bound."""
    problems = []
    first: dict[str, int] = {}
    for i, op in ops:
        if op.modality != modality:
            problems.append(
                f"ops.{i}.{op.op}: {op.modality} op not allowed in a policy of modality {modality!r}"
            )
        if op.op in first:
            problems.append(
                f"ops.{i}.{op.op}: duplicate op (each op may appear once; first at ops.{first[op.op]})"
            )
        else:
            first[op.op] = i
    if num_ops is not None and num_ops > n_ops:
        problems.append(f"sampling.num_ops: must be <= the number of ops ({n_ops}), got {num_ops}")
    return problems


@dataclass(frozen=True)
class Policy:
    """A validated augmentation policy (schema version 1).

    Parameters
    ----------
    modality : str, default "image"
        ``"image"`` or ``"text"``; every op must be of this modality.
    ops : tuple of Op, default ()
        The ops, each kind at most once (an empty policy changes nothing).
    sampling : Sampling or None, default None
        None applies each op with its ``p``; see :class:`Sampling`.
    schema_version : int, default 1
        Only 1 exists.

    Raises
    ------
    PolicyError
        Listing every problem, each with its path (``ops.2.rotate.limit: ...``).
    """

    modality: str = "image"
    ops: tuple[Op, ...] = field(default=())
    sampling: Sampling | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        problems = []
        if self.schema_version != SCHEMA_VERSION or isinstance(self.schema_version, bool):
            problems.append(
                f"schema_version: unsupported version {self.schema_version!r} "
                f"(this fedaug reads version {SCHEMA_VERSION})"
            )
        if self.modality not in MODALITIES:
            problems.append(f"modality: must be 'image' or 'text', got {_show(self.modality)}")
        for i, op in enumerate(self.ops):
            if not isinstance(op, Op):
                problems.append(f"ops.{i}: must be an Op instance, got {_show(op)}")
        if self.sampling is not None and not isinstance(self.sampling, Sampling):
            problems.append(f"sampling: must be a Sampling or None, got {_show(self.sampling)}")
        if not problems:
            problems = _cross_problems(
                self.modality, list(enumerate(self.ops)), n_ops=len(self.ops),
                num_ops=None if self.sampling is None else self.sampling.num_ops,
            )
        if problems:
            raise PolicyError(problems)

    # ------------------------------------------------------------------ construction

    @classmethod
    def default(cls, modality: str = "image") -> Policy:
        """The mild, data-independent default policy (no flips: laterality matters).

        Image: rotate within +-10 degrees, crop keeping 85-100% of each side,
        brightness and contrast in 0.9-1.1 (each p=0.5), Gaussian noise std up to 0.02
        (p=0.3). Text: synonym replacement (p=0.5) and insert, swap, delete (p=0.25 each),
        all with ``alpha = 0.1``.
        """
        if modality == "image":
            ops: tuple[Op, ...] = (
                Rotate(p=0.5, limit=10.0),
                CropResize(p=0.5, scale=(0.85, 1.0)),
                Brightness(p=0.5, factor=(0.9, 1.1)),
                Contrast(p=0.5, factor=(0.9, 1.1)),
                GaussianNoise(p=0.3, std=(0.0, 0.02)),
            )
        elif modality == "text":
            ops = (
                SynonymReplace(p=0.5, alpha=0.1),
                RandomInsert(p=0.25, alpha=0.1),
                RandomSwap(p=0.25, alpha=0.1),
                RandomDelete(p=0.25, alpha=0.1),
            )
        else:
            raise PolicyError([f"modality: must be 'image' or 'text', got {_show(modality)}"])
        return cls(modality=modality, ops=ops)

    @classmethod
    def from_dict(cls, raw: Any) -> Policy:
        """Parse a policy dict strictly; raise one :class:`PolicyError` listing every problem."""
        if not isinstance(raw, dict):
            raise PolicyError([f"policy: must be an object with keys {', '.join(_TOP_KEYS)}, got {_show(raw)}"])
        problems = [
            f"{key}: unknown key (allowed: {', '.join(_TOP_KEYS)})" for key in raw if key not in _TOP_KEYS
        ]
        problems += [f"{key}: missing (required)" for key in _TOP_KEYS if key not in raw]
        version = raw.get("schema_version", SCHEMA_VERSION)
        if not isinstance(version, int) or isinstance(version, bool):
            problems.append(f"schema_version: must be the integer {SCHEMA_VERSION}, got {_show(version)}")
        elif version != SCHEMA_VERSION:
            raise PolicyError(
                [f"schema_version: unsupported version {version} (this fedaug reads version {SCHEMA_VERSION})"],
                fix=f"Send a schema_version {SCHEMA_VERSION} policy, or upgrade fedaug on this node.",
            )
        modality = raw.get("modality")
        if "modality" in raw and modality not in MODALITIES:
            problems.append(f"modality: must be 'image' or 'text', got {_show(modality)}")
        raw_ops = raw.get("ops", [])
        parsed: list[tuple[int, Op]] = []
        if not isinstance(raw_ops, list):
            problems.append(f"ops: must be a list of op objects, got {_show(raw_ops)}")
        else:
            for i, item in enumerate(raw_ops):
                op, op_problems = op_from_dict(item, path=f"ops.{i}")
                problems += op_problems
                if op is not None:
                    parsed.append((i, op))
        raw_sampling = raw.get("sampling")
        sampling = None
        if raw_sampling is not None:
            if not isinstance(raw_sampling, dict):
                problems.append(f"sampling: must be null or an object, got {_show(raw_sampling)}")
            else:
                problems += [
                    f"sampling.{k}: unknown key (allowed: {', '.join(_SAMPLING_KEYS)})"
                    for k in raw_sampling if k not in _SAMPLING_KEYS
                ]
                problems += [
                    f"sampling.{k}: missing (required)" for k in _SAMPLING_KEYS if k not in raw_sampling
                ]
                if all(k in raw_sampling for k in _SAMPLING_KEYS):
                    sp = _sampling_problems(
                        raw_sampling["kind"], raw_sampling["num_ops"], raw_sampling["magnitude"],
                        "sampling",
                    )
                    problems += sp
                    if not sp:
                        sampling = Sampling(*(raw_sampling[k] for k in _SAMPLING_KEYS))
        if modality in MODALITIES and isinstance(raw_ops, list):
            problems += _cross_problems(
                modality, parsed, n_ops=len(raw_ops),
                num_ops=None if sampling is None else sampling.num_ops,
            )
        if problems:
            raise PolicyError(problems)
        return cls(modality=modality, ops=tuple(op for _, op in parsed), sampling=sampling)

    @classmethod
    def from_json(cls, text: str | bytes) -> Policy:
        """Parse the JSON wire form. Raises only :class:`PolicyError`, whatever the input."""
        try:
            if isinstance(text, (bytes, bytearray)):
                text = bytes(text).decode("utf-8")
            if not isinstance(text, str):
                raise PolicyError([f"policy: must be a JSON string, got {_show(text)}"])
            if len(text) > MAX_JSON_CHARS:
                raise PolicyError([f"policy: JSON text too long ({len(text)} > {MAX_JSON_CHARS} characters)"])
            raw = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
            return cls.from_dict(raw)
        except PolicyError:
            raise
        except (ValueError, RecursionError, UnicodeDecodeError) as exc:
            raise PolicyError([f"policy: not valid JSON ({exc})"]) from None
        except Exception as exc:  # noqa: BLE001 - the network entry point never leaks other errors
            raise PolicyError([f"policy: could not be parsed ({type(exc).__name__}: {exc})"]) from None

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in schema version 1."""
        return {
            "schema_version": self.schema_version,
            "modality": self.modality,
            "ops": [op.to_dict() for op in self.ops],
            "sampling": None if self.sampling is None else self.sampling.to_dict(),
        }

    def to_json(self) -> str:
        """Compact, deterministic JSON text (the wire form)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    def ordered_ops(self) -> tuple[Op, ...]:
        """The ops in canonical execution order."""
        rank = {tag: i for i, tag in enumerate(OPS)}
        return tuple(sorted(self.ops, key=lambda op: rank[op.op]))


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in a policy")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r} in an object")
        out[key] = value
    return out


# ----------------------------------------------------------------------------- merging


def merge_policies(policies: Sequence[Policy], weights: Sequence[float]) -> Policy:
    """Merge site policies into a global one (the server's aggregation).

    Parameters
    ----------
    policies : sequence of Policy
        Site policies, all of the same modality and the same sampling kind (or all None).
    weights : sequence of float
        One non-negative weight per policy (e.g. example counts); normalised to sum 1.

    Returns
    -------
    Policy
        The union of op kinds in canonical order. An op's ``p`` is the weighted average
        over all sites (a site without the op counts as ``p = 0``); its other numbers
        and range endpoints are the weighted average over the sites that have it (weights
        renormalised over them). Ops whose merged ``p`` is below ``MIN_MERGED_P`` (0.05)
        are dropped. Sampling: ``num_ops`` is the rounded weighted average (capped by the
        number of merged ops), ``magnitude`` the weighted average.

    Raises
    ------
    PolicyError
        Empty input, mismatched lengths, bad weights, or mixed modality / sampling kind.
    """
    policies, weights = list(policies), list(weights)
    problems = []
    if not policies:
        problems.append("policies: need at least one policy")
    if len(weights) != len(policies):
        problems.append(f"weights: need one weight per policy ({len(policies)}), got {len(weights)}")
    for i, p in enumerate(policies):
        if not isinstance(p, Policy):
            problems.append(f"policies.{i}: must be a Policy, got {_show(p)}")
    for i, w in enumerate(weights):
        if not _is_number(w) or not math.isfinite(w) or w < 0:
            problems.append(f"weights.{i}: must be a finite number >= 0, got {_show(w)}")
    if not problems and math.fsum(weights) <= 0:
        problems.append(f"weights: must not all be zero, got {weights!r}")
    if not problems:
        modalities = sorted({p.modality for p in policies})
        if len(modalities) > 1:
            problems.append(f"policies: mixed modalities {modalities} (merge image and text policies separately)")
        kinds = sorted({p.sampling.kind if p.sampling else "null" for p in policies})
        if len(kinds) > 1:
            problems.append(f"policies: mixed sampling kinds {kinds} (sites must share one sampling kind)")
    if problems:
        raise PolicyError(problems)
    total = math.fsum(weights)
    wn = [w / total for w in weights]
    merged = []
    for tag, cls in OPS.items():
        present = [(w, op) for w, p in zip(wn, policies, strict=True) for op in p.ops if op.op == tag]
        if not present:
            continue
        prob = min(1.0, max(0.0, math.fsum(w * op.p for w, op in present)))
        if prob < MIN_MERGED_P:
            continue
        wsum = math.fsum(w for w, _ in present)
        if wsum <= 0:  # only zero-weight sites have it
            continue
        kwargs: dict[str, Any] = {"p": prob}
        for name, spec in cls.FIELDS.items():
            if name == "p":
                continue
            values = [getattr(op, name) for _, op in present]
            if spec.kind == "number":
                kwargs[name] = _clamp(math.fsum(w * v for (w, _), v in zip(present, values, strict=True)) / wsum, spec)
            else:
                kwargs[name] = tuple(
                    _clamp(math.fsum(w * v[j] for (w, _), v in zip(present, values, strict=True)) / wsum, spec)
                    for j in range(2)
                )
        merged.append(cls(**kwargs))
    sampling = None
    if policies[0].sampling is not None and merged:
        num = round(math.fsum(w * p.sampling.num_ops for w, p in zip(wn, policies, strict=True)))
        mag = math.fsum(w * p.sampling.magnitude for w, p in zip(wn, policies, strict=True))
        sampling = Sampling(
            kind=policies[0].sampling.kind,
            num_ops=max(1, min(len(merged), int(num))),
            magnitude=min(MAX_MAGNITUDE, max(0.0, mag)),
        )
    return Policy(modality=policies[0].modality, ops=tuple(merged), sampling=sampling)


def _clamp(x: float, spec: _Field) -> float:
    return min(spec.hi, max(spec.lo, x))


# ---------------------------------------------------------------------------- applying


def _check_seed(seed: Any) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ConfigError("seed must be an integer.", value=seed, fix="Pass seed=<int>.")
    return int(seed)


def apply_policy(policy: Policy, images: np.ndarray, *, seed: int) -> np.ndarray:
    """Augment images one by one (the reference path).

    Parameters
    ----------
    policy : Policy
        An image policy.
    images : np.ndarray
        ``(N, H, W, C)`` or ``(N, H, W)``; ``uint8`` or floating in ``[0, 1]``.
    seed : int
        Same policy and seed give the same output. Parameters are drawn exactly as
        ``BatchAugmenter(policy)(x, generator=torch.Generator().manual_seed(seed))``
        draws them, and the per-image maths (:func:`functional.augment_image`) matches
        the batched engine's torch backend within float rounding (at most 1 grey level on
        ``uint8``); its OpenCV backend is within a few grey levels of that.

    Returns
    -------
    np.ndarray
        Same shape and dtype as ``images``.
    """
    from .batched import draw_params

    if not isinstance(policy, Policy) or policy.modality != "image":
        raise PolicyError([f"modality: apply_policy needs an image policy, got {_show(policy)}"])
    seed = _check_seed(seed)
    arr = np.asarray(images)
    if arr.ndim not in (3, 4) or not (arr.dtype == np.uint8 or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(
            "images must be an (N, H, W, C) or (N, H, W) array of uint8 or floats in [0, 1].",
            value=f"shape {arr.shape}, dtype {arr.dtype}",
            fix="Convert with np.asarray(images, dtype=np.uint8).",
        )
    x = arr[..., None] if arr.ndim == 3 else arr
    n, h, w, c = x.shape
    params = draw_params(
        policy, n, channels=c, height=h, width=w, generator=torch.Generator().manual_seed(seed)
    )
    out = np.empty_like(x)
    for i in range(n):
        out[i] = F.augment_image(x[i], **params.image_kwargs(i))
    return out[..., 0] if arr.ndim == 3 else out


def apply_text_policy(policy: Policy, texts: Sequence[str], *, seed: int) -> list[str]:
    """Augment texts with the EDA ops of a text policy.

    All randomness comes from one ``random.Random(seed)`` used in order: per text, the op
    choice (each op's ``p``, or the sampled ops and magnitude), then the EDA functions.
    Ops run in canonical order; under sampling each ``alpha`` is scaled by the magnitude.
    """
    if not isinstance(policy, Policy) or policy.modality != "text":
        raise PolicyError([f"modality: apply_text_policy needs a text policy, got {_show(policy)}"])
    rng = random.Random(_check_seed(seed))
    ops = policy.ops
    rank = {tag: i for i, tag in enumerate(OPS)}
    out = []
    for text in texts:
        s = policy.sampling
        if s is None:
            chosen = [op for op in ops if rng.random() < op.p]
            m = 1.0
        else:
            chosen = [ops[i] for i in rng.sample(range(len(ops)), s.num_ops)]
            m = s.magnitude / MAX_MAGNITUDE
            if s.kind == "trivialaugment":
                m = rng.uniform(0.0, m)
        for op in sorted(chosen, key=lambda o: rank[o.op]):
            text = op.apply(text, {"applied": True, "alpha": op.alpha * m}, rng=rng)
        out.append(text)
    return out
