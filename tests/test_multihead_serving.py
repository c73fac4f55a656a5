"""Multi-head bundles served over real gRPC: per-head scores on the wire, labels that name
their head, per-head status, metrics and silent-failure signals (issue 19)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from silentwatch.monitor.bundle import EmbedderSpec, load_bundle
from silentwatch.monitor.bundle.manifest import DetectorSettings
from silentwatch.monitor.config import load_settings
from silentwatch.monitor.serving.server import Sidecar
from silentwatch.monitor.serving.wire import decode_head_scores
from silentwatch.monitor.simulate.world import SyntheticWorld
from silentwatch.monitor.training import train_bundle
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

DIM = 32
HEADS = ("toxicity", "threat", "insult")


def _labels(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Three label columns: the world's, and two from other directions (one rare)."""
    threat = (x[:, 3] > np.quantile(x[:, 3], 0.8)).astype(np.int8)  # 20% positive
    insult = (x[:, 7] > np.median(x[:, 7])).astype(np.int8)
    return np.stack([y, threat, insult], axis=1)


@pytest.fixture(scope="module")
def multi_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    world = SyntheticWorld(dim=DIM, delta=0.02, seed=3)
    x, y = world.sample(1200)
    out = tmp_path_factory.mktemp("multi") / "b"
    train_bundle(
        x,
        _labels(x, y),
        out,
        embedder=EmbedderSpec(name="test/embedder", version="v1"),
        head_names=HEADS,
        classifier_version="clf-multi",
        reference_size=200,
        detectors=DetectorSettings(window_size=32, calibration_windows=200),
        texts=[f"text {i}" for i in range(x.shape[0])],
        canary_count=200,
    )
    return out


@pytest.fixture(scope="module")
def served(multi_bundle: Path):
    settings = load_settings(bundle=multi_bundle, port=0, metrics_port=0, confirm_every=50)
    sc = Sidecar(settings, bundle=load_bundle(multi_bundle)).start()
    with grpc.insecure_channel(sc.grpc_target) as ch:
        yield sc, pb_grpc.MonitorStub(ch)
    sc.stop(grace=0.5)


def _matrix(x: np.ndarray) -> pb.EmbeddingMatrix:
    x = np.ascontiguousarray(x, dtype="<f4")
    return pb.EmbeddingMatrix(rows=x.shape[0], dim=x.shape[1], f32le=x.tobytes())


def _rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_batch_reply_packs_every_head_and_keeps_the_default_fields(served, multi_bundle):
    _, stub = served
    bundle = load_bundle(multi_bundle)
    x = _rows(64, seed=1)
    r = stub.ClassifyBatch(pb.ClassifyBatchRequest(embeddings=_matrix(x), embedder_version="v1"))
    got = decode_head_scores(r.heads)
    assert list(r.heads.heads) == list(HEADS)
    assert got["p_unsafe"].shape == (64, 3)
    for j, head in enumerate(bundle.heads):
        np.testing.assert_allclose(got["p_unsafe"][:, j], head.scorer.predict_proba(x), atol=1e-5)
        np.testing.assert_array_equal(
            got["flagged"][:, j], got["p_unsafe"][:, j] >= head.thresholds.flag
        )
    np.testing.assert_allclose(got["confidence"], np.maximum(got["p_unsafe"], 1 - got["p_unsafe"]))
    # The one-head fields are the default head's, so single-head clients keep working.
    np.testing.assert_allclose(np.asarray(r.p_unsafe), got["p_unsafe"][:, 0], atol=1e-6)


