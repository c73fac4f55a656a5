"""One classifier head's score-side monitoring: confidence, labelled metrics, confirmation.

A bundle may carry several heads over one embedding (moderation categories: toxicity,
threat, insult ...). Whatever depends on the embedding alone (the drift detectors, the
window ring, the change-point streams on embedding statistics) runs once per window in
:class:`~.engine.DetectionEngine`; whatever depends on a head's scores runs once per head,
here: the window's confidence profile against the head's reference profile, the
labelled window (paper A's metrics, :mod:`~silentwatch.monitor.evaluation.labelled`) and
label confirmation (:mod:`~silentwatch.monitor.evaluation.confirmation`).

River's shape: :meth:`HeadMonitor.on_window` and :meth:`HeadMonitor.on_labels` fold data
in; :meth:`HeadMonitor.status` is a cheap read of an immutable snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from silentwatch.monitor.detection.detectors.confidence import (
    ConfidenceProfile,
    confidence_profile,
)
from silentwatch.monitor.detection.status import (
    NAN,
    ConfidenceStatus,
    ConfirmationStatus,
    LabelledStatus,
)
from silentwatch.monitor.evaluation.confirmation import (
    DEFAULT_ALPHA,
    DEFAULT_CONFIRM_EVERY,
    DEFAULT_MARGIN,
    AucDropTest,
    auc_drop_test,
)
from silentwatch.monitor.evaluation.labelled import LabelledWindow
from silentwatch.monitor.scoring import FLAG_THRESHOLD, HIGH_CONFIDENCE


@dataclass(frozen=True)
class HeadSpec:
    """What the engine needs to know about one head (from the bundle).

    ``reference_auc`` and the class counts are the head's held-out ROC-AUC and the sizes
    behind it (None: the bundle held nothing out for this head, so no confirmation).
    """

    name: str
    flag: float = FLAG_THRESHOLD
    high_confidence: float = HIGH_CONFIDENCE
    reference_profile: ConfidenceProfile | None = None
    reference_auc: float | None = None
    reference_positives: int = 0
    reference_negatives: int = 0


@dataclass(frozen=True)
class HeadStatus:
    """One head's score-side status (GetStatus ``heads``, metrics with a ``head`` label)."""

    name: str
    confidence: ConfidenceStatus
    labelled: LabelledStatus


