"""Serving benchmark: the in-process floor, then Classify latency and ClassifyBatch throughput
over real gRPC on loopback, per mode of recording, store and detection (issue 16).

For each d (default 1024 and 384), first the floor: in this process, pinned to one CPU with
one BLAS thread, the loop the sidecar cannot beat for the same 1,024-row batch, done the
cheapest way the sidecar knows: parse a serialised packed-id ``ClassifyBatchRequest``
without copying its embeddings (``wire.parse_zero_copy`` + ``numpy.frombuffer``), score it
with row norms (``LinearScorer.predict_proba``), build the ``ClassifyBatchResponse``
(p_unsafe, flagged, confidence) as bytes (``wire.batch_reply``) and serialise it: rows per
second on one core. Then "where the time goes": the same steps, the ways they were done
before, and the ones the floor leaves out (id checks, ``store.record`` of 1,024 ids in the
memory and sqlite stores at capacity, the pipeline submit and the worker's sinks), each
timed alone, µs per batch.

Then the served figures. The sidecar runs as its own process pinned to CPU 0 (``taskset``);
this client runs on CPU 1. Modes: recording off; recording on with the memory store; with
the sqlite store; detection on (with the memory store: the detectors are fed by recording,
so detection with recording off measures nothing); everything on (sqlite + detection, the
default); everything on with the client sending ``packed_request_ids`` instead of string
ids; the same with ``detection_process: true`` (window statistics in a niced child process,
which inherits the pin); recording off with packed ids (the packed modes' baseline: their
batches are parsed without copying whatever the server records); and first, the transport
floor, with string and with packed ids: benchmarks/noop_server.py, the same wire, parse and
gRPC server settings with handlers that return prebuilt replies, pinned the same way. Each
mode runs ``--repeats`` times, the order alternating forwards and backwards between rounds
(as benchmarks/heads.py does); reported per mode: rows per server CPU-second (utime + stime
from /proc/<pid>/stat, the sidecar's and its child processes'; best and median), served /
floor, unary Classify p50/p99, and the cost against recording off with the same id form.

``--split`` starts each sidecar through benchmarks/split_timing.py and prints, per mode,
the thread CPU of each step of ClassifyBatch inside the served sidecar (the steps cost
more under load than alone). ``--before REV`` runs every sidecar mode on that git revision
too (``harness.source_tree``), alternating with this tree in every round, and prints
before -> after; ``--modes`` runs a subset.

    python benchmarks/serving.py            # ~8 minutes (d = 1024 and 384, 2 rounds)
    python benchmarks/serving.py --quick    # ~1 minute smoke run (d = 1024, 2 short rounds)
    python benchmarks/serving.py --dims 1024 --repeats 3 --split --before HEAD~3   # ~20 min
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
from math import nan
from pathlib import Path

import numpy as np
import split_timing
from harness import (
    MAX_MESSAGE_BYTES,
    channel,
    cpu_seconds,
    git_describe,
    machine,
    percentiles,
    pin_client,
    quantile,
    repeat,
    source_tree,
    table_header,
    table_row,
    thread_cpu_seconds,
    tree_cpu_seconds,
)
from store import history_of

from silentwatch.monitor.bundle import EmbedderSpec
from silentwatch.monitor.bundle.io import load_bundle
from silentwatch.monitor.scoring import LinearScorer, confidence, row_norms
from silentwatch.monitor.serving.pipeline import WORKER_THREAD_NAME
from silentwatch.monitor.serving.wire import batch_reply, parse_request
from silentwatch.monitor.training import train_bundle
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

HERE = Path(__file__).resolve().parent

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
# The like-for-like baseline of the packed modes: a packed-id batch is parsed without copying
# its embeddings (wire.parse_zero_copy) whatever the server records, so packed modes are
# costed against recording off with packed ids, string modes against recording off.
BASE_PACKED = "recording off, packed ids"
MODES[BASE_PACKED] = MODES[BASE]
PACKED_MODES = {ALL_ON_PACKED, ALL_ON_CHILD, BASE_PACKED}
CHILD_START_SECONDS = 5.0
# benchmarks/noop_server.py: the same wire and server settings, no work (the transport floor).
NOOP = "transport floor (no-op servicer)"
NOOP_PACKED = "transport floor, packed ids"
PACKED_MODES.add(NOOP_PACKED)
ALL_MODES = [NOOP, NOOP_PACKED, *MODES]


BASES = (BASE, BASE_PACKED, NOOP, NOOP_PACKED)  # no cost column for these


def base_of(mode: str) -> str:
    """The recording-off mode a mode's cost is measured against (same id form)."""
    return BASE_PACKED if mode in PACKED_MODES else BASE


