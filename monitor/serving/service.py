"""The ``silentwatch.v1.Monitor`` servicer: the request path.

Per call: validate, decode with one ``numpy.frombuffer``, one matrix-vector
product, record ids for the label join, enqueue for the pipeline, reply. All
statistics happen in the pipeline worker (:mod:`.pipeline`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from silentwatch.monitor.bundle import LoadedBundle
from silentwatch.monitor.config import ServeSettings
from silentwatch.monitor.detection.canary import CanaryRunner, TextEmbedder
from silentwatch.monitor.detection.engine import DetectionEngine
from silentwatch.monitor.detection.paired_canaries import (
    SOURCE_SUBMITTED,
    PairedCanaries,
    PairedCanaryStatus,
    unavailable_status,
)
from silentwatch.monitor.detection.status import EngineStatus
from silentwatch.monitor.detection.verdict import SilentFailureStatus, silent_failure
from silentwatch.monitor.serving.errors import RequestError, invalid, precondition
from silentwatch.monitor.serving.pipeline import LabelBatch, Pipeline, PredictionBatch
from silentwatch.monitor.serving.rpc import rpc
from silentwatch.monitor.serving.status import (
    HeadView,
    IdentityStatus,
    LabelCounts,
    PipelineStatus,
    SidecarStatus,
    StoreStatus,
    TrafficStatus,
)
from silentwatch.monitor.serving.status_proto import (
    embedder_message,
    reading_message,
    status_message,
)
from silentwatch.monitor.serving.wire import (
    batch_reply,
    check_request_ids,
    checked_norms,
    decode_embedding,
    decode_matrix,
    head_scores_message,
    packed_ids,
    request_ids_of,
    select_heads,
)
from silentwatch.monitor.state.persistence import StatePersister
from silentwatch.monitor.state.store import (
    DuplicateRequestIds,
    PredictionStore,
    StoreUnavailable,
)
from silentwatch.monitor.telemetry.prometheus import SOURCES, RequestMetrics, TrafficSink
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """Everything a request needs from the bundle, swapped as one reference on reload so
    that no request ever sees half of one bundle and half of another. Plain fields: read on
    every request."""

    bundle: LoadedBundle
    engine: DetectionEngine | None
    detection_disabled_reason: str
    scorer: Any
    dim: int
    normalize: bool
    threshold: float
    classifier_version: str
    # Paired canaries of this bundle, or why it has none (the reason GetCanaries gives).
    canaries: PairedCanaries | None
    canaries_reason: str
    # Multi-head bundles: the heads in column order (the default first) and their flag
    # thresholds; ``scorer`` then returns (n, heads). One head: (n,), as always.
    head_names: tuple[str, ...] = ("default",)
    head_flags: np.ndarray = field(default_factory=lambda: np.array([0.5], np.float32))

    @property
    def multi(self) -> bool:
        return len(self.head_names) > 1

    @classmethod
    def of(
        cls,
        bundle: LoadedBundle,
        engine: DetectionEngine | None,
        reason: str,
        canaries: PairedCanaries | str,
    ) -> Served:
        m = bundle.manifest
        heads = bundle.heads
        return cls(
            bundle,
            engine,
            reason,
            scorer=bundle.head_scorer if len(heads) > 1 else bundle.scorer,
            dim=m.embedding_dim,
            normalize=m.embedder.normalized,
            threshold=m.thresholds.flag,
            classifier_version=m.classifier_version,
            canaries=canaries if isinstance(canaries, PairedCanaries) else None,
            canaries_reason=canaries if isinstance(canaries, str) else "",
            head_names=tuple(h.name for h in heads),
            head_flags=np.array([h.thresholds.flag for h in heads], dtype=np.float32),
        )


class MonitorService(pb_grpc.MonitorServicer):
    def __init__(
        self,
        bundle: LoadedBundle,
        settings: ServeSettings,
        store: PredictionStore,
        pipeline: Pipeline,
        metrics: RequestMetrics,
        traffic: TrafficSink,
        paired_canaries: PairedCanaries | str,
        engine: DetectionEngine | None = None,
        detection_disabled_reason: str = "",
        text_embedder: TextEmbedder | None = None,
        canary: CanaryRunner | None = None,
        persister: StatePersister | None = None,
        store_open_error: str = "",
        reloads: dict[str, int] | None = None,
    ) -> None:
        self.served = Served.of(bundle, engine, detection_disabled_reason, paired_canaries)
        # Canary sets of bundles served before a reload: a submission for one is stale.
        self._retired_canary_sets: set[str] = set()
        self.settings = settings
        self.store = store
        self.pipeline = pipeline
        self.metrics = metrics
        self.traffic = traffic
        self.text_embedder = text_embedder
        self.canary = canary
        self.started_at = time.time()
        self.version_mismatches = 0
        self.last_mismatch_at: float | None = None
        self._recording = settings.recording
        # Durable-store failures: counted by operation, logged at most every 10 s.
        self.store_errors = {"record": 0, "join": 0}
        self.predictions_not_recorded = 0
        self.carried_refused = 0
        self._last_store_log = float("-inf")
        # Snapshots of the engine's state (durable store only); the Sidecar swaps it on reload.
        self.persister = persister
        # Owned by the Sidecar (it opens the store and reloads bundles); reported here.
        self.store_open_error = store_open_error
        self.reloads = reloads if reloads is not None else {}

    # The bundle-derived views, for callers outside the request path.
    @property
    def bundle(self) -> LoadedBundle:
        return self.served.bundle

    @property
    def engine(self) -> DetectionEngine | None:
        return self.served.engine

    @property
    def detection_disabled_reason(self) -> str:
        return self.served.detection_disabled_reason

    def swap(self, served: Served) -> None:
        """Serve another bundle from the next request on (one reference assignment)."""
        old = self.served.canaries
        if old is not None:
            self._retired_canary_sets.add(old.set_id)
        self.served = served

    # -- shared checks --------------------------------------------------------------
    def _check_identity(
        self, sv: Served, embedder_version: str, classifier_version: str = ""
    ) -> None:
        if classifier_version and classifier_version != sv.classifier_version:
            raise precondition(
                f"request expects classifier {classifier_version!r} but this sidecar serves "
                f"{sv.classifier_version!r}; deploy the matching bundle or drop "
                "classifier_version from the request"
            )
        spec = sv.bundle.manifest.embedder
        if not embedder_version:
            if self.settings.require_embedder_version:
                raise invalid(
                    f"embedder_version is required; send the version of {spec.name} that "
                    f"produced the embedding (this bundle is validated for {spec.version!r})"
                )
            return
        if spec.accepts(embedder_version):
            return
        self.version_mismatches += 1
        self.last_mismatch_at = time.time()
        self.metrics.version_mismatch.inc()
        if self.settings.embedder_version_policy == "reject":
            accepted = [spec.version, *spec.accepted_versions]
            raise precondition(
                f"embedder_version {embedder_version!r} is not one this bundle was validated for "
                f"({accepted}); a classifier can collapse silently on another embedder version: "
                "run `silentwatch gate` for it, or roll the embedder back"
            )

    def _embed_texts(self, sv: Served, texts: list[str]) -> np.ndarray:
        """Text mode: embed with the bundle's own embedder (on the request path: ~ms per text)."""
        if self.text_embedder is None:
            raise precondition(
                "this sidecar does not embed text: start it with --text-mode (needs the offline "
                "extra, pip install 'silentwatch[offline]'), or send embeddings"
            )
        if len(texts) > self.settings.max_batch_rows:
            raise invalid(
                f"{len(texts)} texts in one request, more than the limit of "
                f"{self.settings.max_batch_rows}; split them"
            )
        limit = self.settings.max_text_chars
        for i, t in enumerate(texts):
            if not t.strip():
                raise invalid(f"text {i} is empty; send the text to classify")
            if len(t) > limit:
                raise invalid(f"text {i} has {len(t)} characters, more than the limit of {limit}")
        x = np.ascontiguousarray(self.text_embedder(texts), dtype=np.float32)
        if x.shape != (len(texts), sv.dim):
            raise RequestError(
                grpc.StatusCode.INTERNAL,
                f"the text embedder returned shape {x.shape}, expected ({len(texts)}, {sv.dim})",
            )
        return x

    def _record(self, ids: list[str] | list[bytes], scores: np.ndarray) -> None:
        if not ids or not self._recording:
            return
        heads = 1 if scores.ndim == 1 else scores.shape[1]
        if heads != self.store.heads:
            # A request scored by the bundle a hot reload just replaced: the store now keeps
            # the new bundle's heads. Counted and logged like any prediction not recorded.
            self.predictions_not_recorded += len(ids)
            self._log_store_error(
                StoreUnavailable(f"scores for {heads} heads, the store keeps {self.store.heads}"),
                "predictions scored during a bundle reload are not recorded",
            )
            return
        try:
            self.store.record(ids, scores)
        except StoreUnavailable as exc:
            # Serving continues; the loss is counted and logged, never silent.
            self.store_errors["record"] += 1
            self.predictions_not_recorded += len(ids)
            self._log_store_error(exc, "predictions are not being recorded for the label join")
        except DuplicateRequestIds as exc:
            if exc.within_batch:
                raise RequestError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"request id {exc.ids[0]!r} appears twice in this batch; request ids must be "
                    "unique, nothing in this request was recorded",
                ) from None
            raise RequestError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"request id {exc.ids[0]!r} is already recorded and awaiting a label"
                + (f" (and {len(exc.ids) - 1} more)" if len(exc.ids) > 1 else "")
                + "; request ids must be unique, nothing in this request was recorded",
            ) from None

    def _log_store_error(self, exc: Exception, consequence: str) -> None:
        now = time.monotonic()
        if now - self._last_store_log >= 10.0:
            self._last_store_log = now
            log.error(
                "%s: %s; free disk space, fix the permissions of state_dir or raise "
                "store_max_bytes (silentwatch_store_errors_total counts every failure)",
                exc,
                consequence,
            )

    def _enqueue(
        self, x: np.ndarray, norms: np.ndarray, p: np.ndarray, source: str, ev: str
    ) -> None:
        """``p``: (n,) for one head, (n, heads) for several (column 0: the default head)."""
        if not self._recording:
            return
        if p.ndim == 2:
            batch = PredictionBatch(x, norms, p[:, 0], source, ev, time.time(), head_scores=p)
        else:
            batch = PredictionBatch(x, norms, p, source, ev, time.time())
        self.pipeline.submit_predictions(batch)

    @staticmethod
    def _heads_reply(sv: Served, p: np.ndarray, cols: np.ndarray | None) -> pb.HeadScores | None:
        """The reply's per-head scores: every head of a multi-head bundle, or those named."""
        if cols is None and not sv.multi:
            return None
        return head_scores_message(p if p.ndim == 2 else p[:, None], sv.head_names,
                                   sv.head_flags, cols)  # fmt: skip

    # -- RPCs -------------------------------------------------------------------------
    @rpc("Classify")
    def Classify(self, request: pb.ClassifyRequest, context: grpc.ServicerContext):
        sv = self.served
        ev = request.embedder_version
        if request.text:
            if request.HasField("embedding"):
                raise invalid("send text or an embedding, not both")
            self._check_identity(sv, "", request.classifier_version)
            x = self._embed_texts(sv, [request.text])
            ev = sv.bundle.manifest.embedder.version  # the sidecar's own embedder
        else:
            self._check_identity(sv, ev, request.classifier_version)
            x = decode_embedding(request.embedding, sv.dim)
        rid = request.request_id
        if rid:
            check_request_ids([rid], 1, self.settings.max_request_id_length)
        cols = select_heads(request.heads, sv.head_names)
        norms = checked_norms(x, need_nonzero=sv.normalize)
        p = sv.scorer.predict_proba(x, norms)
        self._record([rid] if rid else [], p)
        self._enqueue(x, norms, p, "classify", ev)
        p0 = float(p[0, 0] if p.ndim == 2 else p[0])
        resp = pb.ClassifyResponse(
            request_id=rid,
            p_unsafe=p0,
            flagged=p0 >= sv.threshold,
            confidence=max(p0, 1.0 - p0),
            classifier_version=sv.classifier_version,
        )
        if (heads := self._heads_reply(sv, p, cols)) is not None:
            resp.heads.CopyFrom(heads)
        return resp, 1

    @rpc("ClassifyBatch")
    def ClassifyBatch(self, request: pb.ClassifyBatchRequest, context: grpc.ServicerContext):
        sv = self.served
        ev = request.embedder_version
        if len(request.texts):
            if request.HasField("embeddings"):
                raise invalid("send texts or embeddings, not both")
            self._check_identity(sv, "", request.classifier_version)
            x = self._embed_texts(sv, list(request.texts))
            ev = sv.bundle.manifest.embedder.version
        else:
            self._check_identity(sv, ev, request.classifier_version)
            x = decode_matrix(request.embeddings, sv.dim, self.settings.max_batch_rows)
        ids = request_ids_of(request, x.shape[0], self.settings.max_request_id_length)
        cols = select_heads(request.heads, sv.head_names)
        norms = checked_norms(x, need_nonzero=sv.normalize)
        p_all = sv.scorer.predict_proba(x, norms)
        self._record(ids, p_all)
        self._enqueue(x, norms, p_all, "classify", ev)
        p = p_all[:, 0] if p_all.ndim == 2 else p_all
        resp = batch_reply(p, sv.threshold, sv.classifier_version)
        if (heads := self._heads_reply(sv, p_all, cols)) is not None:
            resp.heads.CopyFrom(heads)
        return resp, x.shape[0]

    @rpc("Observe")
    def Observe(self, request: pb.ObserveRequest, context: grpc.ServicerContext):
        sv = self.served
        self._check_identity(sv, request.embedder_version)
        x = decode_matrix(request.embeddings, sv.dim, self.settings.max_batch_rows)
        n = x.shape[0]
        ids = request_ids_of(request, n, self.settings.max_request_id_length)
        norms = checked_norms(x, need_nonzero=sv.normalize)
        if len(request.p_unsafe):
            if len(request.p_unsafe) != n:
                raise invalid(
                    f"{len(request.p_unsafe)} p_unsafe values for {n} rows; "
                    "send one per row, or none"
                )
            p = np.asarray(request.p_unsafe, dtype=np.float32)
            if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
                raise invalid("p_unsafe values must be probabilities in [0, 1]")
            if sv.multi:
                # The caller's score is the default head's; the other heads are the bundle's.
                p_all = sv.scorer.predict_proba(x, norms)
                p_all[:, 0] = p
                p = p_all
        else:
            p = sv.scorer.predict_proba(x, norms)
        self._record(ids, p)
        self._enqueue(x, norms, p, "observe", request.embedder_version)
        return pb.ObserveResponse(accepted=n), n

    @rpc("SubmitLabels")
    def SubmitLabels(self, request: pb.SubmitLabelsRequest, context: grpc.ServicerContext):
        sv = self.served
        labels = request.labels
        if (
            request.packed_request_ids
            or request.packed_unsafe
            or request.packed_head
            or request.packed_p_unsafe
            or request.packed_embedder_version
            or request.packed_classifier_version
        ):
            if len(labels):
                raise invalid(
                    "send labels or packed_request_ids with packed_unsafe, not both; nothing "
                    "in this request was accepted"
                )
            ids, y, heads = self._packed_labels(sv, request)
            carried, refused = self._packed_carried(sv, request, len(ids))
        else:
            self._check_label_count(len(labels))
            ids = [lab.request_id for lab in labels]
            y = np.fromiter((lab.unsafe for lab in labels), dtype=np.int8, count=len(labels))
            heads = self._label_heads(sv, labels)
            carried, refused = self._carried_scores(sv, labels)
        try:
            res = self.store.join(ids, y, carried, heads=heads)
        except StoreUnavailable as exc:
            self.store_errors["join"] += 1
            self._log_store_error(exc, "labels are being refused with UNAVAILABLE")
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE,
                f"the label store cannot be written ({exc}); nothing in this request was "
                "accepted: retry later",
            ) from None
        self.carried_refused += refused
        if res.joined:
            self.pipeline.submit_labels(
                LabelBatch(
                    res.scores,
                    res.labels,
                    time.time(),
                    last_seq=res.label_seq,
                    heads=res.heads if sv.multi else None,
                )
            )
        return (
            pb.SubmitLabelsResponse(
                received=len(ids),
                joined=res.joined,
                unknown=res.unknown,
                expired=res.expired,
                already_labelled=res.already_labelled,
                unmatched_request_ids=res.unmatched_ids,
                joined_carried=res.carried,
                carried_refused=refused,
            ),
            0,
        )

    def _packed_labels(
        self, sv: Served, request: pb.SubmitLabelsRequest
    ) -> tuple[list[bytes], np.ndarray, np.ndarray | None]:
        """Columnar labels: ids, 0/1 labels and one head for all; refused whole (nothing
        joined) when the fields do not fit together."""
        flags = np.frombuffer(request.packed_unsafe, dtype=np.uint8)
        m = flags.shape[0]
        self._check_label_count(m)
        if m == 0:
            raise invalid(
                "packed_unsafe is empty; send one byte per packed id (1: unsafe, 0: safe)"
            )
        if flags.max() > 1:
            at = int(np.argmax(flags > 1))
            raise invalid(
                f"packed_unsafe[{at}] is {int(flags[at])}; send 1 (unsafe) or 0 (safe) per id, "
                "nothing in this request was accepted"
            )
        ids = packed_ids(
            request.packed_request_ids,
            m,
            per="label (packed_unsafe has one byte per label)",
            then="nothing in this request was accepted",
        )
        heads = None
        if request.packed_head:
            j = _head_index(sv, request.packed_head, "packed_head is")
            heads = np.full(m, j, dtype=np.int16) if j else None
        return ids, flags.astype(np.int8), heads

    @staticmethod
    def _packed_carried(
        sv: Served, request: pb.SubmitLabelsRequest, m: int
    ) -> tuple[np.ndarray | None, int]:
        """Columnar carried scores (NaN: none) and how many were refused for another
        embedder or classifier version; bad fields refuse the whole request."""
        raw = request.packed_p_unsafe
        ev, cv = request.packed_embedder_version, request.packed_classifier_version
        if not raw:
            if ev or cv:
                raise invalid(
                    "packed_embedder_version / packed_classifier_version without "
                    "packed_p_unsafe: send the carried scores too, or neither; nothing in this "
                    "request was accepted"
                )
            return None, 0
        if len(raw) != 4 * m:
            raise invalid(
                f"packed_p_unsafe has {len(raw)} bytes for {m} labels; send one float32 "
                "(little-endian, NaN for none) per packed id; nothing in this request was "
                "accepted"
            )
        p = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        given = ~np.isnan(p)
        bad = given & ~((p >= 0.0) & (p <= 1.0))
        if bad.any():
            at = int(np.argmax(bad))
            raise invalid(
                f"packed_p_unsafe[{at}] is {float(p[at])}, not a probability in [0, 1] (NaN: "
                "none); send the score the sidecar returned; nothing in this request was "
                "accepted"
            )
        spec = sv.bundle.manifest.embedder
        if (ev and not spec.accepts(ev)) or (cv and cv != sv.classifier_version):
            return None, int(given.sum())  # scores from another model say nothing here
        return p, 0

    def _check_label_count(self, m: int) -> None:
        if m > self.settings.max_batch_rows:
            raise invalid(
                f"{m} labels in one request, more than the limit of "
                f"{self.settings.max_batch_rows}; split them"
            )

    @staticmethod
    def _label_heads(sv: Served, labels) -> np.ndarray | None:
        """Each label's head index (None: every label is for the default head). An unknown
        head refuses the whole request before anything is joined."""
        if not any(lab.head for lab in labels):
            return None
        out = np.zeros(len(labels), dtype=np.int16)
        for i, lab in enumerate(labels):
            if lab.head:
                out[i] = _head_index(sv, lab.head, f"label {i} ({lab.request_id!r}) is for head")
        return out

    def _carried_scores(self, sv: Served, labels) -> tuple[np.ndarray | None, int]:
        """Scores labels carry for the stateless path (NaN: none or refused), and how many
        were refused for another embedder or classifier version."""
        if not any(lab.HasField("p_unsafe") for lab in labels):
            return None, 0
        spec = sv.bundle.manifest.embedder
        out = np.full(len(labels), np.nan, dtype=np.float32)
        refused = 0
        for i, lab in enumerate(labels):
            if not lab.HasField("p_unsafe"):
                continue
            p = lab.p_unsafe
            if not (0.0 <= p <= 1.0):  # also false for NaN
                raise invalid(
                    f"label {i} ({lab.request_id!r}) carries p_unsafe={p}, not a probability "
                    "in [0, 1]; send the score the sidecar returned, or none"
                )
            ev, cv = lab.embedder_version, lab.classifier_version
            if (ev and not spec.accepts(ev)) or (cv and cv != sv.classifier_version):
                refused += 1  # a score from another model says nothing about this one
                continue
            out[i] = p
        return out, refused

    @rpc("GetStatus")
    def GetStatus(self, request: pb.GetStatusRequest, context: grpc.ServicerContext):
        return self.status(), 0

    # -- paired canaries (docs/detection.md) -------------------------------------------
    def _paired(self, sv: Served) -> PairedCanaries:
        if sv.canaries is None:
            raise precondition(f"paired canaries are unavailable: {sv.canaries_reason}")
        return sv.canaries

    @rpc("GetCanaries")
    def GetCanaries(self, request: pb.GetCanariesRequest, context: grpc.ServicerContext):
        sv = self.served
        pc = self._paired(sv)
        return (
            pb.GetCanariesResponse(
                canary_set_id=pc.set_id,
                texts=pc.texts,
                embedding_dim=sv.dim,
                bundle_sha256=sv.bundle.sha256,
                classifier_version=sv.classifier_version,
                embedder=embedder_message(sv.bundle.manifest.embedder),
            ),
            0,
        )

    @rpc("SubmitCanaryEmbeddings")
    def SubmitCanaryEmbeddings(
        self, request: pb.SubmitCanaryEmbeddingsRequest, context: grpc.ServicerContext
    ):
        sv = self.served
        pc = self._paired(sv)
        sid = request.canary_set_id
        if not sid:
            raise invalid("canary_set_id is required: send the one GetCanaries returned")
        if sid != pc.set_id:
            if sid in self._retired_canary_sets:
                raise precondition(
                    f"canary set {sid!r} belongs to a bundle this sidecar no longer serves (it "
                    f"now serves {pc.set_id!r}); call GetCanaries again and re-embed its texts"
                )
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"unknown canary set {sid!r}; this sidecar serves {pc.set_id!r}: call "
                "GetCanaries and send its canary_set_id",
            )
        if not request.HasField("embeddings"):
            raise invalid(
                f"embeddings are missing; send the {pc.size} canary texts' embeddings, "
                "one row per text in GetCanaries order"
            )
        m = request.embeddings
        if m.rows and m.rows != pc.size:
            raise invalid(
                f"{m.rows} rows but canary set {pc.set_id!r} has {pc.size} texts; embed every "
                "text GetCanaries returned, in its order"
            )
        x = decode_matrix(m, sv.dim, max(pc.size, self.settings.max_batch_rows))
        # Every canary is compared by angle, so zero rows are refused too, whatever the
        # bundle's normalisation.
        checked_norms(x, need_nonzero=True)
        if why := pc.misordered(x):
            raise invalid(why)
        sub = pc.update(x, source=SOURCE_SUBMITTED, embedder_version=request.embedder_version)
        readings = sub.heads or (sub.reading,)
        for name, r in zip(sv.head_names, readings, strict=True):
            if r.failure:
                log.error(
                    "paired canaries: head %s got worse on its canaries (ROC-AUC %.3f -> "
                    "%.3f, drop >= %.3f); embedder_version %r",
                    name,
                    r.reference_auc,
                    r.live_auc,
                    r.auc_drop.lower_bound,
                    sub.embedder_version,
                    extra={"event": "canary_failure", "head": name},
                )
        resp = pb.SubmitCanaryEmbeddingsResponse(reading=reading_message(sub))
        if sv.multi:
            for name, r in zip(sv.head_names, readings, strict=True):
                resp.heads.add(head=name, reading=reading_message(sub, r))
        return resp, pc.size

    # -- status ----------------------------------------------------------------------
    def state(self) -> SidecarStatus:
        """Everything GetStatus and the Prometheus collector report, read once, now."""
        self.store.expire()  # in memory for both stores: never fails on the disk
        c = self.store.counters
        t = self.traffic
        now = time.time()
        ago = None if self.last_mismatch_at is None else now - self.last_mismatch_at
        pers = self.persister
        last_snap = None if pers is None else pers.last_snapshot_at
        sv = self.served
        detection = None if sv.engine is None else sv.engine.snapshot()
        paired = (
            unavailable_status(sv.canaries_reason)
            if sv.canaries is None
            else sv.canaries.snapshot()
        )
        verdict = silent_failure(
            detection, paired, sv.detection_disabled_reason, head_names=sv.head_names
        )
        return SidecarStatus(
            uptime_seconds=now - self.started_at,
            identity=IdentityStatus(
                embedder_version_mismatch=ago is not None
                and ago <= self.settings.mismatch_hold_seconds,
                last_mismatch_seconds_ago=ago,
            ),
            traffic=TrafficStatus(
                predictions=dict(t.predictions),
                flagged=dict(t.flagged),
                version_mismatches=self.version_mismatches,
            ),
            labels=LabelCounts(
                received=c.labels_received,
                joined=c.labels_joined,
                unknown=c.labels_unknown,
                expired=c.labels_expired,
                already_labelled=c.labels_already_labelled,
                joined_carried=c.labels_carried,
                carried_refused=self.carried_refused,
            ),
            store=StoreStatus(
                entries=len(self.store),
                capacity=self.store.capacity,
                ttl_seconds=self.store.ttl_seconds,
                evicted_capacity=c.evicted_capacity,
                evicted_ttl=c.evicted_ttl,
                durable=self.store.durable,
                backend="sqlite" if self.store.durable else "memory",
                unfolded_labels=self._unfolded_labels(),
                errors=dict(self.store_errors),
                snapshots_written=0 if pers is None else pers.snapshots_written,
                snapshot_errors=0 if pers is None else pers.errors,
                last_snapshot_seconds_ago=None if last_snap is None else now - last_snap,
                labels_replayed_at_start=0 if pers is None else pers.report.labels_replayed,
                predictions_not_recorded=self.predictions_not_recorded,
                open_error=self.store_open_error,
            ),
            pipeline=PipelineStatus(
                queued=self.pipeline.queued_batches,
                processed_rows=self.pipeline.processed_rows,
                sampled_out_rows=self.pipeline.sampled_out_rows,
                sink_errors=self.pipeline.sink_errors,
            ),
            reloads=dict(self.reloads),
            detection=detection,
            detection_disabled_reason=sv.detection_disabled_reason,
            canary=None if self.canary is None else self.canary.snapshot(),
            paired_canaries=paired,
            silent_failure=verdict,
            heads=self._head_views(sv, detection, paired, verdict),
        )

    def _head_views(
        self,
        sv: Served,
        detection: EngineStatus | None,
        paired: PairedCanaryStatus,
        verdict: SilentFailureStatus,
    ) -> tuple[HeadView, ...]:
        t = self.traffic
        positives = dict(zip(paired.head_names, paired.head_positives, strict=True))
        return tuple(
            HeadView(
                name=head.name,
                is_default=j == 0,
                flag_threshold=head.thresholds.flag,
                high_confidence=head.thresholds.high_confidence,
                flagged={src: t.flagged_by_head.get((src, head.name), 0) for src in SOURCES},
                detection=None
                if detection is None or len(detection.heads) <= j
                else detection.heads[j],
                paired_canary=paired.head_reading(j) if paired.available else None,
                canary_positives=positives.get(head.name, 0),
                silent_failure=verdict.heads[j].status,
            )
            for j, head in enumerate(sv.bundle.heads)
        )

    def status(self) -> pb.GetStatusResponse:
        """:meth:`state` as the GetStatus message."""
        return status_message(self.state(), self.bundle)

    def _unfolded_labels(self) -> int:
        if not self.store.durable:
            return 0
        try:
            return self.store.unfolded_labels()
        except Exception:  # a status read must not fail because the disk did
            return -1


def _head_index(sv: Served, name: str, what: str) -> int:
    """The column of the head a label names; an unknown one refuses the whole request
    (``what`` says where the name came from)."""
    try:
        return sv.head_names.index(name)
    except ValueError:
        raise invalid(
            f"{what} {name!r}, which this bundle does not have (its heads: "
            f"{', '.join(sv.head_names)}); nothing in this request was accepted"
        ) from None
