"""Labelled-sample metrics, defined once for the sidecar and the offline suite.

All follow paper A ("I Can't Believe It's Not Robust: Catastrophic Collapse of Safety
Classifiers under Embedding Drift", arXiv 2603.01297, section 3.3): ``p`` is P(unsafe)
in [0, 1], ``y`` is 1 for unsafe and 0 for safe, the predicted class is
``p >= threshold`` and the top-label confidence is ``c = max(p, 1 - p)``.

The top-label metrics (:func:`expected_calibration_error`, :func:`silent_failure_rate`,
:func:`high_confidence_error_ratio`) judge the *top label* ``p >= 0.5``, the label that
``c`` is the confidence of; ``threshold`` moves only the decision-based metrics
(:func:`accuracy`, :func:`balanced_accuracy`, :func:`confidence_minus_accuracy`).

Where scikit-learn has the metric the value is the same (tests check it): ROC-AUC,
accuracy, balanced accuracy, Brier score and log loss.
"""

from __future__ import annotations

import numpy as np

from silentwatch.monitor.scoring import FLAG_THRESHOLD, HIGH_CONFIDENCE, confidence

_NAN = float("nan")


def check_scores_labels(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat float64 scores in [0, 1] and int8 labels in {0, 1} of the same length."""
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    y = np.asarray(y).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"p has {p.shape[0]} values but y has {y.shape[0]}")
    # min/max compare False against NaN, so NaN scores are refused here too.
    if p.size and not (p.min() >= 0.0 and p.max() <= 1.0):
        raise ValueError("p must be probabilities in [0, 1] (no NaN)")
    if y.size and not ((y == 0) | (y == 1)).all():
        raise ValueError("y must be binary labels in {0, 1}")
    return p, y.astype(np.int8)


def bin_index(v: np.ndarray, n_bins: int, low: float = 0.0) -> np.ndarray:
    """Equal-width bin of each value in [low, 1]: ``(low + (b-1) w, low + b w]`` with
    ``w = (1 - low) / M``, the first closed at ``low`` (values below it fall in it too)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    # Right-closed bins: np.digitize with right=True on the inner edges.
    edges = np.linspace(low, 1.0, n_bins + 1)[1:-1]
    return np.digitize(v, edges, right=True)


def _binned_gap(v: np.ndarray, hits: np.ndarray, n_bins: int, low: float = 0.0) -> float:
    """``sum_b |sum(hits in B_b) - sum(v in B_b)| / n``, which is ``sum_b |B_b|/n |gap_b|``."""
    idx = bin_index(v, n_bins, low)
    sum_v = np.bincount(idx, weights=v, minlength=n_bins)
    sum_hits = np.bincount(idx, weights=hits.astype(np.float64), minlength=n_bins)
    return float(np.abs(sum_hits - sum_v).sum() / v.size)


def auc_from_counts(neg: np.ndarray, pos: np.ndarray) -> float:
    """Mann-Whitney AUC from per-group class counts, groups in increasing score order.

    ``U = sum_g pos_g * (neg below g + neg_g / 2)``, ``AUC = U / (n1 n0)``: pairs in the
    same group count half. With one group per distinct score this is the exact AUC (the
    average-rank formula); with histogram bins it is the binned approximation.
    """
    neg = neg.astype(np.float64)  # float: n1 * n0 overflows int64 past ~3e9 samples
    pos = pos.astype(np.float64)
    n0, n1 = neg.sum(), pos.sum()
    if n0 == 0 or n1 == 0:
        return _NAN
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (n1 * n0))


def log_loss_terms(p: np.ndarray, y: np.ndarray, eps: float | None) -> np.ndarray:
    """Per-sample cross-entropy with ``p`` clipped to ``[eps, 1 - eps]``."""
    if eps is None:
        eps = float(np.finfo(np.float64).eps)
    q = np.clip(p, eps, 1.0 - eps)
    # log1p(-q) keeps precision for small q; for q >= 0.5, 1 - q is exact anyway.
    return -np.where(y == 1, np.log(q), np.log1p(-q))


