"""One mapper from the typed sidecar status to the ``GetStatusResponse`` message.

Field for field: :class:`~.status.SidecarStatus` holds every figure, this module only
renames and flattens. ``None`` (not yet known) becomes ``-1`` or NaN as the proto says.
"""

from __future__ import annotations

from silentwatch.monitor.bundle import EmbedderSpec, LoadedBundle
from silentwatch.monitor.detection.canary import CanaryStatus
from silentwatch.monitor.detection.detectors.confidence import ConfidenceProfile
from silentwatch.monitor.detection.paired_canaries import CanarySubmission, PairedCanaryStatus
from silentwatch.monitor.detection.status import (
    NAN,
    ConfidenceStatus,
    ConfirmationStatus,
    EngineStatus,
    LabelledStatus,
)
from silentwatch.monitor.detection.verdict import SilentFailureStatus
from silentwatch.monitor.evaluation.confirmation import AucDropTest
from silentwatch.monitor.evaluation.paired import PairedCanaryReading
from silentwatch.monitor.serving.status import HeadView, SidecarStatus
from silentwatch.v1 import monitor_pb2 as pb

_METRIC_FIELDS = pb.CalibrationMetrics.DESCRIPTOR.fields_by_name


def _or(value: float | None, missing: float) -> float:
    return missing if value is None else value


def _metrics(m: dict[str, float]) -> pb.CalibrationMetrics:
    return pb.CalibrationMetrics(**{k: v for k, v in m.items() if k in _METRIC_FIELDS})


def _profile(p: ConfidenceProfile | None) -> pb.ConfidenceProfile:
    if p is None:
        return pb.ConfidenceProfile(
            mean_confidence=NAN, high_confidence_share=NAN, positive_rate=NAN
        )
    return pb.ConfidenceProfile(**p.as_dict())


def status_message(s: SidecarStatus, bundle: LoadedBundle) -> pb.GetStatusResponse:
    """The ``GetStatus`` answer for status ``s`` of a sidecar serving ``bundle``."""
    m = bundle.manifest
    st = s.store
    return pb.GetStatusResponse(
        classifier_version=m.classifier_version,
        embedder=embedder_message(m.embedder),
        embedding_dim=m.embedding_dim,
        flag_threshold=m.thresholds.flag,
        uptime_seconds=s.uptime_seconds,
        traffic=pb.TrafficStatus(
            predictions=s.traffic.predictions["classify"],
            observed=s.traffic.predictions["observe"],
            flagged=sum(s.traffic.flagged.values()),
            embedder_version_mismatches=s.traffic.version_mismatches,
        ),
        labels=pb.LabelStatus(
            received=s.labels.received,
            joined=s.labels.joined,
            unknown=s.labels.unknown,
            expired=s.labels.expired,
            already_labelled=s.labels.already_labelled,
            joined_carried=s.labels.joined_carried,
            carried_refused=s.labels.carried_refused,
        ),
        store=pb.PredictionStoreStatus(
            entries=st.entries,
            capacity=st.capacity,
            ttl_seconds=st.ttl_seconds,
            evicted_capacity=st.evicted_capacity,
            evicted_ttl=st.evicted_ttl,
            durable=st.durable,
            backend=st.backend,
            unfolded_labels=max(0, st.unfolded_labels),
            errors=sum(st.errors.values()) + st.snapshot_errors,
            snapshots_written=st.snapshots_written,
            last_snapshot_seconds_ago=_or(st.last_snapshot_seconds_ago, -1.0),
            labels_replayed_at_start=st.labels_replayed_at_start,
            predictions_not_recorded=st.predictions_not_recorded,
        ),
        pipeline=pb.PipelineStatus(
            queued=s.pipeline.queued,
            processed_rows=s.pipeline.processed_rows,
            sampled_out_rows=s.pipeline.sampled_out_rows,
        ),
        bundle_sha256=bundle.sha256,
        detection=detection_message(s.detection, s.detection_disabled_reason),
        labelled=labelled_message(None if s.detection is None else s.detection.labelled),
        canary=canary_message(s.canary),
        silent_failure=silent_failure_message(s.silent_failure),
        paired_canaries=paired_status_message(s.paired_canaries),
        heads=[head_message(h, s.paired_canaries.last) for h in s.heads],
        identity=pb.IdentityStatus(
            embedder_version_mismatch=s.identity.embedder_version_mismatch,
            last_mismatch_seconds_ago=_or(s.identity.last_mismatch_seconds_ago, -1.0),
        ),
    )