def packed_ids(first: int, n: int) -> bytes:
    """``n`` distinct 16-byte ids (a counter in the low 8 bytes), as packed_request_ids."""
    ids = np.zeros((n, 2), dtype="<u8")
    ids[:, 0] = np.arange(first, first + n, dtype=np.uint64)
    return ids.tobytes()


def unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bench_bundle(path: Path, d: int) -> Path:
    """The benchmarks' bundle at ``path``: 3,000 unit rows of dimension ``d``, labelled by
    the sign of the first coordinate with a little noise."""
    x = unit(3000, d, 0)
    y = (x[:, 0] + 0.1 * np.random.default_rng(0).standard_normal(3000) > 0).astype(int)
    train_bundle(x, y, path, embedder=EmbedderSpec(name="bench", version="v1"))
    return path


def matrix(x: np.ndarray) -> pb.EmbeddingMatrix:
    """``x`` as f32le rows."""
    return pb.EmbeddingMatrix(rows=x.shape[0], dim=x.shape[1], f32le=x.astype("<f4").tobytes())


def batch_request(x: np.ndarray, prefix: str = "b0") -> pb.ClassifyBatchRequest:
    """A ClassifyBatchRequest as the benchmark client sends it: f32le rows, one id per row."""
    ids = [f"{prefix}-{i}" for i in range(x.shape[0])]
    return pb.ClassifyBatchRequest(request_ids=ids, embeddings=matrix(x))


def packed_request(x: np.ndarray, first: int = 0) -> pb.ClassifyBatchRequest:
    """The same batch with ``packed_request_ids`` (16 bytes per row) instead of strings."""
    return pb.ClassifyBatchRequest(
        packed_request_ids=packed_ids(first, x.shape[0]), embeddings=matrix(x)
    )


