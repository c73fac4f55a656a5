"""The sidecar's status as Prometheus metric families: one table, one row per family.

Each :class:`Family` names a metric (prefix ``silentwatch_``, Prometheus naming rules,
units in names), its type, its help text, its label names and how to read its samples
from a :class:`~silentwatch.monitor.serving.status.SidecarStatus`. ``read`` returns the
samples as ``(label values, value)`` pairs, or ``None`` when the family does not apply
(detection off, no canaries). The metric contract is documented in docs/sidecar.md and
docs/detection.md; tests/test_metrics_unit.py and the alert-rule tests hold it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from silentwatch.monitor.detection.heads import HeadStatus
from silentwatch.monitor.detection.paired_canaries import PairedCanaryStatus
from silentwatch.monitor.detection.status import NAN, ConfidenceStatus, EngineStatus
from silentwatch.monitor.detection.verdict import SOURCES as VERDICT_SOURCES
from silentwatch.monitor.evaluation.paired import PairedCanaryReading
from silentwatch.monitor.serving.status import HeadView, SidecarStatus
from silentwatch.monitor.telemetry.prometheus import PREFIX, SOURCES

Samples = list[tuple[tuple[str, ...], float]]


@dataclass(frozen=True)
class Family:
    """One metric family: where its samples come from in the status."""

    name: str  # without the prefix
    kind: Literal["gauge", "counter"]
    doc: str
    labels: tuple[str, ...]
    read: Callable[[SidecarStatus], Samples | None]

    def build(self, status: SidecarStatus) -> Metric | None:
        samples = self.read(status)
        if samples is None:
            return None
        cls = GaugeMetricFamily if self.kind == "gauge" else CounterMetricFamily
        fam = cls(f"{PREFIX}_{self.name}", self.doc, labels=list(self.labels))
        for values, value in samples:
            fam.add_metric(list(values), float(value))
        return fam


def _one(fn: Callable[[SidecarStatus], float]) -> Callable[[SidecarStatus], Samples]:
    return lambda s: [((), fn(s))]


def _each(
    fn: Callable[[SidecarStatus], Iterable[tuple[str | tuple[str, ...], float]]],
) -> Callable[[SidecarStatus], Samples]:
    """Samples keyed by one label value (a string) or several (a tuple)."""
    return lambda s: [((k,) if isinstance(k, str) else k, v) for k, v in fn(s)]


def _det(
    fn: Callable[[EngineStatus], Iterable[tuple[str | tuple[str, ...], float]] | float],
) -> Callable[[SidecarStatus], Samples | None]:
    """A detection family: absent while detection is off."""

    def read(s: SidecarStatus) -> Samples | None:
        if s.detection is None:
            return None
        out = fn(s.detection)
        if isinstance(out, int | float):
            return [((), out)]
        return [((k,) if isinstance(k, str) else k, v) for k, v in out]

    return read


def gauge(name: str, doc: str, read: Callable, labels: tuple[str, ...] = ()) -> Family:
    return Family(name, "gauge", doc, labels, read)


def counter(name: str, doc: str, read: Callable, labels: tuple[str, ...] = ()) -> Family:
    return Family(name, "counter", doc, labels, read)


# manifest training.holdout_metrics key -> silentwatch_bundle_holdout_<name>
HOLDOUT_GAUGES = {
    "roc_auc": "roc_auc",
    "accuracy": "accuracy",
    "mean_confidence": "mean_confidence",
    "ece_5bin": "ece",
}

# Labelled-sample metrics (paper A's definitions, silentwatch.monitor.evaluation):
# (key in the metrics dict, name after silentwatch_labelled_, help).
LABELLED_METRICS = (
    ("n", "samples", "Labelled predictions in the window."),
    ("roc_auc", "roc_auc", "ROC-AUC on labelled predictions."),
    ("accuracy", "accuracy", "Accuracy on labelled predictions."),
    ("balanced_accuracy", "balanced_accuracy", "Balanced accuracy (mean of TPR and TNR)."),
    ("ece", "ece", "Top-label expected calibration error, 5 bins (paper A)."),
    (
        "ece_positive_class",
        "ece_positive_class",
        "Expected calibration error of P(unsafe) against the unsafe indicator, 5 bins.",
    ),
    ("brier", "brier_score", "Brier score, mean (p - y)^2."),
    ("log_loss", "log_loss", "Log loss (cross-entropy)."),
    (
        "silent_failure_ratio",
        "silent_failure_ratio",
        "Errors with confidence > 0.8 / all errors (paper A).",
    ),
    (
        "high_confidence_error_ratio",
        "high_confidence_error_ratio",
        "Errors among predictions with confidence > 0.8.",
    ),
    ("mean_confidence", "mean_confidence", "Mean top-label confidence of labelled predictions."),
    (
        "confidence_minus_accuracy",
        "confidence_minus_accuracy",
        "Mean confidence minus accuracy (positive: overconfident).",
    ),
)
CANARY_GAUGES = (
    "roc_auc",
    "accuracy",
    "mean_confidence",
    "silent_failure_ratio",
    "confidence_minus_accuracy",
)
# Paired-canary head metrics: (reading attribute, name after silentwatch_paired_canary_, help).
# (live attribute of PairedCanaryReading; its _ci is the interval; reference attribute).
PAIRED_GAUGES = (
    ("live_auc", "reference_auc", "roc_auc", "ROC-AUC (DeLong CI)"),
    ("live_accuracy", "reference_accuracy", "accuracy", "accuracy (Wilson CI)"),
    ("live_ece", "reference_ece", "ece", "top-label ECE, 5 bins (bootstrap CI)"),
    (
        "live_mean_confidence",
        "reference_mean_confidence",
        "mean_confidence",
        "mean confidence max(p, 1-p) (bootstrap CI)",
    ),
)
# The confidence profile's gauges: (profile field, metric name, help).
CONFIDENCE_GAUGES = (
    ("mean_confidence", "confidence_mean", "Mean top-label confidence max(p, 1-p)."),
    (
        "high_confidence_share",
        "high_confidence_share",
        "Share of predictions with max(p, 1-p) above the bundle's high_confidence.",
    ),
    ("positive_rate", "predicted_positive_rate", "Share of predictions flagged."),
)


def _store_errors(s: SidecarStatus) -> Iterator[tuple[str, float]]:
    yield from s.store.errors.items()
    yield "snapshot", s.store.snapshot_errors
    yield "open", 1.0 if s.store.open_error else 0.0


def _profile_value(c: ConfidenceStatus, sample: str, key: str) -> float:
    p = c.window if sample == "window" else c.reference
    return NAN if p is None else getattr(p, key)


def _reading(attr: str, missing: float) -> Callable[[EngineStatus], list[tuple[str, float]]]:
    def read(d: EngineStatus) -> list[tuple[str, float]]:
        return [
            (x.name, missing if x.reading is None else float(getattr(x.reading, attr)))
            for x in d.detectors
        ]

    return read


def _paired(
    fn: Callable[[PairedCanaryStatus], float], *, need_last: bool = True
) -> Callable[[SidecarStatus], Samples | None]:
    """A paired-canary family: absent without paired canaries (or before a submission)."""

    def read(s: SidecarStatus) -> Samples | None:
        c = s.paired_canaries
        if not c.available or (need_last and c.last is None):
            return None
        return [((), fn(c))]

    return read


def _paired_each(
    fn: Callable[[PairedCanaryReading], Iterable[tuple[str | tuple[str, ...], float]]],
) -> Callable[[SidecarStatus], Samples | None]:
    def read(s: SidecarStatus) -> Samples | None:
        c = s.paired_canaries
        if not c.available or c.last is None:
            return None
        return [((k,) if isinstance(k, str) else k, v) for k, v in fn(c.last.reading)]

    return read


def _heads(
    fn: Callable[[HeadView], Iterable[tuple[str | tuple[str, ...], float]] | float | None],
) -> Callable[[SidecarStatus], Samples | None]:
    """A per-head family: the ``head`` label comes last; a head whose ``fn`` returns None
    has no samples, and the family is absent when no head has any."""

    def read(s: SidecarStatus) -> Samples | None:
        out: Samples = []
        for h in s.heads:
            got = fn(h)
            if got is None:
                continue
            if isinstance(got, int | float):
                out.append(((h.name,), float(got)))
                continue
            for k, v in got:
                out.append(((k, h.name) if isinstance(k, str) else (*k, h.name), v))
        return out or None

    return read


def _head_det(
    fn: Callable[[HeadStatus], Iterable[tuple[str | tuple[str, ...], float]] | float],
) -> Callable[[SidecarStatus], Samples | None]:
    """A per-head detection family: absent while detection is off."""
    return _heads(lambda h: None if h.detection is None else fn(h.detection))


def _head_paired(
    fn: Callable[[PairedCanaryReading], Iterable[tuple[str | tuple[str, ...], float]] | float],
) -> Callable[[SidecarStatus], Samples | None]:
    """A per-head paired-canary family: absent before the first submission."""
    return _heads(lambda h: None if h.paired_canary is None else fn(h.paired_canary))


def _canary(fn: Callable[[SidecarStatus], float]) -> Callable[[SidecarStatus], Samples | None]:
    return lambda s: None if s.canary is None else [((), fn(s))]


FAMILIES: tuple[Family, ...] = (
    # -- traffic and labels ----------------------------------------------------------
    counter(
        "predictions",
        "Predictions folded into the statistics, by source.",
        _each(lambda s: ((src, s.traffic.predictions[src]) for src in SOURCES)),
        ("source",),
    ),
    counter(
        "predictions_flagged",
        "Predictions with P(unsafe) >= the head's flag threshold, by source and head.",
        _heads(lambda h: ((src, h.flagged.get(src, 0)) for src in SOURCES)),
        ("source", "head"),
    ),
    counter(
        "labels_received",
        "Labels received through SubmitLabels.",
        _one(lambda s: s.labels.received),
    ),
    counter(
        "labels_joined", "Labels joined to a recorded prediction.", _one(lambda s: s.labels.joined)
    ),
    counter(
        "labels_joined_carried",
        "Of labels joined: joined through the score the label carried (stateless path).",
        _one(lambda s: s.labels.joined_carried),
    ),
    counter(
        "labels_carried_refused",
        "Carried scores refused: produced by another embedder or classifier version.",
        _one(lambda s: s.labels.carried_refused),
    ),
    counter(
        "labels_unmatched",
        "Labels that matched no recorded prediction, by reason.",
        _each(
            lambda s: (
                ("unknown", s.labels.unknown),
                ("expired", s.labels.expired),
                ("already_labelled", s.labels.already_labelled),
            )
        ),
        ("reason",),
    ),
    # -- the label-join store and durable state ----------------------------------------
    gauge(
        "prediction_store_entries", "Predictions awaiting a label.", _one(lambda s: s.store.entries)
    ),
    gauge(
        "prediction_store_capacity",
        "Most predictions the store keeps.",
        _one(lambda s: s.store.capacity),
    ),
    counter(
        "prediction_store_evictions",
        "Predictions evicted before a label arrived, by reason.",
        _each(lambda s: (("capacity", s.store.evicted_capacity), ("ttl", s.store.evicted_ttl))),
        ("reason",),
    ),
    gauge(
        "store_durable",
        "1 while predictions and labels are kept in the durable (SQLite) store; 0 on the "
        "in-memory store (configured, or the durable one failed to open).",
        _one(lambda s: s.store.durable),
    ),
    counter(
        "store_errors",
        "Failed writes to the durable store, by operation (disk full, read-only ...).",
        _each(_store_errors),
        ("op",),
    ),
    counter(
        "predictions_not_recorded",
        "Predictions scored and answered while the store could not record them for the "
        "label join (counted, never silent).",
        _one(lambda s: s.store.predictions_not_recorded),
    ),
    gauge(
        "store_unfolded_labels",
        "Joined labels kept durably until a calibration snapshot covers them.",
        _one(lambda s: s.store.unfolded_labels),
    ),
    counter(
        "state_snapshots",
        "State snapshots written (detector windows + calibration).",
        _one(lambda s: s.store.snapshots_written),
    ),
    gauge(
        "state_snapshot_age_seconds",
        "Seconds since the last state snapshot (NaN: none yet).",
        _one(lambda s: NAN if (a := s.store.last_snapshot_seconds_ago) is None else a),
    ),
    counter(
        "labels_replayed_at_start",
        "Labels joined before the last restart and folded in again at start.",
        _one(lambda s: s.store.labels_replayed_at_start),
    ),
    counter(
        "bundle_reloads",
        "Bundle hot reloads (SIGHUP or Admin.ReloadBundle), by result.",
        _each(lambda s: s.reloads.items()),
        ("result",),
    ),
    # -- the worker --------------------------------------------------------------------
    gauge(
        "pipeline_queued_batches",
        "Batches waiting for the background worker.",
        _one(lambda s: s.pipeline.queued),
    ),
    counter(
        "pipeline_processed_rows",
        "Rows folded into the statistics.",
        _one(lambda s: s.pipeline.processed_rows),
    ),
    counter(
        "pipeline_sampled_out_rows",
        "Rows shed because the worker fell behind (counted, never silent).",
        _one(lambda s: s.pipeline.sampled_out_rows),
    ),
    counter(
        "pipeline_sink_errors",
        "Exceptions raised by statistics sinks.",
        _one(lambda s: s.pipeline.sink_errors),
    ),
    gauge(
        "uptime_seconds",
        "Seconds since the sidecar started serving.",
        _one(lambda s: s.uptime_seconds),
    ),
    gauge(
        "embedder_version_mismatch",
        "1 while traffic carried an embedder version the bundle was not validated for "
        "(within mismatch_hold_seconds).",
        _one(lambda s: s.identity.embedder_version_mismatch),
    ),
    # -- drift (docs/detection.md) ---------------------------------------------------
    gauge(
        "drift_statistic",
        "Latest window statistic of each drift detector.",
        _det(_reading("statistic", NAN)),
        ("detector",),
    ),
    gauge(
        "drift_threshold",
        "Alarm threshold of each detector, calibrated on held-out clean windows to "
        "silentwatch_drift_false_alarm_rate.",
        _det(_reading("threshold", NAN)),
        ("detector",),
    ),
    gauge(
        "drift_alarm",
        "1 when the detector's latest window exceeded its threshold.",
        _det(_reading("alarm", 0.0)),
        ("detector",),
    ),
    counter(
        "drift_alarms",
        "Windows that raised each detector's alarm.",
        _det(lambda d: ((x.name, x.alarms_total) for x in d.detectors)),
        ("detector",),
    ),
    # domain_auc runs every k-th window: alarm shares need each detector's own count.
    counter(
        "drift_evaluations",
        "Windows each detector actually ran on (domain_auc: every domain_every-th).",
        _det(lambda d: ((x.name, x.evaluations) for x in d.detectors)),
        ("detector",),
    ),
    gauge(
        "drift_false_alarm_rate",
        "Per-window false-alarm rate the thresholds were calibrated to.",
        _det(lambda d: d.false_alarm_rate),
    ),
    counter(
        "drift_windows_evaluated",
        "Windows the detectors ran on.",
        _det(lambda d: d.windows_evaluated),
    ),
    counter(
        "drift_windows_skipped",
        "Windows skipped over max_window_evaluations_per_second.",
        _det(lambda d: d.windows_skipped),
    ),
    gauge(
        "embedding_centroid_angle_degrees",
        "Angle between the latest window's mean embedding and the reference mean.",
        _det(lambda d: d.centroid_angle_degrees),
    ),
    *(
        gauge(
            name,
            doc + " sample=window: latest window; sample=reference: held-out clean data. Per head.",
            _head_det(
                lambda d, key=key: (
                    (sample, _profile_value(d.confidence, sample, key))
                    for sample in ("window", "reference")
                )
            ),
            ("sample", "head"),
        )
        for key, name, doc in CONFIDENCE_GAUGES
    ),
    gauge(
        "confidence_mean_change",
        "Window mean confidence minus the reference's, per head.",
        _head_det(lambda d: d.confidence.mean_confidence_change),
        ("head",),
    ),
    gauge(
        "confidence_mean_relative_change",
        "(window - reference) / reference mean confidence, per head.",
        _head_det(lambda d: d.confidence.mean_confidence_relative_change),
        ("head",),
    ),
    counter(
        "change_stream_thinned_rows",
        "Rows the change-point streams skipped over change_max_samples_per_second.",
        _det(lambda d: d.change_thinned_rows),
    ),
    counter(
        "change_points",
        "Change points found by river detectors on per-sample streams.",
        _det(lambda d: (((c.kind, c.stream), c.change_points) for c in d.change_points)),
        ("detector", "stream"),
    ),
    # -- the two signals (monitor/detection/verdict.py) ----------------------------------
    gauge(
        "input_drift",
        "1 when any drift detector alarms on its latest window: the traffic changed. "
        "Informational (a ticket); it says nothing about harm.",
        _det(lambda d: float(d.input_drift)),
    ),
    counter(
        "input_drift_windows",
        "Windows that raised silentwatch_input_drift.",
        _det(lambda d: d.input_drift_windows),
    ),
    gauge(
        "input_drift_false_alarm_rate",
        "Per-window rate at which silentwatch_input_drift fires on clean traffic, for all "
        "drift detectors together (NaN: a bundle calibrated per detector; rebuild it).",
        _det(lambda d: d.input_drift_false_alarm_rate),
    ),
    # k-of-n alerting reads these (deploy/prometheus/rules, docs/alerts.md).
    gauge(
        "recent_windows",
        "Windows in the recent ring the k-of-n alerts read (at most 10).",
        _det(lambda d: d.recent_windows),
    ),
    gauge(
        "input_drift_recent_windows",
        "Of the recent windows, how many raised silentwatch_input_drift.",
        _det(lambda d: d.recent_input_drift_windows),
    ),
    gauge(
        "silent_failure",
        "1 when there is evidence the head got worse (paired canaries or label "
        "confirmation): the page. Input drift alone never raises it.",
        _heads(lambda h: float(h.silent_failure.active)),
        ("head",),
    ),
    gauge(
        "silent_failure_evidence",
        "1 for each evidence source that raises silentwatch_silent_failure for the head now.",
        _heads(
            lambda h: (
                (src, float(src in h.silent_failure.evidence)) for src in h.silent_failure.sources
            )
        ),
        ("source", "head"),
    ),
    gauge(
        "silent_failure_source_available",
        "1 for each evidence source this sidecar can gather, 0 for those it cannot "
        "(GetStatus.silent_failure.unavailable says why).",
        _each(lambda s: ((src, float(src in s.silent_failure.sources)) for src in VERDICT_SOURCES)),
        ("source",),
    ),
    gauge(
        "silent_failure_false_alarm_rate",
        "Per check round, the rate at which the available sources together raise "
        "silentwatch_silent_failure when the classifier is no worse (sum of their alphas).",
        _one(lambda s: s.silent_failure.false_alarm_rate),
    ),
    gauge(
        "drift_recent_alarms",
        "Of each detector's last (at most 10) evaluations, how many alarmed.",
        _det(lambda d: ((x.name, x.recent_alarms) for x in d.detectors)),
        ("detector",),
    ),
    gauge(
        "drift_recent_evaluations",
        "How many evaluations each detector's recent ring holds (at most 10).",
        _det(lambda d: ((x.name, x.recent_evaluations) for x in d.detectors)),
        ("detector",),
    ),
    *(
        gauge(
            f"labelled_{name}",
            doc + " window=rolling: the last label_window labelled predictions of the head; "
            "window=cumulative: since start.",
            _head_det(
                lambda d, key=key: (
                    ("rolling", d.labelled.rolling.get(key, NAN)),
                    ("cumulative", d.labelled.cumulative.get(key, NAN)),
                )
            ),
            ("window", "head"),
        )
        for key, name, doc in LABELLED_METRICS
    ),
    # -- label confirmation (evaluation/confirmation.py) ---------------------------------
    gauge(
        "label_confirmation_reference_auc",
        "The bundle's held-out ROC-AUC that label confirmation tests the rolling one against.",
        _head_det(lambda d: d.labelled.confirmation.reference_auc),
        ("head",),
    ),
    gauge(
        "label_auc_drop",
        "Held-out minus rolling labelled ROC-AUC at the last confirmation check.",
        _head_det(lambda d: NAN if (t := d.labelled.confirmation.last) is None else t.drop),
        ("head",),
    ),
    gauge(
        "label_auc_drop_lower_bound",
        "One-sided (1 - alpha) lower confidence bound of that drop (Hanley & McNeil errors "
        "of both AUCs); NaN with too few labels of a class.",
        _head_det(
            lambda d: NAN if (t := d.labelled.confirmation.last) is None else t.drop_lower_bound
        ),
        ("head",),
    ),
    gauge(
        "label_degradation_confirmed",
        "1 when the last check confirmed a ROC-AUC drop beyond the margin: labelled evidence "
        "that the classifier got worse.",
        _head_det(lambda d: float(d.labelled.confirmation.confirmed)),
        ("head",),
    ),
    counter(
        "label_confirmation_checks",
        "Label-confirmation checks run (one every confirm_every joined labels).",
        _head_det(lambda d: d.labelled.confirmation.checks),
        ("head",),
    ),
    counter(
        "label_confirmation_confirmed_checks",
        "Checks that confirmed a drop (each false at rate alpha when the classifier is no "
        "worse than the margin).",
        _head_det(lambda d: d.labelled.confirmation.confirmed_checks),
        ("head",),
    ),
    # -- paired canaries (monitor/detection/paired_canaries.py) ---------------------------
    gauge(
        "paired_canary_available",
        "1 when the bundle carries canary texts with reference embeddings (GetCanaries works).",
        _one(lambda s: float(s.paired_canaries.available)),
    ),
    counter(
        "paired_canary_submissions",
        "Paired canary submissions (SubmitCanaryEmbeddings, or text mode's own runs).",
        _paired(lambda c: c.submissions, need_last=False),
    ),
    counter(
        "paired_canary_failures",
        "Submissions whose paired ROC-AUC test confirmed the classifier got worse.",
        _paired(lambda c: c.failures, need_last=False),
    ),
    gauge(
        "paired_canary_last_submission_timestamp_seconds",
        "When the last paired canary submission arrived (alert when it gets old).",
        _paired(lambda c: c.last.at),
    ),
    gauge(
        "paired_canary_failure",
        "1 when the last submission's paired tests confirmed the head got worse beyond the "
        "margin (silent-failure evidence), per head.",
        _head_paired(lambda r: float(r.failure)),
        ("head",),
    ),
    gauge(
        "paired_canary_embedder_changed",
        "1 when the last submission's mean paired angle exceeds the noise-floor tolerance: "
        "the embedder is not the validated one (informational, not harm).",
        _paired(lambda c: float(c.last.reading.embedder_changed)),
    ),
    gauge(
        "paired_canary_angle_degrees",
        "Angle between each canary's live and reference embedding, last submission.",
        _paired_each(
            lambda r: (
                ("mean", r.angle_mean_degrees),
                ("median", r.angle_median_degrees),
                ("p90", r.angle_p90_degrees),
                ("max", r.angle_max_degrees),
            )
        ),
        ("stat",),
    ),
    gauge(
        "paired_canary_linear_cka",
        "Linear CKA between live and reference canary embeddings (1: same geometry).",
        _paired(lambda c: c.last.reading.linear_cka),
    ),
    *(
        gauge(
            f"paired_canary_{name}",
            f"Frozen head's canary {doc}, last submission: embeddings=live (bound estimate, "
            "low, high: the confidence interval) or reference (the validated embeddings).",
            _head_paired(
                lambda r, live=live, ref=ref: (
                    (("live", "estimate"), getattr(r, live)),
                    (("live", "low"), getattr(r, f"{live}_ci")[0]),
                    (("live", "high"), getattr(r, f"{live}_ci")[1]),
                    (("reference", "estimate"), getattr(r, ref)),
                )
            ),
            ("embeddings", "bound", "head"),
        )
        for live, ref, name, doc in PAIRED_GAUGES
    ),
    gauge(
        "paired_canary_flip_rate",
        "Share of canaries whose decision differs from the reference's (bound: estimate, "
        "low, high of the Wilson interval), per head.",
        _head_paired(
            lambda r: (
                ("estimate", r.flip_rate),
                ("low", r.flip_rate_ci[0]),
                ("high", r.flip_rate_ci[1]),
            )
        ),
        ("bound", "head"),
    ),
    gauge(
        "paired_canary_auc_drop",
        "Reference minus live canary ROC-AUC on the same texts (paired), last submission, "
        "per head.",
        _head_paired(lambda r: r.auc_drop.drop),
        ("head",),
    ),
    gauge(
        "paired_canary_auc_drop_lower_bound",
        "One-sided (1 - alpha/2) lower confidence bound of that drop (DeLong et al. 1988).",
        _head_paired(lambda r: r.auc_drop.lower_bound),
        ("head",),
    ),
    gauge(
        "paired_canary_brier_increase",
        "Mean over canaries of the live minus the reference Brier score, last submission, "
        "per head.",
        _head_paired(lambda r: r.brier_increase.increase),
        ("head",),
    ),
    gauge(
        "paired_canary_brier_increase_lower_bound",
        "One-sided (1 - alpha/2) lower confidence bound of that increase.",
        _head_paired(lambda r: r.brier_increase.lower_bound),
        ("head",),
    ),
    gauge(
        "paired_canary_positives",
        "Canaries labelled unsafe for each head (few: the head's canary tests have little "
        "power; see docs/detection.md).",
        _heads(lambda h: None if h.paired_canary is None else h.canary_positives),
        ("head",),
    ),
    # -- canaries (text mode) ----------------------------------------------------------
    counter(
        "canary_runs",
        "Canary runs (the bundle's labelled texts re-scored).",
        _canary(lambda s: s.canary.runs),
    ),
    gauge(
        "canary_last_run_timestamp_seconds",
        "When the last canary run ended.",
        _canary(lambda s: s.canary.last_run_at),
    ),
    gauge(
        "canary_failing",
        "1 when the last canary run raised an error.",
        _canary(lambda s: float(bool(s.canary.last_error))),
    ),
    *(
        gauge(
            f"canary_{key}",
            f"Canary {key.replace('_', ' ')} (last run).",
            _canary(lambda s, key=key: s.canary.metrics.get(key, NAN)),
        )
        for key in CANARY_GAUGES
    ),
)

if len({f.name for f in FAMILIES}) != len(FAMILIES):  # pragma: no cover - a table mistake
    raise RuntimeError("two metric families share a name")


def status_families(status: SidecarStatus) -> Iterator[Metric]:
    """Every family that applies to ``status``, in table order."""
    for family in FAMILIES:
        metric = family.build(status)
        if metric is not None:
            yield metric


class StateCollector(Collector):
    """Reads the sidecar's status when Prometheus scrapes, and exports it by :data:`FAMILIES`.

    ``info`` (the served bundle's identity) and ``holdout`` (each head's held-out figures,
    by head name) are dicts the sidecar updates in place on a hot reload; ``serving`` reads
    the health state.
    """

    def __init__(
        self,
        read: Callable[[], SidecarStatus],
        info: dict[str, str],
        holdout: dict[str, dict[str, float]] | None = None,
        serving: Callable[[], bool] | None = None,
    ) -> None:
        self._read = read
        self._info = info
        # Held by reference, like ``info``: a hot reload updates both in place.
        self._holdout = holdout if holdout is not None else {}
        self._serving = serving

    def collect(self) -> Iterable[Metric]:
        status = self._read()
        info = InfoMetricFamily(
            f"{PREFIX}_classifier", "Identity of the served classifier bundle and its embedder."
        )
        info.add_metric([], self._info)
        yield info
        # Each head's own held-out figures: alerts compare its labelled metrics against them.
        for key, name in HOLDOUT_GAUGES.items():
            heads = [(h, m[key]) for h, m in self._holdout.items() if key in m]
            if not heads:
                continue
            fam = GaugeMetricFamily(
                f"{PREFIX}_bundle_holdout_{name}",
                f"Held-out {name.replace('_', ' ')} recorded in the bundle at training, per head.",
                labels=["head"],
            )
            for head, value in heads:
                fam.add_metric([head], value)
            yield fam
        if self._serving is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_serving",
                "1 while the gRPC health service reports SERVING; 0 while draining or stopping.",
                value=float(self._serving()),
            )
        yield from status_families(status)
