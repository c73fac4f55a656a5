"""Domain-classifier AUC: can a classifier tell the window from the reference?

Rabanser et al. (2019), "Failing Loudly: An Empirical Study of Methods for Detecting
Dataset Shift", section 3: train a classifier to separate reference rows (label 0)
from window rows (label 1); under no shift its out-of-fold ROC-AUC is 0.5. Here the
classifier is ridge regression on the reference's top PCA coordinates plus the PCA
reconstruction error (so drift outside the principal subspace is visible too), with
2-fold cross-fitting, and the statistic is the out-of-fold AUC

``AUC = P(f(window row) > f(reference row))``.

It costs a few milliseconds per window, so the engine runs it every few windows.
"""

from __future__ import annotations

import zlib

import numpy as np
from scipy.special import expit

from silentwatch.monitor.detection.detectors.base import ReferenceSample, WindowDetector
from silentwatch.monitor.detection.detectors.pca import PCABasis
from silentwatch.monitor.evaluation.classification import roc_auc


def domain_classifier_auc(
    reference: np.ndarray, window: np.ndarray, *, ridge: float = 1.0, seed: int = 0
) -> float:
    """Out-of-fold AUC of a ridge classifier separating ``window`` from ``reference`` rows.

    Rows are split into two folds (stratified); each fold is scored by the model fitted
    on the other: ``w = (X^T X + ridge I)^-1 X^T (y - mean y)`` on standardised features.

    >>> rng = np.random.default_rng(0)
    >>> same = domain_classifier_auc(rng.normal(size=(200, 5)), rng.normal(size=(200, 5)))
    >>> moved = domain_classifier_auc(rng.normal(size=(200, 5)), rng.normal(0.5, size=(200, 5)))
    >>> bool(abs(same - 0.5) < 0.1 and moved > 0.8)
    True
    """
    x = np.concatenate([reference, window]).astype(np.float64)
    y = np.concatenate([np.zeros(len(reference)), np.ones(len(window))])
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int8)
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        fold[idx] = rng.permutation(idx.size) % 2
    oof = np.empty(len(y))
    for k in (0, 1):
        tr, te = fold != k, fold == k
        mu, sd = x[tr].mean(axis=0), x[tr].std(axis=0)
        sd[sd == 0] = 1.0
        xt = (x[tr] - mu) / sd
        yt = y[tr] - y[tr].mean()
        w = np.linalg.solve(xt.T @ xt + ridge * np.eye(x.shape[1]), xt.T @ yt)
        oof[te] = ((x[te] - mu) / sd) @ w
    # AUC is rank-based: a monotone squash into (0, 1) meets roc_auc's probability contract.
    return roc_auc(expit(oof), y)


class DomainClassifierDetector(WindowDetector):
    """Out-of-fold AUC of reference-vs-window on PCA coordinates + reconstruction error."""

    name = "domain_auc"

    def __init__(self, n_components: int = 32, ridge: float = 1.0, seed: int = 0) -> None:
        self.n_components = n_components
        self.ridge = ridge
        self.seed = seed

    def fit(self, reference: ReferenceSample) -> DomainClassifierDetector:
        k = max(1, min(self.n_components, reference.dim - 1, reference.size - 1))
        self.basis_ = PCABasis(k).fit(reference.embeddings)
        self.ref_features_ = self.features(reference.embeddings)
        return self

    def features(self, x: np.ndarray) -> np.ndarray:
        return np.column_stack([self.basis_.project(x), self.basis_.reconstruction_error(x)])

    def null_statistics(self, x: np.ndarray, scores: np.ndarray, windows: np.ndarray) -> np.ndarray:
        feats = self.features(x)  # once for the whole pool
        return np.array([self._auc(feats[w]) for w in windows], dtype=np.float64)

    def statistic(self, x: np.ndarray, scores: np.ndarray) -> float:
        return self._auc(self.features(x))

    def _auc(self, window_features: np.ndarray) -> float:
        # The reference rows and the folds are drawn from a generator seeded by the window's
        # own bytes: the statistic is a function of the window alone (the same after a
        # restart or a restore, and the same in calibration as live), yet windows still
        # differ in their draws as the null distribution assumes.
        window_features = np.ascontiguousarray(window_features)
        rng = np.random.default_rng([self.seed, zlib.crc32(window_features.tobytes())])
        # As many reference rows as window rows: balanced classes keep the AUC's null
        # spread the same for every window size the threshold was calibrated at.
        pool = self.ref_features_
        n = min(window_features.shape[0], pool.shape[0])
        ref = pool[rng.choice(pool.shape[0], n, replace=False)]
        seed = int(rng.integers(2**31))
        return domain_classifier_auc(ref, window_features, ridge=self.ridge, seed=seed)
