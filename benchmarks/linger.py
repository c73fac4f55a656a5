"""The pipeline linger, paired: unary Classify with ``pipeline_linger_seconds`` 0 against the
default (2 ms), everything on with packed ids, alternating per round.

For each round and setting: a fresh sidecar pinned to CPU 0 (``serving.start_server``), 1 s
to settle, then 5,200 unary Classify calls from one client on CPU 1 (``bench_unary``: 200
warm-up, 5,000 timed). Reported per run: p50 / p99 latency, the sidecar's CPU (process and
children, /proc) per call, calls per second; then the median of each over the rounds.

    python benchmarks/linger.py --rounds 4      # about 1 minute
"""

from __future__ import annotations

import argparse
import signal
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import table_header, table_row, tree_cpu_seconds
from serving import ALL_ON_PACKED, MODES, bench_unary, channel, pin_client, start_server, unit

from silentwatch.monitor.bundle.manifest import EmbedderSpec
from silentwatch.monitor.training import train_bundle
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

SETTINGS = ("0", "0.002")


def unary_run(bundle: Path, state_dir: Path, d: int, linger: str, calls: int) -> dict[str, float]:
    """One sidecar with this linger; unary latency and its CPU per call."""
    recording, flags = MODES[ALL_ON_PACKED]
    flags = [*flags, "--state-dir", str(state_dir), "--pipeline-linger-seconds", linger]
    proc, target = start_server(bundle, recording, flags)
    try:
        with channel(target) as ch:
            stub = pb_grpc.MonitorStub(ch)
            time.sleep(1.0)  # let start-up work (snapshot restore, first periodic) settle
            cpu0, t0 = tree_cpu_seconds(proc.pid), time.perf_counter()
            out = bench_unary(stub, d, calls)
            cpu, wall = tree_cpu_seconds(proc.pid) - cpu0, time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    sent = calls + 200  # bench_unary's warm-up calls are in the CPU and wall figures too
    return {**out, "cpu_us_per_call": 1e6 * cpu / sent, "calls_per_s": sent / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--calls", type=int, default=5000)
    a = ap.parse_args()
    pin_client()
    with tempfile.TemporaryDirectory() as tmp:
        x = unit(3000, a.dim, 0)
        bundle = Path(tmp) / "b"
        train_bundle(
            x,
            (x[:, 0] > 0).astype(np.int8),
            bundle,
            embedder=EmbedderSpec(name="bench", version="v1"),
        )
        runs: dict[str, list[dict[str, float]]] = {s: [] for s in SETTINGS}
        cols = ["p50_ms", "p99_ms", "cpu_us_per_call", "calls_per_s"]
        print(table_header(["round", "linger s", *cols], "rr" + "r" * len(cols)))
        for r in range(a.rounds):
            for linger in SETTINGS if r % 2 == 0 else SETTINGS[::-1]:
                res = unary_run(bundle, Path(tmp) / f"s{r}-{linger}", a.dim, linger, a.calls)
                runs[linger].append(res)
                print(table_row([r + 1, linger, *(f"{res[c]:,.3f}" for c in cols)]))
        print()
        print(table_header(["linger s", *(f"{c} (median)" for c in cols)], "r" * (1 + len(cols))))
        for linger, rs in runs.items():
            med = [statistics.median(x[c] for x in rs) for c in cols]
            print(table_row([linger, *(f"{v:,.3f}" for v in med)]))


if __name__ == "__main__":
    main()
