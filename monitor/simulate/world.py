"""A synthetic but realistic embedding world for the demo (no model download needed).

Real sentence / LLM embeddings are unit vectors concentrated around a common
direction (anisotropy), with a decaying spectrum of variance around it, and the
safe/unsafe signal lives in directions of small variance. That is why paper A's
small drift breaks them: per-dimension noise of s = 0.02 is tiny against the
vectors' norm but large against the variance the classifier relies on.

This world reproduces that shape in ``dim`` dimensions: ``x = normalise(m + A z +
y * delta * u)`` with one common mean ``m`` (unit norm), ``A`` scaling white noise to
a k^-decay spectrum of total standard deviation ``spread``, and a class shift ``delta``
along ``u``, a unit vector drawn in the low-variance half of the spectrum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SyntheticWorld:
    dim: int = 384
    spread: float = 0.45
    delta: float = 0.002
    positive_rate: float = 0.5
    decay: float = 2.0
    seed: int = 42
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        q, _ = np.linalg.qr(rng.standard_normal((self.dim, self.dim)))
        self.basis = q  # columns: principal directions
        k = np.arange(1, self.dim + 1, dtype=np.float64)
        var = k**-self.decay
        self.stds = np.sqrt(var / var.sum()) * self.spread
        self.mean = q[:, 0]  # the common direction everything leans towards
        low = q[:, self.dim // 2 :]
        u = low @ rng.standard_normal(low.shape[1])
        self.signal = u / np.linalg.norm(u)
        self._rng = np.random.default_rng(self.seed + 1)

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """n unit-norm embeddings and their labels (1 = unsafe)."""
        rng = self._rng
        y = (rng.random(n) < self.positive_rate).astype(np.int8)
        z = rng.standard_normal((n, self.dim)) * self.stds
        x = self.mean + z @ self.basis.T
        x = x + np.where(y[:, None] == 1, 0.5, -0.5) * self.delta * self.signal
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32), y
