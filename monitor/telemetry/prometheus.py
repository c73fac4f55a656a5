"""Prometheus metrics (prefix ``silentwatch_``; the contract: docs/sidecar.md).

Three kinds of recording, chosen for what each costs on the request path:

* per-RPC counters and the duration histogram: one update per call, on the request path;
* score and confidence histograms: updated by the pipeline worker with one
  ``numpy.bincount`` per batch (:class:`ArrayHistogram`), never per row;
* store, pipeline, detection and label figures: read from their owners at scrape time
  (:class:`~.families.StateCollector`, one table of families), so they cost nothing until
  Prometheus asks.

Buckets for scores and confidences are fixed on 0..1 so replicas aggregate.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from silentwatch.monitor.scoring import confidence
from silentwatch.monitor.serving.pipeline import LabelBatch, PredictionBatch
from silentwatch.v1 import monitor_pb2 as pb

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
# Every Monitor RPC, from the wire contract itself (a new RPC needs no edit here).
RPCS = tuple(m.name for m in pb.DESCRIPTOR.services_by_name["Monitor"].methods)
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
