"""How separable the two classes are in an embedding space (paper A, section 5.3).

Paper A compares base and instruct models with three numbers; they are defined once here
so an old and a new embedder (or any labelled embedding set) can be compared the same way:

* silhouette: mean over samples of ``(b - a) / max(a, b)`` with ``a`` the mean distance
  to the own class and ``b`` to the other class (Euclidean on the unit sphere);
* Fisher discriminant ratio: ``||mu_1 - mu_0||^2 / (tr S_0 + tr S_1)``, between-class
  over within-class scatter;
* class overlap: the share of samples nearer (Euclidean) the other class's centroid than
  their own.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel
from sklearn.metrics import silhouette_score


class Separability(BaseModel):
    n: int
    silhouette: float
    fisher_ratio: float
    class_overlap: float


def fisher_ratio(x: np.ndarray, y: np.ndarray) -> float:
    """``||mu_1 - mu_0||^2 / (tr S_0 + tr S_1)`` with ``S_c`` the class covariance.

    >>> x = np.array([[0.0], [0.2], [1.0], [1.2]])
    >>> round(fisher_ratio(x, np.array([0, 0, 1, 1])), 3)
    25.0
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y).reshape(-1)
    a, b = x[y == 0], x[y == 1]
    between = float(np.sum((b.mean(0) - a.mean(0)) ** 2))
    within = float(a.var(axis=0, ddof=1).sum() + b.var(axis=0, ddof=1).sum())
    return between / within if within > 0 else float("inf")


def class_overlap(x: np.ndarray, y: np.ndarray) -> float:
    """Share of rows nearer the other class's centroid than their own.

    >>> x = np.array([[0.0], [0.8], [1.0], [1.2]])
    >>> class_overlap(x, np.array([0, 0, 1, 1]))
    0.25
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y).reshape(-1).astype(int)
    centroids = np.stack([x[y == 0].mean(0), x[y == 1].mean(0)])
    # Squared distances via ||x||^2 - 2 x.c + ||c||^2; the ||x||^2 term cancels in the comparison.
    d = -2.0 * x @ centroids.T + np.sum(centroids**2, axis=1)
    nearer_other = d[np.arange(y.size), 1 - y] < d[np.arange(y.size), y]
    return float(nearer_other.mean())


def separability(
    x: np.ndarray, y: np.ndarray, *, max_silhouette_rows: int = 4000, seed: int = 42
) -> Separability:
    """All three measures; the silhouette (O(n^2)) runs on a seeded stratified subsample.

    >>> rng = np.random.default_rng(0)
    >>> y = np.array([0, 1] * 50)
    >>> x = rng.normal(size=(100, 4)) + 3 * y[:, None]
    >>> s = separability(x, y)
    >>> s.silhouette > 0.5, s.class_overlap < 0.05
    (True, True)
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y).reshape(-1).astype(int)
    if x.ndim != 2 or x.shape[0] != y.size:
        raise ValueError(f"need (n, d) embeddings and n labels, got {x.shape} and {y.size}")
    if np.bincount(y, minlength=2).min() < 2:
        raise ValueError("separability needs at least two rows of each class")
    sample = np.arange(y.size)
    if y.size > max_silhouette_rows:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(y.size, size=max_silhouette_rows, replace=False))
    return Separability(
        n=int(y.size),
        silhouette=float(silhouette_score(x[sample], y[sample], metric="euclidean")),
        fisher_ratio=fisher_ratio(x, y),
        class_overlap=class_overlap(x, y),
    )