def accuracy(p: np.ndarray, y: np.ndarray, threshold: float = FLAG_THRESHOLD) -> float:
    """Share of correct predictions, ``mean[(p >= t) == y]``; NaN when empty.

    >>> accuracy(np.array([0.9, 0.2, 0.6]), np.array([1, 0, 0]))
    0.6666666666666666
    """
    p, y = check_scores_labels(p, y)
    return float(np.mean((p >= threshold) == (y == 1))) if p.size else _NAN


def mean_confidence(p: np.ndarray) -> float:
    """Mean top-label confidence ``mean[max(p, 1 - p)]`` (paper A, Eq. for \\bar{c}).

    >>> round(mean_confidence(np.array([0.9, 0.2])), 6)
    0.85
    """
    p = np.asarray(p, dtype=np.float64)
    return float(confidence(p).mean()) if p.size else _NAN


def expected_calibration_error(
    p: np.ndarray, y: np.ndarray, n_bins: int = 5, *, low: float = 0.0
) -> float:
    """Top-label ECE with equal-width confidence bins (paper A: 5 bins, Eqs. 19-21).

    ``ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|`` where ``B_b`` holds the samples
    whose confidence ``max(p, 1-p)`` falls in ``((b-1)/M, b/M]`` (the first bin is
    closed at 0), ``acc`` is the share whose top label is right and ``conf`` is their
    mean confidence (Guo et al. 2017, as used by paper A section 3.3). See
    :func:`positive_class_ece` for the calibration of P(unsafe) itself.

    ``low = 0.5`` spreads the bins over the range a top-label confidence can take,
    ``[0.5, 1]`` (0.5-0.6, ..., 0.9-1.0 for 5 bins): with bins over ``[0, 1]`` the first
    two are always empty and the third mixes 0.5-0.6. Paper A partitions "the confidence
    range" without saying which; both are reported by the stress suite.

    >>> round(expected_calibration_error(np.array([0.9, 0.9, 0.1, 0.1]),
    ...                                  np.array([1, 0, 0, 0])), 3)
    0.15
    >>> p, y = np.array([0.65, 0.75]), np.array([1, 0])  # one right, one wrong
    >>> [round(expected_calibration_error(p, y, low=lo), 3) for lo in (0.0, 0.5)]
    [0.2, 0.55]
    """
    p, y = check_scores_labels(p, y)
    if p.size == 0:
        return _NAN
    return _binned_gap(confidence(p), (p >= 0.5) == (y == 1), n_bins, low)


def silent_failure_rate(
    p: np.ndarray, y: np.ndarray, high_confidence: float = HIGH_CONFIDENCE
) -> float:
    """Share of errors made with high confidence: ``#{wrong, c > 0.8} / #{wrong}``.

    Paper A's silent-failure rate (section 3.3): "of the mistakes, how many were made
    sure?". The denominator is all *errors*; :func:`high_confidence_error_ratio` has
    the same numerator over all *confident predictions* instead. An error is a wrong
    top label ``p >= 0.5``. NaN when there is no error.

    >>> silent_failure_rate(np.array([0.95, 0.6, 0.1]), np.array([0, 0, 0]))
    0.5
    """
    p, y = check_scores_labels(p, y)
    wrong = (p >= 0.5) != (y == 1)
    n_wrong = int(wrong.sum())
    if n_wrong == 0:
        return _NAN
    return float((wrong & (confidence(p) > high_confidence)).sum() / n_wrong)


