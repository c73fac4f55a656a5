"""How far a real embedder update moved the same texts: angles and linear CKA.

The angle needs both embedders in one space (same dimension, same axes); linear CKA
(Kornblith et al., 2019, "Similarity of Neural Network Representations Revisited",
eq. 2) compares representations of the same rows in any two spaces, invariant to
rotation and isotropic scaling:

``CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)``

with ``X_c``, ``Y_c`` column-centred.
"""

from __future__ import annotations

# One implementation of each, shared with the sidecar's paired canaries.
from silentwatch.monitor.evaluation.paired import linear_cka
from silentwatch.monitor.simulate.drift import row_angles_degrees

__all__ = ["linear_cka", "row_angles_degrees"]
