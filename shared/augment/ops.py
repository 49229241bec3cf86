"""One small frozen, validated class per augmentation operation, tagged by ``op``.

Each op class is the single source of what the op is: its fields and their schema
(``FIELDS``), the stage it runs in (``STAGE``), how uniforms in [0, 1) map to its
per-image parameters (:meth:`ImageOp.draw_from`), the parameter values that change nothing
(``IDENTITY``), and what its parameters mean to the image maths (:meth:`ImageOp.matrix`
for geometric ops, :meth:`ImageOp.stage_values` for the others). Drawing from a generator
lives in :mod:`fedaug.augment.params`, applying in the backends.

``OPS`` lists every op class in the canonical execution order: geometric ops (composed
into one warp), blur, brightness and contrast (fused), gamma, noise; then the text ops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from fedaug.errors import PolicyError

from . import functional as F
from .schema import Field, P, check_fields, show

__all__ = [
    "Op",
    "ImageOp",
    "TextOp",
    "Rotate",
    "HFlip",
    "VFlip",
    "CropResize",
    "Affine",
    "GaussianBlur",
    "Brightness",
    "Contrast",
    "Gamma",
    "GaussianNoise",
    "SynonymReplace",
    "RandomInsert",
    "RandomSwap",
    "RandomDelete",
    "OPS",
    "GEOMETRIC_OPS",
    "op_from_dict",
]

#: The schema class under its former private name, for modules that import it so.
_Field = Field


@dataclass(frozen=True)
class Op:
    """Base of every op: a tag ``op``, a probability ``p`` and validated fields.

    Parameters
    ----------
    p : float, default 0.5
        Probability that the op is applied to a sample (ignored under RandAugment-style
        sampling, where the chosen ops are always applied).

    Raises
    ------
    PolicyError
        Listing every invalid field, each with its path (``rotate.limit: ...``).
    """

    op: ClassVar[str] = ""
    modality: ClassVar[str] = "image"
    FIELDS: ClassVar[Mapping[str, Field]] = {"p": P}

    p: float = 0.5

    def __post_init__(self) -> None:
        values = {name: getattr(self, name) for name in self.FIELDS}
        problems, cleaned = check_fields(self.FIELDS, values, self.op)
        if problems:
            raise PolicyError(problems)
        for name, value in cleaned.items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"op": tag, "p": ..., <fields>}``, ranges as lists."""
        out: dict[str, Any] = {"op": self.op}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def op_from_dict(raw: Any, *, path: str = "op") -> tuple[Op | None, list[str]]:
    """Parse one op dict strictly, collecting every problem.

    The dict's shape (its tag, unknown and missing keys) is checked here; its values by
    the op class itself.

    Returns
    -------
    tuple
        ``(op, [])`` when valid, else ``(None, problems)``; each problem starts with its
        path, e.g. ``ops.2.rotate.limit: must be in [0, 180], got 400``.
    """
    if not isinstance(raw, dict):
        return None, [f"{path}: must be an object like {{\"op\": \"rotate\", ...}}, got {show(raw)}"]
    tag = raw.get("op")
    if "op" not in raw:
        return None, [f"{path}.op: missing (required; one of {', '.join(OPS)})"]
    if not isinstance(tag, str) or tag not in OPS:
        return None, [f"{path}.op: unknown op {tag!r} (known: {', '.join(OPS)})"]
    cls = OPS[tag]
    base = f"{path}.{tag}"
    allowed = set(cls.FIELDS) | {"op"}
    problems = [
        f"{base}.{key}: unknown key (allowed: {', '.join(sorted(allowed))})"
        for key in raw if key not in allowed
    ]
    problems += [f"{base}.{name}: missing (required)" for name in cls.FIELDS if name not in raw]
    try:
        op = cls(**{name: raw[name] for name in cls.FIELDS if name in raw})
    except PolicyError as err:
        problems += [f"{path}.{problem}" for problem in err.problems]
        op = None
    if problems:
        return None, problems
    return op, []


# ----------------------------------------------------------------------------- image ops


