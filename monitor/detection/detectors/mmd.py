"""Kernel maximum mean discrepancy between a window and the reference sample.

Gretton et al. (2012), "A Kernel Two-Sample Test", JMLR 13, Eq. 3 (unbiased MMD^2):

``MMD^2_u = 1/(m(m-1)) sum_{i!=j} k(x_i,x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i,y_j)
- 2/(mn) sum_{i,j} k(x_i,y_j)``

with the Gaussian RBF kernel ``k(a, b) = exp(-||a-b||^2 / (2 sigma^2))`` and ``sigma``
the median pairwise distance of the reference (the median heuristic). The reference
term is constant, so it is computed once at fit time; a window of ``m`` rows costs
``O(m (m + n) d)``.
"""

from __future__ import annotations

import numpy as np

from silentwatch.monitor.detection.detectors.base import ReferenceSample, WindowDetector


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``||a_i - b_j||^2`` for all pairs, via ``|a|^2 + |b|^2 - 2 a.b`` (clipped at 0).

    >>> squared_distances(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]]))
    array([[25.]])
    """
    d2 = np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :]
    d2 -= 2.0 * (a @ b.T)
    return np.maximum(d2, 0.0, out=d2)


def median_bandwidth(x: np.ndarray, *, max_rows: int = 1000, seed: int = 0) -> float:
    """Median heuristic: ``sigma = median_{i<j} ||x_i - x_j||`` over at most ``max_rows`` rows.

    >>> x = np.array([[0.0], [1.0], [3.0]])
    >>> median_bandwidth(x)
    2.0
    """
    if x.shape[0] > max_rows:
        x = x[np.random.default_rng(seed).choice(x.shape[0], max_rows, replace=False)]
    d2 = squared_distances(x.astype(np.float64), x.astype(np.float64))
    upper = d2[np.triu_indices(x.shape[0], k=1)]
    sigma = float(np.sqrt(np.median(upper))) if upper.size else 1.0
    return sigma if sigma > 0 else 1.0


def rbf_kernel(a: np.ndarray, b: np.ndarray, sigma: float) -> np.ndarray:
    """``exp(-||a_i - b_j||^2 / (2 sigma^2))``.

    >>> float(rbf_kernel(np.zeros((1, 2)), np.ones((1, 2)), sigma=1.0)[0, 0])
    0.36787944117144233
    """
    k = squared_distances(a, b)
    k *= -0.5 / (sigma * sigma)
    return np.exp(k, out=k)


def _mean_offdiag(k: np.ndarray) -> float:
    m = k.shape[0]
    return float((k.sum() - np.trace(k)) / (m * (m - 1)))


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """Unbiased MMD^2 with an RBF kernel (Gretton et al. 2012, Eq. 3); may be negative.

    >>> rng = np.random.default_rng(0)
    >>> same = mmd2_unbiased(rng.normal(size=(200, 3)), rng.normal(size=(200, 3)), 1.0)
    >>> moved = mmd2_unbiased(rng.normal(size=(200, 3)), rng.normal(1.0, size=(200, 3)), 1.0)
    >>> bool(abs(same) < 0.02 < moved)
    True
    """
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("MMD needs at least two rows on each side")
    kxx = _mean_offdiag(rbf_kernel(x, x, sigma))
    kyy = _mean_offdiag(rbf_kernel(y, y, sigma))
    kxy = float(rbf_kernel(x, y, sigma).mean())
    return kxx + kyy - 2.0 * kxy


class MMDDetector(WindowDetector):
    """Unbiased RBF-kernel MMD^2 between a window and the reference sample."""

    name = "mmd"

    def __init__(self, sigma: float | None = None, seed: int = 0) -> None:
        self.sigma = sigma
        self.seed = seed

    def fit(self, reference: ReferenceSample) -> MMDDetector:
        self.ref_ = np.ascontiguousarray(reference.embeddings, dtype=np.float32)
        self.sigma_ = (
            median_bandwidth(self.ref_, seed=self.seed) if self.sigma is None else self.sigma
        )
        self.kyy_ = _mean_offdiag(rbf_kernel(self.ref_, self.ref_, self.sigma_))
        return self

    def cross_means(self, x: np.ndarray) -> np.ndarray:
        """Per row of ``x``: mean kernel value against the reference."""
        return rbf_kernel(np.asarray(x, dtype=np.float32), self.ref_, self.sigma_).mean(axis=1)

    def statistic(self, x: np.ndarray, scores: np.ndarray) -> float:
        x = np.asarray(x, dtype=np.float32)
        kxx = _mean_offdiag(rbf_kernel(x, x, self.sigma_))
        return kxx + self.kyy_ - 2.0 * float(self.cross_means(x).mean())

    def null_statistics(self, x: np.ndarray, scores: np.ndarray, windows: np.ndarray) -> np.ndarray:
        # One kernel matrix over the pool serves every window: O(B m^2) gathers, no matmuls.
        pool = np.unique(windows)
        xp = np.asarray(x[pool], dtype=np.float32)
        where = np.searchsorted(pool, windows)
        cross = self.cross_means(xp)
        kpp = rbf_kernel(xp, xp, self.sigma_)
        m = windows.shape[1]
        out = np.empty(windows.shape[0], dtype=np.float64)
        for i, w in enumerate(where):
            kxx = (kpp[np.ix_(w, w)].sum() - m) / (m * (m - 1))  # diagonal is exactly 1
            out[i] = kxx + self.kyy_ - 2.0 * cross[w].mean()
        return out
