"""Every refusal is a precise gRPC status with an actionable message; serving goes on."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from silentwatch.scrape import scrape
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

from .conftest import DIM, unit_rows
from .test_server import batch_request

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def refused(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    return info.value


def still_serves(stub) -> None:
    resp = stub.Classify(
        pb.ClassifyRequest(embedding=pb.Embedding(f32le=unit_rows(1, seed=42).tobytes()))
    )
    assert 0.0 <= resp.p_unsafe <= 1.0


def one(arr: np.ndarray, **kw) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(embedding=pb.Embedding(f32le=np.asarray(arr, "<f4").tobytes()), **kw)


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        (one(unit_rows(1, dim=DIM + 1)[0]), INVALID, f"expects dimension {DIM}"),
        (pb.ClassifyRequest(embedding=pb.Embedding(f32le=b"")), INVALID, "empty"),
        (pb.ClassifyRequest(), INVALID, "missing"),
        (
            pb.ClassifyRequest(embedding=pb.Embedding(f32le=b"\x00" * (DIM * 4 - 2))),
            INVALID,
            "bytes",
        ),
        (one(np.r_[np.nan, np.ones(DIM - 1)]), INVALID, "NaN or Inf"),
        (one(np.r_[np.inf, np.ones(DIM - 1)]), INVALID, "NaN or Inf"),
        (one(np.zeros(DIM)), INVALID, "all zeros"),
        (one(np.full(DIM, 1e30)), INVALID, "overflow"),
        (one(unit_rows(1)[0], embedder_version="v2"), grpc.StatusCode.FAILED_PRECONDITION, "gate"),
        (
            one(unit_rows(1)[0], classifier_version="other"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "clf-test",
        ),
        (one(unit_rows(1)[0], request_id="x" * 129), INVALID, "limit of 128"),
        (
            pb.ClassifyRequest(embedding=pb.Embedding(values=pb.FloatValues(values=[0.1] * 3))),
            INVALID,
            f"expects dimension {DIM}",
        ),
    ],
)
def test_classify_refusals(stub, request_, code, needle):
    err = refused(stub.Classify, request_)
    assert err.code() == code, err.details()
    assert needle in err.details()
    still_serves(stub)


def test_accepted_embedder_versions_pass(stub):
    assert (
        stub.Classify(one(unit_rows(1)[0], embedder_version="v1-int8")).classifier_version
        == "clf-test"
    )


def test_batch_refusals(stub):
    x = unit_rows(4)
    cases = [
        (
            pb.ClassifyBatchRequest(
                embeddings=pb.EmbeddingMatrix(rows=4, dim=DIM + 1, f32le=x.tobytes())
            ),
            "dim is",
        ),
        (pb.ClassifyBatchRequest(embeddings=pb.EmbeddingMatrix(rows=0, dim=DIM)), "rows is 0"),
        (
            pb.ClassifyBatchRequest(
                embeddings=pb.EmbeddingMatrix(rows=5, dim=DIM, f32le=x.tobytes())
            ),
            "needs",
        ),
        (pb.ClassifyBatchRequest(embeddings=pb.EmbeddingMatrix(rows=4, dim=DIM)), "no data"),
        (batch_request(x, ["a", "b"]), "one id per row"),
        (batch_request(x, ["a", "", "c", "d"]), "empty"),
        (batch_request(np.vstack([x[:2], np.full((1, DIM), np.nan), x[3:]])), "rows [2]"),
    ]
    for request_, needle in cases:
        err = refused(stub.ClassifyBatch, request_)
        assert err.code() == INVALID, (needle, err.details())
        assert needle in err.details(), err.details()
    still_serves(stub)


def test_batch_over_the_row_limit(sidecar_factory):
    sc = sidecar_factory(max_batch_rows=8)
    with grpc.insecure_channel(sc.grpc_target) as ch:
        stub = pb_grpc.MonitorStub(ch)
        err = refused(stub.ClassifyBatch, batch_request(unit_rows(9)))
        assert err.code() == INVALID and "limit of 8" in err.details()
        still_serves(stub)


def test_oversized_message_is_resource_exhausted(sidecar_factory):
    sc = sidecar_factory(max_message_bytes=4096, max_batch_rows=100000)
    with grpc.insecure_channel(sc.grpc_target) as ch:
        stub = pb_grpc.MonitorStub(ch)
        err = refused(stub.ClassifyBatch, batch_request(unit_rows(64)))  # 8 KiB of floats
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in err.details()
        still_serves(stub)


def test_duplicate_request_ids(sidecar, stub):
    x = unit_rows(3)
    stub.ClassifyBatch(batch_request(x, ["d1", "d2", "d3"]))
    err = refused(stub.ClassifyBatch, batch_request(x, ["d4", "d2", "d5"]))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS and "'d2'" in err.details()
    # All or nothing: d4 and d5 were not recorded.
    assert len(sidecar.store) == 3
    err = refused(stub.ClassifyBatch, batch_request(x, ["z", "y", "z"]))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS and "twice" in err.details()
    err = refused(stub.Classify, one(x[0], request_id="d1"))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    still_serves(stub)


def test_observe_refusals(stub):
    x = unit_rows(2)
    m = pb.EmbeddingMatrix(rows=2, dim=DIM, f32le=x.tobytes())
    for p, needle in (
        ([0.5], "one per row"),
        ([0.5, 1.5], "[0, 1]"),
        ([0.5, float("nan")], "[0, 1]"),
    ):
        err = refused(stub.Observe, pb.ObserveRequest(embeddings=m, p_unsafe=p))
        assert err.code() == INVALID and needle in err.details()
    assert stub.Observe(pb.ObserveRequest(embeddings=m)).accepted == 2


def test_refusals_are_counted_by_status_code(sidecar, stub):
    for _ in range(3):
        refused(stub.Classify, pb.ClassifyRequest())
    refused(stub.Classify, one(unit_rows(1)[0], embedder_version="v9"))
    m = scrape(sidecar.metrics_url)
    assert m.get_value("silentwatch_requests_total", rpc="Classify", code="INVALID_ARGUMENT") == 3
    assert (
        m.get_value("silentwatch_requests_total", rpc="Classify", code="FAILED_PRECONDITION") == 1
    )
    assert m.get_value("silentwatch_embedder_version_mismatch_requests_total") == 1


def test_warn_policy_serves_unknown_embedder_versions_and_counts_them(sidecar_factory):
    sc = sidecar_factory(embedder_version_policy="warn")
    with grpc.insecure_channel(sc.grpc_target) as ch:
        stub = pb_grpc.MonitorStub(ch)
        stub.Classify(one(unit_rows(1)[0], embedder_version="v2"))
        assert stub.GetStatus(pb.GetStatusRequest()).traffic.embedder_version_mismatches == 1


def test_required_embedder_version(sidecar_factory):
    sc = sidecar_factory(require_embedder_version=True)
    with grpc.insecure_channel(sc.grpc_target) as ch:
        err = refused(pb_grpc.MonitorStub(ch).Classify, one(unit_rows(1)[0]))
        assert err.code() == INVALID and "embedder_version is required" in err.details()


def test_too_many_labels_in_one_request(sidecar_factory):
    sc = sidecar_factory(max_batch_rows=4)
    with grpc.insecure_channel(sc.grpc_target) as ch:
        labels = [pb.Label(request_id=str(i), unsafe=True) for i in range(5)]
        err = refused(pb_grpc.MonitorStub(ch).SubmitLabels, pb.SubmitLabelsRequest(labels=labels))
        assert err.code() == INVALID and "split them" in err.details()
