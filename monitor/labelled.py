"""Delayed-label calibration, online: a rolling window and a since-start summary.

River's shape: ``update(scores, labels)`` with batches, cheap reads ``rolling()`` and
``cumulative()``. Metric definitions are those of :mod:`.calibration` (paper A,
arXiv 2603.01297, section 3.3). Memory is bounded whatever the traffic: the rolling
window is a ring of ``window_size`` (score, label) pairs, and the cumulative summary
keeps running sums plus fixed-size histograms.
"""

from __future__ import annotations

import numpy as np

from .calibration import labelled_metrics
from .scoring import confidence


class LabelledWindow:
    """Rolling and cumulative labelled metrics.

    The cumulative metrics are exact except ROC-AUC, which is computed from
    ``cumulative_bins`` equal-width score bins per class (pairs within a bin count
    half): its error is at most the share of pairs that share a bin.

    >>> w = LabelledWindow(window_size=3)
    >>> w.update(np.array([0.9, 0.2, 0.7, 0.4]), np.array([1, 0, 0, 0]))
    >>> w.rolling()["n"], w.cumulative()["n"]
    (3, 4)
    """

    def __init__(
        self,
        window_size: int = 1000,
        *,
        threshold: float = 0.5,
        high_confidence: float = 0.8,
        n_bins: int = 5,
        cumulative_bins: int = 1000,
    ) -> None:
        self.window_size = window_size
        self.threshold = threshold
        self.high_confidence = high_confidence
        self.n_bins = n_bins
        self._p = np.zeros(window_size, dtype=np.float64)
        self._y = np.zeros(window_size, dtype=np.int8)
        self._head = 0
        self._count = 0
        self._rolling: dict[str, float] | None = None
        # Cumulative state: fixed size.
        self._hist = np.zeros((2, cumulative_bins), dtype=np.int64)
        self._conf_bins = np.zeros((3, n_bins))  # count, sum conf, sum correct
        self._pos_bins = np.zeros((3, n_bins))  # count, sum p, sum y
        self._sums = dict.fromkeys(
            ("n", "pos", "tp", "tn", "correct", "conf", "brier", "logloss", "wrong", "wrong_sure",
             "sure"),
            0.0,
        )

    @property
    def n_seen(self) -> int:
        return int(self._sums["n"])

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        p = np.asarray(scores, dtype=np.float64).reshape(-1)
        y = np.asarray(labels).reshape(-1).astype(np.int8)
        if p.shape != y.shape:
            raise ValueError(f"{p.size} scores but {y.size} labels")
        if p.size == 0:
            return
        self._push(p, y)
        self._accumulate(p, y)
        self._rolling = None

    def _push(self, p: np.ndarray, y: np.ndarray) -> None:
        if p.size >= self.window_size:
            p, y = p[-self.window_size :], y[-self.window_size :]
        idx = (self._head + np.arange(p.size)) % self.window_size
        self._p[idx], self._y[idx] = p, y
        self._head = (self._head + p.size) % self.window_size
        self._count = min(self._count + p.size, self.window_size)

    def _accumulate(self, p: np.ndarray, y: np.ndarray) -> None:
        s = self._sums
        pred = p >= self.threshold
        pos = y == 1
        correct = pred == pos
        c = confidence(p)
        sure = c > self.high_confidence
        eps = np.finfo(np.float64).eps
        q = np.clip(p, eps, 1.0 - eps)
        s["n"] += p.size
        s["pos"] += pos.sum()
        s["tp"] += (pred & pos).sum()
        s["tn"] += (~pred & ~pos).sum()
        s["correct"] += correct.sum()
        s["conf"] += c.sum()
        s["brier"] += ((p - y) ** 2).sum()
        s["logloss"] -= np.where(pos, np.log(q), np.log1p(-q)).sum()
        s["wrong"] += (~correct).sum()
        s["wrong_sure"] += (~correct & sure).sum()
        s["sure"] += sure.sum()
        nb = self._hist.shape[1]
        b = np.minimum((p * nb).astype(np.int64), nb - 1)
        self._hist += np.stack([np.bincount(b[y == k], minlength=nb) for k in (0, 1)])
        edges = np.linspace(0.0, 1.0, self.n_bins + 1)[1:-1]
        ci = np.digitize(c, edges, right=True)
        pi = np.digitize(p, edges, right=True)
        m = self.n_bins
        self._conf_bins += np.stack(
            [np.bincount(ci, minlength=m), np.bincount(ci, c, m), np.bincount(ci, correct, m)]
        )
        self._pos_bins += np.stack(
            [np.bincount(pi, minlength=m), np.bincount(pi, p, m), np.bincount(pi, y, m)]
        )

    def rolling(self) -> dict[str, float]:
        """:func:`~.calibration.labelled_metrics` over the last ``window_size`` labels."""
        if self._rolling is None:
            idx = (self._head - self._count + np.arange(self._count)) % self.window_size
            self._rolling = labelled_metrics(
                self._p[idx],
                self._y[idx],
                threshold=self.threshold,
                high_confidence=self.high_confidence,
                n_bins=self.n_bins,
            )
        return dict(self._rolling)

    def cumulative(self) -> dict[str, float]:
        """The same metrics over every label seen, from running sums."""
        s = self._sums
        n = s["n"]
        nan = float("nan")
        if n == 0:
            return {**labelled_metrics(np.zeros(0), np.zeros(0))}
        n1, n0 = s["pos"], n - s["pos"]
        neg, pos = self._hist
        below = np.cumsum(neg) - neg  # negatives in lower bins
        auc = float((pos * (below + 0.5 * neg)).sum() / (n1 * n0)) if n1 and n0 else nan
        rates = [r for r, d in ((s["tn"], n0), (s["tp"], n1)) if d for r in [r / d]]
        acc = s["correct"] / n
        mean_conf = s["conf"] / n
        return {
            "n": int(n),
            "positives": int(n1),
            "roc_auc": auc,
            "accuracy": float(acc),
            "balanced_accuracy": float(np.mean(rates)),
            "ece": float(np.abs(self._conf_bins[2] - self._conf_bins[1]).sum() / n),
            "ece_positive_class": float(np.abs(self._pos_bins[2] - self._pos_bins[1]).sum() / n),
            "brier": float(s["brier"] / n),
            "log_loss": float(s["logloss"] / n),
            "silent_failure_ratio": float(s["wrong_sure"] / s["wrong"]) if s["wrong"] else nan,
            "high_confidence_error_ratio": float(s["wrong_sure"] / s["sure"]) if s["sure"] else nan,
            "mean_confidence": float(mean_conf),
            "confidence_minus_accuracy": float(mean_conf - acc),
        }
