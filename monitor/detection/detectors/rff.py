"""Linear-time MMD with random Fourier features, for windows too large for the exact test.

Rahimi & Recht (2007), "Random Features for Large-Scale Kernel Machines": with
``W ~ N(0, sigma^-2 I)`` (D x d) and ``b ~ U[0, 2 pi)``,
``phi(x) = sqrt(2/D) cos(W x + b)`` satisfies ``E[phi(a).phi(b)] = k_RBF(a, b)``, so

``MMD^2_RFF = || mean_i phi(x_i) - mean_j phi(y_j) ||^2``

approximates the (biased) RBF MMD^2 of Gretton et al. (2012, Eq. 2) at ``O(m D d)``
per window of ``m`` rows. The reference mean feature is computed once.
"""

from __future__ import annotations

import numpy as np

from silentwatch.monitor.detection.detectors.base import (
    ReferenceSample,
    WindowDetector,
    window_means,
)
from silentwatch.monitor.detection.detectors.mmd import median_bandwidth


class RandomFourierFeatures:
    """The feature map ``phi``; ``transform`` is vectorised over rows.

    >>> rff = RandomFourierFeatures(dim=4, n_features=2000, sigma=1.0, seed=0)
    >>> a, b = np.zeros((1, 4)), np.full((1, 4), 0.5)
    >>> approx = float((rff.transform(a) @ rff.transform(b).T)[0, 0])
    >>> bool(abs(approx - np.exp(-0.5)) < 0.05)   # k_RBF(a, b) = exp(-||a-b||^2 / 2)
    True
    """

    def __init__(self, dim: int, n_features: int, sigma: float, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w = (rng.standard_normal((n_features, dim)) / sigma).astype(np.float32)
        self.b = rng.uniform(0.0, 2.0 * np.pi, n_features).astype(np.float32)

    @classmethod
    def from_arrays(cls, w: np.ndarray, b: np.ndarray) -> RandomFourierFeatures:
        self = cls.__new__(cls)
        self.w, self.b = w.astype(np.float32), b.astype(np.float32)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        z = np.asarray(x, dtype=np.float32) @ self.w.T
        z += self.b
        np.cos(z, out=z)
        z *= np.float32(np.sqrt(2.0 / self.w.shape[0]))
        return z


class RFFMMDDetector(WindowDetector):
    """``|| mean phi(window) - mean phi(reference) ||^2`` with random Fourier features."""

    name = "mmd_rff"

    def __init__(self, n_features: int = 256, sigma: float | None = None, seed: int = 0) -> None:
        self.n_features = n_features
        self.sigma = sigma
        self.seed = seed

    def fit(self, reference: ReferenceSample) -> RFFMMDDetector:
        self.sigma_ = (
            median_bandwidth(reference.embeddings, seed=self.seed)
            if self.sigma is None
            else self.sigma
        )
        self.features_ = RandomFourierFeatures(
            reference.dim, self.n_features, self.sigma_, seed=self.seed
        )
        self.ref_mean_ = self.features_.transform(reference.embeddings).mean(axis=0)
        return self

    def statistic(self, x: np.ndarray, scores: np.ndarray) -> float:
        diff = self.features_.transform(x).mean(axis=0) - self.ref_mean_
        return float(diff @ diff)

    def null_statistics(self, x: np.ndarray, scores: np.ndarray, windows: np.ndarray) -> np.ndarray:
        phi = self.features_.transform(x)
        diff = window_means(phi, windows) - self.ref_mean_
        return np.einsum("ij,ij->i", diff, diff).astype(np.float64)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"w": self.features_.w, "b": self.features_.b, "ref_mean": self.ref_mean_}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.features_ = RandomFourierFeatures.from_arrays(arrays["w"], arrays["b"])
        self.ref_mean_ = arrays["ref_mean"].astype(np.float32)