def floor_loop(
    raw: bytes, scorer: LinearScorer, threshold: float, version: str = "bench"
) -> Callable[[], bytes]:
    """The in-process loop the sidecar cannot beat: decode -> score -> serialised response.

    What ``ClassifyBatch`` must do for any batch, with nothing else, done the cheapest way
    the sidecar knows (monitor/serving/wire.py): parse the request bytes without copying
    the embeddings when they come first (``parse_zero_copy``; else ``FromString``), view
    them with one ``numpy.frombuffer``, the matvec with row norms, and the reply's three
    packed fields built as bytes (``batch_reply``), serialised.
    """

    def run() -> bytes:
        req = parse_request(raw, pb.ClassifyBatchRequest)
        m = req.embeddings
        x = np.frombuffer(m.f32le, dtype="<f4").reshape(m.rows, m.dim)
        p = scorer.predict_proba(x, row_norms(x))
        return batch_reply(p, threshold, version).SerializeToString()

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
    # Packed ids: the request layout the sidecar parses without copying the embeddings.
    raw = packed_request(unit(rows, d, 2)).SerializeToString()
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
    BLAS thread: (step, median µs per ``rows``-row batch). The stores are filled to their
    steady state first, as in the served runs: at ``capacity`` with the history full, so
    every recorded row evicts a prediction and reuses a history slot."""
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
                "decode, string ids: FromString + .f32le (copies) + frombuffer",
                us(
                    lambda: decode_matrix(
                        pb.ClassifyBatchRequest.FromString(raw).embeddings, d, 16384
                    )
                ),
            )
        )
        raw_packed = packed_request(x0).SerializeToString()
        out.append(
            (
                "decode, packed ids, copying: FromString + .f32le + frombuffer (before)",
                us(
                    lambda: decode_matrix(
                        pb.ClassifyBatchRequest.FromString(raw_packed).embeddings, d, 16384
                    )
                ),
            )
        )
        out.append(
            (
                "decode, packed ids, zero-copy: parse_zero_copy + frombuffer",
                us(
                    lambda: decode_matrix(
                        parse_request(raw_packed, pb.ClassifyBatchRequest).embeddings, d, 16384
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

        out.append(("response: three extend(tolist()) + serialise (before)", us(respond)))
        out.append(
            (
                "response: batch_reply (packed bytes, parsed once) + serialise",
                us(lambda: batch_reply(p, thr, "bench").SerializeToString()),
            )
        )
        out.append(
            (
                "row norms, einsum (before)",
                us(lambda: np.sqrt(np.einsum("ij,ij->i", x, x))),
            )
        )
        out.append(
            (
                "floor (decode + norms + score + response, one loop, packed ids)",
                us(floor_loop(raw_packed, scorer, thr)),
            )
        )
        # The label-join stores in their steady state: at capacity, with the history
        # (capacity + tombstone capacity) full, so each recorded row evicts a prediction and
        # reuses a history slot; a fresh store per id form, filled with that form.
        k = iter(range(10**9))
        for name, make in (
            ("memory", lambda: MemoryStore(capacity, 3600.0)),
            ("sqlite", lambda: SqliteStore(state_dir / f"bench-{d}-{next(k)}.sqlite3", capacity,
                                           3600.0, bundle_sha256=b.sha256, keep_labels=True)),
        ):  # fmt: skip
            for form in ("string", "packed"):

                def ids(form: str = form) -> list:
                    if form == "packed":
                        return np.frombuffer(packed_ids(rows * next(k), rows), "V16").tolist()
                    first = next(k)
                    return [f"r{first}-{i}" for i in range(rows)]

                store = make()
                for _ in range(history_of(store, capacity) // rows + 1):
                    store.record(ids(), p)
                it = iter([ids() for _ in range(reps + reps // 10 + 3)])
                out.append(
                    (
                        f"store.record, {rows} {form} ids, {name} store, steady state",
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
    bundle: Path,
    recording: bool,
    extra: list[str] | None = None,
    *,
    source: Path | None = None,
    split: Path | None = None,
    events: Path | None = None,
) -> tuple[subprocess.Popen, str]:
    """``silentwatch serve`` pinned to CPU 0. ``source``: a directory to import silentwatch
    from instead (``harness.source_tree``, for ``--before``); ``split``: start it through
    benchmarks/split_timing.py, which writes per-step CPU totals to this file; ``events``:
    through benchmarks/tail_timing.py, which writes a timestamp per Classify call and
    worker pass to this file (benchmarks/unary_tail.py)."""
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") and os.cpu_count() > 1 else []
    entry = ["-m", "silentwatch"]
    if split is not None:
        entry = [str(HERE / "split_timing.py"), str(split)]
    elif events is not None:
        entry = [str(HERE / "tail_timing.py"), str(events)]
    env = None if source is None else {**os.environ, "PYTHONPATH": str(source)}
    proc = subprocess.Popen(
        [*pin, sys.executable, *entry, "serve", "--bundle", str(bundle),
         "--port", "0", "--metrics-port", "0", "--recording", str(recording).lower(),
         "--max-message-bytes", str(MAX_MESSAGE_BYTES), "--max-batch-rows", "16384",
         "--store-capacity", "200000", "--log-level", "WARNING", *(extra or [])],
        stdout=subprocess.PIPE, text=True, env=env,
        cwd=source,  # `-m` puts the working directory first on sys.path: make it the shim
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
    bundle: Path,
    mode: str,
    state_dir: Path,
    d: int,
    a: argparse.Namespace,
    source: Path | None = None,
) -> dict[str, float]:
    """One sidecar in ``mode`` (or the no-op server): unary Classify latency, then
    ClassifyBatch throughput; with ``a.split``, also µs per batch of each step
    (``split_timing``) over the throughput phase, as ``split`` (label -> µs)."""
    split = None
    if mode in (NOOP, NOOP_PACKED):
        proc, target = start_noop(a.rows)
    else:
        recording, flags = MODES[mode]
        if "sqlite" in flags:
            flags = [*flags, "--state-dir", str(state_dir)]
        if a.split:
            state_dir.mkdir(parents=True, exist_ok=True)
            split = state_dir / "split.json"
        proc, target = start_server(bundle, recording, flags, source=source, split=split)
        if "--detection-process" in flags:
            # The child loads the bundle and rebuilds the detectors at start (windows meanwhile
            # run in process); measure the steady state, as for every other mode.
            time.sleep(CHILD_START_SECONDS)
    try:
        with channel(target) as ch:
            stub = pb_grpc.MonitorStub(ch)
            u = bench_unary(stub, d, a.unary)
            t0 = split_snapshot(proc, split)
            b = bench_batch(
                stub, proc.pid, d, a.rows, a.seconds, a.threads, packed=mode in PACKED_MODES
            )
            steps = split_us_per_batch(t0, split_snapshot(proc, split))
            st = stub.GetStatus(pb.GetStatusRequest())
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
    return {**u, **b, "rc": rc, "sampled_out": st.pipeline.sampled_out_rows, "split": steps}


def split_snapshot(proc: subprocess.Popen, split: Path | None) -> dict:
    """Ask a split-timed sidecar for its totals now (SIGUSR1) and read them."""
    if split is None:
        return {}
    before = split.stat().st_mtime_ns if split.exists() else 0
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if split.exists() and split.stat().st_mtime_ns != before:
            break
        time.sleep(0.02)
    time.sleep(0.05)  # let the write finish
    return split_timing.read(str(split))


def split_us_per_batch(t0: dict, t1: dict) -> dict[str, float]:
    """µs of thread CPU per ClassifyBatch call of each step between two snapshots."""
    if not t1:
        return {}
    diff = split_timing.difference(t0, t1)
    calls = diff.get(split_timing.BATCH_STEP, {}).get("calls", 0)
    if not calls:
        return {}
    return {k: 1e6 * v["cpu_s"] / calls for k, v in diff.items()}


def summarise(
    runs: dict[str, list[dict[str, float]]], floor_rows_per_s: float
) -> list[dict[str, float | str]]:
    """Per mode: best and median rows per server CPU-second, served / floor, Classify
    p50 (median of runs) and p99 (median and worst), and the throughput cost against
    recording off with the same id form (``base_of``; best against best, median against
    median)."""
    out = []
    for mode, rs in runs.items():
        base = [r["emb_per_cpu_s"] for r in runs.get(base_of(mode)) or [{"emb_per_cpu_s": nan}]]
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
    ap.add_argument("--modes", nargs="+", choices=ALL_MODES, metavar="MODE",
                    help=f"run only these modes (default: all of {ALL_MODES})")  # fmt: skip
    ap.add_argument("--split", action="store_true",
                    help="time each step of ClassifyBatch inside the served sidecar "
                    "(benchmarks/split_timing.py) and print µs per batch per mode")  # fmt: skip
    ap.add_argument("--before", metavar="REV",
                    help="also run every sidecar mode on this git revision of the code (the "
                    "no-op server is not ours: run once), alternating, and print before -> "
                    "after")  # fmt: skip
    a = ap.parse_args()
    if a.quick:
        a.dims, a.seconds, a.unary, a.reps = [1024], 2.0, 500, 60
    a.repeats = max(a.repeats, 2)
    modes = [m for m in ALL_MODES if a.modes is None or m in a.modes]
    pin_client()  # the sidecar gets CPU 0 (start_server); the floor runs on this CPU
    print(f"machine: {machine()}\n")
    summaries: dict[tuple[str, int], tuple[dict, list]] = {}
    paired: dict[int, dict[str, list[float]]] = {}
    splits: dict[tuple[str, int, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees: dict[str, Path | None] = {"after": None}
        if a.before:
            trees["before"] = source_tree(HERE.parent, a.before, Path(tmp) / "before")
            print(f"before: {a.before} ({git_describe(HERE.parent, a.before)}); after: the "
                  f"working tree ({git_describe(HERE.parent, 'HEAD')} + changes)\n")  # fmt: skip
        entries = [
            (t, m) for m in modes for t in trees if t == "after" or m not in (NOOP, NOOP_PACKED)
        ]
        for d in a.dims:
            bundle = bench_bundle(Path(tmp) / f"b{d}", d)
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
            print(table_header(["d", "round", "code", "mode", "rows per server CPU-s",
                                "server CPU use", "Classify p50 ms", "Classify p99 ms",
                                "sampled out"], "rrllrrrrr"))  # fmt: skip
            runs: dict[str, dict[str, list[dict]]] = {t: {} for t in trees}
            for r, order in enumerate(round_orders(entries, a.repeats)):
                for k, (tree, mode) in enumerate(order):
                    res = served_run(bundle, mode, Path(tmp) / f"s{d}-{r}-{k}", d, a, trees[tree])
                    runs[tree].setdefault(mode, []).append(res)
                    if res["split"]:
                        splits.setdefault((tree, d, mode), []).append(res["split"])
                    row = [d, r + 1, tree, mode, f"{res['emb_per_cpu_s']:,.0f}",
                           f"{res['server_cpu_util']:.0%}", f"{res['p50_ms']:.3f}",
                           f"{res['p99_ms']:.3f}", f"{res['sampled_out']:,}"]  # fmt: skip
                    print(table_row(row) + ("" if res["rc"] == 0 else f" (exit {res['rc']})"),
                          flush=True)  # fmt: skip
            print()
            for tree, tree_runs in runs.items():
                summaries[tree, d] = (fl, summarise(tree_runs, fl["floor_rows_per_s"]))
            if a.before:
                paired[d] = paired_changes(runs["before"], runs["after"])
    print_summary(summaries, a)
    if a.before:
        print_before_after(summaries, paired)
    if splits:
        print_splits(splits, a.rows)
    return 0


def print_summary(
    summaries: dict[tuple[str, int], tuple[dict, list]], a: argparse.Namespace
) -> None:
    print(f"Summary over {a.repeats} rounds ({a.rows}-row batches, {a.threads} client threads, "
          f"{a.seconds:g} s each; floor = in-process rows/s, one core; this tree):\n")  # fmt: skip
    cols = ["d", "mode", "rows per server CPU-s (best)", "(median)", "served / floor (best)",
            "(median)", "server CPU use", "Classify p50 ms", "Classify p99 ms (median)",
            "(worst)", "cost vs recording off (best)", "(median)"]  # fmt: skip
    print(table_header(cols, "rlrrrrrrrrrr"))
    after = {d: v for (tree, d), v in summaries.items() if tree == "after"}
    for d, (fl, summary) in after.items():
        print(table_row([d, "in-process floor", f"{fl['floor_rows_per_s']:,.0f}", "", "100%",
                         "", "", "", "", "", "", ""]))  # fmt: skip
        for s in summary:
            row = [d, s["mode"], f"{s['best']:,.0f}", f"{s['median']:,.0f}",
                   f"{s['floor_best']:.0%}", f"{s['floor_median']:.0%}", f"{s['cpu_use']:.0%}",
                   f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}", f"{s['p99_worst_ms']:.3f}",
                   "" if s["mode"] in BASES else f"{s['cost_best']:.1%}",
                   "" if s["mode"] in BASES else f"{s['cost_median']:.1%}"]  # fmt: skip
            print(table_row(row))
    print()
    for d, (_, summary) in after.items():
        by_mode = {s["mode"]: s for s in summary}
        for all_on, noop_mode in ((ALL_ON, NOOP), (ALL_ON_PACKED, NOOP_PACKED)):
            if all_on not in by_mode or noop_mode not in by_mode:
                continue
            s, noop = by_mode[all_on], by_mode[noop_mode]
            print(f"d={d}, {all_on}: the transport floor ({noop_mode}) is "
                  f"{noop['floor_median']:.0%} of the in-process floor; this mode is "
                  f"{s['median'] / noop['median']:.0%} of the transport floor, "
                  f"{s['floor_median']:.0%} of the in-process floor (target >= 50%); cost vs "
                  f"{base_of(all_on)} {s['cost_median']:.1%} (target <= 10%); Classify p99 "
                  f"worst {s['p99_worst_ms']:.3f} ms (target <= 1 ms)")  # fmt: skip
    print()


def paired_changes(
    before: dict[str, list[dict]], after: dict[str, list[dict]]
) -> dict[str, list[float]]:
    """Per mode, each round's after / before - 1 in rows per server CPU-second: the two ran
    back to back in the same round, so the pair shares the machine's state.

    >>> paired_changes({"m": [{"emb_per_cpu_s": 100.0}]}, {"m": [{"emb_per_cpu_s": 125.0}]})
    {'m': [0.25]}
    """
    return {
        m: [a["emb_per_cpu_s"] / b["emb_per_cpu_s"] - 1 for b, a in zip(before[m], rs, strict=True)]
        for m, rs in after.items()
        if m in before
    }


def print_before_after(
    summaries: dict[tuple[str, int], tuple[dict, list]], paired: dict[int, dict[str, list[float]]]
) -> None:
    """Per mode: median rows per server CPU-second before and after, the median of the
    rounds' paired changes and in how many rounds after was ahead, the cost against
    recording off (same id form) before -> after, and the unary p99s."""
    print("Before -> after (medians over the rounds; both trees alternated in every round; a "
          "round's paired change is after / before - 1 within that round):\n")  # fmt: skip
    cols = ["d", "mode", "rows per server CPU-s, before", "after", "change of medians",
            "paired change (median)", "rounds ahead", "cost vs recording off, before -> after",
            "Classify p99 ms, before -> after"]  # fmt: skip
    print(table_header(cols, "rlrrrrrrr"))
    for (tree, d), (_, summary) in summaries.items():
        if tree != "after" or ("before", d) not in summaries:
            continue
        old = {s["mode"]: s for s in summaries["before", d][1]}
        for s in summary:
            o, ch = old.get(s["mode"]), paired.get(d, {}).get(s["mode"], [])
            if o is None or not ch:
                continue
            cost = "" if s["mode"] in BASES else f"{o['cost_median']:.1%} -> {s['cost_median']:.1%}"
            print(table_row([d, s["mode"], f"{o['median']:,.0f}", f"{s['median']:,.0f}",
                             f"{s['median'] / o['median'] - 1:+.1%}",
                             f"{statistics.median(ch):+.1%}",
                             f"{sum(c > 0 for c in ch)} of {len(ch)}", cost,
                             f"{o['p99_ms']:.3f} -> {s['p99_ms']:.3f}"]))  # fmt: skip
    print()


def print_splits(splits: dict[tuple[str, int, str], list[dict[str, float]]], rows: int) -> None:
    """Per step, µs of thread CPU per batch inside the served sidecar (median of rounds)."""
    keys = list(splits)
    labels = [lab for lab, _, _ in split_timing.STEPS]
    print(f"Where the time goes under load: thread CPU µs per {rows}-row ClassifyBatch, inside "
          "the served sidecar (benchmarks/split_timing.py; median over rounds):\n")  # fmt: skip
    print(table_header(["step", *[f"{m} ({t}, d={d})" for t, d, m in keys]], "l" + "r" * len(keys)))
    for lab in labels:
        cells = []
        for k in keys:
            vals = [s[lab] for s in splits[k] if lab in s]
            cells.append(f"{statistics.median(vals):,.0f}" if vals else "")
        if any(cells):
            print(table_row([lab, *cells]))
    print()


if __name__ == "__main__":
    raise SystemExit(main())
