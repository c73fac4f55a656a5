"""The serving benchmark's in-process floor runs (benchmarks/serving.py; issue 16, item 3).

The benchmark itself takes minutes (docs/benchmarks.md, "Request path: the floor and where
the time goes"); this checks, on a tiny batch, that the floor loop still matches the
product's wire format and scorer, and that its timing function runs.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from silentwatch.monitor.scoring import LinearScorer
from silentwatch.v1 import monitor_pb2 as pb

from .benchmark_scripts import load_benchmark
from .conftest import DIM

serving = load_benchmark("serving")


def _scorer(d: int) -> LinearScorer:
    rng = np.random.default_rng(0)
    return LinearScorer(weights=rng.standard_normal(d).astype(np.float32), bias=0.1, normalize=True)


def test_floor_loop_answers_what_the_service_would():
    scorer = _scorer(16)
    x = serving.unit(32, 16, 3)
    p = scorer.predict_proba(x)
    # String ids (protobuf's parse) and packed ids (the zero-copy parse) alike.
    for req in (serving.batch_request(x), serving.packed_request(x)):
        raw = req.SerializeToString()
        resp = pb.ClassifyBatchResponse.FromString(serving.floor_loop(raw, scorer, 0.5)())
        np.testing.assert_allclose(resp.p_unsafe, p, rtol=1e-6)
        assert list(resp.flagged) == (p >= 0.5).tolist()
        np.testing.assert_allclose(resp.confidence, np.maximum(p, 1 - p), rtol=1e-6)


def test_each_mode_is_costed_against_recording_off_with_its_id_form():
    rows = {serving.BASE: 100.0, serving.BASE_PACKED: 200.0, serving.ALL_ON: 50.0,
            serving.ALL_ON_PACKED: 150.0}  # fmt: skip
    one = {"server_cpu_util": 1.0, "p50_ms": 0.1, "p99_ms": 0.2, "sampled_out": 0}
    runs = {m: [{"emb_per_cpu_s": v, **one}] for m, v in rows.items()}
    cost = {s["mode"]: s["cost_median"] for s in serving.summarise(runs, 1000.0)}
    assert cost[serving.ALL_ON] == 0.5 and cost[serving.ALL_ON_PACKED] == 0.25
    assert serving.base_of(serving.NOOP_PACKED) == serving.BASE_PACKED


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
            x = serving.unit(32, 16, 1)
            for req in (serving.batch_request(x), serving.packed_request(x)):
                resp = stub.ClassifyBatch(req, timeout=30)
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


def test_split_timing_counts_each_step_inside_a_served_sidecar(bundle_dir, tmp_path):
    """benchmarks/split_timing.py starts a real sidecar with the ClassifyBatch steps wrapped;
    SIGUSR1 makes it write its totals, and two reads subtract to one phase's."""
    import grpc

    from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

    split = tmp_path / "split.json"
    flags = ["--store", "sqlite", "--state-dir", str(tmp_path / "st"), "--detection", "false"]
    proc, target = serving.start_server(bundle_dir, True, flags, split=split)
    try:
        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.MonitorStub(ch)
            x = serving.unit(8, DIM, 4)
            stub.ClassifyBatch(serving.packed_request(x, first=0), timeout=30)
            t0 = serving.split_snapshot(proc, split)
            for k in range(1, 4):
                stub.ClassifyBatch(serving.packed_request(x, first=8 * k), timeout=30)
            t1 = serving.split_snapshot(proc, split)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    steps = serving.split_timing.difference(t0, t1)
    assert steps[serving.split_timing.BATCH_STEP]["calls"] == 3
    for label in ("decode_matrix", "  store: SQLite journal transaction", "batch_reply"):
        assert steps[label]["calls"] == 3 and steps[label]["cpu_s"] >= 0.0
    us = serving.split_us_per_batch(t0, t1)
    assert set(us) == set(steps) and all(v >= 0.0 for v in us.values())


