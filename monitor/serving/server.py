"""The sidecar process: gRPC (Monitor + health + reflection) and an HTTP /metrics port."""

from __future__ import annotations

import contextlib
import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import start_http_server

from silentwatch.monitor.bundle import BundleError, LoadedBundle, load_bundle
from silentwatch.monitor.bundle.io import Head
from silentwatch.monitor.bundle.manifest import TrainingSummary
from silentwatch.monitor.bundle.signature import verify_bundle_signature
from silentwatch.monitor.config import ServeSettings
from silentwatch.monitor.detection.canary import CanaryRunner, CanaryTarget, TextEmbedder
from silentwatch.monitor.detection.detectors.confidence import confidence_profile
from silentwatch.monitor.detection.engine import DetectionEngine, EngineOptions
from silentwatch.monitor.detection.heads import HeadSpec
from silentwatch.monitor.detection.paired_canaries import PairedCanaries
from silentwatch.monitor.detection.registry import parse_change_pair
from silentwatch.monitor.detection.suite import CalibrationError, suite_for_bundle
from silentwatch.monitor.detection.windows import WindowSpec
from silentwatch.monitor.serving.admin import ADMIN_SERVICE_NAME, AdminService
from silentwatch.monitor.serving.auth import AdminAuth
from silentwatch.monitor.serving.pipeline import Pipeline, Sink
from silentwatch.monitor.serving.service import MonitorService, Served
from silentwatch.monitor.serving.tls import server_credentials
from silentwatch.monitor.serving.wire import MalformedRequestGuard
from silentwatch.monitor.state.memory import MemoryStore
from silentwatch.monitor.state.persistence import StatePersister
from silentwatch.monitor.state.sqlite import SqliteStore
from silentwatch.monitor.state.store import PredictionStore, StoreUnavailable
from silentwatch.monitor.telemetry.families import StateCollector
from silentwatch.monitor.telemetry.prometheus import RequestMetrics, TrafficSink
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

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
    m = bundle.manifest
    options = EngineOptions(
        window=window,
        detectors=None if s.detectors is None else tuple(s.detectors),
        domain_every=s.domain_every,
        max_evaluations_per_second=s.max_window_evaluations_per_second,
        change_max_samples_per_second=s.change_max_samples_per_second,
        confidence_band=s.confidence_band,
        label_window=s.label_window,
        change_pairs=tuple(parse_change_pair(item) for item in s.change_detectors),
        flag=m.thresholds.flag,
        high_confidence=m.thresholds.high_confidence,
        **_confirmation_reference(m.training),
        confirmation_margin=s.confirmation_margin,
        confirmation_alpha=s.confirmation_alpha,
        confirm_every=s.confirm_every,
        default_head=bundle.heads[0].name,
        extra_heads=tuple(_head_spec(bundle, h) for h in bundle.heads[1:]),
        statistics_process=_statistics_process(bundle, s.detection_process),
    )
    return DetectionEngine(suite, options, normalize=m.embedder.normalized), ""


def _statistics_process(bundle: LoadedBundle, wanted: bool) -> tuple[str, str] | None:
    """What the detection process needs to rebuild the detectors: the bundle's path and hash
    (None: statistics in process; a bundle calibrated only at start-up cannot be rebuilt
    the same way in another process, so it stays in process, with a warning)."""
    if not wanted:
        return None
    if bundle.manifest.detectors is None:
        log.warning(
            "detection_process needs a bundle with calibrated detectors (`silentwatch bundle "
            "train`); bundle %s has none, so window statistics stay in the sidecar's process",
            bundle.path,
        )
        return None
    return str(bundle.path), bundle.sha256


def _holdout_by_head(bundle: LoadedBundle) -> dict[str, dict[str, float]]:
    """Each head's held-out metrics from training, by head name (the holdout gauges)."""
    return {h.name: dict(h.training.holdout_metrics) for h in bundle.heads}


def _head_flags(bundle: LoadedBundle) -> tuple[list[float], list[str]]:
    """Each head's flag threshold and name, in the bundle's order (TrafficSink)."""
    return [h.thresholds.flag for h in bundle.heads], [h.name for h in bundle.heads]