class HeadMonitor:
    """The score-side state of one head (module docstring).

    Parameters
    ----------
    spec
        The head: name, thresholds, reference confidence profile, held-out ROC-AUC.
    label_window
        Labelled predictions in the rolling window.
    confidence_band
        A relative fall of mean confidence up to this counts as "steady".
    margin, alpha, confirm_every
        Label confirmation's settings (:func:`~.evaluation.confirmation.auc_drop_test`);
        ``alpha`` is this head's own per-check rate (the engine splits the configured
        rate over the heads, Bonferroni).

    Examples
    --------
    >>> from silentwatch.monitor.detection.detectors.confidence import ConfidenceProfile
    >>> ref = ConfidenceProfile(0.9, 0.8, 0.3)
    >>> h = HeadMonitor(HeadSpec("threat", reference_profile=ref, reference_auc=0.9,
    ...                          reference_positives=50, reference_negatives=50),
    ...                 label_window=100, confirm_every=4)
    >>> h.on_window(np.array([0.95, 0.05, 0.6]))
    >>> round(h.status().confidence.window.mean_confidence, 3)
    0.833
    >>> h.on_labels(np.array([0.9, 0.1, 0.2, 0.8]), np.array([1, 0, 1, 0]))
    >>> s = h.status().labelled
    >>> s.rolling["n"], s.confirmation.checks
    (4, 1)
    """

    def __init__(
        self,
        spec: HeadSpec,
        *,
        label_window: int = 1000,
        confidence_band: float = 0.2,
        margin: float = DEFAULT_MARGIN,
        alpha: float = DEFAULT_ALPHA,
        confirm_every: int = DEFAULT_CONFIRM_EVERY,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.confidence_band = confidence_band
        self.margin = margin
        self.alpha = alpha
        self.confirm_every = max(1, int(confirm_every))
        nan = ConfidenceProfile(NAN, NAN, NAN)
        self.reference_profile = spec.reference_profile or nan
        self.labelled = LabelledWindow(
            label_window, threshold=spec.flag, high_confidence=spec.high_confidence
        )
        self.window_profile: ConfidenceProfile | None = None
        self.labels_since_check = 0
        self.checks = 0
        self.confirmed_checks = 0
        self.last_check: AucDropTest | None = None
        self._labelled_status = self._build_labelled()

    # -- updates (the worker thread) ------------------------------------------------------
    def on_window(self, scores: np.ndarray) -> None:
        """The head's scores on the window the drift detectors just evaluated."""
        self.window_profile = confidence_profile(
            scores, flag=self.spec.flag, high_confidence=self.spec.high_confidence
        )

    def on_labels(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Labels joined for this head and the scores it gave those predictions."""
        if scores.shape[0] == 0:
            return
        self.labelled.update(scores, labels)
        self.labels_since_check += int(labels.shape[0])
        if self.spec.reference_auc is not None and self.labels_since_check >= self.confirm_every:
            self.labels_since_check = 0
            self._confirm()
        self._labelled_status = self._build_labelled()

    def _confirm(self) -> None:
        """One check on the rolling window (a checkpoint every ``confirm_every`` joined
        labels, so the per-check rate ``alpha`` means something)."""
        s = self.spec
        m = self.labelled.rolling()
        n, pos = int(m["n"]), int(m["positives"])
        assert s.reference_auc is not None  # the caller checks
        self.last_check = auc_drop_test(
            float(m["roc_auc"]),
            pos,
            n - pos,
            s.reference_auc,
            s.reference_positives,
            s.reference_negatives,
            margin=self.margin,
            alpha=self.alpha,
        )
        self.checks += 1
        self.confirmed_checks += self.last_check.confirmed

    # -- reads ---------------------------------------------------------------------------
    def confidence_status(self) -> ConfidenceStatus:
        return ConfidenceStatus(self.window_profile, self.reference_profile, self.confidence_band)

    def _build_labelled(self) -> LabelledStatus:
        s = self.spec
        return LabelledStatus(
            window_size=self.labelled.window_size,
            rolling=self.labelled.rolling(),
            cumulative=self.labelled.cumulative(),
            confirmation=ConfirmationStatus(
                enabled=s.reference_auc is not None,
                reference_auc=NAN if s.reference_auc is None else s.reference_auc,
                margin=self.margin,
                alpha=self.alpha,
                confirm_every=self.confirm_every,
                last=self.last_check,
                checks=self.checks,
                confirmed_checks=self.confirmed_checks,
            ),
        )

    def labelled_status(self) -> LabelledStatus:
        return self._labelled_status

    def status(self) -> HeadStatus:
        return HeadStatus(self.name, self.confidence_status(), self._labelled_status)

    # -- persistence ----------------------------------------------------------------------
    def labelled_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """``(arrays, header)`` of the labelled state (see :meth:`load_labelled_state`)."""
        arrays, numbers = self.labelled.state()
        header = {
            "numbers": numbers,
            "window_size": self.labelled.window_size,
            "confirmation": [self.labels_since_check, self.checks, self.confirmed_checks],
        }
        return arrays, header

    def load_labelled_state(self, arrays: dict[str, np.ndarray], header: dict) -> None:
        """Restore :meth:`labelled_state`; raises KeyError/TypeError/ValueError when it
        does not fit (the engine turns them into a SnapshotError)."""
        self.labelled.load_state(arrays, header["numbers"])
        # Snapshots written before label confirmation carry no counters: start at 0.
        since, checks, confirmed = (int(v) for v in header.get("confirmation", (0, 0, 0)))
        self.labels_since_check = since % self.confirm_every
        self.checks, self.confirmed_checks = checks, confirmed
        self._labelled_status = self._build_labelled()

    def window_profile_state(self) -> dict[str, float] | None:
        return None if self.window_profile is None else self.window_profile.as_dict()

    def load_window_profile(self, prof: dict[str, float] | None) -> None:
        self.window_profile = (
            None if prof is None else ConfidenceProfile(**{k: float(v) for k, v in prof.items()})
        )
