"""PCA reconstruction error on the reference basis.

Fit once on the reference: mean ``mu`` and the top-``k`` right singular vectors ``V``
(k x d) of the centred reference. Per sample,

``e(x) = || (x - mu) - V^T V (x - mu) ||^2``,

the energy outside the reference's main subspace; the window statistic is the mean
of ``e`` over the window. Drift that adds isotropic noise (paper A's Gaussian drift)
or rotates the embedding out of the subspace raises it.
"""

from __future__ import annotations

import numpy as np

from silentwatch.monitor.detection.detectors.base import ReferenceSample, WindowDetector


class PCABasis:
    """Mean and top-``k`` principal axes of a sample (sklearn-compatible orientation).

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(500, 3)) * [3.0, 1.0, 0.01]
    >>> basis = PCABasis(2).fit(x)
    >>> bool(basis.reconstruction_error(x).mean() < 1e-3)
    True
    """

    def __init__(self, n_components: int) -> None:
        self.n_components = n_components

    def fit(self, x: np.ndarray) -> PCABasis:
        x = np.asarray(x, dtype=np.float64)
        self.mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        k = min(self.n_components, vt.shape[0])
        self.components = vt[:k].astype(np.float32)
        var = s**2
        self.explained_variance_ratio = float(var[:k].sum() / var.sum()) if var.sum() else 1.0
        return self

    @classmethod
    def from_arrays(cls, mean: np.ndarray, components: np.ndarray) -> PCABasis:
        self = cls(components.shape[0])
        self.mean = mean.astype(np.float64)
        self.components = components.astype(np.float32)
        self.explained_variance_ratio = float("nan")
        return self

    def project(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float32) - self.mean.astype(np.float32)) @ self.components.T

    def reconstruction_error(self, x: np.ndarray) -> np.ndarray:
        """``||(x - mu) - V^T V (x - mu)||^2`` per row, as ``||x - mu||^2 - ||V (x - mu)||^2``."""
        c = np.asarray(x, dtype=np.float32) - self.mean.astype(np.float32)
        z = c @ self.components.T
        err = np.einsum("ij,ij->i", c, c) - np.einsum("ij,ij->i", z, z)
        return np.maximum(err, 0.0)


class ReconstructionDetector(WindowDetector):
    """Mean PCA reconstruction error of the window on the reference basis."""

    name = "pca_reconstruction"

    def __init__(self, n_components: int = 32) -> None:
        self.n_components = n_components

    def fit(self, reference: ReferenceSample) -> ReconstructionDetector:
        k = max(1, min(self.n_components, reference.dim - 1, reference.size - 1))
        self.basis_ = PCABasis(k).fit(reference.embeddings)
        return self

    def errors(self, x: np.ndarray) -> np.ndarray:
        """Per-row reconstruction error: also the ``reconstruction_error`` change stream."""
        return self.basis_.reconstruction_error(x)

    def stream(self, name: str, x: np.ndarray) -> np.ndarray:
        """The per-sample stream this detector provides (registry: ``streams``)."""
        if name != "reconstruction_error":
            raise KeyError(name)
        return self.errors(x)

    def statistic(self, x: np.ndarray, scores: np.ndarray) -> float:
        return float(self.errors(x).mean())

    def null_statistics(self, x: np.ndarray, scores: np.ndarray, windows: np.ndarray) -> np.ndarray:
        return self.errors(x).astype(np.float64)[windows].mean(axis=1)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.basis_.mean, "components": self.basis_.components}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.basis_ = PCABasis.from_arrays(arrays["mean"], arrays["components"])
