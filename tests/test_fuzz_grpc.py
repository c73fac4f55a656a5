"""Property-based fuzzing of the gRPC surface against a real sidecar on loopback.

Hypothesis builds every Monitor request with hostile field values (wrong dimensions, NaN,
Inf, subnormal and huge floats, zero vectors, f32le byte strings of the wrong length,
extreme row counts, empty / long / non-ASCII / duplicate request ids, unknown embedder and
classifier versions, p_unsafe outside [0, 1], text while text mode is off, messages over the
size limit) and also sends random and corrupted raw bytes to every method. What must hold:

* every call ends OK (with a well-formed reply) or with a status from an explicit per-method
  set (never INTERNAL, UNKNOWN or a deadline), and every refusal carries a specific message;
* bytes that are not protobuf at all are INVALID_ARGUMENT naming the expected message type,
  counted in the metrics: the sidecar installs
  :class:`silentwatch.monitor.serving.wire.MalformedRequestGuard`. Without it grpcio itself answers
  them, before any servicer code runs, with ``INTERNAL "Exception deserializing request!"``
  (grpcio 1.85, ``_server.py``) and logs a traceback;
* afterwards the sidecar still answers GetStatus, health checks and a valid Classify, and
  ``silentwatch_requests_total`` / ``silentwatch_embeddings_received_total`` moved by
  exactly the calls (and rows) that reached the servicer.

``derandomize=True`` makes CI reproducible; ``SILENTWATCH_FUZZ_EXAMPLES=2000`` runs more
examples per property.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from silentwatch.monitor.bundle import load_bundle
from silentwatch.monitor.config import ServeSettings, load_settings
from silentwatch.monitor.serving.server import SERVICE_NAME, Sidecar
from silentwatch.monitor.serving.wire import MalformedRequestGuard
from silentwatch.scrape import Samples, scrape
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

from .conftest import DIM, unit_rows
from .fuzzing import examples

MAX_ROWS = 48  # small limits so that the fuzz reaches them cheaply
MAX_ID = 128
MAX_MESSAGE = 32 * 1024
RPCS = ("Classify", "ClassifyBatch", "Observe", "SubmitLabels", "GetStatus")
REQUEST_TYPES: dict[str, type[Message]] = {
    "Classify": pb.ClassifyRequest,
    "ClassifyBatch": pb.ClassifyBatchRequest,
    "Observe": pb.ObserveRequest,
    "SubmitLabels": pb.SubmitLabelsRequest,
    "GetStatus": pb.GetStatusRequest,
}
Code = grpc.StatusCode
# What each method may answer besides OK. Nothing else: INTERNAL / UNKNOWN would be a crash.
ALLOWED: dict[str, frozenset[Code]] = {
    "Classify": frozenset(
        {
            Code.INVALID_ARGUMENT,
            Code.FAILED_PRECONDITION,
            Code.ALREADY_EXISTS,
            Code.RESOURCE_EXHAUSTED,
        }
    ),
    "ClassifyBatch": frozenset(
        {
            Code.INVALID_ARGUMENT,
            Code.FAILED_PRECONDITION,
            Code.ALREADY_EXISTS,
            Code.RESOURCE_EXHAUSTED,
        }
    ),
    "Observe": frozenset(
        {
            Code.INVALID_ARGUMENT,
            Code.FAILED_PRECONDITION,
            Code.ALREADY_EXISTS,
            Code.RESOURCE_EXHAUSTED,
        }
    ),
    "SubmitLabels": frozenset({Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED}),
    "GetStatus": frozenset({Code.RESOURCE_EXHAUSTED}),
}


# Real gRPC calls per example: slow, and some messages are large by design.
GRPC_SLOW = (HealthCheck.too_slow, HealthCheck.data_too_large)


# -- strategies ----------------------------------------------------------------------------


def _f32(v: float) -> float:
    return float(np.float32(v))


SPECIAL_FLOATS = [
    _f32(v)
    for v in (
        0.0,
        -0.0,
        1.0,
        -1.0,
        1e-45,  # the smallest subnormal
        1e-40,
        1e-20,  # squares underflow
        1e19,  # squares overflow once summed
        -1e19,
        1e30,
        3.4e38,
        math.nan,
        math.inf,
        -math.inf,
    )
]


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` about four times in five: hostile values must not hide every later check."""
    return st.integers(0, 9).flatmap(lambda i: bad if i >= 8 else good)


