"""The sidecar over real gRPC on loopback: every RPC, health, reflection, /metrics."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from silentwatch.scrape import scrape
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

from .conftest import DIM, unit_rows


def batch_request(x: np.ndarray, ids: list[str] | None = None, **kw) -> pb.ClassifyBatchRequest:
    return pb.ClassifyBatchRequest(
        request_ids=ids or [],
        embeddings=pb.EmbeddingMatrix(
            rows=x.shape[0], dim=x.shape[1], f32le=x.astype("<f4").tobytes()
        ),
        **kw,
    )


def test_classify_matches_the_bundle_scorer(sidecar, stub):
    x = unit_rows(1)
    resp = stub.Classify(
        pb.ClassifyRequest(
            request_id="r1", embedding=pb.Embedding(f32le=x.tobytes()), embedder_version="v1"
        )
    )
    expected = float(sidecar.bundle.scorer.predict_proba(x)[0])
    assert resp.p_unsafe == pytest.approx(expected, abs=1e-6)
    assert resp.confidence == pytest.approx(max(expected, 1 - expected), abs=1e-6)
    assert resp.flagged == (expected >= 0.5)
    assert resp.request_id == "r1"
    assert resp.classifier_version == "clf-test"


def test_repeated_float_form_gives_the_same_score(stub):
    x = unit_rows(3, seed=5)
    packed = stub.ClassifyBatch(batch_request(x))
    floats = stub.ClassifyBatch(
        pb.ClassifyBatchRequest(
            embeddings=pb.EmbeddingMatrix(
                rows=3, dim=DIM, values=pb.FloatValues(values=x.ravel().tolist())
            )
        )
    )
    np.testing.assert_allclose(packed.p_unsafe, floats.p_unsafe, atol=1e-7)
    one = stub.Classify(
        pb.ClassifyRequest(embedding=pb.Embedding(values=pb.FloatValues(values=x[0].tolist())))
    )
    assert one.p_unsafe == pytest.approx(packed.p_unsafe[0], abs=1e-7)


def test_scale_of_the_embedding_does_not_matter_when_the_bundle_normalises(stub):
    x = unit_rows(4, seed=9)
    a = stub.ClassifyBatch(batch_request(x)).p_unsafe
    b = stub.ClassifyBatch(batch_request(x * 7.5)).p_unsafe
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_metrics_count_exactly_what_was_sent(sidecar, stub):
    n_unary, batches, rows = 7, 3, 50
    for i in range(n_unary):
        stub.Classify(
            pb.ClassifyRequest(
                request_id=f"u{i}", embedding=pb.Embedding(f32le=unit_rows(1, seed=i).tobytes())
            )
        )
    scores = []
    for b in range(batches):
        x = unit_rows(rows, seed=100 + b)
        scores += list(
            stub.ClassifyBatch(batch_request(x, [f"b{b}-{i}" for i in range(rows)])).p_unsafe
        )
    stub.Observe(
        pb.ObserveRequest(
            embeddings=pb.EmbeddingMatrix(rows=2, dim=DIM, f32le=unit_rows(2).tobytes()),
            p_unsafe=[0.05, 0.97],
        )
    )
    assert sidecar.pipeline.wait_idle(5)
    m = scrape(sidecar.metrics_url)
    total = n_unary + batches * rows
    assert m.get_value("silentwatch_requests_total", rpc="Classify", code="OK") == n_unary
    assert m.get_value("silentwatch_requests_total", rpc="ClassifyBatch", code="OK") == batches
    assert (
        m.get_value("silentwatch_embeddings_received_total", rpc="ClassifyBatch") == batches * rows
    )
    assert m.get_value("silentwatch_request_duration_seconds_count", rpc="ClassifyBatch") == batches
    assert (
        m.get_value("silentwatch_prediction_score_count", source="classify", head="default")
        == total
    )
    assert (
        m.get_value("silentwatch_prediction_confidence_count", source="classify", head="default")
        == total
    )
    assert m.get_value("silentwatch_predictions_total", source="classify") == total
    assert m.get_value("silentwatch_prediction_score_count", source="observe", head="default") == 2
    assert m.get_value(
        "silentwatch_prediction_score_sum", source="observe", head="default"
    ) == pytest.approx(1.02, abs=1e-5)
    # Buckets are cumulative and agree with the scores the client saw.
    buckets = m.buckets("silentwatch_prediction_score", source="classify")
    assert [le for le, _ in buckets][:3] == [0.05, 0.1, 0.15] and buckets[-1] == (
        float("inf"),
        total,
    )
    le_half = dict(buckets)[0.5]
    batch_scores = np.asarray(scores)
    assert le_half >= np.count_nonzero(batch_scores <= 0.5)
    assert le_half <= np.count_nonzero(batch_scores <= 0.5) + n_unary
    assert m.get_value("silentwatch_prediction_store_entries") == total
    info = [k for k in m if k[0] == "silentwatch_classifier_info"]
    assert info and dict(info[0][1])["classifier_version"] == "clf-test"
    assert dict(info[0][1])["embedder_version"] == "v1"


def test_labels_join_by_request_id(sidecar, stub):
    x = unit_rows(5, seed=11)
    p = stub.ClassifyBatch(batch_request(x, [f"id{i}" for i in range(5)])).p_unsafe
    resp = stub.SubmitLabels(
        pb.SubmitLabelsRequest(
            labels=[
                pb.Label(request_id="id0", unsafe=True),
                pb.Label(request_id="id3", unsafe=False),
                pb.Label(request_id="nope", unsafe=True),
            ]
        )
    )
    assert (resp.received, resp.joined, resp.unknown) == (3, 2, 1)
    assert list(resp.unmatched_request_ids) == ["nope"]
    again = stub.SubmitLabels(
        pb.SubmitLabelsRequest(labels=[pb.Label(request_id="id0", unsafe=True)])
    )
    assert (again.joined, again.already_labelled) == (0, 1)
    assert sidecar.pipeline.wait_idle(5)
    m = scrape(sidecar.metrics_url)
    assert m.get_value("silentwatch_labels_received_total") == 4
    assert m.get_value("silentwatch_labels_joined_total") == 2
    assert m.get_value("silentwatch_labels_unmatched_total", reason="unknown") == 1
    assert m.get_value("silentwatch_labels_unmatched_total", reason="already_labelled") == 1
    assert sidecar.traffic.labels_folded == 2
    assert len(p) == 5


def test_store_capacity_evicts_and_late_labels_count_as_expired(sidecar_factory):
    sc = sidecar_factory(store_capacity=10)
    with grpc.insecure_channel(sc.grpc_target) as ch:
        stub = pb_grpc.MonitorStub(ch)
        stub.ClassifyBatch(batch_request(unit_rows(25), [f"e{i}" for i in range(25)]))
        resp = stub.SubmitLabels(
            pb.SubmitLabelsRequest(
                labels=[
                    pb.Label(request_id="e14", unsafe=True),
                    pb.Label(request_id="e24", unsafe=False),
                ]
            )
        )
        assert (resp.joined, resp.expired) == (1, 1)
        status = stub.GetStatus(pb.GetStatusRequest())
    assert status.store.evicted_capacity == 15
    assert status.store.entries == 9
    m = scrape(sc.metrics_url)
    assert m.get_value("silentwatch_prediction_store_evictions_total", reason="capacity") == 15
    assert m.get_value("silentwatch_labels_unmatched_total", reason="expired") == 1


def test_get_status_reports_identity_and_counts(sidecar, stub):
    stub.ClassifyBatch(batch_request(unit_rows(12), [f"s{i}" for i in range(12)]))
    sidecar.pipeline.wait_idle(5)
    st = stub.GetStatus(pb.GetStatusRequest())
    assert st.classifier_version == "clf-test"
    assert st.embedding_dim == DIM
    assert st.embedder.name == "test/embedder" and st.embedder.version == "v1"
    assert list(st.embedder.accepted_versions) == ["v1-int8"]
    assert st.traffic.predictions == 12
    assert st.store.entries == 12 and st.store.capacity == sidecar.settings.store_capacity
    assert st.pipeline.processed_rows == 12 and st.pipeline.sampled_out_rows == 0
    assert len(st.bundle_sha256) == 64 and st.flag_threshold == 0.5


def test_health_and_reflection(sidecar):
    with grpc.insecure_channel(sidecar.grpc_target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "silentwatch.v1.Monitor"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        db = ProtoReflectionDescriptorDatabase(ch)
        services = set(db.get_services())
        assert {"silentwatch.v1.Monitor", "grpc.health.v1.Health"} <= services
        desc = db.FindFileContainingSymbol("silentwatch.v1.Monitor")
        assert desc.package == "silentwatch.v1"
    sidecar.stop(grace=0.5)
    # After stop the health service reports NOT_SERVING (nothing is reachable anymore).
    assert sidecar.health._server_status[""] == health_pb2.HealthCheckResponse.NOT_SERVING


def test_recording_off_serves_but_records_nothing(sidecar_factory):
    sc = sidecar_factory(recording=False)
    with grpc.insecure_channel(sc.grpc_target) as ch:
        stub = pb_grpc.MonitorStub(ch)
        r = stub.ClassifyBatch(batch_request(unit_rows(4), ["a", "b", "c", "d"]))
        assert len(r.p_unsafe) == 4
        assert stub.GetStatus(pb.GetStatusRequest()).store.entries == 0
