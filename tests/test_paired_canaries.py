"""Paired canaries over real gRPC: GetCanaries / SubmitCanaryEmbeddings, the client helper,
bad input, hot reload, text mode's runs, and the silent-failure signal they feed."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from silentwatch.client import CanaryClient
from silentwatch.monitor.bundle import EmbedderSpec, load_bundle
from silentwatch.monitor.bundle.manifest import DetectorSettings
from silentwatch.monitor.config import load_settings
from silentwatch.monitor.detection.canary import CanaryRunner, CanaryTarget
from silentwatch.monitor.detection.engine import DetectionEngine, EngineOptions
from silentwatch.monitor.detection.paired_canaries import (
    NO_CANARIES,
    NO_EMBEDDINGS,
    SOURCE_SIDECAR,
    PairedCanaries,
    unavailable_status,
)
from silentwatch.monitor.detection.suite import suite_for_bundle
from silentwatch.monitor.detection.verdict import (
    LABEL_CONFIRMATION,
    PAIRED_CANARIES,
    silent_failure,
)
from silentwatch.monitor.detection.windows import WindowSpec
from silentwatch.monitor.serving.pipeline import LabelBatch
from silentwatch.monitor.serving.server import Sidecar
from silentwatch.monitor.simulate.world import SyntheticWorld
from silentwatch.monitor.training import train_bundle
from silentwatch.scrape import scrape
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

from .conftest import DIM

SPEC = EmbedderSpec(name="test/embedder", version="v1")
# Few calibration windows: these tests read canaries, not drift thresholds.
DETECTORS = DetectorSettings(window_size=16, calibration_windows=50)


class Corpus:
    """Texts with fixed embeddings: ``embed`` plays the moderation service's live embedder."""

    def __init__(self, n: int, seed: int) -> None:
        world = SyntheticWorld(dim=DIM, delta=0.02, seed=seed)
        self.x, self.y = world.sample(n)
        self.texts = [f"canary text {seed}-{i}" for i in range(n)]
        self._row = {t: i for i, t in enumerate(self.texts)}
        rng = np.random.default_rng(seed)
        # A different model: same dimension, another basis (the frozen head sees noise).
        self.rotation = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0].astype(np.float32)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.x[[self._row[t] for t in texts]]

    def embed_rotated(self, texts: list[str]) -> np.ndarray:
        return self.embed(texts) @ self.rotation


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return Corpus(1200, seed=11)


@pytest.fixture(scope="module")
def paired_bundle(tmp_path_factory: pytest.TempPathFactory, corpus: Corpus) -> Path:
    out = tmp_path_factory.mktemp("paired") / "b"
    train_bundle(
        corpus.x, corpus.y, out, embedder=SPEC, texts=corpus.texts, detectors=DETECTORS, seed=3
    )
    return out


@pytest.fixture
def running(paired_bundle: Path):
    started: list[Sidecar] = []

    def start(bundle: Path = paired_bundle, **overrides) -> Sidecar:
        s = load_settings(bundle=bundle, port=0, metrics_port=0, store="memory", **overrides)
        sc = Sidecar(s, bundle=load_bundle(bundle)).start()
        started.append(sc)
        return sc

    yield start
    for sc in started:
        sc.stop(grace=0.5)


def _stub(sc: Sidecar) -> pb_grpc.MonitorStub:
    return pb_grpc.MonitorStub(grpc.insecure_channel(sc.grpc_target))


