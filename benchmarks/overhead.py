"""Detector overhead: sidecar throughput with the detection engine on vs off.

Same harness as benchmarks/serving.py (sidecar process pinned to CPU 0, clients on
CPU 1, real gRPC on loopback): ClassifyBatch throughput per server CPU-second, with
``--detection true`` (every detector, change points, label windows; the defaults a user
gets) and ``--detection false`` (recording and traffic histograms only). The bundle is
trained on 6,000 rows so its thresholds are calibrated for the default window of 256.

    python benchmarks/overhead.py            # ~1 minute
"""

from __future__ import annotations

import argparse
import signal
import tempfile
from pathlib import Path

import numpy as np
from harness import channel, machine, pin_client, table_header, table_row
from serving import bench_batch, start_server, unit

from silentwatch.monitor.bundle import EmbedderSpec
from silentwatch.monitor.training import train_bundle
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[384, 1024])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=2, help="alternate on/off this many times")
    ap.add_argument(
        "--eval-rate", type=float, help="--max-window-evaluations-per-second for the 'on' run"
    )
    a = ap.parse_args()
    pin_client()  # the sidecar gets CPU 0 (serving.start_server)
    print(f"machine: {machine()}\n")
    columns = [
        "d", "detection", "emb/s", "emb per server CPU-s", "windows evaluated", "skipped",
        "sampled-out rows",
    ]  # fmt: skip
    print(table_header(columns, "rlrrrrr"))
    best: dict[tuple[int, bool], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for d in a.dims:
            x = unit(6000, d, 0)
            y = (x[:, 0] + 0.1 * np.random.default_rng(0).standard_normal(6000) > 0).astype(int)
            bundle = Path(tmp) / f"b{d}"
            train_bundle(x, y, bundle, embedder=EmbedderSpec(name="bench", version="v1"))
            for _ in range(a.repeats):
                for on in (True, False):
                    flags = ["--detection", str(on).lower()]
                    if on and a.eval_rate is not None:
                        flags += ["--max-window-evaluations-per-second", str(a.eval_rate)]
                    proc, target = start_server(bundle, True, flags)
                    try:
                        with channel(target) as ch:
                            stub = pb_grpc.MonitorStub(ch)
                            b = bench_batch(stub, proc.pid, d, a.rows, a.seconds, a.threads)
                            st = stub.GetStatus(pb.GetStatusRequest())
                    finally:
                        proc.send_signal(signal.SIGTERM)
                        proc.wait(30)
                    key = (d, on)
                    best[key] = max(best.get(key, 0.0), b["emb_per_cpu_s"])
                    row = [
                        d, "on" if on else "off", f"{b['emb_per_s']:,.0f}",
                        f"{b['emb_per_cpu_s']:,.0f}", st.detection.windows_evaluated,
                        st.detection.windows_skipped, f"{st.pipeline.sampled_out_rows:,}",
                    ]  # fmt: skip
                    print(table_row(row), flush=True)
    print()
    for d in a.dims:
        cost = 1 - best[(d, True)] / best[(d, False)]
        print(
            f"detection cost at d={d}: {cost:.1%} of throughput per server CPU-second "
            "(best of each)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