floats32 = st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats(width=32))
seeds = st.integers(0, 2**32 - 1)


@st.composite
def vectors(draw: st.DrawFn, n: int) -> np.ndarray:
    """``n`` float32 values: a unit vector, possibly spoilt, or adversarial throughout."""
    kind = draw(mostly(st.just("unit"), st.sampled_from(["spoilt", "constant", "arbitrary"])))
    if kind == "constant":
        return np.full(n, draw(st.sampled_from(SPECIAL_FLOATS)), dtype=np.float32)
    if kind == "arbitrary":
        return np.array(draw(st.lists(floats32, min_size=n, max_size=n)), dtype=np.float32)
    x = unit_rows(1, dim=max(n, 1), seed=draw(seeds))[0, :n].copy()
    if kind == "spoilt" and n:
        for _ in range(draw(st.integers(1, 3))):
            x[draw(st.integers(0, n - 1))] = draw(st.sampled_from(SPECIAL_FLOATS))
    return x


lengths = st.one_of(st.just(DIM), st.sampled_from([0, 1, DIM - 1, DIM + 1, 2 * DIM]))


@st.composite
def embeddings(draw: st.DrawFn) -> pb.Embedding | None:
    """One ``Embedding`` in either encoding, of the right or a wrong size, or none."""
    kind = draw(
        mostly(st.sampled_from(["f32le", "values"]), st.sampled_from(["raw", "big-endian", "none"]))
    )
    if kind == "none":
        return None
    if kind == "raw":  # any byte string, usually not a multiple of 4
        return pb.Embedding(f32le=draw(st.binary(max_size=DIM * 4 + 8)))
    x = draw(vectors(draw(mostly(st.just(DIM), lengths))))
    if kind == "f32le":
        return pb.Embedding(f32le=x.astype("<f4").tobytes())
    if kind == "big-endian":  # the right length, the wrong byte order: garbage floats
        return pb.Embedding(f32le=x.astype(">f4").tobytes())
    return pb.Embedding(values=pb.FloatValues(values=x.tolist()))


request_ids = st.one_of(
    st.sampled_from(
        ["", "a", "b", "dup", "ü-ñ-✓-中", "x" * MAX_ID, "y" * (MAX_ID + 1), " ", "\x00", "id\n"]
    ),
    st.text(max_size=24),
    st.text(min_size=MAX_ID - 2, max_size=MAX_ID + 6),
)
embedder_versions = mostly(
    st.sampled_from(["", "v1", "v1-int8"]),
    st.one_of(st.sampled_from(["v2", "V1", "v1 ", "ü"]), st.text(max_size=24)),
)
classifier_versions = mostly(
    st.sampled_from(["", "clf-test"]),
    st.one_of(st.sampled_from(["clf-tes", "other"]), st.text(max_size=24)),
)
texts = st.one_of(
    st.just(""),
    st.text(max_size=40),
    st.sampled_from(["   ", "x" * (MAX_MESSAGE + 100)]),  # blank; over the message limit
)
row_counts = mostly(
    st.integers(1, 6), st.sampled_from([0, MAX_ROWS, MAX_ROWS + 1, 100_000, 2**32 - 1])
)
dims = mostly(st.just(DIM), st.sampled_from([0, 1, DIM - 1, DIM + 1, 2**32 - 1]))


