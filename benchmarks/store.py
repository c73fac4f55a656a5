"""Label-join store benchmark: the in-memory store against the durable SQLite one.

What the request path pays for durability: recording a ClassifyBatch's ids (filling, and at
capacity where every row also evicts one), recording one Classify id, and joining a label
batch. Each figure is the median over repetitions of one call, in one process, with
``time.perf_counter``.

    python benchmarks/store.py            # the table in docs/reliability.md
    python benchmarks/store.py --quick
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from harness import quantile, table_header, table_row

from silentwatch.monitor.state.memory import MemoryStore
from silentwatch.monitor.state.sqlite import SqliteStore
from silentwatch.monitor.state.store import PredictionStore


def bench(store: PredictionStore, capacity: int, batch: int, reps: int) -> dict[str, float]:
    scores = np.random.default_rng(0).random(batch).astype(np.float32)
    fill: list[float] = []
    full: list[float] = []
    single: list[float] = []
    join: list[float] = []
    b = 0
    # Filling: until the store is at capacity.
    while (b + 1) * batch <= capacity:
        t = time.perf_counter()
        store.record([f"req-{b:07d}-{i:05d}" for i in range(batch)], scores)
        fill.append(time.perf_counter() - t)
        b += 1
    for _ in range(reps):  # at capacity: every row evicts one
        t = time.perf_counter()
        store.record([f"req-{b:07d}-{i:05d}" for i in range(batch)], scores)
        full.append(time.perf_counter() - t)
        b += 1
    for i in range(reps * 10):
        t = time.perf_counter()
        store.record([f"one-{i:07d}"], scores[:1])
        single.append(time.perf_counter() - t)
    labels = np.ones(256, dtype=np.int8)
    for r in range(reps):
        ids = [f"req-{b - 1 - r:07d}-{i:05d}" for i in range(256)]
        t = time.perf_counter()
        store.join(ids, labels)
        join.append(time.perf_counter() - t)
    return {
        "record batch (filling)": quantile(fill, 0.5, "us"),
        "record batch (at capacity)": quantile(full, 0.5, "us"),
        "record 1 id p50": quantile(single, 0.5, "us"),
        "record 1 id p99": quantile(single, 0.99, "us"),
        "join 256 labels": quantile(join, 0.5, "us"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--capacity", type=int, default=250_000)
    ap.add_argument("--batch", type=int, default=1024)
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
    for name, make in stores.items():
        store = make()
        results[name] = bench(store, capacity, args.batch, reps)
        store.close()
    keys = list(next(iter(results.values())))
    print(f"capacity {capacity:,}, batch {args.batch} ids; µs per call (median unless p99)")
    print(table_header(["call", *results], "l" + "r" * len(results)))
    for k in keys:
        print(table_row([k, *(f"{results[n][k]:,.0f}" for n in results)]))


if __name__ == "__main__":
    main()
