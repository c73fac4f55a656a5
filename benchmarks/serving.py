"""Serving benchmark: Classify latency and ClassifyBatch throughput over real gRPC on loopback.

The sidecar runs as its own process pinned to CPU 0 (``taskset``); this client runs on
CPU 1. For d in (384, 1024) and recording on (durable SQLite store, in-memory store) and
off it reports unary p50/p99, batch throughput, and throughput per server CPU-second
(the fair "one core" figure, read from /proc/<pid>/stat). Bounded in count and time; loopback only.

    python benchmarks/serving.py            # ~2 minutes
    python benchmarks/serving.py --quick    # ~30 s smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
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
    table_header,
    table_row,
)

from silentwatch.monitor.bundle import EmbedderSpec
from silentwatch.monitor.training import train_bundle
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc


def unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


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
    stub: pb_grpc.MonitorStub, pid: int, d: int, rows: int, seconds: float, threads: int
) -> dict[str, float]:
    x = unit(rows, d, 2).astype("<f4").tobytes()
    counter = iter(range(10**9))
    lock = threading.Lock()
    lat: list[float] = []
    stop = time.monotonic() + seconds

    def worker() -> None:
        while time.monotonic() < stop:
            with lock:
                k = next(counter)
            req = pb.ClassifyBatchRequest(
                request_ids=[f"b{k}-{i}" for i in range(rows)],
                embeddings=pb.EmbeddingMatrix(rows=rows, dim=d, f32le=x),
            )
            t0 = time.perf_counter()
            stub.ClassifyBatch(req)
            with lock:
                lat.append(time.perf_counter() - t0)

    stop = time.monotonic() + min(1.0, seconds / 5)
    worker()  # warm-up, one thread
    lat.clear()
    stop = time.monotonic() + seconds
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    n = len(lat) * rows
    return {
        "emb_per_s": n / wall,
        "emb_per_cpu_s": n / max(cpu, 1e-9),
        "server_cpu_util": cpu / wall,
        "batch_p50_ms": quantile(lat, 0.5, "ms"),
        "batch_p99_ms": quantile(lat, 0.99, "ms"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dims", type=int, nargs="+", default=[384, 1024])
    ap.add_argument("--rows", type=int, default=1024, help="rows per ClassifyBatch")
    ap.add_argument("--threads", type=int, default=2, help="concurrent batch clients")
    ap.add_argument("--seconds", type=float, default=8.0, help="per throughput run")
    ap.add_argument("--unary", type=int, default=3000, help="timed Classify calls")
    a = ap.parse_args()
    if a.quick:
        a.seconds, a.unary = 2.0, 500
    pin_client()  # the sidecar gets CPU 0 (start_server)
    print(f"machine: {machine()}\n")
    columns = [
        "d", "recording", "Classify p50 ms", "Classify p99 ms", "ClassifyBatch emb/s",
        "emb per server CPU-s", "server CPU use", "batch p50 ms", "batch p99 ms",
    ]  # fmt: skip
    print(table_header(columns, "rlrrrrrrr"))
    tput: dict[tuple[int, str], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for d in a.dims:
            x = unit(3000, d, 0)
            y = (x[:, 0] + 0.1 * np.random.default_rng(0).standard_normal(3000) > 0).astype(int)
            bundle = Path(tmp) / f"b{d}"
            train_bundle(x, y, bundle, embedder=EmbedderSpec(name="bench", version="v1"))
            modes = {
                # The default since issue 7: the durable SQLite label-join store.
                "on, sqlite": (True, ["--store", "sqlite", "--state-dir", f"{tmp}/s{d}"]),
                "on, memory": (True, ["--store", "memory"]),
                "off": (False, ["--store", "memory"]),
            }
            for mode, (recording, extra) in modes.items():
                proc, target = start_server(bundle, recording, extra)
                try:
                    with channel(target) as ch:
                        stub = pb_grpc.MonitorStub(ch)
                        u = bench_unary(stub, d, a.unary)
                        b = bench_batch(stub, proc.pid, d, a.rows, a.seconds, a.threads)
                finally:
                    proc.send_signal(signal.SIGTERM)
                    rc = proc.wait(30)
                tput[(d, mode)] = b["emb_per_cpu_s"]
                row = [
                    d, mode, f"{u['p50_ms']:.3f}", f"{u['p99_ms']:.3f}",
                    f"{b['emb_per_s']:,.0f}", f"{b['emb_per_cpu_s']:,.0f}",
                    f"{b['server_cpu_util']:.0%}", f"{b['batch_p50_ms']:.2f}",
                    f"{b['batch_p99_ms']:.2f}",
                ]  # fmt: skip
                print(table_row(row) + ("" if rc == 0 else f" (exit {rc})"), flush=True)
    print()
    for d in a.dims:
        for mode in ("on, sqlite", "on, memory"):
            cost = 1 - tput[(d, mode)] / tput[(d, "off")]
            print(
                f"recording cost at d={d} ({mode}): {cost:.1%} of throughput per server CPU-second"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
