"""Label-join store benchmark: the in-memory store against the durable SQLite one.

What the request path pays for durability: recording a ClassifyBatch's ids (filling, and at
capacity where every row also evicts one), recording one Classify id, and joining a label
batch, with string ids and with packed 16-byte ids (``packed_request_ids``). Each figure is
the median over repetitions of one call, in one process, with ``time.perf_counter``; the
ids are made before each timed call.

    python benchmarks/store.py            # the table in docs/reliability.md
    python benchmarks/store.py --quick
    python benchmarks/store.py --neighbour  # idle, then beside a memory-streaming process

``--neighbour`` runs every store twice on CPU 0: alone, and with another process on CPU 1
copying 32 MB buffers in a loop, as the served benchmark's client streams 4 MB requests
from there. The store's per-id dict passes wait on memory, so they slow down most
(docs/benchmarks.md, "Where the time goes, under load").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from harness import quantile, table_header, table_row

from silentwatch.monitor.state.memory import MemoryStore
from silentwatch.monitor.state.sqlite import SqliteStore
from silentwatch.monitor.state.store import PredictionStore


def id_batch(b: int, n: int, packed: bool) -> list:
    """Batch ``b``'s ``n`` ids: strings, or 16-byte packed ids (as the server splits them)."""
    if not packed:
        return [f"req-{b:07d}-{i:05d}" for i in range(n)]
    ids = np.zeros((n, 2), dtype="<u8")
    ids[:, 0] = np.arange(b * n, (b + 1) * n, dtype=np.uint64)
    return np.frombuffer(ids.tobytes(), "V16").tolist()


def history_of(store: PredictionStore, capacity: int) -> int:
    """Ids a store remembers: capacity + tombstone capacity (the durable store's memory)."""
    mem = getattr(store, "mem", store)
    return capacity + int(getattr(mem, "tombstone_capacity", 0))


def bench(
    store: PredictionStore, capacity: int, batch: int, reps: int, packed: bool = False
) -> dict[str, float]:
    """The calls timed alone; ids are made before each timed call, never inside it."""
    scores = np.random.default_rng(0).random(batch).astype(np.float32)
    fill: list[float] = []
    full: list[float] = []
    single: list[float] = []
    join: list[float] = []
    b = 0
    # Filling: until the store is at capacity.
    while (b + 1) * batch <= capacity:
        ids = id_batch(b, batch, packed)
        t = time.perf_counter()
        store.record(ids, scores)
        fill.append(time.perf_counter() - t)
        b += 1
    for _ in range(reps):  # at capacity: every row evicts one
        ids = id_batch(b, batch, packed)
        t = time.perf_counter()
        store.record(ids, scores)
        full.append(time.perf_counter() - t)
        b += 1
    # The steady state: the history (capacity + tombstone capacity) is full too, so every
    # record also reuses a history slot and its old id leaves the index. Before that, a
    # record at capacity skips that pass (about half the store's index work).
    while b * batch < history_of(store, capacity):
        store.record(id_batch(b, batch, packed), scores)
        b += 1
    steady: list[float] = []
    for _ in range(reps):
        ids = id_batch(b, batch, packed)
        t = time.perf_counter()
        store.record(ids, scores)
        steady.append(time.perf_counter() - t)
        b += 1
    for i in range(reps * 10):
        one = id_batch(10**6 + i, 1, packed)
        t = time.perf_counter()
        store.record(one, scores[:1])
        single.append(time.perf_counter() - t)
    labels = np.ones(256, dtype=np.int8)
    for r in range(reps):
        ids = id_batch(b - 1 - r, batch, packed)[:256]
        t = time.perf_counter()
        store.join(ids, labels)
        join.append(time.perf_counter() - t)
    return {
        "record batch (filling)": quantile(fill, 0.5, "us"),
        "record batch (at capacity)": quantile(full, 0.5, "us"),
        "record batch (steady state: history full too)": quantile(steady, 0.5, "us"),
        "record 1 id p50": quantile(single, 0.5, "us"),
        "record 1 id p99": quantile(single, 0.99, "us"),
        "join 256 labels": quantile(join, 0.5, "us"),
    }


NEIGHBOUR = """
import numpy as np
a = np.ones(8_000_000, np.float32); b = np.empty_like(a)
while True:
    np.copyto(b, a)
"""


def start_neighbour(cpu: int) -> subprocess.Popen:
    """A process on ``cpu`` that streams 32 MB through memory without pause."""
    proc = subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c", NEIGHBOUR])
    time.sleep(0.5)  # running before the first timed call
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--capacity", type=int, default=250_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--neighbour", action="store_true",
                    help="also run beside a memory-streaming process on another CPU")  # fmt: skip
    args = ap.parse_args()
    capacity = 20_000 if args.quick else args.capacity
    reps = 20 if args.quick else 100
    d = Path(tempfile.mkdtemp(prefix="silentwatch-store-bench-"))
    stores: dict[str, Callable[[], PredictionStore]] = {
        "memory": lambda: MemoryStore(capacity, 3600),
        "sqlite normal": lambda: SqliteStore(
            d / "n.sqlite3", capacity, 3600, bundle_sha256="b", synchronous="normal"
        ),
        "sqlite full": lambda: SqliteStore(
            d / "f.sqlite3", capacity, 3600, bundle_sha256="b", synchronous="full"
        ),
    }
    results: dict[str, dict[str, float]] = {}
    cpus = sorted(os.sched_getaffinity(0))
    if args.neighbour and len(cpus) < 2:
        raise SystemExit("--neighbour needs two CPUs")
    for beside in (False, True) if args.neighbour else (False,):
        hog = start_neighbour(cpus[1]) if beside else None
        if args.neighbour:
            os.sched_setaffinity(0, {cpus[0]})
        try:
            for packed in (False, True):
                for name, make in stores.items():
                    for f in d.glob("*.sqlite3*"):  # a fresh file for each id form
                        f.unlink()
                    store = make()
                    label = f"{name}, {'packed' if packed else 'string'} ids"
                    if args.neighbour:
                        label += ", beside a memory stream" if beside else ", alone"
                    results[label] = bench(store, capacity, args.batch, reps, packed)
                    store.close()
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    keys = list(next(iter(results.values())))
    print(f"capacity {capacity:,}, batch {args.batch} ids; µs per call (median unless p99)")
    print(table_header(["call", *results], "l" + "r" * len(results)))
    for k in keys:
        print(table_row([k, *(f"{results[n][k]:,.0f}" for n in results)]))


if __name__ == "__main__":
    main()