def roc_auc(p: np.ndarray, y: np.ndarray) -> float:
    """Exact ROC-AUC by the Mann-Whitney rank formula, ties at half weight.

    ``AUC = (R1 - n1 (n1 + 1) / 2) / (n1 n0)`` where ``R1`` is the sum of the positives'
    ranks, tied scores sharing their average rank. It is computed in the equivalent
    count form ``U = #{p_pos > p_neg} + #{p_pos == p_neg} / 2`` over runs of equal scores,
    which stays exact in float64 where rank sums would not (n past ~1e8). NaN when only
    one class is present, as ``sklearn.metrics.roc_auc_score`` (which also warns);
    otherwise equal to it.

    >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    >>> roc_auc(np.array([0.3, 0.3]), np.array([0, 1]))  # a tie counts half
    0.5
    """
    p, y = check_scores_labels(p, y)
    return _roc_auc(p, y)


def _roc_auc(p: np.ndarray, y: np.ndarray) -> float:
    # One group per distinct score: class counts of each run of tied scores, in order.
    scores, run = np.unique(p, return_inverse=True)
    pos = np.bincount(run, weights=y, minlength=scores.size)
    neg = np.bincount(run, minlength=scores.size) - pos
    return auc_from_counts(neg, pos)


def balanced_from_counts(tp: int, tn: int, n1: int, n0: int) -> float:
    """``(TP / n1 + TN / n0) / 2``; with one class present, that class's recall alone."""
    rates = [hits / total for hits, total in ((tn, n0), (tp, n1)) if total]
    return sum(rates) / len(rates) if rates else _NAN


def _balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    is_pos = y == 1
    n1 = int(is_pos.sum())
    tp = int((pred & is_pos).sum())
    tn = int((~pred & ~is_pos).sum())
    return balanced_from_counts(tp, tn, n1, y.size - n1)


def balanced_accuracy(p: np.ndarray, y: np.ndarray, threshold: float = FLAG_THRESHOLD) -> float:
    """Mean of the true-positive and true-negative rates, ``(TPR + TNR) / 2``.

    ``TPR = TP / #{y = 1}`` and ``TNR = TN / #{y = 0}`` for the decision ``p >= t``.
    With one class present it is that class's recall alone, as
    ``sklearn.metrics.balanced_accuracy_score`` (which warns and drops the undefined
    rate); NaN when empty (scikit-learn raises).

    >>> balanced_accuracy(np.array([0.9, 0.2, 0.6, 0.1]), np.array([1, 1, 0, 0]))
    0.5
    >>> balanced_accuracy(np.array([0.9, 0.2]), np.array([1, 1]))  # TPR alone
    0.5
    """
    p, y = check_scores_labels(p, y)
    return _balanced_accuracy(p >= threshold, y)


def positive_class_ece(p: np.ndarray, y: np.ndarray, n_bins: int = 5) -> float:
    """Positive-class ECE: calibration of P(unsafe) itself, not of the top label.

    ``ECE+ = sum_b |B_b| / n * |mean(y in B_b) - mean(p in B_b)|`` with equal-width bins
    on ``p`` over [0, 1], right-closed (the first closed at 0), the binning of
    ``sklearn.calibration.calibration_curve(y, p, n_bins=M)``. It differs from
    :func:`expected_calibration_error` (paper A's top-label variant), which bins
    ``max(p, 1-p)`` and compares it with top-label accuracy. NaN when empty.

    >>> positive_class_ece(np.array([0.9, 0.9, 0.1, 0.1]), np.array([1, 0, 0, 0]))
    0.25
    """
    p, y = check_scores_labels(p, y)
    if p.size == 0:
        return _NAN
    return _binned_gap(p, y, n_bins)


def brier_score(p: np.ndarray, y: np.ndarray) -> float:
    """``mean (p - y)^2``; equals ``sklearn.metrics.brier_score_loss``. NaN when empty.

    >>> brier_score(np.array([1.0, 0.5]), np.array([1, 0]))
    0.125
    """
    p, y = check_scores_labels(p, y)
    return float(np.mean((p - y) ** 2)) if p.size else _NAN


