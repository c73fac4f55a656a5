"""Window statistics in a child process (issue 16, item 2): the same readings as in process,
a dead child falls back to in-process evaluation (logged and counted), and the sidecar
stops its child and frees the shared memory."""

from __future__ import annotations

import copy
import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from silentwatch.monitor.bundle import load_bundle
from silentwatch.monitor.detection.engine import DetectionEngine, EngineOptions
from silentwatch.monitor.detection.suite import suite_for_bundle
from silentwatch.monitor.detection.windows import WindowSpec
from silentwatch.monitor.serving.pipeline import PredictionBatch
from silentwatch.monitor.simulate import drift
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

from .test_engine import FAST, send


def engine(bundle_dir: Path, offload: bool) -> DetectionEngine:
    options = EngineOptions(
        window=WindowSpec(size=32, stride=32),
        domain_every=2,
        max_evaluations_per_second=0,
        statistics_process=(str(bundle_dir), load_bundle(bundle_dir).sha256) if offload else None,
    )
    return DetectionEngine(suite_for_bundle(load_bundle(bundle_dir)), options)


def feed(e: DetectionEngine, bundle_dir: Path, world, windows: int) -> list[dict]:
    """``windows`` windows of traffic (half of them drifted); each window's readings."""
    scorer = load_bundle(bundle_dir).scorer
    out = []
    for w in range(windows):
        x, _ = world.sample(32)
        if w % 2:
            x = drift.gaussian_drift(x, 0.3, np.random.default_rng(w))
        x = x.astype(np.float32)
        norms = np.linalg.norm(x, axis=1)
        batch = PredictionBatch(x, norms, scorer.predict_proba(x, norms), "classify", "v1", w)
        e.on_predictions(batch)
        out.append({k: (r.statistic, r.alarm) for k, r in e.readings.items()})
    return out


def test_a_child_process_gives_the_in_process_readings(bundle_dir: Path, world) -> None:
    local = feed(engine(bundle_dir, offload=False), bundle_dir, copy.deepcopy(world), 6)
    e = engine(bundle_dir, offload=True)
    try:
        assert e.offload is not None and e.offload.pid != os.getpid()
        assert e.offload.wait_ready(60)
        remote = feed(e, bundle_dir, copy.deepcopy(world), 6)
        assert e.offload.fallbacks == 0
    finally:
        e.close()
    assert e.windows_evaluated == 6
    assert any(alarm for w in local for _, alarm in w.values())  # drift was seen
    for got, want in zip(remote, local, strict=True):
        assert got.keys() == want.keys()
        for name in want:
            assert got[name][1] == want[name][1]
            assert got[name][0] == pytest.approx(want[name][0], rel=1e-5, abs=1e-7)


def test_a_dead_child_falls_back_to_in_process_loudly(
    bundle_dir: Path, world, caplog: pytest.LogCaptureFixture
) -> None:
    e = engine(bundle_dir, offload=True)
    try:
        assert e.offload.wait_ready(60)
        feed(e, bundle_dir, world, 1)
        os.kill(e.offload.pid, signal.SIGKILL)
        caplog.set_level("ERROR")
        readings = feed(e, bundle_dir, world, 3)
        assert e.windows_evaluated == 4 and all(readings)
        assert e.offload.fallbacks == 3 and not e.offload.alive
        assert "detection process" in caplog.text and "in the sidecar's process" in caplog.text
    finally:
        e.close()


def test_the_sidecar_runs_and_stops_its_detection_process(sidecar_factory, world) -> None:
    sc = sidecar_factory(detection_process=True, **FAST)
    child = sc.engine.offload
    assert child.wait_ready(60)
    shm = Path("/dev/shm") / child._shm.name.lstrip("/")
    with grpc.insecure_channel(sc.grpc_target) as ch:
        stub = pb_grpc.MonitorStub(ch)
        x, _ = world.sample(600)
        send(stub, x.astype(np.float32), "dp-", embedder_version="v1")
        sc.pipeline.wait_idle()
        st = stub.GetStatus(pb.GetStatusRequest())
        assert st.detection.windows_evaluated > 0 and child.fallbacks == 0
    assert shm.exists()
    sc.stop(grace=0.5)
    deadline = time.monotonic() + 10
    while child._proc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not child._proc.is_alive() and not shm.exists()


def test_the_worker_never_waits_for_a_starting_child(bundle_dir: Path, world) -> None:
    """Windows that end while the child still loads the bundle are computed in process
    (counted as early), not waited for."""
    e = engine(bundle_dir, offload=True)
    try:
        readings = feed(e, bundle_dir, world, 2)  # right after the spawn: still loading
        assert all(readings) and e.windows_evaluated == 2
        assert e.offload.early >= 1 and e.offload.fallbacks == 0
    finally:
        e.close()