def test_before_runs_another_revision_of_the_code(tmp_path):
    """``--before REV``: source_tree checks REV out and python -m silentwatch, started from
    the returned directory, imports that copy, not the installed working tree."""
    import subprocess
    import sys

    import harness  # benchmarks/harness.py: load_benchmark put its folder on sys.path

    shim = harness.source_tree(serving.HERE.parent, "HEAD", tmp_path / "before")
    code = "import silentwatch.monitor.serving.wire as w, silentwatch.v1.monitor_pb2 as p; "
    code += "print(w.__file__); print(p.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=shim, env={**os.environ, "PYTHONPATH": str(shim)},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    wire, pb2 = out.stdout.split()
    assert wire.startswith(str(shim)) and pb2.startswith(str(shim))
    assert (tmp_path / "before" / "tree" / "monitor" / "serving" / "wire.py").is_file()


def test_paired_changes_compare_each_round_with_its_own_before():
    before = {"m": [{"emb_per_cpu_s": 100.0}, {"emb_per_cpu_s": 200.0}], "old only": []}
    after = {"m": [{"emb_per_cpu_s": 110.0}, {"emb_per_cpu_s": 180.0}], "new only": []}
    assert serving.paired_changes(before, after) == {"m": pytest.approx([0.1, -0.1])}


def test_unary_tail_attribution_matches_a_brute_force_count():
    """benchmarks/unary_tail.py's overlap counts against checking every call with every pass."""
    tail = load_benchmark("unary_tail")
    rng = np.random.default_rng(3)
    gaps = rng.exponential(1.0, 400)
    walls = rng.exponential(0.4, 400) * (1 + 9 * (rng.random(400) < 0.1))
    ps = np.cumsum(gaps + np.concatenate([[0], walls[:-1]]))  # one thread: no overlap
    passes = np.stack([ps, walls, walls], axis=1)
    cs, cw = np.sort(rng.uniform(0, ps[-1], 2000)), rng.exponential(0.5, 2000)
    got = tail.attribute(cs, cw, passes, slow_s=0.6, long_s=2.0)
    want = dict.fromkeys(got, 0)
    for a, w in zip(cs, cw, strict=True):
        over = (ps < a + w) & (ps + walls > a)
        kind = "long" if (over & (walls > 2.0)).any() else "short" if over.any() else "none"
        want[f"{'slow' if w > 0.6 else 'fast'}_{kind}"] += 1
    assert got == want
    assert want["slow_long"] and want["slow_short"] and want["fast_none"]  # all kinds seen


def test_unary_tail_lines_each_call_up_with_the_servers_timestamps(bundle_dir, tmp_path):
    """A real sidecar through benchmarks/tail_timing.py: every timed Classify call has its
    handler call inside it (one clock), and the worker's passes are read back."""
    tail = load_benchmark("unary_tail")
    v = tail.tail_run(bundle_dir, "detection on (memory)", tmp_path / "s", DIM, calls=300,
                      settle=0.2, slow_ms=1.0, long_ms=2.0)  # fmt: skip
    assert v["aligned"] == 1.0, v
    assert sum(v[k] for k in v if k.startswith(("slow_", "fast_"))) == 300
    assert 0 < v["handler_p50_ms"] < v["p50_ms"] and v["handler_p99_ms"] <= v["p999_ms"]
    assert v["passes_per_s"] > 0 and 0 < v["worker_busy"] < 1


def test_unary_tail_doctests():
    import doctest

    res = doctest.testmod(load_benchmark("unary_tail"))
    assert res.failed == 0 and res.attempted >= 4, res


def test_unary_tail_summary_pairs_each_round_with_the_other_revision(capsys):
    """--before: the after row gives after / before - 1 per round, for the client's p99 and
    the handler's, with how many rounds were higher."""
    tail = load_benchmark("unary_tail")
    run = lambda p99, h: {"p99_ms": p99, "handler_p99_ms": h}  # noqa: E731
    runs = {
        ("after", "m"): [run(1.0, 0.2), run(3.0, 0.3)],
        ("before", "m"): [run(2.0, 0.1), run(2.0, 0.3)],
    }
    tail.print_summary(runs, 2, "before")
    after = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| after"))
    cells = [c.strip() for c in after.strip("|").split("|")]
    # p99: -50% and +50% -> median +0.0%, 1 of 2 higher; handler: +100% and 0% -> +50.0%
    assert cells[6:] == ["+0.0%", "1 of 2", "+50.0%", "1 of 2"], cells
