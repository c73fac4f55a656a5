"""Prometheus metrics (prefix ``silentwatch_``; the contract: docs/sidecar.md).

Three kinds of recording, chosen for what each costs on the request path:

* per-RPC counters and the duration histogram: one update per call, on the request path;
* score and confidence histograms: updated by the pipeline worker with one
  ``numpy.bincount`` per batch (:class:`ArrayHistogram`), never per row;
* store, pipeline and label figures: read from their owners at scrape time
  (:class:`StateCollector`), so they cost nothing until Prometheus asks.

Buckets for scores and confidences are fixed on 0..1 so replicas aggregate.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from silentwatch.monitor.scoring import confidence
from silentwatch.monitor.serving.pipeline import LabelBatch, PredictionBatch

PREFIX = "silentwatch"
# 0.05-wide buckets on [0, 1]: fixed so that replicas' histograms add up.
UNIT_BUCKETS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 21))
DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
RPCS = ("Classify", "ClassifyBatch", "Observe", "SubmitLabels", "GetStatus")
SOURCES = ("classify", "observe")


class ArrayHistogram(Collector):
    """A labelled histogram fed whole numpy arrays at a time.

    ``observe_many`` costs one ``searchsorted`` + ``bincount`` per batch, where
    prometheus_client's ``Histogram.observe`` would cost a Python call per value.

    >>> import numpy as np
    >>> h = ArrayHistogram("x_ratio", "demo", (0.5, 1.0), "source", ("a",))
    >>> h.observe_many("a", np.array([0.2, 0.5, 0.7]))
    >>> h.snapshot("a")[0].tolist(), round(h.snapshot("a")[1], 2)
    ([2, 3, 3], 1.4)
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        label: str,
        label_values: Sequence[str],
    ) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = {v: np.zeros(len(buckets) + 1, dtype=np.int64) for v in label_values}
        self._sums = dict.fromkeys(label_values, 0.0)
        self._lock = threading.Lock()

    def observe_many(self, label_value: str, values: np.ndarray) -> None:
        # side="left": a value equal to a bound counts in that bucket (le semantics).
        idx = np.searchsorted(self.bounds, values, side="left")
        inc = np.bincount(idx, minlength=self.bounds.size + 1)
        total = float(np.sum(values, dtype=np.float64))
        with self._lock:
            self._counts[label_value] += inc
            self._sums[label_value] += total

    def snapshot(self, label_value: str) -> tuple[np.ndarray, float]:
        """Cumulative bucket counts (last = +Inf = count) and the sum."""
        with self._lock:
            return np.cumsum(self._counts[label_value]), self._sums[label_value]

    def collect(self) -> Iterable[Metric]:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        for value in self._counts:
            cum, total = self.snapshot(value)
            buckets = [(_fmt(b), int(c)) for b, c in zip(self.bounds, cum[:-1], strict=True)]
            buckets.append(("+Inf", int(cum[-1])))
            fam.add_metric([value], buckets, total)
        yield fam


def _fmt(x: float) -> str:
    return repr(float(x))


class TrafficSink:
    """Pipeline sink: score / confidence histograms and prediction counts."""

    def __init__(self, flag_threshold: float) -> None:
        self.flag_threshold = flag_threshold
        self.scores = ArrayHistogram(
            f"{PREFIX}_prediction_score",
            "P(unsafe) of each prediction (Classify: the bundle's; Observe: the caller's).",
            UNIT_BUCKETS,
            "source",
            SOURCES,
        )
        self.confidence = ArrayHistogram(
            f"{PREFIX}_prediction_confidence",
            "Top-label confidence max(p, 1 - p) of each prediction (paper A, section 3.3).",
            UNIT_BUCKETS,
            "source",
            SOURCES,
        )
        self.predictions = dict.fromkeys(SOURCES, 0)
        self.flagged = dict.fromkeys(SOURCES, 0)
        self.labels_folded = 0

    def on_predictions(self, batch: PredictionBatch) -> None:
        p = batch.scores
        self.scores.observe_many(batch.source, p)
        self.confidence.observe_many(batch.source, confidence(p))
        self.predictions[batch.source] += batch.rows
        self.flagged[batch.source] += int(np.count_nonzero(p >= self.flag_threshold))

    def on_labels(self, batch: LabelBatch) -> None:
        self.labels_folded += int(batch.labels.shape[0])