def _head_spec(bundle: LoadedBundle, head: Head) -> HeadSpec:
    """What the engine needs about a head other than the default one.

    Its reference confidence profile: its scores on the bundle's reference sample (training
    rows: slightly more confident than unseen traffic; the bundle records no held-out
    profile for heads other than the default, whose profile comes from calibration).
    """
    t = head.thresholds
    profile = confidence_profile(
        head.scorer.predict_proba(bundle.reference.embeddings),
        flag=t.flag,
        high_confidence=t.high_confidence,
    )
    return HeadSpec(
        name=head.name,
        flag=t.flag,
        high_confidence=t.high_confidence,
        reference_profile=profile,
        **_confirmation_reference(head.training),
    )


def _confirmation_reference(t: TrainingSummary) -> dict[str, Any]:
    """The held-out ROC-AUC and class counts label confirmation tests against (none when the
    head held nothing out). Bundles written before the counts were recorded give the
    positives from the stratified split's positive rate."""
    auc = t.holdout_metrics.get("roc_auc")
    if auc is None or t.n_holdout < 2:
        return {"reference_auc": None}
    pos = t.holdout_metrics.get("positives")
    pos = round(t.n_holdout * t.positive_rate) if pos is None else int(pos)
    return {
        "reference_auc": float(auc),
        "reference_positives": pos,
        "reference_negatives": t.n_holdout - pos,
    }


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
        if self.settings.bundle_public_key is not None:
            # Also for a bundle handed in already loaded (text mode, tests): what is served
            # is what must be signed. Checked against the manifest bytes that were loaded.
            fingerprint = verify_bundle_signature(
                self.bundle.path, self.bundle.sha256, self.settings.bundle_public_key
            )
            log.info(
                "bundle signature verified (Ed25519 key %s)",
                fingerprint,
                extra={"event": "bundle_signature_verified"},
            )
        # Built here so that an admin misconfiguration ends start-up (docs/security.md).
        self.admin_auth = AdminAuth.from_settings(self.settings)
        s = self.settings
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.request_metrics = RequestMetrics(self.registry)
        self.traffic = TrafficSink(*_head_flags(self.bundle))
        self.registry.register(self.traffic.scores)
        self.registry.register(self.traffic.confidence)
        self.engine, reason = build_engine(self.bundle, s)
        self.store = self._open_store(keep_labels=self.engine is not None)
        engine_sinks: list[Sink] = [self.engine] if self.engine is not None else []
        self.pipeline = Pipeline(
            [self.traffic, *engine_sinks, *self.extra_sinks],
            max_queued_rows=s.max_queued_rows,
            linger_seconds=s.pipeline_linger_seconds,
        )
        persister = self._persister_for(self.engine)
        if persister is not None:
            persister.restore()  # before any traffic: replayed labels come first
        if self.store.durable:  # a no-op while no engine has a persister (detection off)
            self.pipeline.add_periodic(s.snapshot_interval_seconds, self._snapshot)
        self._reload_lock = threading.Lock()
        self.reloads = {"ok": 0, "unchanged": 0, "refused": 0}
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
            persister=persister,
            store_open_error=self.store_open_error,
            reloads=self.reloads,
            paired_canaries=self._paired_canaries(self.bundle),
        )
        # Text mode's canary runs read the bundle the service serves at each run.
        self.canary: CanaryRunner | None = None
        if self.text_embedder is not None and self.bundle.canaries is not None:
            t = self.bundle.manifest.thresholds
            self.canary = self.service.canary = CanaryRunner(
                self._canary_target,
                self.text_embedder,
                interval=s.canary_interval_seconds,
                threshold=t.flag,
                high_confidence=t.high_confidence,
            )
        self._info = self._bundle_info(self.bundle)
        self._holdout = _holdout_by_head(self.bundle)
        self.registry.register(
            StateCollector(
                self.service.state,
                self._info,
                holdout=self._holdout,
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

    # -- paired canaries ---------------------------------------------------------------
    def _paired_canaries(self, bundle: LoadedBundle) -> PairedCanaries | str:
        s = self.settings
        return PairedCanaries.for_bundle(
            bundle,
            margin=s.canary_margin,
            alpha=s.canary_alpha,
            angle_tolerance=s.canary_angle_tolerance_degrees,
            brier_margin=s.canary_brier_margin,
        )

    def _canary_target(self) -> CanaryTarget:
        """Text mode's canary runs read the bundle served now (it may have been reloaded)."""
        sv = self.service.served
        bundle = sv.bundle
        if bundle.canaries is None:
            raise ValueError("the served bundle carries no canaries (reloaded without them)")
        return CanaryTarget(
            canaries=bundle.canaries,
            scorer=bundle.scorer,
            paired=sv.canaries,
            embedder_version=bundle.manifest.embedder.version,
        )

    # -- durable state -------------------------------------------------------------------
    def _open_store(self, *, keep_labels: bool) -> PredictionStore:
        """The configured store; an unusable durable one falls back to memory, loudly."""
        s = self.settings
        self.store_open_error = ""
        if s.store == "sqlite":
            path = s.state_dir / "store.sqlite3"
            try:
                return SqliteStore(
                    path,
                    s.store_capacity,
                    s.store_ttl_seconds,
                    bundle_sha256=self.bundle.sha256,
                    synchronous=s.store_synchronous,
                    max_bytes=s.store_max_bytes,
                    keep_labels=keep_labels,
                    heads=len(self.bundle.heads),
                )
            except (OSError, sqlite3.Error, StoreUnavailable) as exc:
                self.store_open_error = f"{type(exc).__name__}: {exc}"
                log.error(
                    "cannot open the durable store %s (%s): serving with an in-memory store; "
                    "labels awaiting a join will NOT survive a restart. Fix state_dir "
                    "(permissions, disk space) and restart",
                    path,
                    self.store_open_error,
                )
        return MemoryStore(s.store_capacity, s.store_ttl_seconds, heads=len(self.bundle.heads))

    def _persister_for(self, engine: DetectionEngine | None) -> StatePersister | None:
        """Snapshots need a durable store and an engine whose state they save."""
        if engine is None or not self.store.durable:
            return None
        return StatePersister(
            self.store, engine, max_age_seconds=self.settings.snapshot_max_age_seconds
        )

    @property
    def persister(self) -> StatePersister | None:
        """The service holds it (GetStatus reads it); one place, swapped on reload."""
        return self.service.persister

    def _snapshot(self) -> bool:
        """Periodic task on the pipeline worker (the engine's thread)."""
        return self.persister.snapshot() if self.persister is not None else False

    def snapshot_now(self) -> bool:
        """Write the state snapshot now, in order with the queued traffic."""
        if self.persister is None:
            return False
        return bool(self.pipeline.run_on_worker(self._snapshot))

    @staticmethod
    def _bundle_info(bundle: LoadedBundle) -> dict[str, str]:
        m = bundle.manifest
        return {
            "classifier_version": m.classifier_version,
            "embedder_name": m.embedder.name,
            "embedder_version": m.embedder.version,
            "embedding_dim": str(m.embedding_dim),
            "bundle_sha256": bundle.sha256[:16],
        }

    # -- hot reload ----------------------------------------------------------------------
    def reload(self, path: str | Path | None = None) -> tuple[bool, LoadedBundle]:
        """Load, verify and calibrate a bundle aside, then swap it in atomically.

        Returns ``(reloaded, bundle)``; ``reloaded`` is False when that exact bundle was
        already serving. Raises :class:`~silentwatch.monitor.bundle.BundleError` or
        :class:`ValueError` naming the problem when the new bundle is refused; the old one
        then keeps serving.
        """
        with self._reload_lock:
            try:
                new, engine, reason = self._prepare(Path(path) if path else self.settings.bundle)
            except (BundleError, ValueError) as exc:
                self.reloads["refused"] += 1
                log.error("bundle reload refused, the old bundle keeps serving: %s", exc)
                raise
            if new.sha256 == self.bundle.sha256:
                if engine is not None:
                    engine.close()  # built aside for nothing
                self.reloads["unchanged"] += 1
                log.info("bundle reload: %s is already serving", new.path)
                return False, self.bundle

            def swap_sinks() -> None:
                # On the worker thread: batches queued before the swap reach the old engine,
                # and no snapshot of the old engine runs after it.
                sinks = [self.traffic, *([engine] if engine is not None else []), *self.extra_sinks]
                self.traffic.set_heads(*_head_flags(new))
                self.pipeline.sinks = sinks
                old = self.service.persister
                if old is not None and engine is not None:
                    old.engine = engine  # keeps its exported snapshot counters
                else:
                    self.service.persister = self._persister_for(engine)
                if retired is not None:
                    retired.close()  # its statistics process, if any: no batch reaches it now

            retired = self.engine
            dropped = self.store.rebind(new.sha256, heads=len(new.heads))
            self.pipeline.run_on_worker(swap_sinks)
            self.service.swap(Served.of(new, engine, reason, self._paired_canaries(new)))
            self.bundle, self.engine = new, engine
            self._info.clear()
            self._info.update(self._bundle_info(new))
            self._holdout.clear()
            self._holdout.update(_holdout_by_head(new))
            self.reloads["ok"] += 1
            log.info(
                "bundle reloaded: now serving classifier %s (bundle %s); %d predictions awaiting "
                "labels were dropped (they belong to the previous classifier)",
                new.manifest.classifier_version,
                new.sha256[:16],
                dropped,
            )
            return True, new

    def _prepare(self, path: Path) -> tuple[LoadedBundle, DetectionEngine | None, str]:
        new = load_bundle(path)
        if self.settings.bundle_public_key is not None:
            verify_bundle_signature(new.path, new.sha256, self.settings.bundle_public_key)
        if self.text_embedder is not None:
            old_e, new_e = self.bundle.manifest.embedder, new.manifest.embedder
            if (old_e.name, old_e.weights_sha256) != (new_e.name, new_e.weights_sha256):
                raise BundleError(
                    f"text mode embeds with {old_e.name}; the new bundle expects "
                    f"{new_e.name}: restart the sidecar to change embedders"
                )
        engine, reason = build_engine(new, self.settings)
        if engine is None and self.settings.detection and self.engine is not None:
            raise BundleError(f"detection would turn off with the new bundle: {reason}")
        return new, engine, reason

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
        # Before anything starts: a bad TLS setting (ConfigError) leaves no thread behind.
        credentials = server_credentials(s)
        self.pipeline.start()
        # Bytes that are not the expected protobuf get INVALID_ARGUMENT naming the message
        # type, and are counted (grpcio alone answers INTERNAL and logs a traceback).
        guard = MalformedRequestGuard(
            SERVICE_NAME,
            ADMIN_SERVICE_NAME,
            on_refused=lambda rpc: self.request_metrics.observe(
                rpc, grpc.StatusCode.INVALID_ARGUMENT, 0.0, 0
            ),
        )
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=s.workers, thread_name_prefix="silentwatch-rpc"),
            interceptors=[guard],
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_MonitorServicer_to_server(self.service, self._server)
        names = [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME]
        if s.admin_enabled:  # off by default: not even registered (UNIMPLEMENTED)
            pb_grpc.add_AdminServicer_to_server(
                AdminService(self, self.request_metrics, self.admin_auth), self._server
            )
            names.append(ADMIN_SERVICE_NAME)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(names, self._server)
        try:
            if credentials is None:
                self.grpc_port = self._server.add_insecure_port(f"{s.host}:{s.port}")
            else:
                self.grpc_port = self._server.add_secure_port(f"{s.host}:{s.port}", credentials)
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
        self.pipeline.stop()  # drains the queue, then writes the final snapshot
        if self.engine is not None:
            self.engine.close()
        self.store.close()
        if self.canary is not None:
            self.canary.stop()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        log.info("sidecar stopped")

    def _reload_from_signal(self) -> None:
        log.info("received SIGHUP: reloading bundle %s", self.settings.bundle)
        # reload() logs why a bundle is refused; the old bundle keeps serving.
        with contextlib.suppress(BundleError, ValueError):
            self.reload()

    def wait_for_signal(self, on_ready: Callable[[], None] | None = None) -> None:
        """Block until SIGTERM or SIGINT, then stop gracefully; SIGHUP reloads the bundle.

        ``on_ready`` runs once the handlers are installed: announce readiness there, so a
        signal sent right after the announcement is never met by a default handler.
        """
        got = threading.Event()

        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            got.set()

        def hup(_signum: int, _frame: FrameType | None) -> None:
            # Never reload inside a signal handler: it may run for seconds (calibration).
            threading.Thread(target=self._reload_from_signal, daemon=True).start()

        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, hup)
        try:
            if on_ready is not None:
                on_ready()
            while not got.wait(0.5):
                pass
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
        self.stop()
