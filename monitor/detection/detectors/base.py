"""What every window detector shares: the reference it compares against and its shape.

A detector is fitted once on the bundle's reference sample (never refitted on live
traffic), then reads one statistic per window of live traffic. Larger statistics
mean more drift; the alarm threshold is the ``1 - alpha`` quantile of the statistic
over windows of held-out clean data (:mod:`.calibrate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ReferenceSample:
    """The clean data a detector compares against.

    ``embeddings`` are on the unit sphere when the bundle's embedder normalises;
    ``scores`` are P(unsafe) of those embeddings.
    """

    embeddings: np.ndarray  # (n, d) float32
    scores: np.ndarray  # (n,) float32

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or self.scores.shape != (self.embeddings.shape[0],):
            raise ValueError(
                f"reference embeddings {self.embeddings.shape} and scores {self.scores.shape} "
                "do not line up"
            )

    @property
    def size(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


def window_means(values: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Mean of ``values[w]`` for every row ``w`` of ``windows`` (B, n), as one matmul.

    Gathering ``B x n x d`` numbers is memory-bound; a (B, pool) membership matrix
    times the (pool, d) values does the same sums with BLAS.

    >>> window_means(np.arange(4.0)[:, None], np.array([[0, 1], [2, 3]])).ravel().tolist()
    [0.5, 2.5]
    """
    b, n = windows.shape
    member = np.zeros((b, values.shape[0]), dtype=values.dtype)
    np.put_along_axis(member, windows, 1.0, axis=1)
    return (member @ values) / n


class WindowDetector:
    """Base class: ``fit(reference)`` once, then ``statistic(x, scores)`` per window.

    ``null_statistics`` computes the statistic for many windows of held-out data given
    as index arrays; subclasses override it when sharing work across windows is much
    cheaper than calling :meth:`statistic` per window.
    """

    name: str = "base"
    #: ``True`` when the detector looks only at scores (BBSD, confidence).
    uses_embeddings: bool = True

    def fit(self, reference: ReferenceSample) -> WindowDetector:
        raise NotImplementedError

    def fit_holdout(self, x: np.ndarray, scores: np.ndarray) -> None:
        """See held-out clean data once at calibration time (most detectors ignore it)."""

    def statistic(self, x: np.ndarray, scores: np.ndarray) -> float:
        raise NotImplementedError

    def null_statistics(self, x: np.ndarray, scores: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """Statistic of each window ``x[windows[i]]`` (``windows`` is (B, n) indices)."""
        return np.array([self.statistic(x[w], scores[w]) for w in windows], dtype=np.float64)

    def arrays(self) -> dict[str, np.ndarray]:
        """Fitted state to store in the bundle (``reference.npz``), keyed without prefix."""
        return {}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> bool:
        """Restore fitted state saved by :meth:`arrays`; False when it is not there."""
        return not self.arrays()
