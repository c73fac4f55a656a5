"""The linear head on the request path: one dot product per embedding.

The StandardScaler is folded into the weights once at load, so scoring is
``z = (x . w') / ||x|| + b'`` with ``w' = coef / scale`` and
``b' = intercept - sum(coef * mean / scale)``; the division by the norm puts the
embedding on the unit sphere first when the bundle was trained that way
(paper A, section 3: embeddings are unit-normalised before the classifier).
"""

from __future__ import annotations

from collections.abc import Sequence
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


# Up to this many heads, HeadScorer runs one matrix-vector product per head; from there
# to PAD_HEADS_TO one product with the weights padded to that many columns (see logits).
GEMV_MAX_HEADS = 4
PAD_HEADS_TO = 8


@dataclass(frozen=True)
class HeadScorer:
    """k linear heads over one embedding: one (n, d) @ (d, k) product, norms once.

    Column ``j`` of every result is head ``j`` (the bundle's head order, the default
    first), and equals ``LinearScorer.predict_proba`` of that head to float32 rounding.

    Attributes
    ----------
    weights : numpy.ndarray
        (d, k) float32, each head's scaler folded in (column ``j`` = head ``j``).
    biases : numpy.ndarray
        (k,) float32.
    normalize : bool
        Divide each row's logits by its norm (the heads were trained on the unit sphere).

    Examples
    --------
    >>> import numpy as np
    >>> a = LinearScorer.from_standardized(
    ...     mean=np.zeros(2), scale=np.ones(2), coef=np.array([2.0, 0.0]), intercept=0.0,
    ...     normalize=False)
    >>> b = LinearScorer.from_standardized(
    ...     mean=np.zeros(2), scale=np.ones(2), coef=np.array([0.0, -1.0]), intercept=1.0,
    ...     normalize=False)
    >>> hs = HeadScorer.stack([a, b])
    >>> hs.dim, hs.k
    (2, 2)
    >>> p = hs.predict_proba(np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32))
    >>> p.shape, p.dtype
    ((2, 2), dtype('float32'))
    >>> [[round(float(v), 3) for v in row] for row in p]
    [[0.5, 0.5], [0.881, 0.731]]
    >>> bool(np.allclose(p[:, 1], b.predict_proba(np.array([[0.0, 1.0], [1.0, 0.0]]))))
    True
    """

    weights: np.ndarray
    biases: np.ndarray
    normalize: bool

    @classmethod
    def stack(cls, scorers: Sequence[LinearScorer]) -> HeadScorer:
        """The heads of ``scorers``, in that order; they share one dimension and ``normalize``.

        Raises
        ------
        ValueError
            No scorers, or scorers that disagree on the dimension or on normalisation.
        """
        if not scorers:
            raise ValueError("HeadScorer.stack needs at least one scorer")
        first = scorers[0]
        for j, s in enumerate(scorers):
            if s.dim != first.dim or s.normalize != first.normalize:
                raise ValueError(
                    f"head {j} has dimension {s.dim} (normalize={s.normalize}) but head 0 has "
                    f"{first.dim} (normalize={first.normalize}); heads share one embedding"
                )
        # Fortran order: each head's weights are one contiguous column, as BLAS reads them.
        weights = np.asfortranarray(np.stack([s.weights for s in scorers], axis=1), np.float32)
        biases = np.asarray([s.bias for s in scorers], dtype=np.float32)
        return cls(weights=weights, biases=biases, normalize=first.normalize)

    @property
    def dim(self) -> int:
        return int(self.weights.shape[0])

    @property
    def k(self) -> int:
        return int(self.weights.shape[1])

    def _padded_weights(self) -> np.ndarray:
        """The (d, PAD_HEADS_TO) weights with zero columns appended, built once."""
        w = self.__dict__.get("_padded")
        if w is None:
            w = np.zeros((self.weights.shape[0], PAD_HEADS_TO), np.float32, order="F")
            w[:, : self.weights.shape[1]] = self.weights
            object.__setattr__(self, "_padded", w)  # a cache on a frozen dataclass
        return w

    def logits(self, x: np.ndarray, norms: np.ndarray | None = None) -> np.ndarray:
        """(n, k) float32 logits for a (n, d) float32 matrix; ``norms`` are its row norms."""
        k = self.weights.shape[1]
        if k <= GEMV_MAX_HEADS:
            # One to four heads: a matrix-vector product per head beats the (n, d) @ (d, k)
            # product, whose narrow kernel is compute-bound (one core, d = 1024, 1,024
            # rows: k = 2 119 vs 191 µs, k = 4 219 vs 240 µs; benchmarks/heads.py).
            zt = np.empty((k, x.shape[0]), dtype=np.result_type(x.dtype, self.weights.dtype))
            for j in range(k):
                np.dot(x, self.weights[:, j], out=zt[j])
            z = np.ascontiguousarray(zt.T)
        elif k < PAD_HEADS_TO:
            # 5-7 heads: BLAS is faster on 8 columns (zeros appended) than on 5-7 (same
            # measurement: k = 5 329 -> 245 µs, k = 7 431 -> 238 µs).
            z = np.ascontiguousarray((x @ self._padded_weights())[:, :k])
        else:
            z = x @ self.weights
        if self.normalize:
            if norms is None:
                norms = row_norms(x)
            z /= norms[:, None]
        z += self.biases
        return z

    def predict_proba(self, x: np.ndarray, norms: np.ndarray | None = None) -> np.ndarray:
        """(n, k) float32 P(unsafe) of every head for a (n, d) float32 matrix."""
        return expit(self.logits(x, norms))


def row_norms(x: np.ndarray) -> np.ndarray:
    """Euclidean norm of each row, vectorised (no temporary n x d copy).

    ``numpy.vecdot`` (numpy 2) takes half the time of ``einsum("ij,ij->i")`` on a
    1,024 x 1,024 float32 batch (61 against 122 µs on one core).

    >>> row_norms(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)).tolist()
    [5.0, 0.0]
    """
    with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN rows: callers refuse them
        return np.sqrt(_rowdot(x, x))


def _einsum_rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


_rowdot = getattr(np, "vecdot", _einsum_rowdot)  # numpy < 2 has no vecdot


def confidence(p: np.ndarray) -> np.ndarray:
    """Top-label confidence ``max(p, 1 - p)`` (paper A, section 3.3)."""
    return np.maximum(p, 1.0 - p)