def test_a_subset_trims_the_reply_and_an_unknown_head_records_nothing(served):
    sc, stub = served
    x = _rows(4, seed=2)
    r = stub.Classify(
        pb.ClassifyRequest(
            request_id="subset-1",
            embedding=pb.Embedding(f32le=x[:1].astype("<f4").tobytes()),
            embedder_version="v1",
            heads=["threat"],
        )
    )
    assert list(r.heads.heads) == ["threat"] and r.heads.rows == 1
    before = len(sc.store)
    with pytest.raises(grpc.RpcError) as err:
        stub.ClassifyBatch(
            pb.ClassifyBatchRequest(
                request_ids=["u1", "u2", "u3", "u4"],
                embeddings=_matrix(x),
                embedder_version="v1",
                heads=["threat", "self_harm"],
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        "'self_harm'" in err.value.details() and "toxicity, threat, insult" in err.value.details()
    )
    assert len(sc.store) == before


def test_labels_name_their_head_and_never_touch_another(served):
    sc, stub = served
    x = _rows(3, seed=3)
    ids = ["lab-a", "lab-b", "lab-c"]
    stub.ClassifyBatch(
        pb.ClassifyBatchRequest(request_ids=ids, embeddings=_matrix(x), embedder_version="v1")
    )
    before = {h.name: h.labelled.cumulative.n for h in stub.GetStatus(pb.GetStatusRequest()).heads}
    r = stub.SubmitLabels(
        pb.SubmitLabelsRequest(
            labels=[
                pb.Label(request_id="lab-a", unsafe=True, head="threat"),
                pb.Label(request_id="lab-a", unsafe=False),  # the default head: joins too
                pb.Label(request_id="lab-b", unsafe=True, head="insult"),
            ]
        )
    )
    assert (r.joined, r.already_labelled) == (3, 0)
    again = stub.SubmitLabels(
        pb.SubmitLabelsRequest(labels=[pb.Label(request_id="lab-a", unsafe=True, head="threat")])
    )
    assert (again.joined, again.already_labelled) == (0, 1)
    with pytest.raises(grpc.RpcError) as err:
        stub.SubmitLabels(
            pb.SubmitLabelsRequest(
                labels=[
                    pb.Label(request_id="lab-c", unsafe=True),
                    pb.Label(request_id="lab-c", unsafe=True, head="sexual"),
                ]
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'sexual'" in err.value.details()
    # Nothing of the refused request was joined: lab-c's default head still joins.
    ok = stub.SubmitLabels(pb.SubmitLabelsRequest(labels=[pb.Label(request_id="lab-c")]))
    assert ok.joined == 1
    sc.pipeline.wait_idle()
    after = {h.name: h.labelled.cumulative.n for h in stub.GetStatus(pb.GetStatusRequest()).heads}
    assert {k: after[k] - before[k] for k in HEADS} == {"toxicity": 2, "threat": 1, "insult": 1}


def test_status_and_metrics_carry_every_head(served):
    sc, stub = served
    st = stub.GetStatus(pb.GetStatusRequest())
    assert [h.name for h in st.heads] == list(HEADS)
    assert [h.is_default for h in st.heads] == [True, False, False]
    assert all(h.labelled.confirmation.enabled for h in st.heads)
    # Bonferroni over heads: each head's confirmation runs at alpha / 3.
    alpha = st.heads[0].labelled.confirmation.alpha
    assert st.labelled.confirmation.alpha == pytest.approx(alpha)
    assert st.silent_failure.false_alarm_rate == pytest.approx(
        sum(h.silent_failure.false_alarm_rate for h in st.heads)
    )
    body = urllib.request.urlopen(f"http://127.0.0.1:{sc.metrics_port}/metrics").read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items())))
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
    }
    for head in HEADS:
        assert ("silentwatch_silent_failure", (("head", head),)) in samples
        assert (
            "silentwatch_labelled_samples",
            (("head", head), ("window", "rolling")),
        ) in samples
        assert any(
            n == "silentwatch_prediction_score_count" and ("head", head) in lab
            for n, lab in samples
        )


def test_paired_canaries_name_the_head_that_broke(served, multi_bundle):
    """Reflect the canaries' embeddings across the threat head's weight direction: that
    head's decisions flip while the other heads barely move; the signal names it."""
    _, stub = served
    bundle = load_bundle(multi_bundle)
    can = stub.GetCanaries(pb.GetCanariesRequest())
    ref = bundle.canaries.embeddings
    w = bundle.heads[1].scorer.weights.astype(np.float64)
    w /= np.linalg.norm(w)
    live = ref - 2.0 * np.outer(ref @ w, w)  # a reflection: every norm kept
    r = stub.SubmitCanaryEmbeddings(
        pb.SubmitCanaryEmbeddingsRequest(
            canary_set_id=can.canary_set_id, embeddings=_matrix(live), embedder_version="v2"
        )
    )
    by_head = {h.head: h.reading for h in r.heads}
    assert list(by_head) == list(HEADS)
    assert by_head["threat"].failure
    assert by_head["threat"].roc_auc.estimate < 0.5
    st = stub.GetStatus(pb.GetStatusRequest())
    assert st.silent_failure.active
    failing = [h.name for h in st.heads if h.silent_failure.active]
    assert "threat" in failing
    assert "threat" in st.silent_failure.summary


def test_a_one_head_bundle_replies_as_before(stub):
    x = _rows(2, seed=5)
    r = stub.ClassifyBatch(pb.ClassifyBatchRequest(embeddings=_matrix(x), embedder_version="v1"))
    assert not r.HasField("heads")
    named = stub.ClassifyBatch(
        pb.ClassifyBatchRequest(embeddings=_matrix(x), embedder_version="v1", heads=["default"])
    )
    assert list(named.heads.heads) == ["default"]
    st = stub.GetStatus(pb.GetStatusRequest())
    assert [h.name for h in st.heads] == ["default"] and st.heads[0].is_default
