"""What the detection engine reports: immutable snapshots, built once per change.

The engine (on the worker thread) builds an :class:`EngineStatus` after each window
evaluation and after each label batch, and swaps it in with one reference assignment;
``GetStatus`` and Prometheus scrapes read it without a lock. The two exporters
(:mod:`silentwatch.monitor.serving.status_proto` and
:mod:`silentwatch.monitor.telemetry.prometheus`) map these fields, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from silentwatch.monitor.detection.detectors.confidence import ConfidenceProfile
from silentwatch.monitor.detection.windows import WindowSpec
from silentwatch.monitor.evaluation.confirmation import AucDropTest

NAN = float("nan")


@dataclass(frozen=True)
class Reading:
    """One detector's latest window."""

    statistic: float
    threshold: float
    alarm: bool
    window_rows: int
    at: float


@dataclass(frozen=True)
class DetectorStatus:
    """One detector: its latest reading (None before its first window) and its counts."""

    name: str
    reading: Reading | None
    alarms_total: int
    evaluations: int
    recent_alarms: int  # of the last ``recent_evaluations`` evaluations (k-of-n alerts)
    recent_evaluations: int


@dataclass(frozen=True)
class ConfidenceStatus:
    """The latest window's confidence profile against the reference's."""

    window: ConfidenceProfile | None  # None before the first window
    reference: ConfidenceProfile
    band: float  # a relative fall up to this counts as "steady"

    @property
    def mean_confidence_change(self) -> float:
        if self.window is None:
            return NAN
        return self.window.mean_confidence - self.reference.mean_confidence

    @property
    def mean_confidence_relative_change(self) -> float:
        """``(mean conf(window) - mean conf(reference)) / mean conf(reference)``."""
        return self.mean_confidence_change / self.reference.mean_confidence


@dataclass(frozen=True)
class ChangePointStatus:
    """One river change detector on one per-sample stream."""

    kind: str
    stream: str
    change_points: int
    last_change_at: int | None  # sample index in the stream
    samples: int
    null_change_points_per_10k: float  # measured on clean held-out data at calibration


@dataclass(frozen=True)
class ConfirmationStatus:
    """Label confirmation: the rolling ROC-AUC tested against the bundle's held-out one."""

    enabled: bool  # False: the bundle records no held-out ROC-AUC
    reference_auc: float
    margin: float
    alpha: float
    confirm_every: int  # joined labels between checks
    last: AucDropTest | None  # None before the first check
    checks: int
    confirmed_checks: int

    @property
    def confirmed(self) -> bool:
        return self.last is not None and self.last.confirmed


@dataclass(frozen=True)
class LabelledStatus:
    """Classification metrics on the labelled predictions (rolling and since start)."""

    window_size: int
    rolling: dict[str, float]
    cumulative: dict[str, float]
    confirmation: ConfirmationStatus


@dataclass(frozen=True)
class EngineStatus:
    """Everything the engine reports (``GetStatus.detection`` and the drift metrics)."""

    calibration_source: str
    false_alarm_rate: float
    window: WindowSpec
    windows_evaluated: int
    windows_skipped: int
    rows_seen: int
    detectors: tuple[DetectorStatus, ...]
    centroid_angle_degrees: float
    confidence: ConfidenceStatus
    change_points: tuple[ChangePointStatus, ...]
    change_thinned_rows: int
    input_drift: bool  # the drift family alarms on the latest window: traffic changed
    input_drift_windows: int
    # Family-wise per-window rate the thresholds hold (NaN: calibrated per detector).
    input_drift_false_alarm_rate: float
    recent_windows: int
    recent_input_drift_windows: int
    labelled: LabelledStatus  # the default head's (heads[0].labelled)
    # Every head's score-side status, the default first (monitor/detection/heads.py).
    heads: tuple = ()

    def detector(self, name: str) -> DetectorStatus:
        """The status of detector ``name`` (KeyError when it is not run)."""
        for d in self.detectors:
            if d.name == name:
                return d
        raise KeyError(name)
