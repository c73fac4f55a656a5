"""The sidecar process: gRPC (Monitor + health + reflection) and an HTTP /metrics port."""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import start_http_server

from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

from .bundle import LoadedBundle, load_bundle
from .canary import CanaryMonitor, TextEmbedder
from .config import ServeSettings
from .detectors.suite import CalibrationError, suite_for_bundle
from .engine import DetectionEngine, EngineOptions, WindowSpec
from .metrics import RequestMetrics, StateCollector, TrafficSink
from .pipeline import Pipeline, Sink
from .predictions import PredictionStore
from .service import MonitorService

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Monitor"].full_name


def build_engine(bundle: LoadedBundle, s: ServeSettings) -> tuple[DetectionEngine | None, str]:
    """The detection engine the settings ask for, or ``(None, why not)``.

    Raises :class:`ValueError` (a configuration problem the user must fix) for unknown
    detector names or a window smaller than anything calibrated.
    """
    if not s.detection:
        return None, "turned off (detection: false)"
    try:
        suite = suite_for_bundle(bundle)
    except CalibrationError as exc:
        log.warning("drift detection is off: %s", exc)
        return None, str(exc)
    if suite.calibration.source == "startup-split":
        log.warning(
            "bundle %s carries no calibrated detector thresholds; calibrated at start-up on a "
            "split of its reference sample (window %d); rebuild it with `silentwatch bundle "
            "train` for thresholds from held-out data",
            bundle.path,
            suite.calibration.settings.window_size,
        )
    size = s.window_size or suite.calibration.settings.window_size
    stride = s.window_stride or size
    if stride > size:
        raise ValueError(f"window_stride {stride} is larger than window_size {size}")
    window = WindowSpec(
        mode=s.window_mode,
        size=size,
        stride=stride,
        seconds=s.window_seconds,
        stride_seconds=s.window_stride_seconds or s.window_seconds,
        max_rows=s.max_window_rows,
    )
    pairs = []
    for item in s.change_detectors:
        kind, _, stream = item.partition(":")
        if stream not in ("score", "reconstruction_error") or kind not in (
            "adwin",
            "page_hinkley",
            "kswin",
        ):
            raise ValueError(
                f"change detector {item!r} is not kind:stream with kind adwin, page_hinkley or "
                "kswin and stream score or reconstruction_error"
            )
        pairs.append((kind, stream))
    m = bundle.manifest
    options = EngineOptions(
        window=window,
        detectors=tuple(s.detectors) if s.detectors is not None else tuple(suite.detectors),
        domain_every=s.domain_every,
        max_evaluations_per_second=s.max_window_evaluations_per_second,
        change_max_samples_per_second=s.change_max_samples_per_second,
        confidence_band=s.confidence_band,
        label_window=s.label_window,
        change_pairs=tuple(pairs),
        flag=m.thresholds.flag,
        high_confidence=m.thresholds.high_confidence,
    )
    return DetectionEngine(suite, options, normalize=m.embedder.normalized), ""


@dataclass
class Sidecar:
    """One running sidecar; ``start()`` binds both ports and returns.

    Examples
    --------
    >>> # sidecar = Sidecar(settings).start(); ...; sidecar.stop()
    """

    settings: ServeSettings
    bundle: LoadedBundle | None = None
    extra_sinks: list[Sink] = field(default_factory=list)
    # Text mode: texts -> (n, d) unit embeddings with the bundle's embedder. Built by the
    # CLI (silentwatch.textmode) so that monitor never imports torch or transformers.
    text_embedder: TextEmbedder | None = None

    def __post_init__(self) -> None:
        if self.bundle is None:
            self.bundle = load_bundle(self.settings.bundle)
        s = self.settings
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.request_metrics = RequestMetrics(self.registry)
        self.traffic = TrafficSink(self.bundle.manifest.thresholds.flag)
        self.registry.register(self.traffic.scores)
        self.registry.register(self.traffic.confidence)
        self.store = PredictionStore(s.store_capacity, s.store_ttl_seconds)
        self.engine, reason = build_engine(self.bundle, s)
        self.canary: CanaryMonitor | None = None
        if self.text_embedder is not None and self.bundle.canaries is not None:
            t = self.bundle.manifest.thresholds
            self.canary = CanaryMonitor(
                self.bundle.canaries,
                self.text_embedder,
                self.bundle.scorer,
                interval=s.canary_interval_seconds,
                threshold=t.flag,
                high_confidence=t.high_confidence,
            )
        engine_sinks: list[Sink] = [self.engine] if self.engine is not None else []
        self.pipeline = Pipeline(
            [self.traffic, *engine_sinks, *self.extra_sinks], max_queued_rows=s.max_queued_rows
        )
        self.service = MonitorService(
            self.bundle,
            s,
            self.store,
            self.pipeline,
            self.request_metrics,
            self.traffic,
            engine=self.engine,
            detection_disabled_reason=reason,
            text_embedder=self.text_embedder,
            canary=self.canary,
        )
        m = self.bundle.manifest
        self.registry.register(
            StateCollector(
                self.service.state,
                {
                    "classifier_version": m.classifier_version,
                    "embedder_name": m.embedder.name,
                    "embedder_version": m.embedder.version,
                    "embedding_dim": str(m.embedding_dim),
                    "bundle_sha256": self.bundle.sha256[:16],
                },
                holdout=m.training.holdout_metrics,
                serving=lambda: self._serving,
            )
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.grpc_port = 0
        self.metrics_port = 0
        self._server: grpc.Server | None = None
        self._httpd = None
        self._stopped = threading.Event()
        self._serving = False  # what the health service says; exported as silentwatch_serving

    @property
    def grpc_target(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"{host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.settings.metrics_host}:{self.metrics_port}/metrics"

    def start(self) -> Sidecar:
        s = self.settings
        self.pipeline.start()
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=s.workers, thread_name_prefix="silentwatch-rpc"),
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_MonitorServicer_to_server(self.service, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        try:
            self.grpc_port = self._server.add_insecure_port(f"{s.host}:{s.port}")
        except RuntimeError as exc:  # grpcio >= 1.6x raises instead of returning 0
            raise OSError(f"could not bind gRPC to {s.host}:{s.port}: {exc}") from None
        if self.grpc_port == 0:
            raise OSError(f"could not bind gRPC to {s.host}:{s.port}")
        self._httpd, _ = start_http_server(
            s.metrics_port, addr=s.metrics_host, registry=self.registry
        )
        self.metrics_port = self._httpd.server_port
        self._server.start()
        if self.canary is not None:
            self.canary.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._serving = True
        log.info(
            "serving classifier %s (d=%d) on grpc %s, metrics %s",
            self.bundle.manifest.classifier_version,
            self.bundle.dim,
            self.grpc_target,
            self.metrics_url,
        )
        return self

    def stop(self, grace: float | None = None, drain: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, optional drain, in-flight calls finish, statistics flush."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        s = self.settings
        self.health.enter_graceful_shutdown()
        self._serving = False
        drain = s.drain_seconds if drain is None else drain
        if drain > 0:
            time.sleep(drain)
        if self._server is not None:
            self._server.stop(s.grace_seconds if grace is None else grace).wait()
        self.pipeline.stop()
        if self.canary is not None:
            self.canary.stop()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        log.info("sidecar stopped")

    def wait_for_signal(self) -> None:
        """Block until SIGTERM or SIGINT, then stop gracefully."""
        got = threading.Event()

        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            got.set()

        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not got.wait(0.5):
                pass
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
        self.stop()