@dataclass(frozen=True)
class ImageOp(Op):
    """Base of image ops.

    Class attributes: ``STAGE`` (``geometric``, ``blur``, ``colour``, ``gamma``,
    ``noise``), ``N_UNIFORMS`` (uniforms one image's raw parameters take) and
    ``IDENTITY``, the parameter values that leave an image unchanged. The RandAugment
    magnitude ``m`` in [0, 1] moves every drawn value ``v`` of those parameters to
    ``identity + m * (v - identity)``.
    """

    STAGE: ClassVar[str] = ""
    IDENTITY: ClassVar[Mapping[str, float]] = {}
    N_UNIFORMS: ClassVar[int] = 0

    def draw_from(self, u: np.ndarray) -> dict[str, np.ndarray]:
        """Map ``(n, N_UNIFORMS)`` uniforms in [0, 1) to raw parameters (``(n,)`` arrays)."""
        return {}

    def finalize(
        self, params: dict[str, np.ndarray], applied: np.ndarray, magnitude: np.ndarray | float
    ) -> dict[str, np.ndarray]:
        """Scale parameters by ``magnitude`` and reset them to identity where not applied."""
        out = dict(params)
        scaled = not (isinstance(magnitude, float) and magnitude == 1.0)
        for name, ident in self.IDENTITY.items():
            v = ident + magnitude * (params[name] - ident) if scaled else params[name]
            out[name] = np.where(applied, v, ident)
        out["applied"] = np.asarray(applied, dtype=bool)
        return out

    def matrix(self, params: Mapping[str, np.ndarray], *, height: int, width: int) -> np.ndarray:
        """``(n, 3, 3)`` inverse map in centred pixel coordinates (geometric ops only)."""
        raise NotImplementedError(f"{self.op} is not a geometric op")

    def stage_values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """This op's parameters under the names of :func:`functional.augment_image`.

        Works on one image's values and on a batch's ``(n,)`` arrays alike; empty for
        geometric ops, which contribute :meth:`matrix` instead.
        """
        return {}


