"""The AUC's bootstrap interval and its test against chance (paper A's "indistinguishable
from random guessing", made checkable)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_auc_score

from silentwatch.monitor.evaluation.auc_intervals import auc_bootstrap_ci, auc_chance_test
from silentwatch.monitor.evaluation.classification import (
    accuracy_above_confidence,
    confident_error_share,
    expected_calibration_error,
)


def _scores(n: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    return 1 / (1 + np.exp(-(rng.normal(size=n) + shift * y))), y


def test_bootstrap_replicate_equals_the_auc_of_the_resampled_rows():
    """One replicate of the (B, n1) @ (n1, n0) product is the AUC of the rows it drew."""
    p, y = _scores(60, 1.0, 0)
    pos, neg = p[y == 1], p[y == 0]
    rng = np.random.default_rng(5)
    w = rng.multinomial(30, np.full(30, 1 / 30))
    v = rng.multinomial(30, np.full(30, 1 / 30))
    rows_p = np.r_[np.repeat(pos, w), np.repeat(neg, v)]
    rows_y = np.r_[np.ones(30), np.zeros(30)]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    assert w @ psi @ v / 900 == pytest.approx(roc_auc_score(rows_y, rows_p))


def test_bootstrap_interval_covers_the_true_auc_at_its_level():
    """Normal scores one sd apart: true AUC = Phi(1 / sqrt 2) = 0.7602. Over 200 test
    sets of 200 rows, a 95% interval should miss about 10 times; 3 to 20 is the binomial
    range that a correct interval lands in with probability > 0.999."""
    true = 0.7602499389
    misses = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        y = np.repeat([0, 1], 100)
        p = 1 / (1 + np.exp(-(rng.normal(size=200) + y)))
        lo, hi = auc_bootstrap_ci(p, y, n_boot=400, seed=seed)
        misses += not lo <= true <= hi
    assert 3 <= misses <= 20


def test_chance_test_is_the_mann_whitney_test_and_rejects_only_signal():
    p, y = _scores(400, 0.0, 1)
    assert auc_chance_test(p, y) == pytest.approx(
        mannwhitneyu(p[y == 1], p[y == 0], alternative="two-sided").pvalue
    )
    assert auc_chance_test(p, y) > 0.01
    p, y = _scores(400, 1.0, 1)
    assert auc_chance_test(p, y) < 1e-10


def test_one_class_gives_nan():
    p = np.linspace(0.1, 0.9, 10)
    assert np.isnan(auc_chance_test(p, np.ones(10)))
    assert all(np.isnan(auc_bootstrap_ci(p, np.r_[np.ones(9), 0])))


def test_paper_a_readings_by_hand():
    p = np.array([0.95, 0.92, 0.85, 0.4, 0.05])
    y = np.array([0, 1, 0, 0, 1])
    # wrong: 0.95 (c .95), 0.85 (c .85), 0.05 (c .95); right: 0.92, 0.4
    assert confident_error_share(p, y) == pytest.approx(3 / 5)
    assert accuracy_above_confidence(p, y, 0.9) == pytest.approx(1 / 3)  # .95, .92, .05
    assert np.isnan(accuracy_above_confidence(np.array([0.6]), np.array([1]), 0.9))
    # Bins over [0.5, 1]: (.5,.6] {.6 right}, (.8,.9] {.85 wrong}, (.9,1] {.95 w, .92 r, .95 w}
    want = (abs(1 - 0.6) + abs(0 - 0.85) + abs(1 - (0.95 + 0.92 + 0.95))) / 5
    assert expected_calibration_error(p, y, 5, low=0.5) == pytest.approx(want)