def log_loss(p: np.ndarray, y: np.ndarray, eps: float | None = None) -> float:
    """``-mean[y log q + (1 - y) log(1 - q)]`` with ``q = clip(p, eps, 1 - eps)``.

    Parameters
    ----------
    eps
        Clipping bound; ``None`` (default) is float64's machine epsilon (2.2e-16), the
        bound ``sklearn.metrics.log_loss`` has used since 1.5 (``np.finfo(dtype).eps``;
        before, 1e-15). So p = 0 or 1 on the wrong label costs ``-log(eps) = 36.04``, and
        the result equals ``sklearn.metrics.log_loss(y, p, labels=[0, 1])`` for float64
        ``p``. Scores are always taken as float64: scikit-learn keeps float32 input in
        float32 and clips at float32's eps (1.2e-7, cost 15.9), so for float32 scores
        within 1.2e-7 of 0 or 1 the two differ.

    Returns NaN when empty.

    >>> round(log_loss(np.array([0.9, 0.2]), np.array([1, 0])), 6)
    0.164252
    >>> round(log_loss(np.array([0.0]), np.array([1])), 2)
    36.04
    """
    p, y = check_scores_labels(p, y)
    return float(np.mean(log_loss_terms(p, y, eps))) if p.size else _NAN


def high_confidence_error_ratio(
    p: np.ndarray, y: np.ndarray, high_confidence: float = HIGH_CONFIDENCE
) -> float:
    """Error rate among confident predictions: ``#{wrong, c > 0.8} / #{c > 0.8}``.

    Not the silent-failure rate: :func:`silent_failure_rate` divides the same numerator
    by all *errors* ("of the mistakes, how many were sure?"); this one divides by all
    *confident predictions* ("when it is sure, how often is it wrong?"). An error is a
    wrong top label ``p >= 0.5``. NaN without confident predictions.

    >>> high_confidence_error_ratio(np.array([0.95, 0.9, 0.6]), np.array([0, 1, 0]))
    0.5
    """
    p, y = check_scores_labels(p, y)
    sure = confidence(p) > high_confidence
    n_sure = int(sure.sum())
    if n_sure == 0:
        return _NAN
    wrong = (p >= 0.5) != (y == 1)
    return float((wrong & sure).sum() / n_sure)


def confident_error_share(
    p: np.ndarray, y: np.ndarray, high_confidence: float = HIGH_CONFIDENCE
) -> float:
    """Share of *all* samples that are wrong and confident: ``#{wrong, c > 0.8} / n``.

    Paper A's "of test samples receive high confidence yet incorrect predictions"; the
    same numerator as :func:`silent_failure_rate` (over errors) and
    :func:`high_confidence_error_ratio` (over confident predictions). NaN when empty.

    >>> confident_error_share(np.array([0.95, 0.9, 0.6, 0.1]), np.array([0, 1, 0, 0]))
    0.25
    """
    p, y = check_scores_labels(p, y)
    if p.size == 0:
        return _NAN
    wrong = (p >= 0.5) != (y == 1)
    return float((wrong & (confidence(p) > high_confidence)).sum() / p.size)


def accuracy_above_confidence(p: np.ndarray, y: np.ndarray, at_least: float = 0.9) -> float:
    """Top-label accuracy among predictions with confidence ``c >= at_least``.

    Paper A: "when the classifier reports 0.9 confidence, the empirical accuracy falls to
    ... which is worse than reporting uniform": below 0.5 a coin would do better on those
    rows. NaN when no prediction is that confident.

    >>> accuracy_above_confidence(np.array([0.95, 0.92, 0.6]), np.array([0, 1, 0]))
    0.5
    """
    p, y = check_scores_labels(p, y)
    sure = confidence(p) >= at_least
    if not sure.any():
        return _NAN
    return float(((p[sure] >= 0.5) == (y[sure] == 1)).mean())


