"""Batch requests parsed without copying their embeddings (wire.parse_zero_copy).

The zero-copy parse must read exactly what protobuf reads, or step aside (None) and let
protobuf parse: checked field by field on hand-built requests, on mutated bytes
(hypothesis), and over real gRPC, where a packed-id batch (zero-copy) and the same batch
with string ids (the usual parse) must score alike.
"""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from silentwatch.monitor.serving.wire import (
    MalformedRequestGuard,
    ZeroCopyRequest,
    batch_reply,
    decode_matrix,
    parse_zero_copy,
)
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

from .conftest import unit_rows
from .fuzzing import examples

SERVICE = pb.DESCRIPTOR.services_by_name["Monitor"].full_name


def matrix(x: np.ndarray) -> pb.EmbeddingMatrix:
    return pb.EmbeddingMatrix(rows=x.shape[0], dim=x.shape[1], f32le=x.astype("<f4").tobytes())


def classify(n: int = 3, d: int = 4, seed: int = 0, **kw) -> pb.ClassifyBatchRequest:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return pb.ClassifyBatchRequest(embeddings=matrix(x), **kw)


def same_as_protobuf(raw: bytes, cls) -> None:
    """parse_zero_copy's reading of ``raw`` is protobuf's, field by field."""
    zc = parse_zero_copy(raw, cls, 2)
    assert isinstance(zc, ZeroCopyRequest)
    full = cls.FromString(raw)
    for field in cls.DESCRIPTOR.fields:
        if field.name == "embeddings":
            continue
        got, want = getattr(zc, field.name), getattr(full, field.name)
        if field.is_repeated:
            got, want = list(got), list(want)
        assert got == want, field.name
    e, f = zc.embeddings, full.embeddings
    assert (e.rows, e.dim, e.WhichOneof("data")) == (f.rows, f.dim, f.WhichOneof("data"))
    assert bytes(e.f32le) == f.f32le
    assert zc.HasField("embeddings") and full.HasField("embeddings")


def test_packed_batches_parse_zero_copy_and_read_like_protobuf() -> None:
    req = classify(
        5, 8, packed_request_ids=bytes(range(80)), embedder_version="v1",
        classifier_version="c1", heads=["a", "b"],
    )  # fmt: skip
    raw = req.SerializeToString()
    same_as_protobuf(raw, pb.ClassifyBatchRequest)
    zc = parse_zero_copy(raw, pb.ClassifyBatchRequest, 2)
    x = decode_matrix(zc.embeddings, 8, 100)
    # A read-only view on the request's own bytes: nothing was copied.
    assert not x.flags.writeable and not x.flags.owndata
    assert np.shares_memory(x, np.frombuffer(raw, np.uint8))
    np.testing.assert_array_equal(x, decode_matrix(req.embeddings, 8, 100))
    obs = pb.ObserveRequest(
        embeddings=matrix(unit_rows(2)), p_unsafe=[0.25, 0.5], embedder_version="v1",
        packed_request_ids=bytes(32),
    )  # fmt: skip
    same_as_protobuf(obs.SerializeToString(), pb.ObserveRequest)
    # No ids at all, and a matrix of zero rows: still protobuf's reading.
    same_as_protobuf(classify().SerializeToString(), pb.ClassifyBatchRequest)
    empty = pb.ClassifyBatchRequest(embeddings=pb.EmbeddingMatrix(rows=0, dim=4, f32le=b""))
    same_as_protobuf(empty.SerializeToString(), pb.ClassifyBatchRequest)


def _field(number: int, payload: bytes) -> bytes:
    assert len(payload) < 128 and number < 16
    return bytes([number << 3 | 2, len(payload)]) + payload


@pytest.mark.parametrize(
    "raw",
    [
        # String ids are field 1: serialised before the matrix.
        classify(request_ids=["a", "b", "c"]).SerializeToString(),
        # values instead of f32le.
        pb.ClassifyBatchRequest(
            embeddings=pb.EmbeddingMatrix(rows=1, dim=2, values=pb.FloatValues(values=[1, 2]))
        ).SerializeToString(),
        # The matrix given twice (protobuf merges the two).
        classify().SerializeToString() + _field(2, b"\x08\x01"),
        # A field the header does not know (5, a varint) inside the matrix.
        _field(2, b"\x08\x01\x10\x01\x28\x07\x1a\x04" + bytes(4)),
        # rows over 32 bits (protobuf truncates a uint32).
        _field(2, b"\x08\x80\x80\x80\x80\x10\x10\x01\x1a\x04" + bytes(4)),
        # No f32le at all.
        _field(2, b"\x08\x01\x10\x01"),
        # Truncated: the matrix's length runs past the end; a varint that never ends.
        bytes([0x12, 0x7F]) + bytes(3),
        b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        b"",
    ],
    ids=[
        "string-ids",
        "values",
        "twice",
        "unknown-field",
        "rows-64-bit",
        "no-data",
        "truncated",
        "endless-varint",
        "empty",
    ],
)
def test_anything_else_takes_the_usual_parse(raw: bytes) -> None:
    assert parse_zero_copy(raw, pb.ClassifyBatchRequest, 2) is None


