"""Delayed-label calibration, online: a rolling window and a since-start summary.

River's shape: ``update(scores, labels)`` with batches, cheap reads ``rolling()`` and
``cumulative()``. Metric definitions are those of :mod:`.classification` (paper A,
arXiv 2603.01297, section 3.3). Memory is bounded whatever the traffic: the rolling
window is a ring of ``window_size`` (score, label) pairs, and the cumulative summary
keeps running sums plus fixed-size histograms.
"""

from __future__ import annotations

import numpy as np

from silentwatch.monitor.evaluation.classification import (
    auc_from_counts,
    balanced_from_counts,
    bin_index,
    check_scores_labels,
    empty_metrics,
    labelled_metrics,
    log_loss_terms,
)
from silentwatch.monitor.scoring import FLAG_THRESHOLD, HIGH_CONFIDENCE, confidence

_NAN = float("nan")


class LabelledWindow:
    """Rolling and cumulative labelled metrics over (P(unsafe), label) pairs.

    Parameters
    ----------
    window_size
        Labelled samples in the rolling window (a ring buffer of that many pairs).
    threshold, high_confidence, n_bins
        As in :func:`~.classification.labelled_metrics`.
    cumulative_bins
        Equal-width score bins per class behind the cumulative ROC-AUC.

    Notes
    -----
    ``rolling()`` is exactly ``labelled_metrics`` over the last ``window_size`` samples.
    ``cumulative()`` keeps O(1) state in the number of samples: exact running counts and
    sums (n, positives, correct, TP, TN, confident, confident errors, errors, confidence,
    Brier, log loss) and per-bin sums of both ECEs, so all of its metrics are exact up
    to float rounding except ROC-AUC. That one comes from a ``cumulative_bins``-bin
    histogram of scores per class, ``[k/B, (k+1)/B)`` (the last closed at 1): pairs in
    different bins are ordered exactly, pairs in the same bin count half, so the error is
    at most half the share of (positive, negative) pairs that share a bin
    (:attr:`auc_error_bound`); scores closer than the resolution ``1/cumulative_bins``
    are treated as tied. Not thread-safe: one writer, and reads from the same thread
    (the engine calls it from its pipeline thread).

    >>> w = LabelledWindow(window_size=3)
    >>> w.update(np.array([0.9, 0.2, 0.7, 0.4]), np.array([1, 0, 0, 0]))
    >>> w.rolling()["n"], w.cumulative()["n"], w.n_seen
    (3, 4, 4)
    """

    def __init__(
        self,
        window_size: int = 1000,
        *,
        threshold: float = FLAG_THRESHOLD,
        high_confidence: float = HIGH_CONFIDENCE,
        n_bins: int = 5,
        cumulative_bins: int = 1000,
    ) -> None:
        if window_size < 1 or n_bins < 1 or cumulative_bins < 1:
            raise ValueError("window_size, n_bins and cumulative_bins must be at least 1")
        self.window_size = int(window_size)
        self.threshold = threshold
        self.high_confidence = high_confidence
        self.n_bins = int(n_bins)
        self.cumulative_bins = int(cumulative_bins)
        # Rolling state: the ring, filled from index 0 and then overwritten oldest first.
        self._p = np.zeros(self.window_size, dtype=np.float64)
        self._y = np.zeros(self.window_size, dtype=np.int8)
        self._head = 0  # next slot to write
        self._count = 0  # filled slots
        # Cumulative state, fixed size: row 0 negatives, row 1 positives.
        self._hist = np.zeros((2, self.cumulative_bins), dtype=np.int64)
        # Per ECE bin: sum of the binned value (row 0) and of its hits (row 1).
        self._conf_bins = np.zeros((2, self.n_bins))  # top label: c vs top label right
        self._pos_bins = np.zeros((2, self.n_bins))  # positive class: p vs y
        # Python ints: exact at any count.
        self._n = self._pos = self._tp = self._tn = self._correct = 0
        self._wrong = self._sure = self._wrong_sure = 0
        self._sum_conf = self._sum_brier = self._sum_log_loss = 0.0
        self._rolling: dict[str, float] | None = None
        self._cumulative: dict[str, float] | None = None

    @property
    def n_seen(self) -> int:
        """Labelled samples seen since start."""
        return self._n

    @property
    def auc_error_bound(self) -> float:
        """Bound on ``|cumulative ROC-AUC - exact ROC-AUC|``: half the same-bin pair share.

        ``0.5 * sum_k pos_k neg_k / (n1 n0)``; NaN with one class.
        """
        neg, pos = self._hist.astype(np.float64)
        n0, n1 = neg.sum(), pos.sum()
        return float(0.5 * (pos * neg).sum() / (n1 * n0)) if n0 and n1 else _NAN

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Add a batch of scores P(unsafe) in [0, 1] and their labels in {0, 1}."""
        p, y = check_scores_labels(scores, labels)
        if p.size == 0:
            return
        self._push(p, y)
        self._accumulate(p, y)
        self._rolling = self._cumulative = None

    # Running state, for snapshots: arrays and exact Python numbers.
    _INTS = (
        "_head",
        "_count",
        "_n",
        "_pos",
        "_tp",
        "_tn",
        "_correct",
        "_wrong",
        "_sure",
        "_wrong_sure",
    )
    _FLOATS = ("_sum_conf", "_sum_brier", "_sum_log_loss")
    _ARRAYS = ("_p", "_y", "_hist", "_conf_bins", "_pos_bins")

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """``(arrays, numbers)`` that restore this window with :meth:`load_state`."""
        arrays = {name.lstrip("_"): getattr(self, name) for name in self._ARRAYS}
        numbers = {name.lstrip("_"): getattr(self, name) for name in self._INTS + self._FLOATS}
        return arrays, numbers

    def load_state(self, arrays: dict[str, np.ndarray], numbers: dict[str, float]) -> None:
        """Restore from :meth:`state`; raises ValueError when sizes or counts disagree."""
        for name in self._ARRAYS:
            a, mine = arrays[name.lstrip("_")], getattr(self, name)
            if a.shape != mine.shape:
                raise ValueError(f"labelled snapshot {name} has shape {a.shape}, not {mine.shape}")
        ints = {k: int(numbers[k.lstrip("_")]) for k in self._INTS}
        if not (0 <= ints["_head"] < self.window_size and 0 <= ints["_count"] <= self.window_size):
            raise ValueError("labelled snapshot has an inconsistent ring")
        if int(arrays["hist"].sum()) != ints["_n"]:
            raise ValueError("labelled snapshot's histogram does not add up to its count")
        for name in self._ARRAYS:
            getattr(self, name)[:] = arrays[name.lstrip("_")]
        for k, v in ints.items():
            setattr(self, k, v)
        for k in self._FLOATS:
            setattr(self, k, float(numbers[k.lstrip("_")]))
        self._rolling = self._cumulative = None

    def _push(self, p: np.ndarray, y: np.ndarray) -> None:
        w = self.window_size
        if p.size > w:  # only the newest window_size survive anyway
            p, y = p[-w:], y[-w:]
        k, h = p.size, self._head
        first = min(k, w - h)  # up to the end of the ring, the rest wraps to the front
        self._p[h : h + first], self._y[h : h + first] = p[:first], y[:first]
        self._p[: k - first], self._y[: k - first] = p[first:], y[first:]
        self._head = (h + k) % w
        self._count = min(self._count + k, w)

    def _accumulate(self, p: np.ndarray, y: np.ndarray) -> None:
        pred = p >= self.threshold
        is_pos = y == 1
        top_right = (p >= 0.5) == is_pos  # top-label metrics judge p >= 0.5
        c = confidence(p)
        sure = c > self.high_confidence
        self._n += p.size
        self._pos += int(is_pos.sum())
        self._tp += int((pred & is_pos).sum())
        self._tn += int((~pred & ~is_pos).sum())
        self._correct += int((pred == is_pos).sum())
        self._wrong += int((~top_right).sum())
        self._sure += int(sure.sum())
        self._wrong_sure += int((~top_right & sure).sum())
        self._sum_conf += float(c.sum())
        self._sum_brier += float(((p - y) ** 2).sum())
        self._sum_log_loss += float(log_loss_terms(p, y, None).sum())
        # One bincount for both classes: positives offset by nb.
        nb = self.cumulative_bins
        b = np.minimum((p * nb).astype(np.int64), nb - 1)  # monotone in p: order kept
        self._hist += np.bincount(b + nb * y.astype(np.int64), minlength=2 * nb).reshape(2, nb)
        self._conf_bins += self._bin_sums(c, top_right)
        self._pos_bins += self._bin_sums(p, y)

    def _bin_sums(self, v: np.ndarray, hits: np.ndarray) -> np.ndarray:
        idx = bin_index(v, self.n_bins)
        m = self.n_bins
        return np.stack(
            [
                np.bincount(idx, weights=v, minlength=m),
                np.bincount(idx, weights=hits.astype(np.float64), minlength=m),
            ]
        )

    def rolling(self) -> dict[str, float]:
        """:func:`~.classification.labelled_metrics` over the last ``window_size`` labels.

        Cached until the next :meth:`update`; returns a copy.
        """
        if self._rolling is None:
            # The metrics ignore order, and the filled slots are always [0, count).
            self._rolling = labelled_metrics(
                self._p[: self._count],
                self._y[: self._count],
                threshold=self.threshold,
                high_confidence=self.high_confidence,
                n_bins=self.n_bins,
            )
        return dict(self._rolling)

    def cumulative(self) -> dict[str, float]:
        """The same metrics over every label seen, from the running state.

        Exact (to float rounding) except ``roc_auc``: see the class notes. Cached until
        the next :meth:`update`; returns a copy.
        """
        if self._cumulative is None:
            self._cumulative = self._compute_cumulative()
        return dict(self._cumulative)

    def _compute_cumulative(self) -> dict[str, float]:
        n = self._n
        if n == 0:
            return empty_metrics()
        n1, n0 = self._pos, n - self._pos
        acc = self._correct / n
        mean_conf = self._sum_conf / n
        cb, pb = self._conf_bins, self._pos_bins
        return {
            "n": n,
            "positives": n1,
            "roc_auc": auc_from_counts(self._hist[0], self._hist[1]),
            "accuracy": acc,
            "balanced_accuracy": balanced_from_counts(self._tp, self._tn, n1, n0),
            "ece": float(np.abs(cb[1] - cb[0]).sum() / n),
            "ece_positive_class": float(np.abs(pb[1] - pb[0]).sum() / n),
            "brier": self._sum_brier / n,
            "log_loss": self._sum_log_loss / n,
            "silent_failure_ratio": self._wrong_sure / self._wrong if self._wrong else _NAN,
            "high_confidence_error_ratio": self._wrong_sure / self._sure if self._sure else _NAN,
            "mean_confidence": mean_conf,
            "confidence_minus_accuracy": mean_conf - acc,
        }
