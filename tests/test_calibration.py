"""Unit tests for silentwatch.monitor.evaluation.classification (paper A's metrics)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.metrics import accuracy_score

from silentwatch.monitor.evaluation import classification as cal
from silentwatch.monitor.evaluation.classification import (
    accuracy,
    expected_calibration_error,
    mean_confidence,
    silent_failure_rate,
)


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


# -- scikit-learn equality on random data (property tests) ----------------------------------

# Scores with many exact ties, bin edges and the extremes 0 and 1 mixed into free floats.
_score = st.one_of(
    st.floats(0.0, 1.0),
    st.sampled_from([0.0, 1.0, 0.5, 0.2, 0.4, 0.6, 0.8, 0.1, 0.9]),
)
_samples = st.lists(st.tuples(_score, st.integers(0, 1)), min_size=1, max_size=80)


def _arrays(pairs: list[tuple[float, int]]) -> tuple[np.ndarray, np.ndarray]:
    p, y = zip(*pairs, strict=True)
    return np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.int64)


def binned_reference(v: np.ndarray, hits: np.ndarray, n_bins: int) -> tuple[list, float]:
    """Per-sample loop over bins ``(e_(b-1), e_b]`` (first closed at 0) and their ECE."""
    edges = np.linspace(0.0, 1.0, n_bins + 1).tolist()
    rows, ece = [], 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        members = [
            (vi, hi_)
            for vi, hi_ in zip(v.tolist(), hits.tolist(), strict=True)
            if (vi > lo or (b == 0 and vi >= lo)) and vi <= hi
        ]
        if members:
            mean_v = sum(m[0] for m in members) / len(members)
            mean_hit = sum(m[1] for m in members) / len(members)
            rows.append((mean_hit, mean_v))
            ece += len(members) / len(v) * abs(mean_hit - mean_v)
    return rows, ece


def _assert_bins_match_sklearn(rows: list, hits: np.ndarray, v: np.ndarray, n_bins: int):
    prob_true, prob_pred = calibration_curve(hits, v, n_bins=n_bins)
    assert np.allclose([r[0] for r in rows], prob_true)
    assert np.allclose([r[1] for r in rows], prob_pred)


@settings(max_examples=150, deadline=None)
@given(_samples, st.sampled_from([0.5, 0.3, 0.8, 0.0, 1.0]))
def test_every_metric_equals_sklearn_or_reference(pairs, threshold):
    p, y = _arrays(pairs)
    both = 0 < y.sum() < y.size
    pred = (p >= threshold).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on one class; we check its value
        sk_auc = skm.roc_auc_score(y, p) if both else float("nan")
        sk_bal = skm.balanced_accuracy_score(y, pred)
    assert cal.roc_auc(p, y) == pytest.approx(sk_auc, abs=1e-12, nan_ok=True)
    assert cal.balanced_accuracy(p, y, threshold) == pytest.approx(sk_bal, abs=1e-12)
    assert cal.accuracy(p, y, threshold) == pytest.approx(skm.accuracy_score(y, pred))
    assert cal.brier_score(p, y) == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    assert cal.log_loss(p, y) == pytest.approx(
        skm.log_loss(y, p, labels=[0, 1]), rel=1e-12, abs=1e-12
    )

    # Both ECEs: the per-bin means are sklearn's calibration_curve, on (y, p) for the
    # positive class and on (top label right, confidence) for the top label.
    c = np.maximum(p, 1 - p)
    right = ((p >= 0.5) == (y == 1)).astype(int)
    for n_bins in (5, 10):
        rows, ece_pos = binned_reference(p, y, n_bins)
        _assert_bins_match_sklearn(rows, y, p, n_bins)
        assert cal.positive_class_ece(p, y, n_bins) == pytest.approx(ece_pos, abs=1e-12)
        rows, ece_top = binned_reference(c, right, n_bins)
        _assert_bins_match_sklearn(rows, right, c, n_bins)
        assert cal.expected_calibration_error(p, y, n_bins) == pytest.approx(ece_top, abs=1e-12)

    # The confident-error ratios: same numerator, different denominators.
    sure, wrong = c > 0.8, right == 0
    hc = 1 - skm.accuracy_score(y[sure], p[sure] >= 0.5) if sure.any() else float("nan")
    sf = (wrong & sure).sum() / wrong.sum() if wrong.any() else float("nan")
    assert cal.high_confidence_error_ratio(p, y) == pytest.approx(hc, nan_ok=True)
    assert cal.silent_failure_rate(p, y) == pytest.approx(sf, nan_ok=True)
    assert cal.confidence_minus_accuracy(p, y, threshold) == pytest.approx(
        c.mean() - skm.accuracy_score(y, pred)
    )


@settings(max_examples=80, deadline=None)
@given(
    _samples,
    st.sampled_from([0.5, 0.35, 0.7]),
    st.sampled_from([0.8, 0.6, 0.95]),
    st.sampled_from([5, 10, 1]),
)
def test_labelled_metrics_equals_the_single_functions(pairs, threshold, high, n_bins):
    p, y = _arrays(pairs)
    m = cal.labelled_metrics(p, y, threshold=threshold, high_confidence=high, n_bins=n_bins)
    want = {
        "n": p.size,
        "positives": int(y.sum()),
        "roc_auc": cal.roc_auc(p, y),
        "accuracy": cal.accuracy(p, y, threshold),
        "balanced_accuracy": cal.balanced_accuracy(p, y, threshold),
        "ece": cal.expected_calibration_error(p, y, n_bins),
        "ece_positive_class": cal.positive_class_ece(p, y, n_bins),
        "brier": cal.brier_score(p, y),
        "log_loss": cal.log_loss(p, y),
        "silent_failure_ratio": cal.silent_failure_rate(p, y, high),
        "high_confidence_error_ratio": cal.high_confidence_error_ratio(p, y, high),
        "mean_confidence": cal.mean_confidence(p),
        "confidence_minus_accuracy": cal.confidence_minus_accuracy(p, y, threshold),
    }
    assert tuple(m) == cal.METRIC_NAMES
    assert type(m["n"]) is int and type(m["positives"]) is int
    for k, v in want.items():
        assert m[k] == pytest.approx(v, abs=1e-12, nan_ok=True), k


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_large_random_arrays_with_ties_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 20_000
    p = np.round(rng.beta(0.6, 0.6, n), 3)  # rounding makes many ties, and exact 0 and 1
    y = (rng.random(n) < p).astype(int)
    assert (p == 0).any() and (p == 1).any()
    assert cal.roc_auc(p, y) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert cal.balanced_accuracy(p, y) == pytest.approx(
        skm.balanced_accuracy_score(y, p >= 0.5), abs=1e-12
    )
    assert cal.brier_score(p, y) == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    assert cal.log_loss(p, y) == pytest.approx(skm.log_loss(y, p, labels=[0, 1]), rel=1e-12)


# -- hand-computed cases --------------------------------------------------------------------


def test_roc_auc_hand_values_and_ties():
    y = np.array([0, 0, 1, 1])
    assert cal.roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), y) == 1.0
    assert cal.roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), y) == 0.0
    assert cal.roc_auc(np.full(4, 0.5), y) == 0.5  # all tied: every pair counts half
    # Pairs (pos, neg): 0.8 > 0.1, 0.8 == 0.8 (half), 0.0 < both -> (1 + 0.5) / 4.
    assert cal.roc_auc(np.array([0.1, 0.8, 0.8, 0.0]), y) == pytest.approx(0.375)
    # Order of the samples does not matter.
    perm = np.array([2, 0, 3, 1])
    p = np.array([0.1, 0.8, 0.8, 0.0])
    assert cal.roc_auc(p[perm], y[perm]) == pytest.approx(0.375)


def test_one_class_only():
    p = np.array([0.0, 0.3, 0.7, 1.0])
    for y in (np.zeros(4, int), np.ones(4, int)):
        assert math.isnan(cal.roc_auc(p, y))
        with pytest.warns(Warning):  # sklearn: "y_pred contains classes not in y_true"
            want = skm.balanced_accuracy_score(y, p >= 0.5)
        assert cal.balanced_accuracy(p, y) == want == 0.5  # the present class's recall
        assert cal.brier_score(p, y) == pytest.approx(skm.brier_score_loss(y, p))
        assert cal.log_loss(p, y) == pytest.approx(skm.log_loss(y, p, labels=[0, 1]))
        m = cal.labelled_metrics(p, y)
        assert m["positives"] == int(y.sum()) and math.isnan(m["roc_auc"])
    assert cal.balanced_accuracy(np.array([0.9, 0.8]), np.array([1, 1])) == 1.0
    assert cal.balanced_accuracy(np.array([0.9, 0.8]), np.array([0, 0])) == 0.0


def test_all_correct_with_exact_zero_and_one():
    p, y = np.array([0.0, 1.0, 0.0, 1.0]), np.array([0, 1, 0, 1])
    m = cal.labelled_metrics(p, y)
    assert m["accuracy"] == m["balanced_accuracy"] == m["roc_auc"] == 1.0
    assert m["ece"] == m["ece_positive_class"] == m["brier"] == 0.0
    assert m["log_loss"] == pytest.approx(np.finfo(np.float64).eps)  # -log(1 - eps)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p, labels=[0, 1]))
    assert math.isnan(m["silent_failure_ratio"])  # no error at all
    assert m["high_confidence_error_ratio"] == 0.0
    assert m["mean_confidence"] == 1.0 and m["confidence_minus_accuracy"] == 0.0


def test_all_wrong_with_exact_zero_and_one():
    p, y = np.array([0.0, 1.0, 0.0, 1.0]), np.array([1, 0, 1, 0])
    m = cal.labelled_metrics(p, y)
    assert m["accuracy"] == m["balanced_accuracy"] == m["roc_auc"] == 0.0
    assert m["ece"] == m["ece_positive_class"] == m["brier"] == 1.0
    cost = -np.log(np.finfo(np.float64).eps)  # 36.04: clipped, finite
    assert m["log_loss"] == pytest.approx(cost)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p, labels=[0, 1]))
    assert m["silent_failure_ratio"] == m["high_confidence_error_ratio"] == 1.0
    assert m["confidence_minus_accuracy"] == 1.0


def test_silent_failure_and_high_confidence_error_ratio_differ():
    # 2 errors, 1 of them sure; 4 sure predictions, 1 of them wrong.
    p = np.array([0.95, 0.05, 0.9, 0.1, 0.6])
    y = np.array([0, 0, 1, 0, 0])
    assert cal.silent_failure_rate(p, y) == 0.5  # 1 sure error / 2 errors
    assert cal.high_confidence_error_ratio(p, y) == 0.25  # 1 sure error / 4 sure
    # c == 0.8 exactly is not "sure" (strict >).
    assert math.isnan(cal.high_confidence_error_ratio(np.array([0.8, 0.2]), np.array([0, 1])))
    assert cal.high_confidence_error_ratio(np.array([0.8, 0.2]), np.array([0, 1]), 0.79) == 1.0


def test_positive_class_ece_hand_values_and_right_closed_bins():
    # p on the edges: 0 and 0.2 in [0, 0.2]; 0.4 in (0.2, 0.4]; 1 in (0.8, 1].
    p = np.array([0.0, 0.2, 0.4, 1.0])
    y = np.array([0, 1, 0, 1])
    # [0, .2]: sum y 1, sum p .2 -> .8; (.2, .4]: 0 vs .4 -> .4; (.8, 1]: 1 vs 1 -> 0.
    assert cal.positive_class_ece(p, y) == pytest.approx((0.8 + 0.4) / 4)
    # Perfect calibration in expectation: p = 0.5 with half positive.
    assert cal.positive_class_ece(np.array([0.5, 0.5]), np.array([0, 1])) == 0.0
    # Where it differs from the top-label ECE: p = 0.9 and 0.1 share the confidence bin
    # (0.8, 1] (top-label: |1 right - 1.8| / 2) but not a p bin (|0 - .9| + |0 - .1|) / 2.
    p, y = np.array([0.9, 0.1]), np.array([0, 0])
    assert cal.positive_class_ece(p, y) == pytest.approx(0.5)
    assert cal.expected_calibration_error(p, y) == pytest.approx(0.4)
    # One bin: |mean y - mean p|.
    p, y = np.array([0.0, 0.2, 0.4, 1.0]), np.array([0, 1, 0, 1])
    assert cal.positive_class_ece(p, y, n_bins=1) == pytest.approx(abs(0.5 - 0.4))


def test_brier_and_confidence_minus_accuracy_hand_values():
    p, y = np.array([0.0, 1.0, 0.75, 0.5]), np.array([1, 1, 0, 1])
    assert cal.brier_score(p, y) == pytest.approx((1 + 0 + 0.5625 + 0.25) / 4)
    # conf 1, 1, .75, .5 -> .8125; predictions 0 1 1 1 -> right: no yes no yes -> .5
    assert cal.confidence_minus_accuracy(p, y) == pytest.approx(0.3125)
    # Underconfident: right every time with confidence 0.6 -> negative.
    assert cal.confidence_minus_accuracy(np.array([0.6, 0.4]), np.array([1, 0])) == (
        pytest.approx(-0.4)
    )


def test_log_loss_eps_and_dtype():
    p, y = np.array([0.0, 1.0]), np.array([1, 0])
    assert cal.log_loss(p, y) == pytest.approx(-np.log(np.finfo(np.float64).eps))
    # sklearn < 1.5's bound; 1 - 1e-15 rounds in float64, so the p = 1 term is not exact.
    want = -(np.log(1e-15) + np.log1p(-(1.0 - 1e-15))) / 2
    assert cal.log_loss(p, y, eps=1e-15) == pytest.approx(want, rel=1e-12)
    # float32 scores are taken as float64 here; sklearn clips them at float32's eps.
    p32 = p.astype(np.float32)
    assert cal.log_loss(p32, y) == pytest.approx(36.04365, rel=1e-6)
    assert skm.log_loss(y, p32, labels=[0, 1]) == pytest.approx(15.94238, rel=1e-5)
    # Away from the clip the dtype does not matter beyond float32 rounding.
    q32 = np.array([0.3, 0.8], dtype=np.float32)
    assert cal.log_loss(q32, y) == pytest.approx(skm.log_loss(y, q32, labels=[0, 1]), rel=1e-6)


def test_labelled_metrics_threshold_moves_only_decision_metrics():
    p, y = np.array([0.4, 0.45, 0.9, 0.1]), np.array([1, 1, 1, 0])
    at_half = cal.labelled_metrics(p, y)
    at_03 = cal.labelled_metrics(p, y, threshold=0.3)
    assert at_half["accuracy"] == 0.5 and at_03["accuracy"] == 1.0
    assert at_03["balanced_accuracy"] == 1.0
    for k in ("ece", "silent_failure_ratio", "high_confidence_error_ratio", "roc_auc"):
        assert at_03[k] == pytest.approx(at_half[k], nan_ok=True), k


def test_empty_input_everywhere():
    e = np.zeros(0)
    for f in (
        cal.roc_auc,
        cal.balanced_accuracy,
        cal.positive_class_ece,
        cal.brier_score,
        cal.log_loss,
        cal.high_confidence_error_ratio,
        cal.confidence_minus_accuracy,
        cal.silent_failure_rate,
        cal.expected_calibration_error,
        cal.accuracy,
    ):
        assert math.isnan(f(e, e)), f.__name__
    m = cal.labelled_metrics(e, e)
    assert tuple(m) == cal.METRIC_NAMES
    assert m["n"] == 0 and m["positives"] == 0  # ints: they feed uint64 protobuf fields
    assert all(math.isnan(v) for k, v in m.items() if k not in ("n", "positives"))


@pytest.mark.parametrize(
    ("p", "y", "match"),
    [
        ([0.5, 1.2], [0, 1], r"\[0, 1\]"),
        ([0.5, -0.1], [0, 1], r"\[0, 1\]"),
        ([0.5, float("nan")], [0, 1], r"\[0, 1\]"),
        ([0.5, 0.5], [0, 2], r"\{0, 1\}"),
        ([0.5, 0.5], [0, -1], r"\{0, 1\}"),
        ([0.5, 0.5], [0.5, 1], r"\{0, 1\}"),
        ([0.5], [0, 1], "p has 1 values but y has 2"),
    ],
)
def test_invalid_input_raises(p, y, match):
    for f in (cal.roc_auc, cal.log_loss, cal.labelled_metrics):
        with pytest.raises(ValueError, match=match):
            f(np.asarray(p), np.asarray(y))


def test_bool_labels_accepted():
    p = np.array([0.9, 0.2])
    assert cal.labelled_metrics(p, np.array([True, False]))["accuracy"] == 1.0