@examples(300)
@given(
    st.data(),
    st.sampled_from(["flip", "insert", "delete", "truncate", "append"]),
)
def test_mutated_bytes_parse_as_protobuf_does(data, how: str) -> None:
    base = bytearray(
        classify(
            2, 3, seed=1, packed_request_ids=bytes(range(32)), embedder_version="v",
            heads=["h"],
        ).SerializeToString()
    )  # fmt: skip
    at = data.draw(st.integers(0, len(base) - 1), label="at")
    byte = data.draw(st.integers(0, 255), label="byte")
    if how == "flip":
        base[at] = byte
    elif how == "insert":
        base.insert(at, byte)
    elif how == "delete":
        del base[at]
    elif how == "truncate":
        del base[at:]
    else:
        base += data.draw(st.binary(max_size=12), label="tail")
    raw = bytes(base)
    try:
        full = pb.ClassifyBatchRequest.FromString(raw)
    except DecodeError:
        full = None
    try:
        zc = parse_zero_copy(raw, pb.ClassifyBatchRequest, 2)
    except DecodeError:
        assert full is None, "the zero-copy parse refused what protobuf reads"
        return
    if zc is None:
        return
    assert full is not None, "the zero-copy parse read what protobuf refuses"
    same_as_protobuf(raw, pb.ClassifyBatchRequest)


class Capture(pb_grpc.MonitorServicer):
    """Answers ClassifyBatch with the row sums it decoded, and notes the request's type."""

    def __init__(self) -> None:
        self.types: list[type] = []
        self.lock = threading.Lock()

    def ClassifyBatch(self, request, context):
        with self.lock:
            self.types.append(type(request))
        x = decode_matrix(request.embeddings, request.embeddings.dim, 10_000)
        return pb.ClassifyBatchResponse(
            p_unsafe=x.sum(axis=1).tolist(), classifier_version=request.embedder_version
        )


def test_the_guard_hands_the_servicer_a_zero_copy_request_over_grpc() -> None:
    servicer = Capture()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        interceptors=[MalformedRequestGuard(SERVICE)],
        options=[("grpc.so_reuseport", 0)],
    )
    pb_grpc.add_MonitorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.MonitorStub(ch)
            x = unit_rows(6, dim=8, seed=3)
            packed = pb.ClassifyBatchRequest(
                embeddings=matrix(x), packed_request_ids=bytes(96), embedder_version="v9"
            )
            strings = pb.ClassifyBatchRequest(
                embeddings=matrix(x), request_ids=[str(i) for i in range(6)],
                embedder_version="v9",
            )  # fmt: skip
            a, b = stub.ClassifyBatch(packed), stub.ClassifyBatch(strings)
            raw_call = ch.unary_unary(f"/{SERVICE}/ClassifyBatch")  # bytes in, bytes out
            with pytest.raises(grpc.RpcError) as err:  # the matrix's f32le runs past its end
                raw_call(b"\x12\x05\x08\x01\x10\x01\x1a\x04\xff")
    finally:
        server.stop(0.5).wait()
    assert servicer.types == [ZeroCopyRequest, pb.ClassifyBatchRequest]
    assert list(a.p_unsafe) == list(b.p_unsafe) == pytest.approx(x.sum(axis=1).tolist())
    assert a.classifier_version == b.classifier_version == "v9"
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_sidecar_scores_a_zero_copy_batch_as_the_usual_one(sidecar, stub) -> None:
    x = unit_rows(16, seed=7)
    packed = stub.ClassifyBatch(
        pb.ClassifyBatchRequest(embeddings=matrix(x), packed_request_ids=bytes(range(256)))
    )
    strings = stub.ClassifyBatch(
        pb.ClassifyBatchRequest(embeddings=matrix(x), request_ids=[f"s{i}" for i in range(16)])
    )
    assert list(packed.p_unsafe) == list(strings.p_unsafe)
    assert list(packed.flagged) == list(strings.flagged)
    sidecar.pipeline.wait_idle()
    assert len(sidecar.store) == 32


@pytest.mark.parametrize("n", [0, 1, 7, 1024])
@pytest.mark.parametrize("version", ["", "clf-1", "modèle-ü"])
def test_batch_reply_is_the_message_extend_builds(n: int, version: str) -> None:
    rng = np.random.default_rng(n)
    p = rng.random(n).astype(np.float32)
    p[: n // 3] = 0.5  # on the threshold: flagged (>=), as before
    want = pb.ClassifyBatchResponse(classifier_version=version)
    want.p_unsafe.extend(p.tolist())
    want.flagged.extend((p >= 0.5).tolist())
    want.confidence.extend(np.maximum(p, 1.0 - p).tolist())
    got = batch_reply(p, 0.5, version)
    assert got == want
    assert got.SerializeToString() == want.SerializeToString()
