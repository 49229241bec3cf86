"""Pure image-augmentation maths on numpy arrays: no randomness, every parameter passed in.

Conventions
-----------
Images are ``(H, W, C)`` arrays, ``uint8`` in ``[0, 255]`` or floating in ``[0, 1]``.
Geometry uses *centred pixel coordinates*: ``u`` to the right, ``v`` downwards, origin at
the image centre, one unit per pixel. Every ``*_matrix`` function returns the **inverse**
map (output pixel -> input pixel) as a stack of ``(n, 3, 3)`` homogeneous matrices, so a
pipeline applied forward as ``rotate -> flip -> crop_resize -> affine`` composes as
``R @ F @ C @ A`` (see :func:`compose`). :func:`to_normalized` converts the result to the
``(n, 2, 3)`` matrix that ``torch.nn.functional.grid_sample`` expects
(``align_corners=False``), :func:`to_pixel` turns that into the pixel-index matrix of
``cv2.warpAffine(..., flags=INTER_LINEAR | WARP_INVERSE_MAP)``, and :func:`warp_affine` is
the same bilinear sampling in numpy. The batched engine's backends use these very
matrices, so the per-image and batched paths share their maths.

Border modes fill what a warp uncovers (:data:`BORDER_MODES`): ``"reflect"`` mirrors the
image about its outer pixel edges (``grid_sample``'s ``"reflection"`` with
``align_corners=False``, OpenCV's ``BORDER_REFLECT``), ``"constant"`` fills with black
(``"zeros"``, ``BORDER_CONSTANT``), ``"edge"`` repeats the outermost pixels (``"border"``,
``BORDER_REPLICATE``). Reflect is the default: a rotated X-ray gets no black wedges that
a classifier could learn as a feature.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "BORDER_MODES",
    "DEFAULT_BORDER",
    "LUMA_WEIGHTS",
    "rotation_matrix",
    "flip_matrix",
    "crop_resize_matrix",
    "affine_matrix",
    "compose",
    "to_normalized",
    "to_pixel",
    "warp_affine",
    "luminance_mean",
    "brightness_contrast",
    "adjust_gamma",
    "blur_radius",
    "gaussian_kernel1d",
    "gaussian_blur",
    "add_noise",
    "quantize_uint8",
    "augment_image",
]

#: ITU-R 601 luma weights, as PIL's ``convert("L")`` (used for the contrast grey level).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
#: How a warp fills the area it uncovers (see the module docstring).
BORDER_MODES = ("reflect", "constant", "edge")
DEFAULT_BORDER = "reflect"


def _stack(rows: list[list[np.ndarray | float]], n: int) -> np.ndarray:
    out = np.zeros((n, 3, 3), dtype=np.float64)
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            out[:, i, j] = value
    return out


def rotation_matrix(angle_deg: np.ndarray) -> np.ndarray:
    """Inverse map of a rotation about the image centre.

    Parameters
    ----------
    angle_deg : np.ndarray
        ``(n,)`` angles in degrees; positive turns the content counter-clockwise, as PIL.

    Returns
    -------
    np.ndarray
        ``(n, 3, 3)`` output-to-input matrices in centred pixel coordinates.
    """
    a = np.deg2rad(np.asarray(angle_deg, dtype=np.float64))
    c, s = np.cos(a), np.sin(a)
    return _stack([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], a.shape[0])


def flip_matrix(hflip: np.ndarray, vflip: np.ndarray) -> np.ndarray:
    """Inverse map of horizontal and/or vertical flips (``(n,)`` booleans each)."""
    h = np.where(np.asarray(hflip, dtype=bool), -1.0, 1.0)
    v = np.where(np.asarray(vflip, dtype=bool), -1.0, 1.0)
    return _stack([[h, 0.0, 0.0], [0.0, v, 0.0], [0.0, 0.0, 1.0]], h.shape[0])


def crop_resize_matrix(
    scale_x: np.ndarray,
    scale_y: np.ndarray,
    offset_x: np.ndarray,
    offset_y: np.ndarray,
    *,
    height: int,
    width: int,
) -> np.ndarray:
    """Inverse map of cropping a window and resizing it back to the full image.

    Parameters
    ----------
    scale_x, scale_y : np.ndarray
        ``(n,)`` fraction of the width and height kept, in ``(0, 1]``.
    offset_x, offset_y : np.ndarray
        ``(n,)`` position of the window in ``[-1, 1]``: -1 at the left/top edge, 0 centred,
        1 at the right/bottom edge.
    height, width : int
        Image size in pixels.
    """
    sx = np.asarray(scale_x, dtype=np.float64)
    sy = np.asarray(scale_y, dtype=np.float64)
    cu = np.asarray(offset_x, dtype=np.float64) * (1.0 - sx) * width / 2.0
    cv = np.asarray(offset_y, dtype=np.float64) * (1.0 - sy) * height / 2.0
    return _stack([[sx, 0.0, cu], [0.0, sy, cv], [0.0, 0.0, 1.0]], sx.shape[0])


def affine_matrix(
    scale: np.ndarray,
    shear_deg: np.ndarray,
    translate_x: np.ndarray,
    translate_y: np.ndarray,
    *,
    height: int,
    width: int,
) -> np.ndarray:
    """Inverse map of ``p' = S(scale) @ Shear_x(shear) @ p + t`` about the image centre.

    Parameters
    ----------
    scale : np.ndarray
        ``(n,)`` zoom factors (> 1 enlarges the content).
    shear_deg : np.ndarray
        ``(n,)`` horizontal shear angles in degrees.
    translate_x, translate_y : np.ndarray
        ``(n,)`` shifts as fractions of the width and height.
    height, width : int
        Image size in pixels.
    """
    s = np.asarray(scale, dtype=np.float64)
    k = np.tan(np.deg2rad(np.asarray(shear_deg, dtype=np.float64)))
    tu = np.asarray(translate_x, dtype=np.float64) * width
    tv = np.asarray(translate_y, dtype=np.float64) * height
    # inverse of [[s, s*k], [0, s]] is [[1, -k], [0, 1]] / s
    return _stack(
        [[1.0 / s, -k / s, (-tu + k * tv) / s], [0.0, 1.0 / s, -tv / s], [0.0, 0.0, 1.0]],
        s.shape[0],
    )


def compose(*matrices: np.ndarray) -> np.ndarray:
    """Product ``M1 @ M2 @ ...`` of ``(n, 3, 3)`` inverse maps, in forward-op order."""
    n = matrices[0].shape[0]
    # elementwise product of affine maps (last row 0 0 1) on contiguous rows of the
    # 2x3 part: several times faster than numpy's batched matmul of 3x3 matrices
    a = matrices[0][:, :2, :].reshape(n, 6).T.copy()
    for m in matrices[1:]:
        b = m[:, :2, :].reshape(n, 6).T
        a = np.stack([
            a[0] * b[0] + a[1] * b[3],
            a[0] * b[1] + a[1] * b[4],
            a[0] * b[2] + a[1] * b[5] + a[2],
            a[3] * b[0] + a[4] * b[3],
            a[3] * b[1] + a[4] * b[4],
            a[3] * b[2] + a[4] * b[5] + a[5],
        ])
    out = np.zeros((n, 3, 3))
    out[:, :2, :] = a.T.reshape(n, 2, 3)
    out[:, 2, 2] = 1.0
    return out


def to_normalized(matrix: np.ndarray, *, height: int, width: int) -> np.ndarray:
    """Convert ``(n, 3, 3)`` centred-pixel maps into ``(n, 2, 3)`` ``grid_sample`` thetas."""
    d = np.array([width / 2.0, height / 2.0, 1.0])
    theta = matrix * d[None, None, :] / d[None, :, None]
    return theta[:, :2, :]


def to_pixel(theta: np.ndarray, *, height: int, width: int) -> np.ndarray:
    """Convert ``(n, 2, 3)`` ``grid_sample`` thetas into pixel-index output-to-input maps.

    Pixel ``(x, y)`` has its centre at integer coordinates, as in OpenCV, and
    ``align_corners=False`` puts it at centred coordinate ``x - (width - 1) / 2``; so the
    result ``M`` satisfies ``input = M @ (x, y, 1)`` and is what ``cv2.warpAffine`` takes
    with ``WARP_INVERSE_MAP``.
    """
    theta = np.asarray(theta, dtype=np.float64)
    d = np.array([width / 2.0, height / 2.0])
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    out = np.empty(theta.shape, dtype=np.float64)
    out[:, :, :2] = theta[:, :, :2] * d[None, :, None] / d[None, None, :]
    out[:, :, 2] = theta[:, :, 2] * d[None, :] + centre - out[:, :, :2] @ centre
    return out


def warp_affine(
    image: np.ndarray, theta: np.ndarray, *, border: str = DEFAULT_BORDER
) -> np.ndarray:
    """Bilinear warp, the numpy twin of ``grid_sample(align_corners=False)``.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W, C)`` floating image.
    theta : np.ndarray
        ``(2, 3)`` output-to-input map in normalised coordinates (:func:`to_normalized`).
    border : str, default "reflect"
        One of :data:`BORDER_MODES`: how samples outside the image are filled.

    Returns
    -------
    np.ndarray
        ``(H, W, C)`` float64 image.
    """
    if border not in BORDER_MODES:
        raise ValueError(f"border must be one of {', '.join(BORDER_MODES)}, got {border!r}")
    h, w = image.shape[:2]
    xs = (2.0 * np.arange(w) + 1.0) / w - 1.0
    ys = (2.0 * np.arange(h) + 1.0) / h - 1.0
    gx = theta[0, 0] * xs[None, :] + theta[0, 1] * ys[:, None] + theta[0, 2]
    gy = theta[1, 0] * xs[None, :] + theta[1, 1] * ys[:, None] + theta[1, 2]
    ix = ((gx + 1.0) * w - 1.0) / 2.0
    iy = ((gy + 1.0) * h - 1.0) / 2.0
    if border == "reflect":
        ix, iy = _reflect(ix, w), _reflect(iy, h)
    elif border == "edge":
        ix, iy = np.clip(ix, 0.0, w - 1.0), np.clip(iy, 0.0, h - 1.0)
    x0 = np.floor(ix).astype(np.intp)
    y0 = np.floor(iy).astype(np.intp)
    fx = ix - x0
    fy = iy - y0
    src = np.asarray(image, dtype=np.float64)
    out = np.zeros(src.shape, dtype=np.float64)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            weight = wy * wx
            if border == "constant":  # outside samples are black
                weight = weight * ((xx >= 0) & (xx < w) & (yy >= 0) & (yy < h))
            # after reflect / edge an index past the last pixel carries zero weight
            values = src[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
            out += weight[..., None] * values
    return out


def _reflect(coord: np.ndarray, size: int) -> np.ndarray:
    """Pixel coordinates mirrored about the outer pixel edges into ``[0, size - 1]``.

    The same arithmetic as ``grid_sample``'s reflection padding with
    ``align_corners=False``: reflect into ``[-0.5, size - 0.5]``, then clip.
    """
    span = float(size)
    c = np.abs(coord + 0.5)
    flips = np.floor(c / span)
    extra = np.fmod(c, span)
    mirrored = np.where(flips % 2 == 0, extra - 0.5, span - extra - 0.5)
    return np.clip(mirrored, 0.0, size - 1.0)


def luminance_mean(image: np.ndarray) -> float:
    """Mean grey level: luma-weighted for 3 channels (as PIL's contrast), plain otherwise."""
    if image.shape[-1] == 3:
        means = image.reshape(-1, 3).mean(axis=0)
        return float(np.dot(means, LUMA_WEIGHTS))
    return float(image.mean())


def brightness_contrast(
    image: np.ndarray, *, brightness: float, contrast: float, max_value: float
) -> np.ndarray:
    """PIL-style brightness then contrast, fused, clipped once to ``[0, max_value]``.

    ``out = clip(c * (b * x) + (1 - c) * b * mean(x))``: brightness blends with black and
    contrast with the (luma) mean grey of the brightened image, like ``ImageEnhance``;
    unlike PIL nothing is clipped between the two steps.
    """
    mean = luminance_mean(image)
    out = image * (contrast * brightness) + (1.0 - contrast) * brightness * mean
    return np.clip(out, 0.0, max_value)


def adjust_gamma(image: np.ndarray, *, gamma: float, max_value: float) -> np.ndarray:
    """``max_value * (x / max_value) ** gamma`` for an image already in range."""
    return max_value * np.power(image / max_value, gamma)


def blur_radius(sigma: float) -> int:
    """Kernel radius used for ``sigma``: ``ceil(3 * sigma)``, 0 below ``sigma = 1e-3``."""
    return 0 if sigma < 1e-3 else int(math.ceil(3.0 * sigma))


def gaussian_kernel1d(sigma: float, *, radius: int | None = None) -> np.ndarray:
    """Normalised Gaussian weights of length ``2 * radius + 1``.

    Weights beyond :func:`blur_radius` (``sigma``) are zero, so padding a kernel to a wider
    ``radius`` leaves the result unchanged.
    """
    r = blur_radius(sigma)
    radius = r if radius is None else radius
    out = np.zeros(2 * radius + 1, dtype=np.float64)
    if r == 0:
        out[radius] = 1.0
        return out
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    out[radius - r : radius + r + 1] = k / k.sum()
    return out


def gaussian_blur(image: np.ndarray, *, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflect padding (radius capped below the image size)."""
    h, w = image.shape[:2]
    r = min(blur_radius(sigma), h - 1, w - 1)
    if r <= 0:
        return np.asarray(image, dtype=np.float64)
    k = gaussian_kernel1d(sigma, radius=blur_radius(sigma))
    k = k[len(k) // 2 - r : len(k) // 2 + r + 1]
    padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode="reflect").astype(np.float64)
    rows = sum(k[i] * padded[:, i : i + w] for i in range(2 * r + 1))
    return sum(k[i] * rows[i : i + h] for i in range(2 * r + 1))


def add_noise(
    image: np.ndarray, noise: np.ndarray, *, std: float, max_value: float
) -> np.ndarray:
    """Add ``std * max_value * noise`` (``noise`` standard normal, image-shaped), clip."""
    return np.clip(image + (std * max_value) * noise, 0.0, max_value)


def quantize_uint8(image: np.ndarray) -> np.ndarray:
    """Round half up to ``uint8`` after clipping to ``[0, 255]``."""
    return np.floor(np.clip(image, 0.0, 255.0) + 0.5).astype(np.uint8)


def augment_image(
    image: np.ndarray,
    *,
    theta: np.ndarray | None = None,
    sigma: float = 0.0,
    brightness: float = 1.0,
    contrast: float = 1.0,
    gamma: float = 1.0,
    noise_std: float = 0.0,
    noise: np.ndarray | None = None,
    border: str = DEFAULT_BORDER,
) -> np.ndarray:
    """Run the fixed stage order on one ``(H, W, C)`` (or ``(H, W)``) image; dtype kept.

    Stages: one warp (``theta``, :func:`warp_affine` with ``border``), blur, fused
    brightness and contrast, gamma, additive noise. An identity parameter skips its stage.
    ``uint8`` images are processed on the 0-255 scale and rounded half up at the end.
    """
    if image.ndim == 2:
        out = augment_image(
            image[..., None], theta=theta, sigma=sigma, brightness=brightness,
            contrast=contrast, gamma=gamma, noise_std=noise_std,
            noise=None if noise is None else np.reshape(noise, image.shape + (1,)),
            border=border,
        )
        return out[..., 0]
    is_u8 = image.dtype == np.uint8
    top = 255.0 if is_u8 else 1.0
    x = np.asarray(image, dtype=np.float64)
    if theta is not None:
        x = warp_affine(x, theta, border=border)
    if sigma > 0.0:
        x = gaussian_blur(x, sigma=sigma)
    if brightness != 1.0 or contrast != 1.0:
        x = brightness_contrast(x, brightness=brightness, contrast=contrast, max_value=top)
    if gamma != 1.0:
        x = adjust_gamma(np.clip(x, 0.0, top), gamma=gamma, max_value=top)
    if noise_std > 0.0 and noise is not None:
        x = add_noise(x, noise, std=noise_std, max_value=top)
    if is_u8:
        return quantize_uint8(x)
    return np.clip(x, 0.0, 1.0).astype(image.dtype)