class RequestMetrics:
    """Per-RPC request counter and latency histogram (the only request-path metrics)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            f"{PREFIX}_requests",
            "gRPC requests handled, by method and status code.",
            ["rpc", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Server-side handling time of gRPC requests.",
            ["rpc"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.embeddings = Counter(
            f"{PREFIX}_embeddings_received",
            "Embeddings accepted, by method.",
            ["rpc"],
            registry=registry,
        )
        self.version_mismatch = Counter(
            f"{PREFIX}_embedder_version_mismatch_requests",
            "Requests whose embedder_version the bundle was not validated for.",
            registry=registry,
        )
        # Cache label children: .labels() is a dict lookup plus locking we need not repeat.
        self._req: dict[tuple[str, grpc.StatusCode], Counter] = {}
        self._dur = {rpc: self.duration.labels(rpc=rpc) for rpc in RPCS}
        self._emb = {rpc: self.embeddings.labels(rpc=rpc) for rpc in RPCS}
        for rpc in RPCS:
            self._child(rpc, grpc.StatusCode.OK)

    def _child(self, rpc: str, code: grpc.StatusCode) -> Counter:
        key = (rpc, code)
        child = self._req.get(key)
        if child is None:
            child = self._req[key] = self.requests.labels(rpc=rpc, code=code.name)
        return child

    def observe(self, rpc: str, code: grpc.StatusCode, seconds: float, rows: int) -> None:
        self._child(rpc, code).inc()
        dur = self._dur.get(rpc)
        if dur is None:  # the admin RPCs: rare, created on first use
            dur = self._dur[rpc] = self.duration.labels(rpc=rpc)
        dur.observe(seconds)
        if rows:
            self._emb[rpc].inc(rows)


# manifest training.holdout_metrics key -> silentwatch_bundle_holdout_<name>
HOLDOUT_GAUGES = {
    "roc_auc": "roc_auc",
    "accuracy": "accuracy",
    "mean_confidence": "mean_confidence",
    "ece_5bin": "ece",
}


class StateCollector(Collector):
    """Reads counters and gauges from their owners when Prometheus scrapes."""

    @staticmethod
    def _durable_store(st: dict, reloads: dict[str, int] | None) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            f"{PREFIX}_store_durable",
            "1 while predictions and labels are kept in the durable (SQLite) store; 0 on the "
            "in-memory store (configured, or the durable one failed to open).",
            value=float(st["durable"]),
        )
        fam = CounterMetricFamily(
            f"{PREFIX}_store_errors",
            "Failed writes to the durable store, by operation (disk full, read-only ...).",
            labels=["op"],
        )
        for op, n in st["errors"].items():
            fam.add_metric([op], n)
        fam.add_metric(["snapshot"], st["snapshot_errors"])
        fam.add_metric(["open"], 1.0 if st.get("open_error") else 0.0)
        yield fam
        yield CounterMetricFamily(
            f"{PREFIX}_predictions_not_recorded",
            "Predictions scored and answered while the store could not record them for the "
            "label join (counted, never silent).",
            value=st["predictions_not_recorded"],
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_store_unfolded_labels",
            "Joined labels kept durably until a calibration snapshot covers them.",
            value=float(st["unfolded_labels"]),
        )
        yield CounterMetricFamily(
            f"{PREFIX}_state_snapshots",
            "State snapshots written (detector windows + calibration).",
            value=st["snapshots_written"],
        )
        ago = st["last_snapshot_seconds_ago"]
        yield GaugeMetricFamily(
            f"{PREFIX}_state_snapshot_age_seconds",
            "Seconds since the last state snapshot (NaN: none yet).",
            value=float("nan") if ago is None else ago,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_labels_replayed_at_start",
            "Labels joined before the last restart and folded in again at start.",
            value=st["labels_replayed_at_start"],
        )
        if reloads is not None:
            fam = CounterMetricFamily(
                f"{PREFIX}_bundle_reloads",
                "Bundle hot reloads (SIGHUP or Admin.ReloadBundle), by result.",
                labels=["result"],
            )
            for result, n in reloads.items():
                fam.add_metric([result], n)
            yield fam

    def __init__(
        self,
        read: Callable[[], dict],
        info: dict[str, str],
        holdout: dict[str, float] | None = None,
        serving: Callable[[], bool] | None = None,
    ) -> None:
        self._read = read
        self._info = info
        self._holdout = dict(holdout or {})
        self._serving = serving

    def collect(self) -> Iterable[Metric]:
        s = self._read()
        info = InfoMetricFamily(
            f"{PREFIX}_classifier", "Identity of the served classifier bundle and its embedder."
        )
        info.add_metric([], self._info)
        yield info
        # The bundle's own held-out figures: alerts compare the labelled metrics against them.
        for key, name in HOLDOUT_GAUGES.items():
            if key in self._holdout:
                yield GaugeMetricFamily(
                    f"{PREFIX}_bundle_holdout_{name}",
                    f"Held-out {name.replace('_', ' ')} recorded in the bundle at training.",
                    value=self._holdout[key],
                )
        if self._serving is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_serving",
                "1 while the gRPC health service reports SERVING; 0 while draining or stopping.",
                value=float(self._serving()),
            )

        def counter(name: str, doc: str, value: float, labels: dict[str, str] | None = None):
            fam = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels or {}))
            fam.add_metric(list((labels or {}).values()), value)
            return fam

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)

        t = s["traffic"]
        for name, doc, key in (
            ("predictions", "Predictions folded into the statistics, by source.", "predictions"),
            ("predictions_flagged", "Predictions with P(unsafe) >= the flag threshold.", "flagged"),
        ):
            fam = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=["source"])
            for src in SOURCES:
                fam.add_metric([src], t[key][src])
            yield fam
        lab = s["labels"]
        yield counter("labels_received", "Labels received through SubmitLabels.", lab["received"])
        yield counter("labels_joined", "Labels joined to a recorded prediction.", lab["joined"])
        if "joined_carried" in lab:
            yield counter(
                "labels_joined_carried",
                "Of labels joined: joined through the score the label carried (stateless path).",
                lab["joined_carried"],
            )
            yield counter(
                "labels_carried_refused",
                "Carried scores refused: produced by another embedder or classifier version.",
                lab["carried_refused"],
            )
        fam = CounterMetricFamily(
            f"{PREFIX}_labels_unmatched",
            "Labels that matched no recorded prediction, by reason.",
            labels=["reason"],
        )
        for reason in ("unknown", "expired", "already_labelled"):
            fam.add_metric([reason], lab[reason])
        yield fam
        st = s["store"]
        yield gauge("prediction_store_entries", "Predictions awaiting a label.", st["entries"])
        yield gauge(
            "prediction_store_capacity", "Most predictions the store keeps.", st["capacity"]
        )
        fam = CounterMetricFamily(
            f"{PREFIX}_prediction_store_evictions",
            "Predictions evicted before a label arrived, by reason.",
            labels=["reason"],
        )
        fam.add_metric(["capacity"], st["evicted_capacity"])
        fam.add_metric(["ttl"], st["evicted_ttl"])
        yield fam
        if "durable" in st:
            yield from self._durable_store(st, s.get("reloads"))
        pl = s["pipeline"]
        yield gauge(
            "pipeline_queued_batches", "Batches waiting for the background worker.", pl["queued"]
        )
        yield counter(
            "pipeline_processed_rows", "Rows folded into the statistics.", pl["processed_rows"]
        )
        yield counter(
            "pipeline_sampled_out_rows",
            "Rows shed because the worker fell behind (counted, never silent).",
            pl["sampled_out_rows"],
        )
        yield counter(
            "pipeline_sink_errors", "Exceptions raised by statistics sinks.", pl["sink_errors"]
        )
        yield gauge(
            "uptime_seconds", "Seconds since the sidecar started serving.", s["uptime_seconds"]
        )
        ident = s["identity"]
        yield gauge(
            "embedder_version_mismatch",
            "1 while traffic carried an embedder version the bundle was not validated for "
            "(within mismatch_hold_seconds).",
            float(ident["embedder_version_mismatch"]),
        )
        if s["detection"] is not None:
            yield from detection_families(s["detection"])
        if s.get("canary") is not None:
            c = s["canary"]
            yield counter(
                "canary_runs", "Canary runs (the bundle's labelled texts re-scored).", c["runs"]
            )
            yield gauge(
                "canary_last_run_timestamp_seconds",
                "When the last canary run ended.",
                c["last_run_at"],
            )
            yield gauge(
                "canary_failing",
                "1 when the last canary run raised an error.",
                float(bool(c["last_error"])),
            )
            for key in (
                "roc_auc",
                "accuracy",
                "mean_confidence",
                "silent_failure_ratio",
                "confidence_minus_accuracy",
            ):
                yield gauge(
                    f"canary_{key}",
                    f"Canary {key.replace('_', ' ')} (last run).",
                    c["metrics"].get(key, float("nan")),
                )


def detection_families(d: dict) -> Iterable[Metric]:
    """Drift, confidence, change-point and labelled-calibration metrics (docs/detection.md)."""

    def labelled_gauge(name: str, doc: str, label: str, values: dict[str, float]):
        fam = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=[label])
        for k, v in values.items():
            fam.add_metric([k], float(v))
        return fam

    readings = {k: r for k, (r, _) in d["detectors"].items()}
    nan = float("nan")
    yield labelled_gauge(
        "drift_statistic",
        "Latest window statistic of each drift detector.",
        "detector",
        {k: (r.statistic if r else nan) for k, r in readings.items()},
    )
    yield labelled_gauge(
        "drift_threshold",
        "Alarm threshold of each detector, calibrated on held-out clean windows to "
        "silentwatch_drift_false_alarm_rate.",
        "detector",
        {k: (r.threshold if r else nan) for k, r in readings.items()},
    )
    yield labelled_gauge(
        "drift_alarm",
        "1 when the detector's latest window exceeded its threshold.",
        "detector",
        {k: float(r.alarm) if r else 0.0 for k, r in readings.items()},
    )
    fam = CounterMetricFamily(
        f"{PREFIX}_drift_alarms", "Windows that raised each detector's alarm.", labels=["detector"]
    )
    for k, (_, total) in d["detectors"].items():
        fam.add_metric([k], total)
    yield fam
    # domain_auc runs every k-th window: alarm shares need each detector's own count.
    fam = CounterMetricFamily(
        f"{PREFIX}_drift_evaluations",
        "Windows each detector actually ran on (domain_auc: every domain_every-th).",
        labels=["detector"],
    )
    for k, n in d["evaluations"].items():
        fam.add_metric([k], n)
    yield fam
    yield GaugeMetricFamily(
        f"{PREFIX}_drift_false_alarm_rate",
        "Per-window false-alarm rate the thresholds were calibrated to.",
        value=d["false_alarm_rate"],
    )
    yield CounterMetricFamily(
        f"{PREFIX}_drift_windows_evaluated",
        "Windows the detectors ran on.",
        value=d["windows_evaluated"],
    )
    yield CounterMetricFamily(
        f"{PREFIX}_drift_windows_skipped",
        "Windows skipped over max_window_evaluations_per_second.",
        value=d["windows_skipped"],
    )
    yield GaugeMetricFamily(
        f"{PREFIX}_embedding_centroid_angle_degrees",
        "Angle between the latest window's mean embedding and the reference mean.",
        value=d["centroid_angle_degrees"],
    )
    c = d["confidence"]
    win = c["window"] or {}
    ref = c["reference"]
    for key, name, doc in (
        ("mean_confidence", "confidence_mean", "Mean top-label confidence max(p, 1-p)."),
        (
            "high_confidence_share",
            "high_confidence_share",
            "Share of predictions with max(p, 1-p) above the bundle's high_confidence.",
        ),
        ("positive_rate", "predicted_positive_rate", "Share of predictions flagged."),
    ):
        yield labelled_gauge(
            name,
            doc + " sample=window: latest window; sample=reference: held-out clean data.",
            "sample",
            {"window": win.get(key, nan), "reference": ref[key]},
        )
    yield GaugeMetricFamily(
        f"{PREFIX}_confidence_mean_change",
        "Window mean confidence minus the reference's.",
        value=c["mean_confidence_change"],
    )
    yield GaugeMetricFamily(
        f"{PREFIX}_confidence_mean_relative_change",
        "(window - reference) / reference mean confidence.",
        value=c["mean_confidence_relative_change"],
    )
    yield CounterMetricFamily(
        f"{PREFIX}_change_stream_thinned_rows",
        "Rows the change-point streams skipped over change_max_samples_per_second.",
        value=d["change_thinned_rows"],
    )
    fam = CounterMetricFamily(
        f"{PREFIX}_change_points",
        "Change points found by river detectors on per-sample streams.",
        labels=["detector", "stream"],
    )
    for key, (count, _, _) in d["change_points"].items():
        fam.add_metric(key.split(":"), count)
    yield fam
    yield GaugeMetricFamily(
        f"{PREFIX}_drift_alarm_any",
        "1 when any drift detector alarms on its latest window.",
        value=float(d["drift_alarm"]),
    )
    yield GaugeMetricFamily(
        f"{PREFIX}_silent_failure_suspected",
        "1 when a drift alarm is up while mean confidence has not fallen by more than the "
        "configured band: paper A's silent-failure signature.",
        value=float(d["silent_failure_suspected"]),
    )
    yield CounterMetricFamily(
        f"{PREFIX}_silent_failure_suspected_windows",
        "Windows that raised silentwatch_silent_failure_suspected.",
        value=d["silent_failure_suspected_windows"],
    )
    # k-of-n alerting reads these (deploy/prometheus/rules, docs/alerts.md).
    yield GaugeMetricFamily(
        f"{PREFIX}_recent_windows",
        "Windows in the recent ring the k-of-n alerts read (at most 10).",
        value=d["recent_windows"],
    )
    yield GaugeMetricFamily(
        f"{PREFIX}_silent_failure_suspected_recent_windows",
        "Of the recent windows, how many raised silent_failure_suspected.",
        value=d["recent_suspected_windows"],
    )
    alarms = GaugeMetricFamily(
        f"{PREFIX}_drift_recent_alarms",
        "Of each detector's last (at most 10) evaluations, how many alarmed.",
        labels=["detector"],
    )
    evals = GaugeMetricFamily(
        f"{PREFIX}_drift_recent_evaluations",
        "How many evaluations each detector's recent ring holds (at most 10).",
        labels=["detector"],
    )
    for k, (alarmed, held) in d["recent_alarms"].items():
        alarms.add_metric([k], alarmed)
        evals.add_metric([k], held)
    yield alarms
    yield evals
    lab = d["labelled"]
    for key, name, doc in LABELLED_METRICS:
        yield labelled_gauge(
            f"labelled_{name}",
            doc + " window=rolling: the last label_window labelled predictions; "
            "window=cumulative: since start.",
            "window",
            {w: lab[w].get(key, nan) for w in ("rolling", "cumulative")},
        )


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
