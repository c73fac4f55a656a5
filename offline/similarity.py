"""How far a real embedder update moved the same texts: angles and linear CKA.

The angle needs both embedders in one space (same dimension, same axes); linear CKA
(Kornblith et al., 2019, "Similarity of Neural Network Representations Revisited",
eq. 2) compares representations of the same rows in any two spaces, invariant to
rotation and isotropic scaling:

``CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)``

with ``X_c``, ``Y_c`` column-centred.
"""

from __future__ import annotations

import numpy as np

from silentwatch.monitor.simulate.drift import row_angles_degrees

__all__ = ["linear_cka", "row_angles_degrees"]


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between two representations of the same ``n`` rows (1 = same up to
    rotation and scale, 0 = unrelated).

    Uses the feature-space form (d x d Gram matrices), so the cost is linear in ``n``.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 8))
    >>> q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    >>> round(linear_cka(x, 3 * x @ q), 6)
    1.0
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same rows, got {x.shape[0]} and {y.shape[0]}")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x, "fro") ** 2
    denom = np.linalg.norm(x.T @ x, "fro") * np.linalg.norm(y.T @ y, "fro")
    return float(cross / denom) if denom > 0 else float("nan")