@st.composite
def matrices(draw: st.DrawFn) -> pb.EmbeddingMatrix | None:
    """An ``EmbeddingMatrix`` whose rows, dim and payload agree, or (often) do not."""
    if draw(st.integers(0, 9)) == 9:
        return None
    rows, dim = draw(row_counts), draw(dims)
    m = pb.EmbeddingMatrix(rows=rows, dim=dim)
    kind = draw(
        mostly(
            st.sampled_from(["consistent", "consistent-values"]),
            st.sampled_from(["raw", "values", "none"]),
        )
    )
    if kind.startswith("consistent") and 0 < rows * dim <= MAX_ROWS * (DIM + 1):
        x = unit_rows(rows, dim=dim, seed=draw(seeds)) if dim > 1 else np.ones((rows, dim))
        x = x.astype(np.float32)
        for _ in range(draw(mostly(st.just(0), st.integers(1, 3)))):  # a few hostile entries
            r, c = draw(st.integers(0, rows - 1)), draw(st.integers(0, dim - 1))
            x[r, c] = draw(st.sampled_from(SPECIAL_FLOATS))
        if kind == "consistent":
            m.f32le = x.astype("<f4").tobytes()
        else:
            m.values.values.extend(x.reshape(-1).tolist())
    elif kind in ("raw", "consistent"):
        m.f32le = draw(st.binary(max_size=3 * DIM * 4 + 3))
    elif kind in ("values", "consistent-values"):
        m.values.values.extend(draw(st.lists(floats32, max_size=3 * DIM + 1)))
    return m


@st.composite
def id_lists(draw: st.DrawFn, rows: int) -> list[str]:
    """None, one per row (fresh, hostile or repeating), or a wrong number of them."""
    kind = draw(
        mostly(st.sampled_from(["none", "fresh"]), st.sampled_from(["hostile", "wrong-count"]))
    )
    if kind == "none":
        return []
    if kind == "fresh" and rows <= MAX_ROWS + 1:
        return [str(u) for u in draw(st.lists(st.uuids(), min_size=rows, max_size=rows))]
    if kind == "hostile" and rows <= MAX_ROWS + 1:
        return draw(st.lists(request_ids, min_size=rows, max_size=rows))
    return draw(st.lists(request_ids, max_size=4))


def _rows(m: pb.EmbeddingMatrix | None) -> int:
    return 0 if m is None else m.rows


@st.composite
def classify_requests(draw: st.DrawFn) -> pb.ClassifyRequest:
    req = pb.ClassifyRequest(
        request_id=draw(st.one_of(st.uuids().map(str), request_ids)),
        embedder_version=draw(embedder_versions),
        classifier_version=draw(classifier_versions),
        text=draw(texts) if draw(st.integers(0, 9)) == 9 else "",
    )
    emb = draw(embeddings())
    if emb is not None:
        req.embedding.CopyFrom(emb)
    return req


@st.composite
def batch_requests(draw: st.DrawFn) -> pb.ClassifyBatchRequest:
    m = draw(matrices())
    req = pb.ClassifyBatchRequest(
        request_ids=draw(id_lists(_rows(m))),
        embedder_version=draw(embedder_versions),
        classifier_version=draw(classifier_versions),
    )
    if m is not None:
        req.embeddings.CopyFrom(m)
    if draw(st.integers(0, 9)) == 9:
        req.texts.extend(draw(st.lists(texts, max_size=3)))
    return req


@st.composite
def observe_requests(draw: st.DrawFn) -> pb.ObserveRequest:
    m = draw(matrices())
    rows = _rows(m)
    kind = draw(st.sampled_from(["none", "valid", "hostile"]))
    if kind == "valid" and rows <= MAX_ROWS + 1:
        p = draw(st.lists(st.floats(0, 1, width=32), min_size=rows, max_size=rows))
    elif kind == "hostile":
        p = draw(st.lists(floats32, max_size=max(min(rows, MAX_ROWS) + 1, 1)))
    else:
        p = []
    req = pb.ObserveRequest(
        request_ids=draw(id_lists(rows)), p_unsafe=p, embedder_version=draw(embedder_versions)
    )
    if m is not None:
        req.embeddings.CopyFrom(m)
    return req


