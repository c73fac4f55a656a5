"""Text mode and canaries with the packaged all-MiniLM-L6-v2, over real gRPC."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from silentwatch.monitor.bundle import load_bundle
from silentwatch.monitor.config import load_settings
from silentwatch.monitor.evaluation.classification import labelled_metrics
from silentwatch.monitor.serving.server import Sidecar
from silentwatch.monitor.training import train_bundle
from silentwatch.scrape import scrape
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

pytestmark = pytest.mark.offline

RUDE = [
    "you are a {} idiot",
    "shut up, you {} moron",
    "what a {} pathetic loser you are",
    "nobody wants your {} garbage opinion, get lost",
]
KIND = [
    "thanks for the {} update",
    "the {} meeting is on tuesday",
    "I enjoyed the {} article",
    "great {} photo of the lake",
]
WORDS = ["big", "little", "old", "new", "red", "quiet", "local", "weekly", "famous", "strange"]


def _texts() -> tuple[list[str], np.ndarray]:
    texts, labels = [], []
    for w in WORDS:
        for t in RUDE:
            texts.append(t.format(w))
            labels.append(1)
        for t in KIND:
            texts.append(t.format(w))
            labels.append(0)
    return texts, np.array(labels, dtype=np.int8)


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory):
    from silentwatch.offline.embedders.hf import load_embedder

    emb = load_embedder("minilm")
    texts, y = _texts()
    x = emb.embed(texts)
    out = tmp_path_factory.mktemp("text") / "b"
    train_bundle(x, y, out, embedder=emb.spec("l6"), detectors=None, canaries=(texts[::4], y[::4]))
    return out, emb


@pytest.fixture(scope="module")
def text_sidecar(text_bundle):
    from silentwatch.textmode import load_text_embedder

    out, _ = text_bundle
    bundle = load_bundle(out)
    assert bundle.canaries is not None and len(bundle.canaries.texts) == 20
    settings = load_settings(
        bundle=out, port=0, metrics_port=0, text_mode=True, canary_interval_seconds=3600
    )
    sc = Sidecar(settings, bundle=bundle, text_embedder=load_text_embedder(bundle)).start()
    yield sc
    sc.stop(grace=0.5)


def test_text_scores_equal_the_embedding_path(text_sidecar, text_bundle):
    _, emb = text_bundle
    with grpc.insecure_channel(text_sidecar.grpc_target) as ch:
        stub = pb_grpc.MonitorStub(ch)
        text = "you are a complete idiot"
        by_text = stub.Classify(pb.ClassifyRequest(request_id="t1", text=text)).p_unsafe
        x = emb.embed([text]).astype("<f4")
        by_emb = stub.Classify(
            pb.ClassifyRequest(embedding=pb.Embedding(f32le=x.tobytes()), embedder_version="l6")
        ).p_unsafe
        assert by_text == pytest.approx(by_emb, abs=1e-5)
        batch = stub.ClassifyBatch(pb.ClassifyBatchRequest(texts=[text, "lovely weather today"]))
        assert batch.p_unsafe[0] == pytest.approx(by_text, abs=1e-5)
        assert batch.p_unsafe[0] > 0.5 > batch.p_unsafe[1]
        with pytest.raises(grpc.RpcError) as e:
            stub.Classify(pb.ClassifyRequest(text=text, embedding=pb.Embedding(f32le=x.tobytes())))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not both" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            stub.ClassifyBatch(pb.ClassifyBatchRequest(texts=["fine", "   "]))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "text 1 is empty" in (
            e.value.details()
        )
        # Still serving after the refusals.
        assert 0.0 <= stub.Classify(pb.ClassifyRequest(text="hello there")).p_unsafe <= 1.0


def test_canaries_measure_accuracy_without_human_labels(text_sidecar, text_bundle):
    _, emb = text_bundle
    deadline = time.monotonic() + 60
    while text_sidecar.canary.runs == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    with grpc.insecure_channel(text_sidecar.grpc_target) as ch:
        c = pb_grpc.MonitorStub(ch).GetStatus(pb.GetStatusRequest()).canary
    assert c.enabled and c.size == 20 and c.runs >= 1 and not c.last_error
    can = text_sidecar.bundle.canaries
    p = text_sidecar.bundle.scorer.predict_proba(emb.embed(can.texts))
    want = labelled_metrics(p, can.labels)
    assert c.metrics.accuracy == pytest.approx(want["accuracy"])
    assert c.metrics.roc_auc == pytest.approx(want["roc_auc"], abs=1e-6)
    m = scrape(text_sidecar.metrics_url)
    assert m.get_value("silentwatch_canary_accuracy") == pytest.approx(want["accuracy"])
    assert m.get_value("silentwatch_canary_runs_total") >= 1


def test_text_without_text_mode_and_a_foreign_embedder_are_refused(text_bundle, sidecar, stub):
    with pytest.raises(grpc.RpcError) as e:
        stub.Classify(pb.ClassifyRequest(text="hello"))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--text-mode" in e.value.details()
    from silentwatch.textmode import TextModeError, load_text_embedder

    # The conftest bundle names an embedder silentwatch does not ship.
    with pytest.raises(TextModeError, match="text-embedder-path"):
        load_text_embedder(sidecar.bundle)


def test_text_mode_refuses_weights_the_bundle_was_not_trained_on(tmp_path):
    from silentwatch.monitor.bundle import EmbedderSpec
    from silentwatch.offline.embedders import MINILM_NAME
    from silentwatch.textmode import TextModeError, load_text_embedder

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((200, 384)), np.arange(200) % 2
    spec = EmbedderSpec(name=MINILM_NAME, version="v", weights_sha256="0" * 64)
    train_bundle(x, y, tmp_path / "b", embedder=spec, detectors=None)
    with pytest.raises(TextModeError, match="not the ones this bundle was trained on"):
        load_text_embedder(load_bundle(tmp_path / "b"))
