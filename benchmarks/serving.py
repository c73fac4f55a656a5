"""Serving benchmark: the in-process floor, then Classify latency and ClassifyBatch throughput
over real gRPC on loopback, per mode of recording, store and detection (issue 16).

For each d (default 1024 and 384), first the floor: in this process, pinned to one CPU with
one BLAS thread, the loop the sidecar cannot beat for the same 1,024-row batch: decode a
serialised ``ClassifyBatchRequest`` (``FromString`` + ``numpy.frombuffer``), score it with
row norms (``LinearScorer.predict_proba``), build and serialise the ``ClassifyBatchResponse``
(p_unsafe, flagged, confidence): rows per second on one core. Then "where the time goes":
the same steps and the ones the floor leaves out (id checks, ``store.record`` of 1,024 ids
in the memory and sqlite stores at capacity, the pipeline submit and the worker's sinks),
each timed alone, µs per batch.

Then the served figures. The sidecar runs as its own process pinned to CPU 0 (``taskset``);
this client runs on CPU 1. Modes: recording off; recording on with the memory store; with
the sqlite store; detection on (with the memory store: the detectors are fed by recording,
so detection with recording off measures nothing); everything on (sqlite + detection, the
default); everything on with the client sending ``packed_request_ids`` instead of string
ids; the same with ``detection_process: true`` (window statistics in a niced child process,
which inherits the pin); and first, the transport floor: benchmarks/noop_server.py, the
same wire and gRPC server settings with handlers that return prebuilt replies, pinned the
same way. Each mode runs ``--repeats`` times, the order alternating forwards and backwards
between rounds (as benchmarks/heads.py does); reported per mode: rows per server CPU-second
(utime + stime from /proc/<pid>/stat, the sidecar's and its child processes'; best and
median), served / floor, unary Classify p50/p99, and the cost against recording off.

    python benchmarks/serving.py            # ~6 minutes (d = 1024 and 384, 2 rounds)
    python benchmarks/serving.py --quick    # ~1 minute smoke run (d = 1024, 2 short rounds)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from harness import (
    MAX_MESSAGE_BYTES,
    channel,
    cpu_seconds,
    machine,
    percentiles,
    pin_client,
    quantile,
    repeat,
    table_header,
    table_row,
    thread_cpu_seconds,
    tree_cpu_seconds,
)

from silentwatch.monitor.bundle import EmbedderSpec
from silentwatch.monitor.bundle.io import load_bundle
from silentwatch.monitor.scoring import LinearScorer, confidence, row_norms
from silentwatch.monitor.serving.pipeline import WORKER_THREAD_NAME
from silentwatch.monitor.training import train_bundle
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

# name -> (recording, serve flags); the state dir of the sqlite modes is appended per run.
MODES: dict[str, tuple[bool, list[str]]] = {
    "recording off": (False, ["--store", "memory", "--detection", "false"]),
    "rec on, memory": (True, ["--store", "memory", "--detection", "false"]),
    "rec on, sqlite": (True, ["--store", "sqlite", "--detection", "false"]),
    "detection on (memory)": (True, ["--store", "memory", "--detection", "true"]),
    "everything on (sqlite + detection)": (True, ["--store", "sqlite", "--detection", "true"]),
}
BASE = "recording off"
ALL_ON = "everything on (sqlite + detection)"
# The same server as ALL_ON, the client sending packed_request_ids (16 bytes per row) instead
# of request_ids strings; every other mode sends strings.
ALL_ON_PACKED = "everything on, packed ids"
MODES[ALL_ON_PACKED] = MODES[ALL_ON]
# ... and with window statistics in a child process (detection_process; it inherits the
# sidecar's CPU pin and runs niced; its CPU is counted in the server's).
ALL_ON_CHILD = "everything on, packed ids, detection process"
MODES[ALL_ON_CHILD] = (True, [*MODES[ALL_ON][1], "--detection-process", "true"])
PACKED_MODES = {ALL_ON_PACKED, ALL_ON_CHILD}
CHILD_START_SECONDS = 5.0
# benchmarks/noop_server.py: the same wire and server settings, no work (the transport floor).
NOOP = "transport floor (no-op servicer)"
ALL_MODES = [NOOP, *MODES]


def packed_ids(first: int, n: int) -> bytes:
    """``n`` distinct 16-byte ids (a counter in the low 8 bytes), as packed_request_ids."""
    ids = np.zeros((n, 2), dtype="<u8")
    ids[:, 0] = np.arange(first, first + n, dtype=np.uint64)
    return ids.tobytes()


def unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def batch_request(x: np.ndarray, prefix: str = "b0") -> pb.ClassifyBatchRequest:
    """A ClassifyBatchRequest as the benchmark client sends it: f32le rows, one id per row."""
    n, d = x.shape
    return pb.ClassifyBatchRequest(
        request_ids=[f"{prefix}-{i}" for i in range(n)],
        embeddings=pb.EmbeddingMatrix(rows=n, dim=d, f32le=x.astype("<f4").tobytes()),
    )


def floor_loop(
    raw: bytes, scorer: LinearScorer, threshold: float, version: str = "bench"
) -> Callable[[], bytes]:
    """The in-process loop the sidecar cannot beat: decode -> score -> serialised response.

    What ``ClassifyBatch`` must do for any batch, with nothing else: parse the request bytes,
    view the embeddings with one ``numpy.frombuffer`` (as monitor/serving/wire.py does),
    the matvec with row norms, and the response's three repeated fields, serialised.
    """

    def run() -> bytes:
        req = pb.ClassifyBatchRequest.FromString(raw)
        m = req.embeddings
        x = np.frombuffer(m.f32le, dtype="<f4").reshape(m.rows, m.dim)
        p = scorer.predict_proba(x, row_norms(x))
        resp = pb.ClassifyBatchResponse(classifier_version=version)
        resp.p_unsafe.extend(p.tolist())
        resp.flagged.extend((p >= threshold).tolist())
        resp.confidence.extend(confidence(p).tolist())
        return resp.SerializeToString()

    return run


def one_core(fn: Callable[[], dict]) -> dict:
    """Run ``fn`` pinned to one CPU (the one this process already has, else CPU 0) with one
    BLAS thread, as the sidecar is pinned to one core; the old affinity is restored."""
    from threadpoolctl import threadpool_limits

    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(old)})
    try:
        with threadpool_limits(1):
            return fn()
    finally:
        os.sched_setaffinity(0, old)


def floor_timing(
    scorer: LinearScorer, rows: int = 1024, reps: int = 300, threshold: float = 0.5
) -> dict[str, float]:
    """The floor for a ``rows``-row batch at the scorer's d: median µs per batch and rows/s
    on one core, one BLAS thread (``one_core``)."""
    d = scorer.dim
    raw = batch_request(unit(rows, d, 2)).SerializeToString()
    run = floor_loop(raw, scorer, threshold)

    def measure() -> dict[str, float]:
        repeat(run, max(3, reps // 10))  # warm-up
        t = repeat(run, reps)
        us = quantile(t, 0.5, "us")
        return {
            "d": d,
            "rows": rows,
            "floor_us": us,
            "floor_mean_us": 1e6 * float(np.mean(t)),
            "floor_rows_per_s": rows / (us * 1e-6),
        }

    return one_core(measure)


def where_time_goes(
    bundle_dir: Path, state_dir: Path, rows: int = 1024, reps: int = 200, capacity: int = 200_000
) -> list[tuple[str, float]]:
    """Each step of a served ClassifyBatch timed alone, in this process on one core with one
    BLAS thread: (step, median µs per ``rows``-row batch). The stores are filled to
    ``capacity`` first (as in the served runs, where every recorded row evicts one)."""
    from silentwatch.monitor.config import ServeSettings
    from silentwatch.monitor.serving.pipeline import Pipeline, PredictionBatch, concat_predictions
    from silentwatch.monitor.serving.server import build_engine
    from silentwatch.monitor.serving.wire import (
        check_request_ids,
        checked_norms,
        decode_matrix,
        request_ids_of,
    )
    from silentwatch.monitor.state.memory import MemoryStore
    from silentwatch.monitor.state.sqlite import SqliteStore
    from silentwatch.monitor.telemetry.prometheus import TrafficSink

    b = load_bundle(bundle_dir)
    scorer, thr, d = b.scorer, b.heads[0].thresholds.flag, b.scorer.dim
    x0 = unit(rows, d, 2)
    req0 = batch_request(x0)
    raw = req0.SerializeToString()

    def measure() -> list[tuple[str, float]]:
        def us(fn: Callable[[], object], n: int = reps) -> float:
            repeat(fn, max(3, n // 10))
            return quantile(repeat(fn, n), 0.5, "us")

        out: list[tuple[str, float]] = []
        req = pb.ClassifyBatchRequest.FromString(raw)
        x = decode_matrix(req.embeddings, d, 16384)
        norms = row_norms(x)
        p = scorer.predict_proba(x, norms)
        out.append(
            (
                "decode: FromString + frombuffer",
                us(
                    lambda: decode_matrix(
                        pb.ClassifyBatchRequest.FromString(raw).embeddings, d, 16384
                    )
                ),
            )
        )
        out.append(
            (
                "ids: list(request_ids) + check_request_ids",
                us(lambda: check_request_ids(list(req.request_ids), rows, 256)),
            )
        )
        packed_req = pb.ClassifyBatchRequest(packed_request_ids=packed_ids(0, rows))
        out.append(
            (
                "ids, packed: request_ids_of (one frombuffer)",
                us(lambda: request_ids_of(packed_req, rows, 256)),
            )
        )
        out.append(("row norms (checked_norms)", us(lambda: checked_norms(x, need_nonzero=True))))
        out.append(("score: predict_proba(x, norms)", us(lambda: scorer.predict_proba(x, norms))))

        def respond() -> bytes:
            r = pb.ClassifyBatchResponse(classifier_version="bench")
            r.p_unsafe.extend(p.tolist())
            r.flagged.extend((p >= thr).tolist())
            r.confidence.extend(confidence(p).tolist())
            return r.SerializeToString()

        out.append(("response: build + serialise", us(respond)))
        out.append(
            (
                "floor (decode + norms + score + response, one loop)",
                us(floor_loop(raw, scorer, thr)),
            )
        )
        # The label-join stores, at capacity: each recorded row evicts one and buries it.
        for name, store in (
            ("memory", MemoryStore(capacity, 3600.0)),
            ("sqlite", SqliteStore(state_dir / f"bench-{d}.sqlite3", capacity, 3600.0,
                                   bundle_sha256=b.sha256, keep_labels=True)),
        ):  # fmt: skip
            k = iter(range(10**9))
            for _ in range(capacity // rows + 1):
                store.record([f"f{next(k)}-{i}" for i in range(rows)], p)
            id_lists = [
                [f"r{next(k)}-{i}" for i in range(rows)] for _ in range(reps + reps // 10 + 3)
            ]
            it = iter(id_lists)
            out.append(
                (
                    f"store.record, {rows} ids, {name} store at capacity",
                    us(lambda it=it, store=store: store.record(next(it), p)),
                )
            )
            packed_lists = [
                np.frombuffer(packed_ids(rows * next(k), rows), "V16").tolist()
                for _ in range(reps + reps // 10 + 3)
            ]
            it = iter(packed_lists)
            out.append(
                (
                    f"store.record, {rows} packed ids, {name} store at capacity",
                    us(lambda it=it, store=store: store.record(next(it), p)),
                )
            )
            store.close()
        pipe = Pipeline([], max_queued_rows=10**12)  # never started: the enqueue alone
        out.append(
            (
                "pipeline: PredictionBatch + submit_predictions",
                us(
                    lambda: pipe.submit_predictions(
                        PredictionBatch(x, norms, p, "classify", "v1", time.time())
                    )
                ),
            )
        )
        pb0 = PredictionBatch(x, norms, p, "classify", "v1", time.time())
        out.append(
            (
                # Batches of 1,024 rows or more are no longer merged (pipeline.MERGE_MAX_ROWS);
                # this is what merging two would cost.
                "worker: concatenate two queued batches (now only below 1,024 rows)",
                us(lambda: concat_predictions([pb0, pb0], max_rows=2 * rows)),
            )
        )
        traffic = TrafficSink([thr], [b.heads[0].name])
        out.append(
            ("worker: traffic histograms (TrafficSink)", us(lambda: traffic.on_predictions(pb0)))
        )
        engine, why = build_engine(b, ServeSettings(bundle=bundle_dir))
        if engine is not None:
            engine.on_predictions(pb0)
            t = repeat(lambda: engine.on_predictions(pb0), reps)
            out.append(("worker: detection engine, per batch (median)", quantile(t, 0.5, "us")))
            out.append(("worker: detection engine, per batch (mean, incl. windows evaluated)",
                        1e6 * float(np.mean(t))))  # fmt: skip
        else:
            out.append((f"worker: detection engine ({why})", float("nan")))
        return out

    return one_core(measure)


def start_server(
    bundle: Path, recording: bool, extra: list[str] | None = None
) -> tuple[subprocess.Popen, str]:
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") and os.cpu_count() > 1 else []
    proc = subprocess.Popen(
        [*pin, sys.executable, "-m", "silentwatch", "serve", "--bundle", str(bundle),
         "--port", "0", "--metrics-port", "0", "--recording", str(recording).lower(),
         "--max-message-bytes", str(MAX_MESSAGE_BYTES), "--max-batch-rows", "16384",
         "--store-capacity", "200000", "--log-level", "WARNING", *(extra or [])],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc, json.loads(proc.stdout.readline())["grpc"]


def bench_unary(stub: pb_grpc.MonitorStub, d: int, n: int) -> dict[str, float]:
    x = unit(n + 200, d, 1)
    reqs = [
        pb.ClassifyRequest(request_id=f"u{i}", embedding=pb.Embedding(f32le=x[i].tobytes()))
        for i in range(n + 200)
    ]
    for r in reqs[:200]:
        stub.Classify(r)
    lat = np.empty(n)
    for i, r in enumerate(reqs[200:]):
        t0 = time.perf_counter()
        stub.Classify(r)
        lat[i] = time.perf_counter() - t0
    return percentiles(lat)


def bench_batch(
    stub: pb_grpc.MonitorStub,
    pid: int,
    d: int,
    rows: int,
    seconds: float,
    threads: int,
    rate: float | None = None,
    packed: bool = False,
) -> dict[str, float]:
    """``threads`` clients send ``rows``-row ClassifyBatch requests for ``seconds``: as fast
    as replies come (``rate`` None, the server saturated) or paced to ``rate`` rows per
    second in all (each client on a fixed schedule; a late one sends at once but never
    bunches up more than one request). ``packed``: ids as packed_request_ids."""
    x = unit(rows, d, 2).astype("<f4").tobytes()
    counter = iter(range(10**9))
    lock = threading.Lock()
    lat: list[float] = []
    stop = time.monotonic() + seconds
    gap = None if rate is None else threads * rows / rate

    def worker() -> None:
        due = time.monotonic()
        while time.monotonic() < stop:
            if gap is not None:
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                due = max(due, now - gap) + gap
            with lock:
                k = next(counter)
            matrix = pb.EmbeddingMatrix(rows=rows, dim=d, f32le=x)
            if packed:
                req = pb.ClassifyBatchRequest(
                    packed_request_ids=packed_ids(k * rows, rows), embeddings=matrix
                )
            else:
                req = pb.ClassifyBatchRequest(
                    request_ids=[f"b{k}-{i}" for i in range(rows)], embeddings=matrix
                )
            t0 = time.perf_counter()
            stub.ClassifyBatch(req)
            with lock:
                lat.append(time.perf_counter() - t0)

    stop = time.monotonic() + min(1.0, seconds / 5)
    worker()  # warm-up, one thread
    lat.clear()
    stop = time.monotonic() + seconds
    st0 = stub.GetStatus(pb.GetStatusRequest()).pipeline
    w0 = thread_cpu_seconds(pid).get(WORKER_THREAD_NAME, 0.0)
    cpu0, t0 = tree_cpu_seconds(pid), time.perf_counter()
    own0 = cpu_seconds(pid)
    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall, cpu = time.perf_counter() - t0, tree_cpu_seconds(pid) - cpu0
    own = cpu_seconds(pid) - own0  # the sidecar process alone, without its children
    worker_cpu = thread_cpu_seconds(pid).get(WORKER_THREAD_NAME, 0.0) - w0
    st1 = stub.GetStatus(pb.GetStatusRequest()).pipeline
    n = len(lat) * rows
    # Rows the worker took (processed) or shed (sampled out) while the clients ran; the
    # worker may still be draining the last batches, so these are read, not derived.
    processed = st1.processed_rows - st0.processed_rows
    shed = st1.sampled_out_rows - st0.sampled_out_rows
    return {
        "emb_per_s": n / wall,
        "emb_per_cpu_s": n / max(cpu, 1e-9),
        "server_cpu_util": cpu / wall,
        # Request threads' CPU per row, and the worker's CPU per row it processed: the
        # second does not depend on how much the worker had to shed.
        "request_us_per_row": 1e6 * (own - worker_cpu) / max(n, 1),
        # CPU of child processes (the detection process), per row served.
        "child_us_per_row": 1e6 * (cpu - own) / max(n, 1),
        "worker_us_per_row": 1e6 * worker_cpu / max(processed, 1),
        "sampled_out_share": shed / max(processed + shed, 1),
        "batch_p50_ms": quantile(lat, 0.5, "ms"),
        "batch_p99_ms": quantile(lat, 0.99, "ms"),
    }


def round_orders(modes: Sequence[str], repeats: int) -> list[list[str]]:
    """The modes of each round: forwards, then backwards, alternating.

    >>> round_orders(["a", "b", "c"], 3)
    [['a', 'b', 'c'], ['c', 'b', 'a'], ['a', 'b', 'c']]
    """
    return [list(modes) if r % 2 == 0 else list(reversed(modes)) for r in range(repeats)]


def start_noop(rows: int) -> tuple[subprocess.Popen, str]:
    """benchmarks/noop_server.py pinned to CPU 0, as the sidecar is."""
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") and os.cpu_count() > 1 else []
    proc = subprocess.Popen(
        [*pin, sys.executable, str(Path(__file__).with_name("noop_server.py")),
         "--rows", str(rows), "--max-message-bytes", str(MAX_MESSAGE_BYTES)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc, json.loads(proc.stdout.readline())["grpc"]


def served_run(
    bundle: Path, mode: str, state_dir: Path, d: int, a: argparse.Namespace
) -> dict[str, float]:
    """One sidecar in ``mode`` (or the no-op server): unary Classify latency, then
    ClassifyBatch throughput."""
    if mode == NOOP:
        proc, target = start_noop(a.rows)
    else:
        recording, flags = MODES[mode]
        if "sqlite" in flags:
            flags = [*flags, "--state-dir", str(state_dir)]
        proc, target = start_server(bundle, recording, flags)
        if "--detection-process" in flags:
            # The child loads the bundle and rebuilds the detectors at start (windows meanwhile
            # run in process); measure the steady state, as for every other mode.
            time.sleep(CHILD_START_SECONDS)
    try:
        with channel(target) as ch:
            stub = pb_grpc.MonitorStub(ch)
            u = bench_unary(stub, d, a.unary)
            b = bench_batch(
                stub, proc.pid, d, a.rows, a.seconds, a.threads, packed=mode in PACKED_MODES
            )
            st = stub.GetStatus(pb.GetStatusRequest())
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
    return {**u, **b, "rc": rc, "sampled_out": st.pipeline.sampled_out_rows}


def summarise(
    runs: dict[str, list[dict[str, float]]], floor_rows_per_s: float
) -> list[dict[str, float | str]]:
    """Per mode: best and median rows per server CPU-second, served / floor, Classify
    p50 (median of runs) and p99 (median and worst), and the throughput cost against
    recording off (best against best, median against median)."""
    base = [r["emb_per_cpu_s"] for r in runs[BASE]]
    out = []
    for mode, rs in runs.items():
        tput = [r["emb_per_cpu_s"] for r in rs]
        best, med = max(tput), statistics.median(tput)
        out.append(
            {
                "mode": mode,
                "best": best,
                "median": med,
                "floor_best": best / floor_rows_per_s,
                "floor_median": med / floor_rows_per_s,
                "cpu_use": statistics.median(r["server_cpu_util"] for r in rs),
                "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                "p99_worst_ms": max(r["p99_ms"] for r in rs),
                "cost_best": 1.0 - best / max(base),
                "cost_median": 1.0 - med / statistics.median(base),
                "sampled_out": sum(r["sampled_out"] for r in rs),
            }
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dims", type=int, nargs="+", default=[1024, 384])
    ap.add_argument("--rows", type=int, default=1024, help="rows per ClassifyBatch")
    ap.add_argument("--threads", type=int, default=2, help="concurrent batch clients")
    ap.add_argument("--seconds", type=float, default=8.0, help="per throughput run")
    ap.add_argument("--unary", type=int, default=3000, help="timed Classify calls")
    ap.add_argument("--repeats", type=int, default=2, help="rounds over every mode (>= 2)")
    ap.add_argument("--reps", type=int, default=300, help="in-process repetitions per step")
    a = ap.parse_args()
    if a.quick:
        a.dims, a.seconds, a.unary, a.reps = [1024], 2.0, 500, 60
    a.repeats = max(a.repeats, 2)
    pin_client()  # the sidecar gets CPU 0 (start_server); the floor runs on this CPU
    print(f"machine: {machine()}\n")
    summaries: dict[int, tuple[dict, list]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for d in a.dims:
            x = unit(3000, d, 0)
            y = (x[:, 0] + 0.1 * np.random.default_rng(0).standard_normal(3000) > 0).astype(int)
            bundle = Path(tmp) / f"b{d}"
            train_bundle(x, y, bundle, embedder=EmbedderSpec(name="bench", version="v1"))
            b = load_bundle(bundle)
            fl = floor_timing(b.scorer, a.rows, a.reps, b.heads[0].thresholds.flag)
            print(
                f"d={d}: in-process floor (decode -> score -> serialised response, one core, "
                f"one BLAS thread): {fl['floor_us']:,.0f} µs per {a.rows}-row batch (median; mean "
                f"{fl['floor_mean_us']:,.0f}) = "
                f"{fl['floor_rows_per_s']:,.0f} rows/s\n"
            )
            steps = where_time_goes(bundle, Path(tmp), a.rows, a.reps)
            print(table_header([f"step (d={d})", f"µs per {a.rows}-row batch"], "lr"))
            for step, v in steps:
                print(table_row([step, f"{v:,.0f}"]))
            print()
            print(table_header(["d", "round", "mode", "rows per server CPU-s",
                                "server CPU use", "Classify p50 ms", "Classify p99 ms",
                                "sampled out"], "rrlrrrrr"))  # fmt: skip
            runs: dict[str, list[dict[str, float]]] = {m: [] for m in ALL_MODES}
            for r, order in enumerate(round_orders(ALL_MODES, a.repeats)):
                for mode in order:
                    res = served_run(bundle, mode, Path(tmp) / f"s{d}-{r}-{len(runs[mode])}-"
                                     f"{ALL_MODES.index(mode)}", d, a)  # fmt: skip
                    runs[mode].append(res)
                    row = [d, r + 1, mode, f"{res['emb_per_cpu_s']:,.0f}",
                           f"{res['server_cpu_util']:.0%}", f"{res['p50_ms']:.3f}",
                           f"{res['p99_ms']:.3f}", f"{res['sampled_out']:,}"]  # fmt: skip
                    print(table_row(row) + ("" if res["rc"] == 0 else f" (exit {res['rc']})"),
                          flush=True)  # fmt: skip
            print()
            summaries[d] = (fl, summarise(runs, fl["floor_rows_per_s"]))
    print(f"Summary over {a.repeats} rounds ({a.rows}-row batches, {a.threads} client threads, "
          f"{a.seconds:g} s each; floor = in-process rows/s on one core):\n")  # fmt: skip
    cols = ["d", "mode", "rows per server CPU-s (best)", "(median)", "served / floor (best)",
            "(median)", "server CPU use", "Classify p50 ms", "Classify p99 ms (median)",
            "(worst)", "cost vs recording off (best)", "(median)"]  # fmt: skip
    print(table_header(cols, "rlrrrrrrrrrr"))
    for d, (fl, summary) in summaries.items():
        print(table_row([d, "in-process floor", f"{fl['floor_rows_per_s']:,.0f}", "", "100%",
                         "", "", "", "", "", "", ""]))  # fmt: skip
        for s in summary:
            row = [d, s["mode"], f"{s['best']:,.0f}", f"{s['median']:,.0f}",
                   f"{s['floor_best']:.0%}", f"{s['floor_median']:.0%}", f"{s['cpu_use']:.0%}",
                   f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}", f"{s['p99_worst_ms']:.3f}",
                   "" if s["mode"] == BASE else f"{s['cost_best']:.1%}",
                   "" if s["mode"] == BASE else f"{s['cost_median']:.1%}"]  # fmt: skip
            print(table_row(row))
    print()
    for d, (_, summary) in summaries.items():
        s = next(s for s in summary if s["mode"] == ALL_ON)
        noop = next(s for s in summary if s["mode"] == NOOP)
        print(f"d={d}: the transport floor (no-op servicer) is {noop['floor_median']:.0%} of the "
              f"in-process floor; everything on is {s['median'] / noop['median']:.0%} of the "
              "transport floor")  # fmt: skip
        print(f"d={d}, everything on: served/floor {s['floor_median']:.0%} (target >= 50%); "
              f"cost vs recording off {s['cost_median']:.1%} (target <= 10%); Classify p99 "
              f"worst {s['p99_worst_ms']:.3f} ms (target <= 1 ms)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