CARRIED = "p_unsafe" in pb.Label.DESCRIPTOR.fields_by_name  # labels carrying their score


@st.composite
def label_requests(draw: st.DrawFn) -> pb.SubmitLabelsRequest:
    """Labels for fresh, hostile or unknown ids; sometimes carrying a (hostile) score."""
    n = draw(st.one_of(st.integers(0, 8), st.sampled_from([MAX_ROWS, MAX_ROWS + 1])))
    ids = draw(st.lists(st.one_of(request_ids, st.uuids().map(str)), min_size=n, max_size=n))
    flags = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    labels = [pb.Label(request_id=i, unsafe=f) for i, f in zip(ids, flags, strict=True)]
    if CARRIED and labels and draw(st.booleans()):
        scores = mostly(st.floats(0, 1, width=32), floats32)
        for lab in labels[: draw(st.integers(1, min(len(labels), 8)))]:
            lab.p_unsafe = draw(scores)
            lab.embedder_version = draw(embedder_versions)
            lab.classifier_version = draw(classifier_versions)
    return pb.SubmitLabelsRequest(labels=labels)


STRATEGIES: dict[str, st.SearchStrategy[Message]] = {
    "Classify": classify_requests(),
    "ClassifyBatch": batch_requests(),
    "Observe": observe_requests(),
    "SubmitLabels": label_requests(),
    "GetStatus": st.just(pb.GetStatusRequest()),
}


