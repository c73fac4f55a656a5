"""The linear head on the request path: one dot product per embedding.

The StandardScaler is folded into the weights once at load, so scoring is
``z = (x . w') / ||x|| + b'`` with ``w' = coef / scale`` and
``b' = intercept - sum(coef * mean / scale)``; the division by the norm puts the
embedding on the unit sphere first when the bundle was trained that way
(paper A, section 3: embeddings are unit-normalised before the classifier).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

#: Flag a prediction when P(unsafe) >= this (the bundle's ``thresholds.flag`` default).
FLAG_THRESHOLD = 0.5
#: Paper A (arXiv 2603.01297, section 3.3): an error made with top-label confidence
#: ``max(p, 1 - p)`` above this is a *silent* failure (the bundle's
#: ``thresholds.high_confidence`` default).
HIGH_CONFIDENCE = 0.8


@dataclass(frozen=True)
class LinearScorer:
    """P(unsafe | x) for a logistic-regression head with its scaler folded in.

    Examples
    --------
    >>> import numpy as np
    >>> s = LinearScorer.from_standardized(
    ...     mean=np.zeros(2), scale=np.ones(2), coef=np.array([2.0, 0.0]), intercept=0.0,
    ...     normalize=False)
    >>> p = s.predict_proba(np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32))
    >>> [round(float(v), 3) for v in p]
    [0.5, 0.881]
    """

    weights: np.ndarray  # (d,) float32, scaler folded in
    bias: float
    normalize: bool

    @classmethod
    def from_standardized(
        cls,
        mean: np.ndarray,
        scale: np.ndarray,
        coef: np.ndarray,
        intercept: float,
        *,
        normalize: bool,
    ) -> LinearScorer:
        mean64 = np.asarray(mean, dtype=np.float64)
        scale64 = np.asarray(scale, dtype=np.float64)
        coef64 = np.asarray(coef, dtype=np.float64)
        folded = coef64 / scale64
        bias = float(intercept) - float(np.dot(folded, mean64))
        return cls(weights=folded.astype(np.float32), bias=bias, normalize=normalize)

    @property
    def dim(self) -> int:
        return int(self.weights.shape[0])

    def logits(self, x: np.ndarray, norms: np.ndarray | None = None) -> np.ndarray:
        """Logits for a (n, d) float32 matrix; ``norms`` are the row norms when known."""
        z = x @ self.weights
        if self.normalize:
            if norms is None:
                norms = row_norms(x)
            z /= norms
        z += np.float32(self.bias)
        return z

    def predict_proba(self, x: np.ndarray, norms: np.ndarray | None = None) -> np.ndarray:
        return expit(self.logits(x, norms))


def row_norms(x: np.ndarray) -> np.ndarray:
    """Euclidean norm of each row, vectorised (no temporary n x d copy)."""
    return np.sqrt(np.einsum("ij,ij->i", x, x))


def confidence(p: np.ndarray) -> np.ndarray:
    """Top-label confidence ``max(p, 1 - p)`` (paper A, section 3.3)."""
    return np.maximum(p, 1.0 - p)
