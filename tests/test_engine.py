"""The detection engine inside a real sidecar: windows, alarms, labels, identity, export."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest

from silentwatch.monitor.bundle import EmbedderSpec, load_bundle
from silentwatch.monitor.config import load_settings
from silentwatch.monitor.detection.engine import (
    RECENT_WINDOWS,
    DetectionEngine,
    EngineOptions,
)
from silentwatch.monitor.detection.suite import suite_for_bundle
from silentwatch.monitor.detection.windows import WindowSpec
from silentwatch.monitor.evaluation.classification import labelled_metrics
from silentwatch.monitor.serving.pipeline import PredictionBatch
from silentwatch.monitor.serving.server import Sidecar
from silentwatch.monitor.simulate import drift
from silentwatch.monitor.simulate.world import SyntheticWorld
from silentwatch.monitor.training import train_bundle
from silentwatch.scrape import scrape
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

from .conftest import DIM
from .test_server import batch_request

FAST = {"max_window_evaluations_per_second": 0}  # evaluate every window in tests


def send(stub, x: np.ndarray, prefix: str, **kw) -> list[float]:
    ids = [f"{prefix}{i}" for i in range(x.shape[0])]
    return list(stub.ClassifyBatch(batch_request(x, ids, **kw)).p_unsafe)


@pytest.fixture
def fast(sidecar_factory):
    sc = sidecar_factory(**FAST)
    with grpc.insecure_channel(sc.grpc_target) as ch:
        yield sc, pb_grpc.MonitorStub(ch)


def test_status_before_traffic_names_every_detector_with_its_calibration(fast):
    _sc, stub = fast
    d = stub.GetStatus(pb.GetStatusRequest()).detection
    assert d.enabled and d.calibration_source == "bundle-train"
    assert d.false_alarm_rate == pytest.approx(0.01)
    assert d.window.mode == "count" and d.window.size == 32 == d.window.stride
    names = {r.name for r in d.detectors}
    assert names == {
        "mmd",
        "mmd_rff",
        "bbsd_ks",
        "domain_auc",
        "pca_reconstruction",
        "centroid_angle",
        "confidence_shift",
    }
    assert all(math.isnan(r.statistic) and not r.alarm for r in d.detectors)
    assert {(c.detector, c.stream) for c in d.change_points} == {
        ("adwin", "score"),
        ("adwin", "reconstruction_error"),
        ("page_hinkley", "reconstruction_error"),
    }


def test_tumbling_windows_on_clean_traffic(fast, world):
    sc, stub = fast
    x, _ = world.sample(32 * 5 + 7)
    send(stub, x, "c")
    assert sc.pipeline.wait_idle(10)
    d = stub.GetStatus(pb.GetStatusRequest()).detection
    assert d.windows_evaluated == 5 and d.rows_seen == 167
    for r in d.detectors:
        assert r.window_rows == 32 and math.isfinite(r.statistic) and math.isfinite(r.threshold)
    assert all(c.samples == 167 for c in d.change_points)


def test_sliding_windows_evaluate_every_stride(sidecar_factory, world):
    sc = sidecar_factory(window_stride=8, **FAST)
    with grpc.insecure_channel(sc.grpc_target) as ch:
        stub = pb_grpc.MonitorStub(ch)
        send(stub, world.sample(64)[0], "s")
        assert sc.pipeline.wait_idle(10)
        # Boundaries every 8 rows; the first full window of 32 is at row 32: 32, 40, ..., 64.
        assert stub.GetStatus(pb.GetStatusRequest()).detection.windows_evaluated == 5


def test_drift_raises_alarms_and_they_are_exported(fast, world):
    sc, stub = fast
    x, _ = world.sample(32 * 4)
    xd = drift.gaussian_drift(x, 0.3, np.random.default_rng(0))
    send(stub, xd, "d")
    assert sc.pipeline.wait_idle(10)
    d = stub.GetStatus(pb.GetStatusRequest()).detection
    alarms = {r.name for r in d.detectors if r.alarm}
    assert {"mmd", "pca_reconstruction"} <= alarms and d.input_drift
    m = scrape(sc.metrics_url)
    assert m.get_value("silentwatch_drift_alarm", detector="mmd") == 1.0
    assert m.get_value("silentwatch_input_drift") == 1.0
    assert m.get_value("silentwatch_input_drift_windows_total") == d.input_drift_windows >= 1
    assert m.get_value("silentwatch_drift_alarms_total", detector="mmd") >= 1
    assert m.get_value("silentwatch_drift_windows_evaluated_total") == 4
    thr = m.get_value("silentwatch_drift_threshold", detector="mmd")
    assert thr == pytest.approx(next(r.threshold for r in d.detectors if r.name == "mmd"))
    angle = m.get_value("silentwatch_embedding_centroid_angle_degrees")
    assert angle == pytest.approx(d.centroid_angle_degrees) and angle > 0
    # Drift is not harm: the page needs evidence the classifier got worse, and there is none.
    assert m.get_value("silentwatch_silent_failure", head="default") == 0.0
    sf = stub.GetStatus(pb.GetStatusRequest()).silent_failure
    assert not sf.active and not sf.evidence


def test_input_drift_is_the_family_alarm_whatever_confidence_does(bundle_dir, world):
    bundle = load_bundle(bundle_dir)
    engine = DetectionEngine(
        suite_for_bundle(bundle),
        EngineOptions(window=WindowSpec(size=32, stride=32), domain_every=1),
    )
    x, _ = world.sample(32)
    xd = drift.gaussian_drift(x, 0.3, np.random.default_rng(1))
    ref_conf = engine.suite.calibration.reference_confidence["mean_confidence"]
    p_ref = np.full(32, ref_conf, dtype=np.float32)
    engine.evaluate(xd, p_ref, 0.0)
    assert engine.snapshot().input_drift
    # Confidence does not enter the input-drift signal (it used to gate a composite one).
    engine.evaluate(xd, np.full(32, 0.5, dtype=np.float32), 1.0)
    snap = engine.snapshot()
    assert snap.input_drift and snap.input_drift_windows == 2
    # Clean rows with their own scores (a fixed draw: deterministic): no drift alarm.
    clean = SyntheticWorld(dim=DIM, delta=0.02, seed=3)
    clean.sample(500)
    xc, _ = clean.sample(32)
    engine.evaluate(xc, bundle.scorer.predict_proba(xc), 2.0)
    assert not engine.snapshot().input_drift, engine.snapshot().detectors


def test_recent_ring_counts_the_last_ten_windows_for_k_of_n_alerts(bundle_dir, world):
    bundle = load_bundle(bundle_dir)
    engine = DetectionEngine(
        suite_for_bundle(bundle),
        EngineOptions(window=WindowSpec(size=32, stride=32), domain_every=4),
    )
    ref_conf = engine.suite.calibration.reference_confidence["mean_confidence"]
    p_ref = np.full(32, ref_conf, dtype=np.float32)
    x, _ = world.sample(32)
    xd = drift.gaussian_drift(x, 0.3, np.random.default_rng(1))
    for t in range(12):  # 12 drifted windows: the ring keeps the last 10
        engine.evaluate(xd, p_ref, float(t))
    snap = engine.snapshot()
    assert snap.recent_windows == RECENT_WINDOWS == 10
    assert snap.recent_input_drift_windows == 10
    assert snap.input_drift_windows == 12
    # domain_auc runs on every 4th window: 3 of 12; its ring holds its own evaluations.
    assert snap.detector("domain_auc").evaluations == 3 and snap.detector("mmd").evaluations == 12
    assert snap.detector("domain_auc").recent_evaluations == 3
    pca = snap.detector("pca_reconstruction")
    assert (pca.recent_alarms, pca.recent_evaluations) == (10, 10)
    clean = SyntheticWorld(dim=DIM, delta=0.02, seed=3)
    clean.sample(500)
    xc, _ = clean.sample(32)
    for t in range(12, 16):  # 4 clean windows push 4 drifted ones out
        engine.evaluate(xc, bundle.scorer.predict_proba(xc), float(t))
    snap = engine.snapshot()
    assert snap.recent_input_drift_windows == 6 and snap.recent_windows == 10


def test_time_windows_evaluate_by_arrival_time(bundle_dir, world):
    bundle = load_bundle(bundle_dir)
    spec = WindowSpec(mode="time", seconds=10.0, stride_seconds=5.0, max_rows=256)
    engine = DetectionEngine(
        suite_for_bundle(bundle), EngineOptions(window=spec, max_evaluations_per_second=0)
    )

    def push(n: int, at: float) -> None:
        x, _ = world.sample(n)
        norms = np.linalg.norm(x, axis=1)
        p = bundle.scorer.predict_proba(x, norms)
        engine.on_predictions(PredictionBatch(x, norms, p, "classify", "v1", at))

    push(40, 100.0)  # first batch: evaluated (40 rows >= 16)
    push(40, 102.0)  # within the stride: no evaluation
    push(40, 105.0)  # stride reached: window = rows since 95 s = 120
    push(40, 116.0)  # rows since 106 s: only these 40
    snap = engine.snapshot()
    assert snap.windows_evaluated == 3
    assert snap.detector("mmd").reading.window_rows == 40
    push(8, 130.0)  # too few rows for the smallest calibrated window: skipped
    assert engine.snapshot().windows_evaluated == 3


def test_delayed_labels_feed_rolling_and_cumulative_metrics(fast, world):
    sc, stub = fast
    x, y = world.sample(300)
    p = np.asarray(send(stub, x, "l"))
    stub.SubmitLabels(
        pb.SubmitLabelsRequest(
            labels=[pb.Label(request_id=f"l{i}", unsafe=bool(v)) for i, v in enumerate(y)]
        )
    )
    assert sc.pipeline.wait_idle(10)
    lab = stub.GetStatus(pb.GetStatusRequest()).labelled
    want = labelled_metrics(p, y)
    assert lab.rolling.n == 300 == lab.cumulative.n
    for key in ("roc_auc", "accuracy", "ece", "brier", "log_loss", "balanced_accuracy"):
        assert getattr(lab.rolling, key) == pytest.approx(want[key], rel=1e-5), key
    assert lab.cumulative.roc_auc == pytest.approx(want["roc_auc"], abs=0.01)
    m = scrape(sc.metrics_url)
    assert m.get_value("silentwatch_labelled_samples", window="rolling", head="default") == 300
    assert m.get_value(
        "silentwatch_labelled_roc_auc", window="cumulative", head="default"
    ) == pytest.approx(lab.cumulative.roc_auc)


def test_unvalidated_embedder_version_raises_the_mismatch_gauge(sidecar_factory, world):
    sc = sidecar_factory(embedder_version_policy="warn")
    with grpc.insecure_channel(sc.grpc_target) as ch:
        stub = pb_grpc.MonitorStub(ch)
        send(stub, world.sample(4)[0], "ok", embedder_version="v1")
        assert not stub.GetStatus(pb.GetStatusRequest()).identity.embedder_version_mismatch
        assert scrape(sc.metrics_url).get_value("silentwatch_embedder_version_mismatch") == 0
        send(stub, world.sample(4)[0], "new", embedder_version="v2")
        ident = stub.GetStatus(pb.GetStatusRequest()).identity
        assert ident.embedder_version_mismatch and 0 <= ident.last_mismatch_seconds_ago < 5
        assert scrape(sc.metrics_url).get_value("silentwatch_embedder_version_mismatch") == 1


def test_detection_off_and_bad_detector_options(sidecar_factory, bundle_dir):
    sc = sidecar_factory(detection=False)
    assert sc.engine is None
    with grpc.insecure_channel(sc.grpc_target) as ch:
        d = pb_grpc.MonitorStub(ch).GetStatus(pb.GetStatusRequest()).detection
    assert not d.enabled and "detection: false" in d.disabled_reason
    with pytest.raises(ValueError, match="unknown detector 'nope'; choose from mmd, "):
        Sidecar(load_settings(bundle=bundle_dir, port=0, metrics_port=0, detectors="mmd,nope"))
    with pytest.raises(ValueError, match="kind:stream"):
        Sidecar(load_settings(bundle=bundle_dir, port=0, metrics_port=0, change_detectors="x"))
    with pytest.raises(ValueError, match="below the smallest calibrated size"):
        DetectionEngine(
            suite_for_bundle(load_bundle(bundle_dir)), EngineOptions(window=WindowSpec(size=8))
        )


def test_bundle_without_thresholds_is_calibrated_at_startup(tmp_path, world):
    x, y = world.sample(800)
    out = tmp_path / "old"
    train_bundle(
        x, y, out, embedder=EmbedderSpec(name="t", version="v1"), detectors=None, reference_size=400
    )
    b = load_bundle(out)
    assert b.manifest.detectors is None
    suite = suite_for_bundle(b)
    assert suite.calibration.source == "startup-split"
    assert suite.calibration.settings.window_size == 50  # 200 held-out rows / 4
    assert b.dim == DIM


def test_rate_cap_runs_the_newest_window_exactly_and_counts_the_rest(bundle_dir, world):
    import time

    bundle = load_bundle(bundle_dir)
    suite = suite_for_bundle(bundle)
    engine = DetectionEngine(
        suite,
        EngineOptions(
            window=WindowSpec(size=32, stride=32), max_evaluations_per_second=1000, domain_every=1
        ),
    )

    def batch(x: np.ndarray) -> tuple[PredictionBatch, np.ndarray, np.ndarray]:
        norms = np.linalg.norm(x, axis=1)
        p = bundle.scorer.predict_proba(x, norms)
        return PredictionBatch(x, norms, p, "classify", "v1", 0.0), x / norms[:, None], p

    b1, u1, p1 = batch(world.sample(100)[0] * 3.0)  # not unit length: the engine normalises
    engine.on_predictions(b1)
    # Boundaries at rows 32, 64 and 96: the newest runs, the other two are counted.
    assert engine.windows_evaluated == 1 and engine.windows_skipped == 2
    mmd = suite.detectors["mmd"]
    assert engine.readings["mmd"].statistic == pytest.approx(
        mmd.statistic(u1[64:96], p1[64:96]), rel=1e-5
    )
    time.sleep(0.01)
    b2, u2, p2 = batch(world.sample(40)[0])
    engine.on_predictions(b2)
    # The next boundary is at row 128: the window spans the ring (96..99) and this batch.
    assert engine.windows_evaluated == 2
    want = mmd.statistic(np.concatenate([u1[96:], u2[:28]]), np.concatenate([p1[96:], p2[:28]]))
    assert engine.readings["mmd"].statistic == pytest.approx(want, rel=1e-5)
    assert engine.snapshot().rows_seen == 140