def _range_draw(u: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    return bounds[0] + (bounds[1] - bounds[0]) * u


@dataclass(frozen=True)
class Rotate(ImageOp):
    """Rotate by an angle drawn uniformly in ``[-limit, limit]`` degrees.

    The corners it uncovers are filled as the policy's ``border`` says.

    Parameters
    ----------
    p : float, default 0.5
    limit : float, default 15.0
        Largest rotation in degrees, in ``[0, 180]``.
    """

    op: ClassVar[str] = "rotate"
    STAGE: ClassVar[str] = "geometric"
    FIELDS: ClassVar[Mapping[str, Field]] = {"p": P, "limit": Field("number", 0.0, 180.0)}
    IDENTITY: ClassVar[Mapping[str, float]] = {"angle": 0.0}

    limit: float = 15.0

    N_UNIFORMS: ClassVar[int] = 1

    def draw_from(self, u: np.ndarray) -> dict[str, np.ndarray]:
        return {"angle": _range_draw(u[:, 0], (-self.limit, self.limit))}

    def matrix(self, params: Mapping[str, np.ndarray], *, height: int, width: int) -> np.ndarray:
        return F.rotation_matrix(params["angle"])


@dataclass(frozen=True)
class HFlip(ImageOp):
    """Mirror left-right. Opt-in only: laterality matters in medical images.

    Parameters
    ----------
    p : float, default 0.5
    """

    op: ClassVar[str] = "hflip"
    STAGE: ClassVar[str] = "geometric"

    def matrix(self, params: Mapping[str, np.ndarray], *, height: int, width: int) -> np.ndarray:
        applied = params["applied"]
        return F.flip_matrix(applied, np.zeros_like(applied, dtype=bool))


@dataclass(frozen=True)
class VFlip(ImageOp):
    """Mirror top-bottom. Opt-in only: laterality matters in medical images.

    Parameters
    ----------
    p : float, default 0.5
    """

    op: ClassVar[str] = "vflip"
    STAGE: ClassVar[str] = "geometric"

    def matrix(self, params: Mapping[str, np.ndarray], *, height: int, width: int) -> np.ndarray:
        applied = params["applied"]
        return F.flip_matrix(np.zeros_like(applied, dtype=bool), applied)


@dataclass(frozen=True)
class CropResize(ImageOp):
    """Crop a window keeping a fraction of each side, then resize it back.

    Parameters
    ----------
    p : float, default 0.5
    scale : tuple of float, default (0.7, 0.9)
        Range of the fraction of each side kept (drawn independently for width and
        height), within ``(0, 1]``. The window position is uniform.
    """

    op: ClassVar[str] = "crop_resize"
    STAGE: ClassVar[str] = "geometric"
    FIELDS: ClassVar[Mapping[str, Field]] = {
        "p": P,
        "scale": Field("range", 0.0, 1.0, lo_open=True),
    }
    IDENTITY: ClassVar[Mapping[str, float]] = {"scale_x": 1.0, "scale_y": 1.0}

    scale: tuple[float, float] = (0.7, 0.9)

    N_UNIFORMS: ClassVar[int] = 4

    def draw_from(self, u: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "scale_x": _range_draw(u[:, 0], self.scale),
            "scale_y": _range_draw(u[:, 1], self.scale),
            "offset_x": 2.0 * u[:, 2] - 1.0,
            "offset_y": 2.0 * u[:, 3] - 1.0,
        }

    def matrix(self, params: Mapping[str, np.ndarray], *, height: int, width: int) -> np.ndarray:
        return F.crop_resize_matrix(
            params["scale_x"], params["scale_y"], params["offset_x"], params["offset_y"],
            height=height, width=width,
        )


@dataclass(frozen=True)
class Affine(ImageOp):
    """Zoom, horizontal shear and translation about the centre.

    What it uncovers is filled as the policy's ``border`` says.

    Parameters
    ----------
    p : float, default 0.5
    scale : tuple of float, default (0.9, 1.1)
        Zoom range within ``(0, 10]``.
    shear : float, default 5.0
        Largest shear in degrees, in ``[0, 45]``; drawn in ``[-shear, shear]``.
    translate : float, default 0.05
        Largest shift as a fraction of each side, in ``[0, 0.5]``.
    """

    op: ClassVar[str] = "affine"
    STAGE: ClassVar[str] = "geometric"
    FIELDS: ClassVar[Mapping[str, Field]] = {
        "p": P,
        "scale": Field("range", 0.0, 10.0, lo_open=True),
        "shear": Field("number", 0.0, 45.0),
        "translate": Field("number", 0.0, 0.5),
    }
    IDENTITY: ClassVar[Mapping[str, float]] = {
        "zoom": 1.0, "shear_deg": 0.0, "translate_x": 0.0, "translate_y": 0.0,
    }

    scale: tuple[float, float] = (0.9, 1.1)
    shear: float = 5.0
    translate: float = 0.05

    N_UNIFORMS: ClassVar[int] = 4

    def draw_from(self, u: np.ndarray) -> dict[str, np.ndarray]:
        t = (-self.translate, self.translate)
        return {
            "zoom": _range_draw(u[:, 0], self.scale),
            "shear_deg": _range_draw(u[:, 1], (-self.shear, self.shear)),
            "translate_x": _range_draw(u[:, 2], t),
            "translate_y": _range_draw(u[:, 3], t),
        }

    def matrix(self, params: Mapping[str, np.ndarray], *, height: int, width: int) -> np.ndarray:
        return F.affine_matrix(
            params["zoom"], params["shear_deg"], params["translate_x"], params["translate_y"],
            height=height, width=width,
        )


@dataclass(frozen=True)
class GaussianBlur(ImageOp):
    """Gaussian blur with ``sigma`` (pixels) drawn in a range; reflect padding.

    Parameters
    ----------
    p : float, default 0.5
    sigma : tuple of float, default (0.1, 1.0)
        Range within ``[0, 10]``; kernel radius ``ceil(3 * sigma)``.
    """

    op: ClassVar[str] = "gaussian_blur"
    STAGE: ClassVar[str] = "blur"
    FIELDS: ClassVar[Mapping[str, Field]] = {"p": P, "sigma": Field("range", 0.0, 10.0)}
    IDENTITY: ClassVar[Mapping[str, float]] = {"sigma": 0.0}

    sigma: tuple[float, float] = (0.1, 1.0)

    N_UNIFORMS: ClassVar[int] = 1

    def draw_from(self, u: np.ndarray) -> dict[str, np.ndarray]:
        return {"sigma": _range_draw(u[:, 0], self.sigma)}

    def stage_values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"sigma": params["sigma"]}


@dataclass(frozen=True)
class Brightness(ImageOp):
    """Multiply by a factor drawn in a range, like PIL's ``ImageEnhance.Brightness``.

    Parameters
    ----------
    p : float, default 0.5
    factor : tuple of float, default (0.8, 1.2)
        Range within ``[0, 10]``; 1 leaves the image unchanged.
    """

    op: ClassVar[str] = "brightness"
    STAGE: ClassVar[str] = "colour"
    FIELDS: ClassVar[Mapping[str, Field]] = {"p": P, "factor": Field("range", 0.0, 10.0)}
    IDENTITY: ClassVar[Mapping[str, float]] = {"factor": 1.0}

    factor: tuple[float, float] = (0.8, 1.2)

    N_UNIFORMS: ClassVar[int] = 1

    def draw_from(self, u: np.ndarray) -> dict[str, np.ndarray]:
        return {"factor": _range_draw(u[:, 0], self.factor)}

    def stage_values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"brightness": params["factor"]}


