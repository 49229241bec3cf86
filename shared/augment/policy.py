"""The augmentation policy: a frozen, strictly validated, JSON-serialisable list of ops.

Schema (version 1)::

    {"schema_version": 1,
     "modality": "image" | "text",
     "ops": [{"op": "rotate", "p": 0.5, "limit": 15.0}, ...],
     "sampling": null | {"kind": "randaugment" | "trivialaugment",
                         "num_ops": N, "magnitude": M},
     "border": "reflect" | "constant" | "edge"}

``schema_version``, ``modality`` and ``ops`` are required; ``sampling`` (default null) and
``border`` (default ``"reflect"``) may be left out; no other key is accepted. Each op kind
may appear once; ops run
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

Border. The geometric ops of an image (rotate, flips, crop_resize, affine) are composed
into one warp, so the policy has one ``border`` mode for what that warp uncovers:
``"reflect"`` mirrors the image (the default: no black wedges on a rotated X-ray),
``"constant"`` fills with black, ``"edge"`` repeats the outermost pixels.

The policy travels as a JSON string; :meth:`Policy.from_json` is the network entry point
and raises nothing but :class:`~fedaug.errors.PolicyError`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fedaug.errors import PolicyError

from .functional import BORDER_MODES, DEFAULT_BORDER
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
    op_from_dict,
)
from .schema import Field, show

__all__ = [
    "BORDER_MODES",
    "DEFAULT_BORDER",
    "SCHEMA_VERSION",
    "MODALITIES",
    "SAMPLING_KINDS",
    "MAX_MAGNITUDE",
    "MAX_JSON_CHARS",
    "Sampling",
    "Policy",
]

SCHEMA_VERSION = 1
MODALITIES = ("image", "text")
SAMPLING_KINDS = ("randaugment", "trivialaugment")
MAX_MAGNITUDE = 30.0
#: Longest JSON text :meth:`Policy.from_json` accepts (a full policy is about 1 kB).
MAX_JSON_CHARS = 65536

_REQUIRED_KEYS = ("schema_version", "modality", "ops")
#: Keys that may be left out, with the value they then take.
_OPTIONAL_KEYS: dict[str, Any] = {"sampling": None, "border": DEFAULT_BORDER}
_TOP_KEYS = (*_REQUIRED_KEYS, *_OPTIONAL_KEYS)
_SAMPLING_KEYS = ("kind", "num_ops", "magnitude")
_MAGNITUDE = Field("number", 0.0, MAX_MAGNITUDE)


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
        problems = []
        if self.kind not in SAMPLING_KINDS:
            problems.append(
                f"sampling.kind: must be one of {', '.join(SAMPLING_KINDS)}, got {show(self.kind)}"
            )
        if not isinstance(self.num_ops, int) or isinstance(self.num_ops, bool):
            problems.append(f"sampling.num_ops: must be an integer, got {show(self.num_ops)}")
        elif not 1 <= self.num_ops <= len(OPS):
            problems.append(f"sampling.num_ops: must be in [1, {len(OPS)}], got {self.num_ops!r}")
        problem, magnitude = _MAGNITUDE.check(self.magnitude, "sampling.magnitude")
        if problem:
            problems.append(problem)
        if problems:
            raise PolicyError(problems)
        object.__setattr__(self, "magnitude", magnitude)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"kind": self.kind, "num_ops": self.num_ops, "magnitude": self.magnitude}


def _problems(
    *,
    schema_version: Any,
    modality: Any,
    ops: Sequence[tuple[int, Any]],
    n_ops: int | None,
    sampling: Any,
    border: Any,
) -> list[str]:
    """Every problem of a policy's parts, each with its path: the one policy validator.

    ``ops`` pairs each op with its index in the policy's list; ``n_ops`` counts the
    list's entries, parsed or not (None: no list, so no bound on ``sampling.num_ops``).
    An integer ``schema_version`` other than 1 raises at once: other checks would judge
    another version's policy by this version's rules.
    """
    problems = []
    if not isinstance(schema_version, int) or isinstance(schema_version, bool):
        problems.append(
            f"schema_version: must be the integer {SCHEMA_VERSION}, got {show(schema_version)}"
        )
    elif schema_version != SCHEMA_VERSION:
        raise PolicyError(
            [f"schema_version: unsupported version {schema_version} "
             f"(this fedaug reads version {SCHEMA_VERSION})"],
            fix=f"Send a schema_version {SCHEMA_VERSION} policy, or upgrade fedaug on this node.",
        )
    if modality not in MODALITIES:
        problems.append(f"modality: must be 'image' or 'text', got {show(modality)}")
    first: dict[str, int] = {}
    for i, op in ops:
        if not isinstance(op, Op):
            problems.append(f"ops.{i}: must be an Op instance, got {show(op)}")
            continue
        if modality in MODALITIES and op.modality != modality:
            problems.append(
                f"ops.{i}.{op.op}: {op.modality} op not allowed in a policy of modality {modality!r}"
            )
        if op.op in first:
            problems.append(
                f"ops.{i}.{op.op}: duplicate op (each op may appear once; first at ops.{first[op.op]})"
            )
        else:
            first[op.op] = i
    if sampling is not None and not isinstance(sampling, Sampling):
        problems.append(f"sampling: must be a Sampling or None, got {show(sampling)}")
    elif sampling is not None and n_ops is not None and sampling.num_ops > n_ops:
        problems.append(
            f"sampling.num_ops: must be <= the number of ops ({n_ops}), got {sampling.num_ops}"
        )
    if not isinstance(border, str) or border not in BORDER_MODES:
        problems.append(f"border: must be one of {', '.join(BORDER_MODES)}, got {show(border)}")
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
    border : str, default "reflect"
        How the geometric ops' warp fills what it uncovers: ``"reflect"``,
        ``"constant"`` (black) or ``"edge"``.

    Raises
    ------
    PolicyError
        Listing every problem, each with its path (``ops.2.rotate.limit: ...``).
    """

    modality: str = "image"
    ops: tuple[Op, ...] = field(default=())
    sampling: Sampling | None = None
    schema_version: int = SCHEMA_VERSION
    border: str = DEFAULT_BORDER

    def __post_init__(self) -> None:
        if not isinstance(self.ops, (list, tuple)):
            raise PolicyError([f"ops: must be a tuple of ops, got {show(self.ops)}"])
        object.__setattr__(self, "ops", tuple(self.ops))
        problems = _problems(
            schema_version=self.schema_version, modality=self.modality,
            ops=list(enumerate(self.ops)), n_ops=len(self.ops), sampling=self.sampling,
            border=self.border,
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
            raise PolicyError([f"modality: must be 'image' or 'text', got {show(modality)}"])
        return cls(modality=modality, ops=ops)

    @classmethod
    def from_dict(cls, raw: Any) -> Policy:
        """Parse a policy dict strictly; raise one :class:`PolicyError` listing every problem.

        The dict's shape (unknown and missing keys, JSON types) is checked here, each op's
        values by its class, and the rest by the same validator as the constructor's.
        """
        if not isinstance(raw, dict):
            raise PolicyError(
                [f"policy: must be an object with keys {', '.join(_TOP_KEYS)}, got {show(raw)}"]
            )
        problems = [
            f"{key}: unknown key (allowed: {', '.join(_TOP_KEYS)})" for key in raw if key not in _TOP_KEYS
        ]
        missing = [key for key in _REQUIRED_KEYS if key not in raw]
        problems += [f"{key}: missing (required)" for key in missing]
        raw_ops = raw.get("ops", [])
        parsed: list[tuple[int, Op]] = []
        if not isinstance(raw_ops, list):
            problems.append(f"ops: must be a list of op objects, got {show(raw_ops)}")
        else:
            for i, item in enumerate(raw_ops):
                op, op_problems = op_from_dict(item, path=f"ops.{i}")
                problems += op_problems
                if op is not None:
                    parsed.append((i, op))
        sampling, sampling_problems = _sampling_from_dict(
            raw.get("sampling", _OPTIONAL_KEYS["sampling"])
        )
        border = raw.get("border", _OPTIONAL_KEYS["border"])
        problems += sampling_problems
        problems += [  # a missing key is reported once, as missing
            problem for problem in _problems(
                schema_version=raw.get("schema_version", SCHEMA_VERSION),
                modality=raw.get("modality"),
                ops=parsed,
                n_ops=len(raw_ops) if isinstance(raw_ops, list) else None,
                sampling=sampling,
                border=border,
            )
            if problem.split(":")[0] not in missing
        ]
        if problems:
            raise PolicyError(problems)
        return cls(modality=raw["modality"], ops=tuple(op for _, op in parsed), sampling=sampling,
                   border=border)

    @classmethod
    def from_json(cls, text: str | bytes) -> Policy:
        """Parse the JSON wire form. Raises only :class:`PolicyError`, whatever the input."""
        try:
            if isinstance(text, (bytes, bytearray)):
                text = bytes(text).decode("utf-8")
            if not isinstance(text, str):
                raise PolicyError([f"policy: must be a JSON string, got {show(text)}"])
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
        """JSON-ready dict in schema version 1, every key written out."""
        return {
            "schema_version": self.schema_version,
            "modality": self.modality,
            "ops": [op.to_dict() for op in self.ops],
            "sampling": None if self.sampling is None else self.sampling.to_dict(),
            "border": self.border,
        }

    def to_json(self) -> str:
        """Compact, deterministic JSON text (the wire form)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    def ordered_ops(self) -> tuple[Op, ...]:
        """The ops in canonical execution order."""
        rank = {tag: i for i, tag in enumerate(OPS)}
        return tuple(sorted(self.ops, key=lambda op: rank[op.op]))


def _sampling_from_dict(raw: Any) -> tuple[Sampling | None, list[str]]:
    """The ``sampling`` value parsed: ``(Sampling or None, problems)``."""
    if raw is None:
        return None, []
    if not isinstance(raw, dict):
        return None, [f"sampling: must be null or an object, got {show(raw)}"]
    problems = [
        f"sampling.{k}: unknown key (allowed: {', '.join(_SAMPLING_KEYS)})"
        for k in raw if k not in _SAMPLING_KEYS
    ]
    problems += [f"sampling.{k}: missing (required)" for k in _SAMPLING_KEYS if k not in raw]
    if problems:
        return None, problems
    try:
        return Sampling(**raw), []
    except PolicyError as err:
        return None, err.problems


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in a policy")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r} in an object")
        out[key] = value
    return out
