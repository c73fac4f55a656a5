"""What every window detector shares: the reference it compares against and its shape.

A detector is fitted once on the bundle's reference sample (never refitted on live
traffic), then reads one statistic per window of live traffic. Larger statistics
mean more drift; the alarm threshold is the ``1 - alpha`` quantile of the statistic
over windows of held-out clean data (:mod:`silentwatch.monitor.detection.suite`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

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

    scikit-learn's conventions: constructor parameters are stored under their own names
    and never changed by :meth:`fit`; what ``fit`` learns ends in ``_``. ``null_statistics``
    computes the statistic for many windows of held-out data given as index arrays;
    subclasses override it when sharing work across windows is much cheaper than calling
    :meth:`statistic` per window. Each detector is declared once, in
    :mod:`silentwatch.monitor.detection.registry`; ``check_detector`` in the tests holds
    every registered one to these rules.
    """

    name: str = "base"

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters by name (scikit-learn's ``get_params``, shallow)."""
        sig = inspect.signature(type(self).__init__)
        return {
            k: getattr(self, k)
            for k, p in sig.parameters.items()
            if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    def fit(self, reference: ReferenceSample) -> WindowDetector:
        raise NotImplementedError

    def fit_holdout(self, x: np.ndarray, scores: np.ndarray) -> None:
        """See held-out clean data once at calibration time (most detectors ignore it)."""

    def statistic(self, x: np.ndarray, scores: np.ndarray) -> float:
        raise NotImplementedError

    def null_statistics(self, x: np.ndarray, scores: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """Statistic of each window ``x[windows[i]]`` (``windows`` is (B, n) indices)."""
        return np.array([self.statistic(x[w], scores[w]) for w in windows], dtype=np.float64)

    def stream(self, name: str, x: np.ndarray) -> np.ndarray:
        """Per-sample values of a change-point stream this detector provides (registry:
        ``streams``), for the rows ``x``."""
        raise KeyError(f"detector {self.name!r} provides no stream {name!r}")

    def arrays(self) -> dict[str, np.ndarray]:
        """Fitted state to store in the bundle (``reference.npz``), keyed without prefix."""
        return {}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore the fitted state saved by :meth:`arrays` (after :meth:`fit`).

        The suite passes every array the registry declares for this detector, checked for
        presence and shape, so implementations only assign.
        """