def confidence_minus_accuracy(
    p: np.ndarray, y: np.ndarray, threshold: float = FLAG_THRESHOLD
) -> float:
    """``mean max(p, 1-p) - accuracy``: positive when the classifier is overconfident.

    NaN when empty.

    >>> round(confidence_minus_accuracy(np.array([0.9, 0.9]), np.array([1, 0])), 6)
    0.4
    """
    p, y = check_scores_labels(p, y)
    return mean_confidence(p) - accuracy(p, y, threshold) if p.size else _NAN


METRIC_NAMES = (
    "n",
    "positives",
    "roc_auc",
    "accuracy",
    "balanced_accuracy",
    "ece",
    "ece_positive_class",
    "brier",
    "log_loss",
    "silent_failure_ratio",
    "high_confidence_error_ratio",
    "mean_confidence",
    "confidence_minus_accuracy",
)


def empty_metrics() -> dict[str, float]:
    """:func:`labelled_metrics` of no samples: counts 0, every other metric NaN.

    >>> empty_metrics()["n"], empty_metrics()["brier"]
    (0, nan)
    """
    # Counts stay integers: they feed uint64 protobuf fields.
    return {name: 0 if name in ("n", "positives") else _NAN for name in METRIC_NAMES}


def labelled_metrics(
    p: np.ndarray,
    y: np.ndarray,
    *,
    threshold: float = FLAG_THRESHOLD,
    high_confidence: float = HIGH_CONFIDENCE,
    n_bins: int = 5,
) -> dict[str, float]:
    """Every labelled metric above from one validation pass, keyed as :data:`METRIC_NAMES`.

    Parameters
    ----------
    p, y
        P(unsafe) in [0, 1] and labels in {0, 1}.
    threshold
        Decision threshold for ``accuracy``, ``balanced_accuracy`` and
        ``confidence_minus_accuracy``. ``ece``, ``silent_failure_ratio`` and
        ``high_confidence_error_ratio`` judge the top label ``p >= 0.5`` whatever it is.
    high_confidence
        Confidence ``c > high_confidence`` counts as sure (paper A: 0.8).
    n_bins
        Equal-width bins of both ECEs (paper A: 5).

    Returns
    -------
    dict
        ``n`` and ``positives`` as ints, the rest as floats, NaN where undefined (every
        metric when empty; ROC-AUC with one class; the ratios without their denominator).

    >>> m = labelled_metrics(np.array([0.9, 0.2]), np.array([1, 0]))
    >>> m["n"], m["accuracy"], m["roc_auc"]
    (2, 1.0, 1.0)
    """
    p, y = check_scores_labels(p, y)
    n = p.size
    if n == 0:
        return empty_metrics()
    # Shared intermediates, computed once for all the metrics.
    c = confidence(p)
    pred = p >= threshold
    top_right = (p >= 0.5) == (y == 1)
    sure = c > high_confidence
    wrong_sure = int((~top_right & sure).sum())
    n_wrong, n_sure = n - int(top_right.sum()), int(sure.sum())
    acc = float(np.mean(pred == (y == 1)))
    mean_conf = float(c.mean())
    return {
        "n": int(n),
        "positives": int(y.sum()),
        "roc_auc": _roc_auc(p, y),
        "accuracy": acc,
        "balanced_accuracy": _balanced_accuracy(pred, y),
        "ece": _binned_gap(c, top_right, n_bins),
        "ece_positive_class": _binned_gap(p, y, n_bins),
        "brier": float(np.mean((p - y) ** 2)),
        "log_loss": float(np.mean(log_loss_terms(p, y, None))),
        "silent_failure_ratio": wrong_sure / n_wrong if n_wrong else _NAN,
        "high_confidence_error_ratio": wrong_sure / n_sure if n_sure else _NAN,
        "mean_confidence": mean_conf,
        "confidence_minus_accuracy": mean_conf - acc,
    }
