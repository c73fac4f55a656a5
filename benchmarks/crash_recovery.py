"""Crash recovery: kill -9 a loaded sidecar, restart it, and count what survived.

Four client threads stream ClassifyBatch (with request ids) and SubmitLabels (for ids
recorded a moment earlier) against ``silentwatch serve`` on loopback; after ``--seconds``
the sidecar is killed with SIGKILL mid-stream, restarted on the same ``--state-dir``, and
the run reports:

* labels joined in OK responses before the kill, against the labelled count in the
  calibration figures after the restart (must be equal);
* how many of those were replayed from the store (not yet in a snapshot at the kill);
* ids recorded before the kill and never labelled: sent as labels after the restart,
  how many joined;
* the restart time (process start to its "serving" line).

    python benchmarks/crash_recovery.py            # the figures in docs/reliability.md
    python benchmarks/crash_recovery.py --seconds 5 --dim 32
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from harness import channel, markdown_table
from loadgen_traffic import build_bundle
from sidecar_process import SidecarProcess, submit_unsafe_labels

from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc


class Client(threading.Thread):
    """Classify batches; label half of the previous batch's ids; count what was accepted."""

    def __init__(self, target: str, name: str, dim: int, rows: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.channel = channel(target)
        self.stub = pb_grpc.MonitorStub(self.channel)
        self.name_, self.dim, self.rows, self.stop = name, dim, rows, stop
        self.joined = 0
        self.recorded = 0
        self.unlabelled: list[str] = []
        self.in_flight: list[str] = []  # ids of a call the kill may have cut

    def run(self) -> None:
        rng = np.random.default_rng(abs(hash(self.name_)) % 2**32)
        prev: list[str] = []
        k = 0
        while not self.stop.is_set():
            ids = [f"{self.name_}-{k}-{i}" for i in range(self.rows)]
            x = rng.standard_normal((self.rows, self.dim)).astype(np.float32)
            self.in_flight = ids
            try:
                self.stub.ClassifyBatch(
                    pb.ClassifyBatchRequest(
                        embeddings=pb.EmbeddingMatrix(
                            rows=self.rows, dim=self.dim, f32le=x.tobytes()
                        ),
                        request_ids=ids,
                        embedder_version="v1",
                    ),
                    timeout=10,
                )
                self.recorded += len(ids)
                self.in_flight = []
                if prev:
                    half = prev[: len(prev) // 2]
                    res = self.stub.SubmitLabels(
                        pb.SubmitLabelsRequest(
                            labels=[
                                pb.Label(request_id=r, unsafe=i % 2 == 0)
                                for i, r in enumerate(half)
                            ]
                        ),
                        timeout=10,
                    )
                    self.joined += res.joined
                    self.unlabelled += prev[len(prev) // 2 :]
            except grpc.RpcError:
                return  # the kill: this call was never answered, so nothing in it counts
            prev = ids
            k += 1


def status(target: str) -> pb.GetStatusResponse:
    with channel(target) as ch:
        return pb_grpc.MonitorStub(ch).GetStatus(pb.GetStatusRequest(), timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="load before the kill")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--rows", type=int, default=256, help="rows per ClassifyBatch")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--snapshot-interval", type=float, default=5.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="crash-recovery-"))
    t0 = time.monotonic()
    bundle = build_bundle(tmp / "bundle", dim=args.dim)
    print(f"built a d={args.dim} bundle in {time.monotonic() - t0:.1f} s")
    serve_args = [
        "--state-dir",
        str(tmp / "state"),
        "--snapshot-interval-seconds",
        str(args.snapshot_interval),
        # Above the ids a 30 s run records: every unlabelled id still awaits its label.
        "--store-capacity",
        "4000000",
    ]
    side = SidecarProcess.start(bundle, serve_args)
    stop = threading.Event()
    clients = [Client(side.target, f"c{i}", args.dim, args.rows, stop) for i in range(args.clients)]
    for c in clients:
        c.start()
    time.sleep(args.seconds)
    before = status(side.target)
    os.kill(side.proc.pid, signal.SIGKILL)
    side.proc.wait(timeout=30)
    stop.set()
    for c in clients:
        c.join(timeout=30)
        c.channel.close()
    joined = sum(c.joined for c in clients)
    recorded = sum(c.recorded for c in clients)
    t1 = time.monotonic()
    side2 = SidecarProcess.start(bundle, serve_args)
    restart_s = time.monotonic() - t1
    try:
        after = status(side2.target)
        unlabelled = [r for c in clients for r in c.unlabelled]
        with channel(side2.target) as ch:
            joined_after = submit_unsafe_labels(pb_grpc.MonitorStub(ch), unlabelled, timeout=60)
    finally:
        side2.proc.send_signal(signal.SIGTERM)
        side2.proc.wait(timeout=60)
    n_after = after.labelled.cumulative.n
    rows = [
        (
            "load before the kill",
            f"{args.seconds:.0f} s, {args.clients} clients, {args.rows}-row batches, d={args.dim}",
        ),
        ("rows recorded (OK ClassifyBatch)", f"{recorded:,}"),
        ("labels joined in OK responses before the kill", f"{joined:,}"),
        ("snapshots written before the kill", f"{before.store.snapshots_written}"),
        ("labelled count after the restart", f"{n_after:,}"),
        ("of which replayed from the store", f"{after.store.labels_replayed_at_start:,}"),
        ("predictions pending after the restart", f"{after.store.entries:,}"),
        (
            "unlabelled ids sent after the restart / joined",
            f"{len(unlabelled):,} / {joined_after:,}",
        ),
        ("restart to serving", f"{restart_s:.2f} s"),
        (
            "verdict",
            "no accepted label lost"
            if n_after == joined and joined_after == len(unlabelled)
            else "MISMATCH",
        ),
    ]
    print(markdown_table(["figure", "value"], rows))
    return 0 if n_after == joined and joined_after == len(unlabelled) else 1


if __name__ == "__main__":
    raise SystemExit(main())