@st.composite
def raw_payloads(draw: st.DrawFn, rpc: str) -> bytes:
    """Bytes for ``rpc``: random, a valid request corrupted, or another message entirely."""
    kind = draw(st.sampled_from(["random", "corrupted", "truncated", "foreign"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    if kind == "foreign":
        other = draw(st.sampled_from([r for r in RPCS if r != rpc]))
        return draw(STRATEGIES[other]).SerializeToString()
    data = draw(STRATEGIES[rpc]).SerializeToString()
    if len(data) > 4096:
        data = data[:4096]
    if kind == "truncated":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    buf = bytearray(data or b"\x00")
    for _ in range(draw(st.integers(1, 4))):
        buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    return bytes(buf)


# -- the sidecar ---------------------------------------------------------------------------


@dataclass
class Tally:
    """What the client saw, to compare with the sidecar's request metrics."""

    codes: Counter[tuple[str, str]] = field(default_factory=Counter)
    rows: Counter[str] = field(default_factory=Counter)

    def add(self, rpc: str, code: Code, rows: int = 0) -> None:
        self.codes[(rpc, code.name)] += 1
        self.rows[rpc] += rows


@dataclass
class Target:
    """A server hosting the sidecar's servicer, with a channel to it."""

    channel: grpc.Channel

    def call(self, rpc: str) -> Callable[..., Any]:
        method = f"/{SERVICE_NAME}/{rpc}"
        return self.channel.unary_unary(method)  # raw bytes in, raw bytes out


@pytest.fixture(scope="module")
def fuzz_sidecar(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    # Durable state (when this version has it) in a private directory, never the checkout.
    state = {"state_dir": tmp_path_factory.mktemp("fuzz-state")}
    settings_ = load_settings(
        bundle=bundle_dir,
        port=0,
        metrics_port=0,
        max_batch_rows=MAX_ROWS,
        max_request_id_length=MAX_ID,
        max_message_bytes=MAX_MESSAGE,
        workers=4,
        **{k: v for k, v in state.items() if k in ServeSettings.model_fields},
    )
    sc = Sidecar(settings_, bundle=load_bundle(bundle_dir)).start()
    yield sc
    sc.stop(grace=0.5)


@pytest.fixture(scope="module")
def sidecar_target(fuzz_sidecar: Sidecar) -> Iterator[Target]:
    with grpc.insecure_channel(fuzz_sidecar.grpc_target) as ch:
        yield Target(ch)


@pytest.fixture(scope="module")
def guarded_target(fuzz_sidecar: Sidecar) -> Iterator[Target]:
    """The sidecar's own servicer behind MalformedRequestGuard, counted in its metrics."""

    def count(rpc: str) -> None:
        fuzz_sidecar.request_metrics.observe(rpc, Code.INVALID_ARGUMENT, 0.0, 0)

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        interceptors=[MalformedRequestGuard(SERVICE_NAME, on_refused=count)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_MonitorServicer_to_server(fuzz_sidecar.service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield Target(ch)
    server.stop(0.5).wait()


@pytest.fixture(scope="module")
def stub(sidecar_target: Target) -> pb_grpc.MonitorStub:
    return pb_grpc.MonitorStub(sidecar_target.channel)


# -- checks --------------------------------------------------------------------------------


def assert_specific(rpc: str, code: Code, details: str | None, shown: object) -> None:
    """A refusal names its problem: a real sentence, not the catch-all of the rpc wrapper."""
    assert details and len(details) >= 20, f"{rpc} -> {code.name} with vague {details!r}: {shown}"
    assert "inside the sidecar" not in details, f"{rpc} crashed: {details!r}: {shown}"


def _short(obj: object) -> str:
    text = repr(obj)
    return text if len(text) < 600 else text[:600] + "..."


def check_reply(rpc: str, request: Message, reply: Message) -> int:
    """A successful reply is well formed; returns the rows the sidecar counts for it."""
    if isinstance(reply, pb.ClassifyResponse):
        assert isinstance(request, pb.ClassifyRequest)
        p = reply.p_unsafe
        assert 0.0 <= p <= 1.0 and reply.request_id == request.request_id
        assert reply.confidence == pytest.approx(max(p, 1 - p), abs=1e-6)
        return 1
    if isinstance(reply, pb.ClassifyBatchResponse):
        n = len(reply.p_unsafe)
        assert isinstance(request, pb.ClassifyBatchRequest) and n == request.embeddings.rows
        assert len(reply.flagged) == len(reply.confidence) == n
        assert all(0.0 <= p <= 1.0 for p in reply.p_unsafe)
        return n
    if isinstance(reply, pb.ObserveResponse):
        assert isinstance(request, pb.ObserveRequest)
        assert reply.accepted == request.embeddings.rows
        return reply.accepted
    if isinstance(reply, pb.SubmitLabelsResponse):
        assert isinstance(request, pb.SubmitLabelsRequest)
        assert reply.received == len(request.labels)
        assert (
            reply.joined + reply.unknown + reply.expired + reply.already_labelled == reply.received
        )
        if CARRIED:
            assert reply.joined_carried <= reply.joined
        return 0
    assert isinstance(reply, pb.GetStatusResponse) and reply.embedding_dim == DIM
    return 0


def reached_servicer(code: Code, details: str | None) -> bool:
    """False for the one answer grpcio gives before the sidecar sees the call (the message
    size limit), which is not in the metrics; undecodable bytes are refused and counted by
    the sidecar's MalformedRequestGuard."""
    return not (code == Code.RESOURCE_EXHAUSTED and "larger than max" in (details or ""))


def request_counts(sc: Sidecar) -> tuple[Counter[tuple[str, str]], Counter[str]]:
    m: Samples = scrape(sc.metrics_url)
    codes: Counter[tuple[str, str]] = Counter()
    rows: Counter[str] = Counter()
    for (name, labels), value in m.items():
        lab = dict(labels)
        if name == "silentwatch_requests_total":
            codes[(lab["rpc"], lab["code"])] = int(value)
        elif name == "silentwatch_embeddings_received_total":
            rows[lab["rpc"]] = int(value)
    return codes, rows


def assert_metrics_moved_by(sc: Sidecar, before: tuple[Counter, Counter], tally: Tally) -> None:
    codes, rows = request_counts(sc)
    moved = Counter({k: v - before[0][k] for k, v in codes.items() if v != before[0][k]})
    assert moved == +tally.codes, "silentwatch_requests_total does not match the calls made"
    moved_rows = Counter({k: v - before[1][k] for k, v in rows.items() if v != before[1][k]})
    assert moved_rows == +tally.rows, "silentwatch_embeddings_received_total is off"


def still_serves(sc: Sidecar, stub: pb_grpc.MonitorStub) -> None:
    """GetStatus, both health checks and a valid Classify answer after the fuzz run."""
    assert stub.GetStatus(pb.GetStatusRequest(), timeout=10).embedding_dim == DIM
    with grpc.insecure_channel(sc.grpc_target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", SERVICE_NAME):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
    x = unit_rows(1, seed=99)
    reply = stub.Classify(pb.ClassifyRequest(embedding=pb.Embedding(f32le=x.tobytes())))
    assert 0.0 <= reply.p_unsafe <= 1.0


# -- the properties ------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", RPCS)
def test_hostile_messages_get_ok_or_a_precise_refusal(
    rpc: str, fuzz_sidecar: Sidecar, sidecar_target: Target, stub: pb_grpc.MonitorStub
) -> None:
    """Hypothesis-built messages for ``rpc``: OK with a sane reply, or an allowed, specific status;
    the request metrics count exactly those calls."""
    call = getattr(stub, rpc)
    tally = Tally()
    before = request_counts(fuzz_sidecar)
    seen: Counter[str] = Counter()

    @examples(100 if rpc != "GetStatus" else 5, *GRPC_SLOW)
    @given(request=STRATEGIES[rpc])
    def run(request: Message) -> None:
        try:
            reply = call(request, timeout=30)
        except grpc.RpcError as err:
            code, details = err.code(), err.details()
            assert code in ALLOWED[rpc], f"{rpc} -> {code.name} {details!r}: {_short(request)}"
            assert_specific(rpc, code, details, _short(request))
            if reached_servicer(code, details):
                tally.add(rpc, code)
            seen[code.name] += 1
            return
        tally.add(rpc, Code.OK, check_reply(rpc, request, reply))
        seen["OK"] += 1

    run()
    print("SEEN", rpc, dict(seen), dict(tally.rows))
    assert_metrics_moved_by(fuzz_sidecar, before, tally)
    if rpc != "GetStatus":  # the strategies must reach both sides of the contract
        assert seen["OK"] and seen["INVALID_ARGUMENT"], seen
    still_serves(fuzz_sidecar, stub)


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize("which", ["sidecar"])
def test_raw_bytes_get_a_precise_status(
    rpc: str, which: str, request: pytest.FixtureRequest, fuzz_sidecar: Sidecar
) -> None:
    """Random and corrupted bytes: what protobuf cannot parse gets the documented status, what
    it can parse gets the same answers as a built message; metrics stay consistent."""
    target: Target = request.getfixturevalue(f"{which}_target")
    call = target.call(rpc)
    message_cls = REQUEST_TYPES[rpc]
    tally = Tally()
    before = request_counts(fuzz_sidecar)
    undecodable = 0

    @examples(40, *GRPC_SLOW)
    @given(payload=raw_payloads(rpc))
    def run(payload: bytes) -> None:
        nonlocal undecodable
        try:
            parsed: Message | None = message_cls.FromString(payload)
        except DecodeError:
            parsed = None
        try:
            raw_reply = call(payload, timeout=30)
        except grpc.RpcError as err:
            code, details = err.code(), err.details()
            shown = _short(payload)
            if len(payload) > MAX_MESSAGE:  # the size limit comes before any parsing
                assert code == Code.RESOURCE_EXHAUSTED, (code, details, shown)
            elif parsed is None:
                undecodable += 1
                # Not grpcio's INTERNAL "Exception deserializing request!": the sidecar's
                # MalformedRequestGuard names the expected message type.
                assert code == Code.INVALID_ARGUMENT, (code, details, shown)
                assert f"not a valid {message_cls.DESCRIPTOR.full_name}" in details
            else:
                assert code in ALLOWED[rpc], f"{rpc} -> {code.name} {details!r}: {shown}"
            assert_specific(rpc, code, details, shown)
            if reached_servicer(code, details):
                tally.add(rpc, code)
            return
        assert len(payload) <= MAX_MESSAGE, f"{rpc} accepted an oversized message"
        assert parsed is not None, f"{rpc} accepted bytes protobuf cannot parse: {_short(payload)}"
        tally.add(rpc, Code.OK, _reply_rows(rpc, parsed, raw_reply))

    run()
    assert undecodable, "the payloads never exercised a protobuf parse failure"
    assert_metrics_moved_by(fuzz_sidecar, before, tally)
    with grpc.insecure_channel(fuzz_sidecar.grpc_target) as ch:
        still_serves(fuzz_sidecar, pb_grpc.MonitorStub(ch))


REPLY_TYPES: dict[str, type[Message]] = {
    "Classify": pb.ClassifyResponse,
    "ClassifyBatch": pb.ClassifyBatchResponse,
    "Observe": pb.ObserveResponse,
    "SubmitLabels": pb.SubmitLabelsResponse,
    "GetStatus": pb.GetStatusResponse,
}


def _reply_rows(rpc: str, request: Message, raw_reply: bytes) -> int:
    return check_reply(rpc, request, REPLY_TYPES[rpc].FromString(raw_reply))


@pytest.mark.parametrize(
    ("value", "needle"),
    [(0.0, "are all zeros"), (1e-30, "too small to be put on the unit sphere")],
)
def test_vectors_without_a_direction_are_named_precisely(
    stub: pb_grpc.MonitorStub, value: float, needle: str
) -> None:
    """A zero vector and one whose squared length underflows float32 get different messages
    (the second is not "all zeros": it is not)."""
    x = np.full(DIM, value, dtype="<f4")
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(pb.ClassifyRequest(embedding=pb.Embedding(f32le=x.tobytes())), timeout=10)
    assert info.value.code() == Code.INVALID_ARGUMENT
    assert needle in info.value.details() and "rows [0]" in info.value.details()


def test_unknown_method_is_unimplemented(sidecar_target: Target) -> None:
    """A method the service does not have is grpcio's UNIMPLEMENTED, not a crash."""
    call = sidecar_target.channel.unary_unary(f"/{SERVICE_NAME}/Explode")
    with pytest.raises(grpc.RpcError) as info:
        call(b"\x00", timeout=10)
    assert info.value.code() == Code.UNIMPLEMENTED


def test_guard_names_the_message_type_and_counts_the_refusal(
    guarded_target: Target, fuzz_sidecar: Sidecar
) -> None:
    """One undecodable request through the guard: INVALID_ARGUMENT naming the type, counted."""
    before = request_counts(fuzz_sidecar)
    with pytest.raises(grpc.RpcError) as info:
        guarded_target.call("Observe")(b"\x0a\x02\xff\xfe", timeout=10)  # bad UTF-8 in an id
    assert info.value.code() == Code.INVALID_ARGUMENT
    details = info.value.details()
    assert "not a valid silentwatch.v1.ObserveRequest" in details and "UTF-8" in details
    tally = Tally()
    tally.add("Observe", Code.INVALID_ARGUMENT)
    assert_metrics_moved_by(fuzz_sidecar, before, tally)


def test_sidecar_still_serves_after_the_fuzz(
    fuzz_sidecar: Sidecar, stub: pb_grpc.MonitorStub
) -> None:
    """After every property above ran on it, the module's sidecar answers everything."""
    still_serves(fuzz_sidecar, stub)
    status = stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    assert status.labels.received >= status.labels.joined
    assert status.store.entries <= status.store.capacity
