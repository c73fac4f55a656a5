"""How sure one ROC-AUC is: a stratified bootstrap interval and a test against chance.

Paper A (arXiv 2603.01297, section 4) calls an AUC of about 0.5 after drift "statistically
indistinguishable from random guessing" without a test; these are the two numbers that
make such a sentence checkable on a few hundred test rows.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import mannwhitneyu

from silentwatch.monitor.evaluation.classification import check_scores_labels


def auc_bootstrap_ci(
    p: np.ndarray,
    y: np.ndarray,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the ROC-AUC over a stratified bootstrap.

    Positives and negatives are resampled separately, with replacement, keeping the class
    counts ``n1`` and ``n0`` (as a stratified test split does). With multinomial weights
    ``w`` over the positives ``X_i`` and ``v`` over the negatives ``Y_j``, each replicate is

    ``AUC* = (1 / (n1 n0)) sum_i sum_j w_i v_j psi(X_i, Y_j)``,

    ``psi = 1, 1/2, 0`` for ``X > Y``, ``X = Y``, ``X < Y`` (the Mann-Whitney kernel of
    paper A's Eq. 15): one ``(B, n1) @ (n1, n0)`` product for all ``B`` replicates. The
    interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the ``AUC*``
    (Efron & Tibshirani 1993, ch. 13). NaN without two cases of each class.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 200)
    >>> p = 1 / (1 + np.exp(-(rng.normal(size=400) + y)))
    >>> lo, hi = auc_bootstrap_ci(p, y)
    >>> bool(lo < 0.76 < hi and hi - lo < 0.12)
    True
    """
    p, y = check_scores_labels(p, y)
    pos, neg = p[y == 1], p[y == 0]
    n1, n0 = pos.size, neg.size
    if n1 < 2 or n0 < 2 or n_boot < 1:
        return float("nan"), float("nan")
    psi = (pos[:, None] > neg[None, :]).astype(np.float64)
    psi += 0.5 * (pos[:, None] == neg[None, :])
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n1, np.full(n1, 1.0 / n1), size=n_boot).astype(np.float64)
    v = rng.multinomial(n0, np.full(n0, 1.0 / n0), size=n_boot).astype(np.float64)
    auc = np.einsum("bj,bj->b", w @ psi, v) / (n1 * n0)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(auc, [tail, 1.0 - tail])
    return float(lo), float(hi)


def auc_chance_test(p: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p-value of "the AUC is 0.5" (the Mann-Whitney U test).

    ``AUC = U / (n1 n0)`` with ``U`` the Mann-Whitney statistic of the positives' scores
    against the negatives', so testing ``AUC = 0.5`` is the U test of equal score
    distributions (normal approximation with tie correction, continuity-corrected;
    ``scipy.stats.mannwhitneyu``). A small p-value says the classifier still ranks better
    (or worse) than a coin; a large one that the rows cannot tell it from one. NaN without
    a case of each class.

    >>> y = np.repeat([0, 1], 50)
    >>> auc_chance_test(np.r_[np.zeros(50), np.ones(50)], y) < 1e-10
    True
    >>> round(auc_chance_test(np.tile([0.2, 0.8], 50), y), 3)
    1.0
    """
    p, y = check_scores_labels(p, y)
    pos, neg = p[y == 1], p[y == 0]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    return float(mannwhitneyu(pos, neg, alternative="two-sided").pvalue)
