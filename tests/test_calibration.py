"""Unit tests for silentwatch.monitor.calibration (paper A's labelled-sample metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from silentwatch.monitor import calibration as cal
from silentwatch.monitor.calibration import (
    accuracy,
    expected_calibration_error,
    mean_confidence,
    silent_failure_rate,
)
from silentwatch.monitor.labelled import LabelledWindow
from sklearn import metrics as skm
from sklearn.metrics import accuracy_score


def ece_loop(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    """Straightforward per-sample, per-bin ECE (Guo et al. 2017), bins ((b-1)/M, b/M]."""
    n = len(p)
    total = 0.0
    for b in range(1, n_bins + 1):
        lo, hi = (b - 1) / n_bins, b / n_bins
        members = []
        for pi, yi in zip(p.tolist(), y.tolist(), strict=True):
            c = max(pi, 1.0 - pi)
            inside = (c > lo or (b == 1 and c >= lo)) and c <= hi
            if inside:
                members.append((c, int((pi >= 0.5) == (yi == 1))))
        if members:
            conf = sum(c for c, _ in members) / len(members)
            acc = sum(k for _, k in members) / len(members)
            total += len(members) / n * abs(acc - conf)
    return total


# -- accuracy -------------------------------------------------------------------------------


def test_accuracy_hand_values_with_extremes():
    p = np.array([0.0, 1.0, 0.5, 0.49999, 0.7])
    y = np.array([0, 1, 1, 1, 0])
    # predictions (p >= 0.5): 0 1 1 0 1 -> correct: yes yes yes no no
    assert accuracy(p, y) == pytest.approx(0.6)
    # threshold 0.3: predictions 0 1 1 1 1 -> only the last is wrong
    assert accuracy(p, y, threshold=0.3) == pytest.approx(0.8)
    # threshold 1.0: only p == 1 is flagged -> 0 1 0 0 0 -> correct: yes yes no no yes
    assert accuracy(p, y, threshold=1.0) == pytest.approx(0.6)


def test_accuracy_all_right_and_all_wrong():
    assert accuracy(np.array([0.0, 1.0]), np.array([0, 1])) == 1.0
    assert accuracy(np.array([0.0, 1.0]), np.array([1, 0])) == 0.0


def test_accuracy_matches_sklearn():
    rng = np.random.default_rng(0)
    p = rng.random(1000)
    y = rng.integers(0, 2, 1000)
    for t in (0.5, 0.3, 0.77):
        assert accuracy(p, y, t) == pytest.approx(accuracy_score(y, (p >= t).astype(int)))


def test_accuracy_empty_is_nan_and_length_mismatch_raises():
    assert math.isnan(accuracy(np.array([]), np.array([])))
    with pytest.raises(ValueError, match="p has 3 values but y has 2"):
        accuracy(np.array([0.1, 0.2, 0.3]), np.array([0, 1]))


# -- mean confidence ----------------------------------------------------------------------


def test_mean_confidence_hand_value():
    # confidences: 0.9 0.8 0.5 1 1
    assert mean_confidence(np.array([0.9, 0.2, 0.5, 0.0, 1.0])) == pytest.approx(0.84)


def test_mean_confidence_empty_is_nan():
    assert math.isnan(mean_confidence(np.array([])))


def test_mean_confidence_is_at_least_half():
    p = np.random.default_rng(1).random(500)
    mc = mean_confidence(p)
    assert 0.5 <= mc <= 1.0
    assert mc == pytest.approx(np.mean(np.maximum(p, 1 - p)))


# -- ECE ----------------------------------------------------------------------------------


def test_ece_docstring_example():
    ece = expected_calibration_error(np.array([0.9, 0.9, 0.1, 0.1]), np.array([1, 0, 0, 0]))
    assert ece == pytest.approx(0.15)


def test_ece_hand_values_with_extremes():
    p = np.array([0.0, 1.0, 0.5, 0.75, 0.25, 0.95])
    y = np.array([0, 1, 0, 0, 0, 1])
    # conf: 1 1 .5 .75 .75 .95; correct: yes yes no no yes yes
    # (0.8,1]: 3 right, conf sum 2.95 -> 0.05; (0.6,0.8]: 1 right, conf 1.5 -> 0.5;
    # (0.4,0.6]: 0 right, conf 0.5 -> 0.5. ECE = 1.05 / 6.
    assert expected_calibration_error(p, y, 5) == pytest.approx(1.05 / 6)
    assert expected_calibration_error(p, y, 10) == pytest.approx(1.05 / 6)


def test_ece_bin_count_matters():
    p = np.array([0.65, 0.75])
    y = np.array([1, 0])
    # 5 bins: both in (0.6, 0.8]: |1 - 1.4| / 2
    assert expected_calibration_error(p, y, 5) == pytest.approx(0.2)
    # 10 bins: (0.6, 0.7] -> |1 - 0.65|, (0.7, 0.8] -> |0 - 0.75|
    assert expected_calibration_error(p, y, 10) == pytest.approx(0.55)


def test_ece_right_closed_bins():
    # conf 0.6 belongs to (0.4, 0.6], with conf 0.5: |1 - 1.1| / 2 = 0.05.
    # (Were 0.6 put in (0.6, 0.8] the result would be (0.4 + 0.5) / 2 = 0.45.)
    assert expected_calibration_error(np.array([0.6, 0.5]), np.array([1, 0]), 5) == pytest.approx(
        0.05
    )
    # Same with 1 - p = 0.6 (p = 0.4, predicted safe and right).
    assert expected_calibration_error(np.array([0.4, 0.5]), np.array([0, 0]), 5) == pytest.approx(
        0.05
    )
    # conf 0.8 with 5 bins: in (0.6, 0.8] with 0.7: |1 - 1.5| / 2 (not (0.2 + 0.7) / 2).
    ece = expected_calibration_error(np.array([0.8, 0.7]), np.array([1, 0]), 5)
    assert ece == pytest.approx(0.25)
    # conf 0.8 with 10 bins: in (0.7, 0.8] together with 0.75.
    ece = expected_calibration_error(np.array([0.8, 0.75]), np.array([1, 0]), 10)
    assert ece == pytest.approx(abs(1 - 1.55) / 2)


def test_ece_extremes():
    assert expected_calibration_error(np.array([0.0, 1.0]), np.array([0, 1])) == 0.0
    assert expected_calibration_error(np.array([0.0, 1.0]), np.array([1, 0])) == 1.0
    # Confidence 0.5 everywhere, half right: perfectly calibrated.
    assert expected_calibration_error(np.array([0.5, 0.5]), np.array([1, 0])) == 0.0


@pytest.mark.parametrize("n_bins", [5, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_loop_implementation(n_bins, seed):
    rng = np.random.default_rng(seed)
    n = 2000
    p = rng.beta(0.7, 0.7, n)
    y = (rng.random(n) < np.clip(p + rng.normal(0, 0.2, n), 0, 1)).astype(int)
    p[:4] = [0.0, 1.0, 0.0, 1.0]
    y[:4] = [0, 0, 1, 1]
    got = expected_calibration_error(p, y, n_bins)
    assert got == pytest.approx(ece_loop(p, y, n_bins), abs=1e-12)
    assert 0.0 <= got <= 0.5


def test_ece_empty_is_nan():
    assert math.isnan(expected_calibration_error(np.array([]), np.array([])))


def test_ece_length_mismatch_raises():
    with pytest.raises(ValueError, match="p has 2 values but y has 3"):
        expected_calibration_error(np.array([0.1, 0.2]), np.array([0, 1, 0]))


# -- silent failure rate --------------------------------------------------------------------


def test_silent_failure_rate_docstring_example():
    assert silent_failure_rate(np.array([0.95, 0.6, 0.1]), np.array([0, 0, 0])) == 0.5


def test_silent_failure_rate_hand_cases():
    # errors: p=1 on y=0 (conf 1), p=0 on y=1 (conf 1), p=0.8 on y=0 (conf 0.8, not > 0.8),
    # p=0.3 on y=1 (conf 0.7); right: p=0.9 on y=1.
    p = np.array([1.0, 0.0, 0.8, 0.3, 0.9])
    y = np.array([0, 1, 0, 1, 1])
    assert silent_failure_rate(p, y) == pytest.approx(2 / 4)
    assert silent_failure_rate(p, y, high_confidence=0.75) == pytest.approx(3 / 4)
    assert silent_failure_rate(p, y, high_confidence=0.6) == pytest.approx(4 / 4)
    assert silent_failure_rate(p, y, high_confidence=0.99) == pytest.approx(2 / 4)


def test_silent_failure_rate_all_errors_low_confidence():
    assert silent_failure_rate(np.array([0.55, 0.45]), np.array([0, 1])) == 0.0


def test_silent_failure_rate_nan_without_errors():
    assert math.isnan(silent_failure_rate(np.array([0.9, 0.1, 1.0, 0.0]), np.array([1, 0, 1, 0])))
    assert math.isnan(silent_failure_rate(np.array([]), np.array([])))


def test_silent_failure_rate_vs_loop():
    rng = np.random.default_rng(5)
    p = rng.random(3000)
    y = rng.integers(0, 2, 3000)
    wrong = [(pi >= 0.5) != (yi == 1) for pi, yi in zip(p, y, strict=True)]
    silent = [w and max(pi, 1 - pi) > 0.8 for w, pi in zip(wrong, p, strict=True)]
    assert silent_failure_rate(p, y) == pytest.approx(sum(silent) / sum(wrong))


# -- the labelled metrics against scikit-learn and by hand -------------------------------

_probs = st.lists(
    st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0, 0.5, 0.8, 0.2])),
    min_size=2,
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(_probs, st.integers(0, 2**31 - 1))
def test_labelled_metrics_equal_sklearn(ps, seed):
    p = np.asarray(ps)
    y = np.random.default_rng(seed).integers(0, 2, p.size)
    if 0 < y.sum() < y.size:
        assert cal.roc_auc(p, y) == pytest.approx(skm.roc_auc_score(y, p))
    else:
        assert np.isnan(cal.roc_auc(p, y))
    assert cal.brier_score(p, y) == pytest.approx(skm.brier_score_loss(y, p))
    assert cal.log_loss(p, y) == pytest.approx(skm.log_loss(y, p, labels=[0, 1]))
    assert cal.accuracy(p, y) == pytest.approx(skm.accuracy_score(y, p >= 0.5))
    if 0 < y.sum() < y.size:
        assert cal.balanced_accuracy(p, y) == pytest.approx(
            skm.balanced_accuracy_score(y, p >= 0.5)
        )


def test_hand_computed_cases_with_exact_zero_and_one():
    p = np.array([0.0, 1.0, 1.0, 0.9])
    y = np.array([0, 1, 0, 1])
    # Confidences 1, 1, 1, 0.9; the third is wrong with confidence 1.
    assert cal.accuracy(p, y) == 0.75
    assert cal.silent_failure_rate(p, y) == 1.0  # the one error is confident
    assert cal.high_confidence_error_ratio(p, y) == 0.25  # 1 wrong of 4 confident
    assert cal.confidence_minus_accuracy(p, y) == pytest.approx(0.975 - 0.75)
    assert cal.brier_score(p, y) == pytest.approx((0 + 0 + 1 + 0.01) / 4)
    # log loss: the confident error costs -log(eps) = 36.04; the rest 0, 0, -log(0.9).
    eps = np.finfo(np.float64).eps
    assert cal.log_loss(p, y) == pytest.approx((-np.log(eps) - np.log(0.9)) / 4)
    # Top-label ECE, 5 bins: all four in (0.8, 1]: |acc 0.75 - conf 0.975| = 0.225.
    assert cal.expected_calibration_error(p, y) == pytest.approx(0.225)
    # Positive-class ECE: bin [0, .2]: p=0,y=0 -> 0; bin (.8, 1]: mean p .9667 vs y 2/3.
    assert cal.positive_class_ece(p, y) == pytest.approx(3 / 4 * abs(2.9 / 3 - 2 / 3))
    assert cal.roc_auc(p, y) == pytest.approx(skm.roc_auc_score(y, p))
    m = cal.labelled_metrics(np.zeros(0), np.zeros(0))
    assert m["n"] == 0 and np.isnan(m["roc_auc"]) and np.isnan(m["accuracy"])
    assert np.isnan(cal.high_confidence_error_ratio(np.array([0.6]), np.array([1])))


def test_labelled_window_rolling_and_cumulative():
    rng = np.random.default_rng(7)
    p = rng.random(2300)
    y = (rng.random(2300) < p).astype(np.int8)
    w = LabelledWindow(window_size=500)
    ring_ids = (id(w._p), id(w._y))
    for a, b in ((0, 7), (7, 480), (480, 1111), (1111, 2300)):  # uneven, crossing the ring
        w.update(p[a:b], y[a:b])
    assert (id(w._p), id(w._y)) == ring_ids and w._p.shape == (500,)
    rolling, want = w.rolling(), cal.labelled_metrics(p[-500:], y[-500:])
    for k, v in want.items():
        assert rolling[k] == pytest.approx(v, nan_ok=True), k
    cum, everything = w.cumulative(), cal.labelled_metrics(p, y)
    for k, v in everything.items():
        tol = 1e-2 if k == "roc_auc" else 1e-9  # ROC-AUC from a 1000-bin histogram
        assert cum[k] == pytest.approx(v, abs=tol, nan_ok=True), k
    assert w.n_seen == 2300