@dataclass(frozen=True)
class Contrast(ImageOp):
    """Blend with the image's mean grey, like PIL's ``ImageEnhance.Contrast``.

    Parameters
    ----------
    p : float, default 0.5
    factor : tuple of float, default (0.8, 1.2)
        Range within ``[0, 10]``; 0 gives flat grey, 1 the image unchanged.
    """

    op: ClassVar[str] = "contrast"
    STAGE: ClassVar[str] = "colour"
    FIELDS: ClassVar[Mapping[str, Field]] = {"p": P, "factor": Field("range", 0.0, 10.0)}
    IDENTITY: ClassVar[Mapping[str, float]] = {"factor": 1.0}

    factor: tuple[float, float] = (0.8, 1.2)

    N_UNIFORMS: ClassVar[int] = 1

    def draw_from(self, u: np.ndarray) -> dict[str, np.ndarray]:
        return {"factor": _range_draw(u[:, 0], self.factor)}

    def stage_values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"contrast": params["factor"]}


@dataclass(frozen=True)
class Gamma(ImageOp):
    """Power-law ``x ** gamma`` on the [0, 1] scale, gamma drawn in a range.

    Parameters
    ----------
    p : float, default 0.5
    gamma : tuple of float, default (0.8, 1.25)
        Range within ``(0, 10]``.
    """

    op: ClassVar[str] = "gamma"
    STAGE: ClassVar[str] = "gamma"
    FIELDS: ClassVar[Mapping[str, Field]] = {
        "p": P,
        "gamma": Field("range", 0.0, 10.0, lo_open=True),
    }
    IDENTITY: ClassVar[Mapping[str, float]] = {"gamma": 1.0}

    gamma: tuple[float, float] = (0.8, 1.25)

    N_UNIFORMS: ClassVar[int] = 1

    def draw_from(self, u: np.ndarray) -> dict[str, np.ndarray]:
        return {"gamma": _range_draw(u[:, 0], self.gamma)}

    def stage_values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"gamma": params["gamma"]}


@dataclass(frozen=True)
class GaussianNoise(ImageOp):
    """Add Gaussian noise, ``std`` drawn in a range in [0, 1] intensity units; clipped.

    Parameters
    ----------
    p : float, default 0.5
    std : tuple of float, default (0.0, 0.03)
        Range within ``[0, 1]`` (0.03 is about 8 grey levels of 255).
    """

    op: ClassVar[str] = "gaussian_noise"
    STAGE: ClassVar[str] = "noise"
    FIELDS: ClassVar[Mapping[str, Field]] = {"p": P, "std": Field("range", 0.0, 1.0)}
    IDENTITY: ClassVar[Mapping[str, float]] = {"std": 0.0}

    std: tuple[float, float] = (0.0, 0.03)

    N_UNIFORMS: ClassVar[int] = 1

    def draw_from(self, u: np.ndarray) -> dict[str, np.ndarray]:
        return {"std": _range_draw(u[:, 0], self.std)}

    def stage_values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"noise_std": params["std"]}


# ------------------------------------------------------------------------------ text ops


_ALPHA = Field("number", 0.0, 1.0, lo_open=True)


@dataclass(frozen=True)
class TextOp(Op):
    """Base of EDA text ops: each changes about ``alpha`` of the words of a text.

    Each runs the function of :mod:`fedaug.augment.text` named by its tag.

    Parameters
    ----------
    p : float, default 0.5
    alpha : float, default 0.1
        Fraction of words changed, in ``(0, 1]``.
    """

    modality: ClassVar[str] = "text"
    FIELDS: ClassVar[Mapping[str, Field]] = {"p": P, "alpha": _ALPHA}

    alpha: float = 0.1


@dataclass(frozen=True)
class SynonymReplace(TextOp):
    """Replace about ``alpha`` of the words by WordNet synonyms (EDA)."""

    op: ClassVar[str] = "synonym_replace"


@dataclass(frozen=True)
class RandomInsert(TextOp):
    """Insert synonyms of random words at random places (EDA)."""

    op: ClassVar[str] = "random_insert"


@dataclass(frozen=True)
class RandomSwap(TextOp):
    """Swap random pairs of words (EDA)."""

    op: ClassVar[str] = "random_swap"


@dataclass(frozen=True)
class RandomDelete(TextOp):
    """Delete each word with probability ``alpha`` (EDA)."""

    op: ClassVar[str] = "random_delete"


#: Every op class by tag, in canonical execution order.
OPS: dict[str, type[Op]] = {
    cls.op: cls
    for cls in (
        Rotate, HFlip, VFlip, CropResize, Affine, GaussianBlur, Brightness, Contrast, Gamma,
        GaussianNoise, SynonymReplace, RandomInsert, RandomSwap, RandomDelete,
    )
}
#: Tags of the ops composed into the single warp, in forward order.
GEOMETRIC_OPS = tuple(tag for tag, cls in OPS.items() if getattr(cls, "STAGE", "") == "geometric")