def embedder_message(e: EmbedderSpec) -> pb.EmbedderIdentity:
    """The embedder a bundle was validated for (GetStatus, GetCanaries)."""
    return pb.EmbedderIdentity(
        name=e.name,
        version=e.version,
        weights_sha256=e.weights_sha256 or "",
        pooling=e.pooling,
        accepted_versions=list(e.accepted_versions),
    )


def detection_message(d: EngineStatus | None, disabled_reason: str) -> pb.DetectionStatus:
    if d is None:
        return pb.DetectionStatus(enabled=False, disabled_reason=disabled_reason)
    w, c = d.window, d.confidence
    readings = []
    for det in d.detectors:
        r = det.reading
        if r is None:
            readings.append(
                pb.DetectorReading(name=det.name, statistic=NAN, threshold=NAN, alarms_total=0)
            )
        else:
            readings.append(
                pb.DetectorReading(
                    name=det.name,
                    statistic=r.statistic,
                    threshold=r.threshold,
                    alarm=r.alarm,
                    window_rows=r.window_rows,
                    alarms_total=det.alarms_total,
                    evaluated_at=r.at,
                )
            )
    return pb.DetectionStatus(
        enabled=True,
        calibration_source=d.calibration_source,
        false_alarm_rate=d.false_alarm_rate,
        window=pb.WindowConfig(
            mode=w.mode,
            size=w.size,
            stride=w.stride,
            seconds=w.seconds,
            stride_seconds=w.stride_seconds,
            max_rows=w.max_rows,
        ),
        windows_evaluated=d.windows_evaluated,
        windows_skipped=d.windows_skipped,
        rows_seen=d.rows_seen,
        detectors=readings,
        centroid_angle_degrees=d.centroid_angle_degrees,
        confidence=confidence_message(c),
        change_points=[
            pb.ChangePointStatus(
                detector=cp.kind,
                stream=cp.stream,
                change_points=cp.change_points,
                last_change_at=-1 if cp.last_change_at is None else cp.last_change_at,
                samples=cp.samples,
                null_change_points_per_10k=cp.null_change_points_per_10k,
            )
            for cp in d.change_points
        ],
        input_drift=d.input_drift,
        input_drift_windows=d.input_drift_windows,
        input_drift_false_alarm_rate=d.input_drift_false_alarm_rate,
        change_thinned_rows=d.change_thinned_rows,
    )


def confidence_message(c: ConfidenceStatus) -> pb.ConfidenceStatus:
    return pb.ConfidenceStatus(
        window=_profile(c.window),
        reference=_profile(c.reference),
        mean_confidence_change=c.mean_confidence_change,
        mean_confidence_relative_change=c.mean_confidence_relative_change,
        band=c.band,
    )


def head_message(h: HeadView, sub: CanarySubmission | None) -> pb.HeadStatus:
    """One head (GetStatus ``heads``); ``sub``: the last paired canary submission."""
    msg = pb.HeadStatus(
        name=h.name,
        is_default=h.is_default,
        flag_threshold=h.flag_threshold,
        high_confidence=h.high_confidence,
        flagged=sum(h.flagged.values()),
        silent_failure=silent_failure_message(h.silent_failure),
        canary_positives=h.canary_positives,
    )
    if h.detection is not None:
        msg.confidence.CopyFrom(confidence_message(h.detection.confidence))
        msg.labelled.CopyFrom(labelled_message(h.detection.labelled))
    if sub is not None and h.paired_canary is not None:
        msg.paired_canary.CopyFrom(reading_message(sub, h.paired_canary))
    return msg


def labelled_message(lab: LabelledStatus | None) -> pb.LabelledStatus:
    if lab is None:
        return pb.LabelledStatus()
    return pb.LabelledStatus(
        window_size=lab.window_size,
        rolling=_metrics(lab.rolling),
        cumulative=_metrics(lab.cumulative),
        confirmation=confirmation_message(lab.confirmation),
    )