def test_bundle_keeps_balanced_held_out_canaries_with_their_embeddings(paired_bundle, corpus):
    b = load_bundle(paired_bundle)
    can = b.canaries
    assert can is not None and can.embeddings is not None
    held_out = b.manifest.training.n_holdout
    assert len(can.texts) == min(256, held_out)
    assert abs(int(can.labels.sum()) - len(can.texts) // 2) <= 1  # half of each class
    # The stored rows are the texts' own embeddings (unit rows: the embedder normalises).
    rows = corpus.embed(can.texts)
    expected = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    np.testing.assert_allclose(can.embeddings, expected, atol=1e-6)
    np.testing.assert_array_equal(can.labels, corpus.y[[corpus.texts.index(t) for t in can.texts]])


def test_same_embedder_reads_no_change_and_no_failure(running, corpus):
    sc = running()
    reading = CanaryClient(sc.grpc_target, embedder_version="v1").check(corpus.embed)
    assert reading.source == "submitted" and reading.embedder_version == "v1"
    assert reading.angle_max_degrees < 0.01 and not reading.embedder_changed
    assert reading.linear_cka == pytest.approx(1.0, abs=1e-6)
    assert reading.auc_drop == pytest.approx(0.0, abs=1e-9) and not reading.failure
    assert reading.roc_auc.estimate == pytest.approx(reading.reference_roc_auc)
    assert reading.roc_auc.low <= reading.roc_auc.estimate <= reading.roc_auc.high
    assert reading.flip_rate.estimate == 0.0
    st = _stub(sc).GetStatus(pb.GetStatusRequest())
    assert st.paired_canaries.available and st.paired_canaries.submissions == 1
    assert st.paired_canaries.last.size == reading.size
    sf = st.silent_failure
    assert not sf.active and set(sf.sources) == {PAIRED_CANARIES, LABEL_CONFIRMATION}
    assert sf.false_alarm_rate == pytest.approx(0.01)


def test_a_breaking_embedder_is_a_silent_failure_page(running, corpus):
    sc = running()
    reading = CanaryClient(sc.grpc_target).check(corpus.embed_rotated)
    assert reading.embedder_changed and reading.angle_mean_degrees > 30
    assert reading.failure and reading.auc_drop_lower_bound > reading.margin
    assert reading.roc_auc.estimate < reading.reference_roc_auc - 0.2
    st = _stub(sc).GetStatus(pb.GetStatusRequest())
    assert st.silent_failure.active and list(st.silent_failure.evidence) == [PAIRED_CANARIES]
    assert "canaries: ROC-AUC" in st.silent_failure.summary
    m = scrape(sc.metrics_url)
    assert m.get_value("silentwatch_silent_failure", head="default") == 1.0
    assert (
        m.get_value("silentwatch_silent_failure_evidence", source=PAIRED_CANARIES, head="default")
        == 1.0
    )
    assert m.get_value("silentwatch_paired_canary_failures_total") == 1.0
    live = m.get_value(
        "silentwatch_paired_canary_roc_auc", embeddings="live", bound="estimate", head="default"
    )
    assert live == pytest.approx(reading.roc_auc.estimate)
    # Rolling the embedder back clears the page at the next submission.
    CanaryClient(sc.grpc_target).check(corpus.embed)
    assert not _stub(sc).GetStatus(pb.GetStatusRequest()).silent_failure.active


def _submit(sid: str, x: np.ndarray, dim: int | None = None) -> pb.SubmitCanaryEmbeddingsRequest:
    x = np.ascontiguousarray(x, dtype="<f4")
    return pb.SubmitCanaryEmbeddingsRequest(
        canary_set_id=sid,
        embeddings=pb.EmbeddingMatrix(
            rows=x.shape[0], dim=x.shape[1] if dim is None else dim, f32le=x.tobytes()
        ),
    )


def test_bad_submissions_get_a_precise_status_and_nothing_is_recorded(running, corpus):
    sc = running()
    stub = _stub(sc)
    c = stub.GetCanaries(pb.GetCanariesRequest())
    x = corpus.embed(list(c.texts))
    nan = x.copy()
    nan[3, 0] = np.nan
    inf = x.copy()
    inf[7, 1] = np.inf
    zero = x.copy()
    zero[5] = 0.0  # no angle to measure: refused, not an INTERNAL error
    cases = {
        "too few rows": (
            _submit(c.canary_set_id, x[:-1]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "rows",
        ),
        "too many rows": (
            _submit(c.canary_set_id, np.vstack([x, x[:1]])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "rows",
        ),
        "reordered": (_submit(c.canary_set_id, x[::-1]), grpc.StatusCode.INVALID_ARGUMENT, "order"),
        "dimension": (_submit(c.canary_set_id, x[:, 1:]), grpc.StatusCode.INVALID_ARGUMENT, "dim"),
        "NaN": (_submit(c.canary_set_id, nan), grpc.StatusCode.INVALID_ARGUMENT, "rows [3]"),
        "Inf": (_submit(c.canary_set_id, inf), grpc.StatusCode.INVALID_ARGUMENT, "rows [7]"),
        "zero row": (_submit(c.canary_set_id, zero), grpc.StatusCode.INVALID_ARGUMENT, "rows [5]"),
        "no set id": (_submit("", x), grpc.StatusCode.INVALID_ARGUMENT, "canary_set_id"),
        "unknown set": (_submit("0123-k9", x), grpc.StatusCode.NOT_FOUND, "GetCanaries"),
        "no embeddings": (
            pb.SubmitCanaryEmbeddingsRequest(canary_set_id=c.canary_set_id),
            grpc.StatusCode.INVALID_ARGUMENT,
            "missing",
        ),
    }
    for name, (request, code, words) in cases.items():
        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitCanaryEmbeddings(request)
        assert err.value.code() == code, name
        assert words in err.value.details(), (name, err.value.details())
    st = stub.GetStatus(pb.GetStatusRequest())
    assert st.paired_canaries.submissions == 0 and not st.paired_canaries.HasField("last")
    # ... and the sidecar keeps serving: a good submission goes through.
    assert stub.SubmitCanaryEmbeddings(_submit(c.canary_set_id, x)).reading.size == len(c.texts)


def test_a_bundle_without_canary_embeddings_serves_and_says_why(running, tmp_path, corpus):
    plain = tmp_path / "plain"
    x, y = corpus.x[:800], corpus.y[:800]
    train_bundle(x, y, plain, embedder=SPEC, detectors=DETECTORS)  # no texts: no canaries
    texts_only = tmp_path / "texts-only"
    train_bundle(
        x,
        y,
        texts_only,
        embedder=SPEC,
        detectors=DETECTORS,
        canaries=(corpus.texts[:50], corpus.y[:50]),  # text mode's canaries, no embeddings
    )
    for path, why in ((plain, NO_CANARIES), (texts_only, NO_EMBEDDINGS)):
        sc = running(path)
        stub = _stub(sc)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetCanaries(pb.GetCanariesRequest())
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert why in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitCanaryEmbeddings(_submit("x", corpus.x[:4]))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        st = stub.GetStatus(pb.GetStatusRequest())
        assert not st.paired_canaries.available and st.paired_canaries.unavailable_reason == why
        assert list(st.silent_failure.sources) == [LABEL_CONFIRMATION]
        assert st.silent_failure.unavailable == [f"{PAIRED_CANARIES}: {why}"]
        m = scrape(sc.metrics_url)
        assert m.get_value("silentwatch_paired_canary_available") == 0.0
        assert m.get_value("silentwatch_silent_failure_false_alarm_rate") == pytest.approx(0.005)
        # Classification is unaffected.
        one = pb.Embedding(f32le=np.ascontiguousarray(x[0], dtype="<f4").tobytes())
        assert 0 <= stub.Classify(pb.ClassifyRequest(embedding=one)).p_unsafe <= 1


def test_after_a_hot_reload_old_submissions_are_stale_and_the_client_refetches(
    running, tmp_path, corpus
):
    sc = running()
    stub = _stub(sc)
    old = stub.GetCanaries(pb.GetCanariesRequest())
    other = Corpus(1200, seed=12)
    second = tmp_path / "second"
    train_bundle(
        other.x, other.y, second, embedder=SPEC, texts=other.texts, detectors=DETECTORS, seed=4
    )
    assert sc.reload(second)[0]
    with pytest.raises(grpc.RpcError) as err:
        stub.SubmitCanaryEmbeddings(_submit(old.canary_set_id, corpus.embed(list(old.texts))))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no longer serves" in err.value.details()
    new = stub.GetCanaries(pb.GetCanariesRequest())
    assert new.canary_set_id != old.canary_set_id and set(new.texts) <= set(other.texts)
    reading = CanaryClient(sc.grpc_target).check(other.embed)
    assert not reading.failure and reading.angle_max_degrees < 0.01


def test_client_loop_submits_on_a_schedule_and_survives_a_failing_embedder(running, corpus):
    sc = running()
    calls = {"n": 0}

    def flaky(texts: list[str]) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("model server down")
        return corpus.embed(texts)

    seen: list[pb.PairedCanaryReading] = []
    client = CanaryClient(sc.grpc_target).start(flaky, interval=0.05, on_reading=seen.append)
    try:
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.stop()
    assert len(seen) >= 2 and not seen[-1].failure
    assert _stub(sc).GetStatus(pb.GetStatusRequest()).paired_canaries.submissions >= 2
    with pytest.raises(ValueError, match="one row per text"):
        CanaryClient(sc.grpc_target).check(lambda texts: corpus.embed(texts)[:-1])
    with pytest.raises(ValueError, match="interval"):
        CanaryClient(sc.grpc_target).start(corpus.embed, interval=0)


def test_text_mode_runs_feed_the_paired_evidence(paired_bundle, corpus):
    bundle = load_bundle(paired_bundle)
    paired = PairedCanaries(bundle)
    assert bundle.canaries is not None
    target = CanaryTarget(bundle.canaries, bundle.scorer, paired, "v1")
    runner = CanaryRunner(lambda: target, corpus.embed_rotated)
    status = runner.run_once()
    assert status.last_error == "" and status.runs == 1
    snap = paired.snapshot()
    assert snap.submissions == 1 and snap.last is not None
    assert snap.last.source == SOURCE_SIDECAR and snap.last.reading.failure


def test_label_confirmation_raises_the_page_on_its_own(paired_bundle):
    bundle = load_bundle(paired_bundle)
    engine = DetectionEngine(
        suite_for_bundle(bundle),
        EngineOptions(
            window=WindowSpec(size=16, stride=16),
            reference_auc=0.95,
            reference_positives=500,
            reference_negatives=500,
            confirm_every=200,
        ),
    )
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400).astype(np.int8)
    p = rng.random(400).astype(np.float32)  # a classifier at chance
    engine.on_labels(LabelBatch(p, y, 0.0, last_seq=399))
    verdict = silent_failure(engine.snapshot(), unavailable_status(NO_CANARIES))
    assert verdict.active and verdict.evidence == (LABEL_CONFIRMATION,)
    assert "labels: ROC-AUC 0.950" in verdict.summary
    assert verdict.false_alarm_rate == pytest.approx(engine.options.confirmation_alpha)
    # Input drift never enters: a drifted window with no labels leaves the page down.
    quiet = DetectionEngine(
        suite_for_bundle(bundle), EngineOptions(window=WindowSpec(size=16, stride=16))
    )
    quiet.evaluate(np.full((32, DIM), 1 / np.sqrt(DIM), np.float32), np.full(32, 0.9), 0.0)
    assert quiet.snapshot().input_drift
    assert not silent_failure(quiet.snapshot(), unavailable_status(NO_CANARIES)).active


def test_canary_options_are_checked(tmp_path, corpus):
    x, y, texts = corpus.x[:400], corpus.y[:400], corpus.texts[:400]
    none = train_bundle(
        x, y, tmp_path / "none", embedder=SPEC, texts=texts, canary_count=0, detectors=None
    )
    assert load_bundle(none.path).canaries is None
    few = train_bundle(
        x, y, tmp_path / "few", embedder=SPEC, texts=texts, canary_count=10, detectors=None
    )
    can = load_bundle(few.path).canaries
    assert can is not None and len(can.texts) == 10 and int(can.labels.sum()) == 5
    with pytest.raises(ValueError, match="one per row"):
        train_bundle(x, y, tmp_path / "bad", embedder=SPEC, texts=texts[:-1], detectors=None)
    with pytest.raises(ValueError, match="dimension"):
        train_bundle(
            x, y, tmp_path / "bad2", embedder=SPEC, detectors=None,
            canaries=(texts[:5], y[:5], np.zeros((5, DIM + 1), np.float32)),
        )  # fmt: skip
