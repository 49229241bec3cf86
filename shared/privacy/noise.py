"""The one source of every random draw a DP mechanism makes.

Poisson sampling masks, augmented views, diffusion noise and timesteps, the Gaussian noise
of every release, and the exponential mechanism's choice all come from a
:class:`NoiseSource`, never from the run seed: the run seed is public (the server chooses it
and the model card prints it), and a mechanism whose randomness can be replayed loses its
guarantee (subsampling amplification needs secret batches, and one added record must not
shift the draws of all the others).

Two kinds of source:

* ``secure=True`` (the default): a ChaCha20 key stream (the ``cryptography`` package, keyed
  from ``os.urandom``) gives the sampling masks, the release noise and the mechanism's
  choices; Gaussian noise is drawn by Box-Muller in float64 and, as Opacus's
  ``secure_mode`` does against floating-point attacks (Holohan et al. 2021, section 5.1),
  each value is the sum of 4 draws divided by 2. The high-volume internal draws (views,
  diffusion noise, timesteps) come from torch generators seeded with 63 fresh bits of the
  stream, one per step.
* ``secure=False``: the same draws from a torch generator seeded from ``os.urandom``.

Tests make runs reproducible by injecting a seeded source (:meth:`NoiseSource.for_tests`),
never through the run config.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

__all__ = ["NoiseSource"]

_TWO_PI = 2.0 * math.pi


class NoiseSource:
    """Secret randomness for one mechanism call (make a new one per call).

    Parameters
    ----------
    secure : bool (default: True)
        ChaCha20 keyed from the OS entropy pool, with the floating-point attack mitigation
        on Gaussian noise; ``False``: a torch generator seeded from the OS entropy pool.
    """

    def __init__(self, *, secure: bool = True) -> None:
        self.secure = bool(secure)
        self._stream = None
        self._torch: torch.Generator | None = None
        if self.secure:
            self._stream = Cipher(algorithms.ChaCha20(os.urandom(32), os.urandom(16)),
                                  mode=None).encryptor()
        else:
            self._torch = torch.Generator().manual_seed(_os_seed())

    @classmethod
    def for_tests(cls, seed: int) -> NoiseSource:
        """A replayable source (tests only: its draws are known to whoever knows ``seed``)."""
        source = cls.__new__(cls)
        source.secure = False
        source._stream = None
        source._torch = torch.Generator().manual_seed(int(seed))
        return source

    # -- primitive draws -------------------------------------------------------------
    def _bits(self, n: int) -> np.ndarray:
        """``n`` uniform 64-bit words."""
        if self._stream is not None:
            return np.frombuffer(self._stream.update(bytes(8 * n)), dtype=np.uint64)
        hi = torch.randint(0, 2**32, (n,), generator=self._torch, dtype=torch.int64)
        lo = torch.randint(0, 2**32, (n,), generator=self._torch, dtype=torch.int64)
        return (hi.numpy().astype(np.uint64) << np.uint64(32)) | lo.numpy().astype(np.uint64)

    def uniform(self, n: int) -> np.ndarray:
        """``n`` float64 values uniform in [0, 1) with 53 random bits each."""
        return (self._bits(int(n)) >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def seed(self) -> int:
        """63 fresh bits, to seed a torch generator."""
        return int(self._bits(1)[0] >> np.uint64(1))

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """A torch generator on ``device`` seeded from this source (for internal draws:
        views, diffusion noise, timesteps)."""
        return torch.Generator(device=device).manual_seed(self.seed())

    # -- mechanism draws -------------------------------------------------------------
    def poisson_mask(self, n: int, rate: float) -> np.ndarray:
        """Which of ``n`` records a Poisson-subsampled batch holds: each with prob ``rate``."""
        return self.uniform(n) < rate

    def normal(self, shape: tuple[int, ...] | int, *, std: float,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
        """Gaussian noise N(0, std^2) for a DP release."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        n = math.prod(shape)
        if std == 0:
            return torch.zeros(shape, device=device, dtype=dtype)
        if self._stream is None:
            z = torch.randn(n, generator=self._torch, dtype=torch.float64)
        else:  # sum of 4 standard normals / 2: still N(0, 1), hides the float pattern
            z = self._standard_normal(4 * n).view(4, n).sum(0) / 2.0
        return (z * std).to(device=device, dtype=dtype).reshape(shape)

    def _standard_normal(self, n: int) -> torch.Tensor:
        """Box-Muller on the key stream, float64 (torch's vectorised log, sin and cos)."""
        pairs = (n + 1) // 2
        u = torch.from_numpy(self.uniform(2 * pairs).reshape(2, pairs))
        radius = torch.sqrt(-2.0 * torch.log1p(-u[0]))  # 1 - u in (0, 1]: log is finite
        angle = _TWO_PI * u[1]
        return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])[:n]

    def choice(self, probabilities: np.ndarray) -> int:
        """An index drawn with the given probabilities (inverse CDF on one uniform)."""
        p = np.asarray(probabilities, dtype=np.float64)
        cdf = np.cumsum(p / p.sum())
        return int(min(np.searchsorted(cdf, self.uniform(1)[0], side="right"), len(p) - 1))


def _os_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1)