def confirmation_message(c: ConfirmationStatus) -> pb.LabelConfirmation:
    # Before the first check: NaN statistics and no rows, as the proto documents.
    t = c.last or AucDropTest(
        c.reference_auc, NAN, NAN, NAN, NAN, NAN, NAN, False, 0, 0, c.margin, c.alpha
    )
    return pb.LabelConfirmation(
        enabled=c.enabled,
        reference_auc=c.reference_auc,
        live_auc=t.live_auc,
        drop=t.drop,
        standard_error=t.standard_error,
        drop_lower_bound=t.drop_lower_bound,
        p_value=t.p_value,
        confirmed=c.confirmed,
        n_positive=t.n_positive,
        n_negative=t.n_negative,
        margin=c.margin,
        alpha=c.alpha,
        confirm_every=c.confirm_every,
        checks=c.checks,
        confirmed_checks=c.confirmed_checks,
    )


def canary_message(c: CanaryStatus | None) -> pb.CanaryStatus:
    if c is None:
        return pb.CanaryStatus(enabled=False)
    return pb.CanaryStatus(
        enabled=True,
        size=c.size,
        runs=c.runs,
        last_run_at=c.last_run_at,
        last_run_seconds=c.last_run_seconds,
        metrics=_metrics(c.metrics),
        last_error=c.last_error,
    )


def silent_failure_message(v: SilentFailureStatus) -> pb.SilentFailureStatus:
    return pb.SilentFailureStatus(
        active=v.active,
        evidence=list(v.evidence),
        sources=list(v.sources),
        unavailable=list(v.unavailable),
        false_alarm_rate=v.false_alarm_rate,
        summary=v.summary,
    )


def paired_status_message(c: PairedCanaryStatus) -> pb.PairedCanaryStatus:
    msg = pb.PairedCanaryStatus(
        available=c.available,
        unavailable_reason=c.unavailable_reason,
        canary_set_id=c.canary_set_id,
        size=c.size,
        submissions=c.submissions,
        failures=c.failures,
        last_submitted_at=0.0 if c.last is None else c.last.at,
    )
    if c.last is not None:
        msg.last.CopyFrom(reading_message(c.last))
    return msg


def _interval(estimate: float, ci: tuple[float, float]) -> pb.Interval:
    return pb.Interval(estimate=estimate, low=ci[0], high=ci[1])


def reading_message(
    sub: CanarySubmission, reading: PairedCanaryReading | None = None
) -> pb.PairedCanaryReading:
    """One paired canary submission as the wire message (SubmitCanaryEmbeddings, GetStatus);
    ``reading``: one head's (default: the default head's)."""
    r = sub.reading if reading is None else reading
    t, b = r.auc_drop, r.brier_increase
    return pb.PairedCanaryReading(
        size=r.size,
        positives=r.positives,
        at=sub.at,
        source=sub.source,
        embedder_version=sub.embedder_version,
        angle_mean_degrees=r.angle_mean_degrees,
        angle_median_degrees=r.angle_median_degrees,
        angle_p90_degrees=r.angle_p90_degrees,
        angle_max_degrees=r.angle_max_degrees,
        linear_cka=r.linear_cka,
        angle_tolerance_degrees=r.angle_tolerance_degrees,
        embedder_changed=r.embedder_changed,
        roc_auc=_interval(r.live_auc, r.live_auc_ci),
        reference_roc_auc=r.reference_auc,
        accuracy=_interval(r.live_accuracy, r.live_accuracy_ci),
        reference_accuracy=r.reference_accuracy,
        ece=_interval(r.live_ece, r.live_ece_ci),
        reference_ece=r.reference_ece,
        mean_confidence=_interval(r.live_mean_confidence, r.live_mean_confidence_ci),
        reference_mean_confidence=r.reference_mean_confidence,
        flip_rate=_interval(r.flip_rate, r.flip_rate_ci),
        auc_drop=t.drop,
        auc_drop_standard_error=t.standard_error,
        auc_drop_lower_bound=t.lower_bound,
        auc_drop_p_value=t.p_value,
        margin=t.margin,
        alpha=r.alpha,
        failure=r.failure,
        reference_brier=b.reference_brier,
        live_brier=b.live_brier,
        brier_increase=b.increase,
        brier_increase_lower_bound=b.lower_bound,
        brier_margin=b.margin,
        auc_drop_confirmed=t.confirmed,
        brier_increase_confirmed=b.confirmed,
    )
