"""The serving benchmark's in-process floor runs (benchmarks/serving.py; issue 16, item 3).

The benchmark itself takes minutes (docs/benchmarks.md, "Request path: the floor and where
the time goes"); this checks, on a tiny batch, that the floor loop still matches the
product's wire format and scorer, and that its timing function runs.
"""

from __future__ import annotations

import os

import numpy as np

from silentwatch.monitor.scoring import LinearScorer
from silentwatch.v1 import monitor_pb2 as pb

from .benchmark_scripts import load_benchmark

serving = load_benchmark("serving")


def _scorer(d: int) -> LinearScorer:
    rng = np.random.default_rng(0)
    return LinearScorer(weights=rng.standard_normal(d).astype(np.float32), bias=0.1, normalize=True)


def test_floor_loop_answers_what_the_service_would():
    scorer = _scorer(16)
    x = serving.unit(32, 16, 3)
    raw = serving.batch_request(x).SerializeToString()
    resp = pb.ClassifyBatchResponse.FromString(serving.floor_loop(raw, scorer, 0.5)())
    p = scorer.predict_proba(x)
    np.testing.assert_allclose(resp.p_unsafe, p, rtol=1e-6)
    assert list(resp.flagged) == (p >= 0.5).tolist()
    np.testing.assert_allclose(resp.confidence, np.maximum(p, 1 - p), rtol=1e-6)


def test_floor_timing_runs_on_one_core_and_restores_affinity():
    before = os.sched_getaffinity(0)
    fl = serving.floor_timing(_scorer(32), rows=64, reps=5)
    assert os.sched_getaffinity(0) == before
    assert fl["d"] == 32 and fl["rows"] == 64
    assert fl["floor_us"] > 0 and fl["floor_rows_per_s"] > 0


def test_modes_alternate_and_include_the_baseline():
    assert serving.BASE in serving.MODES and serving.ALL_ON in serving.MODES
    orders = serving.round_orders(list(serving.MODES), 2)
    assert orders[1] == orders[0][::-1]


def test_transport_floor_server_answers_like_a_one_head_sidecar():
    """The no-op server (the transport floor) speaks the sidecar's wire over real gRPC and
    answers a batch with a reply of the sidecar's size, after reading the whole request."""
    import grpc

    from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

    assert serving.ALL_MODES[0] == serving.NOOP
    proc, target = serving.start_noop(rows=32)
    try:
        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.MonitorStub(ch)
            resp = stub.ClassifyBatch(serving.batch_request(serving.unit(32, 16, 1)), timeout=30)
            assert len(resp.p_unsafe) == len(resp.flagged) == len(resp.confidence) == 32
            np.testing.assert_allclose(
                resp.confidence, np.maximum(resp.p_unsafe, 1 - np.asarray(resp.p_unsafe))
            )
            assert stub.GetStatus(pb.GetStatusRequest(), timeout=30).pipeline.processed_rows == 0
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def test_packed_mode_sends_distinct_packed_ids_the_sidecar_records(sidecar, stub):
    """The 'packed ids' mode's client: every request's ids are new 16-byte ids, recorded."""
    from .conftest import DIM

    assert serving.ALL_ON_PACKED in serving.PACKED_MODES
    assert serving.MODES[serving.ALL_ON_PACKED] == serving.MODES[serving.ALL_ON]
    first, second = serving.packed_ids(0, 4), serving.packed_ids(4, 4)
    assert len(first) == 64 and len(set(np.frombuffer(first + second, "V16").tolist())) == 8
    r = serving.bench_batch(stub, os.getpid(), DIM, 16, 0.3, 1, packed=True)
    assert r["emb_per_s"] > 0
    assert len(sidecar.store) >= 16 and len(sidecar.store) % 16 == 0


def test_linger_benchmark_runs_a_sidecar_with_the_setting(bundle_dir, tmp_path):
    """benchmarks/linger.py: one short run per setting against a real sidecar process."""
    from .conftest import DIM

    linger = load_benchmark("linger")
    for setting in linger.SETTINGS:
        r = linger.unary_run(bundle_dir, tmp_path / setting, DIM, setting, calls=50)
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["cpu_us_per_call"] > 0, r
