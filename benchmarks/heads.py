"""Serving cost per added head: server CPU per row of k-head bundles, k = 1, 2, 4, 8.

Same harness as benchmarks/serving.py and overhead.py: the sidecar is its own process
pinned to CPU 0, the clients run on CPU 1, real gRPC on loopback, recording on (the durable
SQLite store) and detection on (the defaults a user gets). Every k is sent the same random
d = 1024 embeddings in 1,024-row ClassifyBatch requests.

The cost per head is measured at a **fixed offered load** (``--rate`` rows/s, below what
one core serves for any k): at saturation the statistics worker falls behind and sheds a
varying share of rows (sampled out, counted), which changes the work done per row from run
to run by more than the effect being measured. Paced, every row is scored, recorded and
processed, and the server's CPU-seconds per row (utime + stime of the process, split into
the pipeline worker and the rest with per-thread accounting) is the cost. The k values run
in ``--repeats`` rounds (forwards, then backwards); each round's k = 1 run is the baseline
of that round's other runs (paired ratios, so slow drift in the machine's speed cancels),
and the summary gives the median ratio with the lowest and highest round. The issue's
target: k = 8 costs at most 15% more server CPU per row than one head.

A saturated run per k (clients send as fast as replies come) follows, for throughput and
latency at full load, with the share of rows the worker sampled out.

Then, in process, where the cost goes: ``HeadScorer.predict_proba`` for k = 1..8 against the
one-head ``LinearScorer``, ``head_scores_message`` packing (what a multi-head reply adds),
``decode_head_scores`` (the client's side) and the reply's size on the wire.

Multi-head bundles for synthetic data: head j's label is a random projection thresholded at
a quantile between 0.5 and 0.8, so every head has 20-50% positives; the bundles share head 0.

    python benchmarks/heads.py            # ~6 minutes
    python benchmarks/heads.py --quick    # ~2 minute smoke run
"""

from __future__ import annotations

import argparse
import signal
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from harness import channel, machine, pin_client, quantile, repeat, table_header, table_row
from serving import bench_batch, start_server, unit

from silentwatch.monitor.bundle import EmbedderSpec
from silentwatch.monitor.scoring import HeadScorer, LinearScorer, row_norms
from silentwatch.monitor.serving.wire import decode_head_scores, head_scores_message
from silentwatch.monitor.training import train_bundle
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

KS = (1, 2, 4, 8)
HEAD_NAMES = ("toxicity", "threat", "insult", "obscene", "identity", "sexual", "selfharm", "spam")


# -- data and bundles --------------------------------------------------------------------------
def projection_labels(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(n, k) 0/1 labels: head j thresholds a random projection (plus a little noise) at a
    quantile from 0.5 to 0.8, so heads have 50% down to 20% positives."""
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((x.shape[1], k))
    z = x @ r + 0.1 * rng.standard_normal((x.shape[0], k))
    q = np.linspace(0.5, 0.8, k) if k > 1 else np.array([0.5])
    return (z > np.quantile(z, q, axis=0).diagonal()).astype(np.int8)


def make_bundles(tmp: Path, ks: Sequence[int], d: int, n: int) -> dict[int, Path]:
    """One bundle per k, trained on the same rows; head j is the same in every bundle."""
    x = unit(n, d, 0)
    y = projection_labels(x, max(ks))
    out = {}
    for k in ks:
        out[k] = tmp / f"heads{k}"
        train_bundle(
            x,
            y[:, :k],
            out[k],
            embedder=EmbedderSpec(name="bench", version="v1"),
            head_names=HEAD_NAMES[:k],
        )
    return out


# -- where the time goes, in process ------------------------------------------------------------
def random_scorer(d: int, k: int, seed: int = 0) -> HeadScorer:
    rng = np.random.default_rng(seed)
    return HeadScorer.stack(
        [
            LinearScorer(
                weights=rng.standard_normal(d).astype(np.float32),
                bias=float(rng.standard_normal()),
                normalize=True,
            )
            for _ in range(k)
        ]
    )


def inprocess_timings(
    d: int = 1024, rows: int = 1024, ks: Sequence[int] = tuple(range(1, 9)), reps: int = 200
) -> list[dict[str, float]]:
    """Per k: median microseconds of scoring a (rows, d) batch, packing and decoding the reply.

    ``linear_us`` is the one-head path (``LinearScorer``, what a one-head bundle serves);
    ``heads_us`` is ``HeadScorer.predict_proba`` with k heads (norms given, as the service
    passes them); ``pack_us`` is ``head_scores_message`` (absent from a one-head reply unless
    the request names heads); ``decode_us`` is the client's ``decode_head_scores``;
    ``reply_bytes`` is the serialised ``HeadScores``. BLAS runs one thread, as it does in a
    sidecar pinned to one CPU.
    """
    from threadpoolctl import threadpool_limits

    x = unit(rows, d, 2)
    norms = row_norms(x)
    with threadpool_limits(1):  # one BLAS thread, as in the sidecar pinned to one CPU
        return _time_all(x, norms, ks, reps)


def _time_all(
    x: np.ndarray, norms: np.ndarray, ks: Sequence[int], reps: int
) -> list[dict[str, float]]:
    d = x.shape[1]
    lin = random_scorer(d, 1)
    w0 = np.ascontiguousarray(lin.weights[:, 0])
    one = LinearScorer(weights=w0, bias=float(lin.biases[0]), normalize=True)
    linear_us = quantile(repeat(lambda: one.predict_proba(x, norms), reps), 0.5, "us")
    return [_time_k(x, norms, k, reps, linear_us) for k in ks]


def _time_k(x: np.ndarray, norms: np.ndarray, k: int, reps: int, linear_us: float) -> dict:
    hs = random_scorer(x.shape[1], k)
    names = HEAD_NAMES[:k] if k <= len(HEAD_NAMES) else tuple(f"h{j}" for j in range(k))
    flags = np.full(k, 0.5, dtype=np.float32)
    p = hs.predict_proba(x, norms)
    msg = head_scores_message(p, names, flags, None)

    def us(fn: Callable[[], object]) -> float:
        return quantile(repeat(fn, reps), 0.5, "us")

    return {
        "k": k,
        "linear_us": linear_us,
        "heads_us": us(lambda: hs.predict_proba(x, norms)),
        "pack_us": us(lambda: head_scores_message(p, names, flags, None)),
        "decode_us": us(lambda: decode_head_scores(msg)),
        "reply_bytes": msg.ByteSize(),
    }


# -- over gRPC -------------------------------------------------------------------------------
def round_orders(ks: Sequence[int], repeats: int) -> list[list[int]]:
    """The k values of each round: forwards, then backwards, alternating.

    >>> round_orders([1, 2, 4], 3)
    [[1, 2, 4], [4, 2, 1], [1, 2, 4]]
    """
    return [list(ks) if r % 2 == 0 else list(reversed(ks)) for r in range(repeats)]


def serve_round(
    bundle: Path,
    state_dir: Path,
    d: int,
    rows: int,
    seconds: float,
    threads: int,
    rate: float | None = None,
) -> dict[str, float]:
    """One sidecar process (recording to SQLite, detection on), one run: paced to ``rate``
    rows/s, or saturated (None)."""
    proc, target = start_server(bundle, True, ["--store", "sqlite", "--state-dir", str(state_dir)])
    try:
        with channel(target) as ch:
            stub = pb_grpc.MonitorStub(ch)
            b = bench_batch(stub, proc.pid, d, rows, seconds, threads, rate)
            st = stub.GetStatus(pb.GetStatusRequest())
            b["windows_evaluated"] = st.detection.windows_evaluated
            b["heads"] = len(st.heads)
    finally:
        proc.send_signal(signal.SIGTERM)
        b["exit"] = proc.wait(30)
    return b


def cpu_us_per_row(r: dict[str, float]) -> float:
    """Server CPU microseconds per row accepted in one run."""
    return 1e6 / r["emb_per_cpu_s"]


def summarise(runs: dict[int, list[dict[str, float]]]) -> list[dict[str, float]]:
    """Per k over the rounds: median server CPU µs per row (and its request-thread and
    worker parts), the share of rows sampled out (at most), the median ClassifyBatch p50 and
    worst p99, and the cost against one head: each round's k run over that round's k = 1
    run (paired), as the median ratio minus one with the lowest and highest round."""
    base = runs[min(runs)]
    out = []
    for k, rs in sorted(runs.items()):
        ratios = [cpu_us_per_row(r) / cpu_us_per_row(b) for r, b in zip(rs, base, strict=True)]
        out.append(
            {
                "k": k,
                "cpu_us": statistics.median(cpu_us_per_row(r) for r in rs),
                "request_us": statistics.median(r["request_us_per_row"] for r in rs),
                "worker_us": statistics.median(r["worker_us_per_row"] for r in rs),
                "shed": max(r["sampled_out_share"] for r in rs),
                "per_s": statistics.median(r["emb_per_s"] for r in rs),
                "p50_ms": statistics.median(r["batch_p50_ms"] for r in rs),
                "p99_ms": max(r["batch_p99_ms"] for r in rs),
                "cost": statistics.median(ratios) - 1.0,
                "cost_low": min(ratios) - 1.0,
                "cost_high": max(ratios) - 1.0,
            }
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="~2 minute smoke run")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=1024, help="rows per ClassifyBatch")
    ap.add_argument("--threads", type=int, default=2, help="concurrent batch clients")
    ap.add_argument("--seconds", type=float, default=6.0, help="per run")
    ap.add_argument("--repeats", type=int, default=5, help="rounds over every k (at least 2)")
    ap.add_argument(
        "--rate", type=float, default=80_000, help="offered rows/s of the paced runs (all clients)"
    )
    ap.add_argument("--train-rows", type=int, default=6000)
    a = ap.parse_args()
    if a.quick:
        a.seconds, a.repeats, a.train_rows = 3.0, 2, 1500
    a.repeats = max(a.repeats, 2)
    pin_client()  # the sidecar gets CPU 0 (serving.start_server)
    print(f"machine: {machine()}\n")

    reps = 50 if a.quick else 200
    print(
        f"In process, one {a.rows} x {a.dim} batch, one BLAS thread (median of {reps} calls, µs):\n"
    )
    cols = ["k", "LinearScorer", "HeadScorer", "vs one head", "pack reply", "decode reply",
            "HeadScores bytes"]  # fmt: skip
    print(table_header(cols, "rrrrrrr"))
    for t in inprocess_timings(a.dim, a.rows, reps=reps):
        print(table_row([
            t["k"], f"{t['linear_us']:,.0f}", f"{t['heads_us']:,.0f}",
            f"{t['heads_us'] / t['linear_us']:.2f}x", f"{t['pack_us']:,.0f}",
            f"{t['decode_us']:,.0f}", f"{t['reply_bytes']:,}",
        ]), flush=True)  # fmt: skip
    print()

    runs: dict[int, list[dict[str, float]]] = {k: [] for k in KS}
    run_cols = ["round", "k", "rows/s", "server CPU µs/row", "request threads µs/row",
                "worker µs/processed row", "sampled out", "server CPU use", "batch p50 ms",
                "batch p99 ms", "windows evaluated"]  # fmt: skip

    def run_row(label: object, k: int, b: dict[str, float]) -> str:
        return table_row([
            label, k, f"{b['emb_per_s']:,.0f}", f"{cpu_us_per_row(b):.2f}",
            f"{b['request_us_per_row']:.2f}", f"{b['worker_us_per_row']:.2f}",
            f"{b['sampled_out_share']:.0%}", f"{b['server_cpu_util']:.0%}",
            f"{b['batch_p50_ms']:.1f}", f"{b['batch_p99_ms']:.1f}", b["windows_evaluated"],
        ]) + ("" if b["exit"] == 0 else f" (exit {b['exit']})")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        bundles = make_bundles(Path(tmp), KS, a.dim, a.train_rows)
        print(f"Over gRPC, d={a.dim}, {a.rows}-row ClassifyBatch, {a.threads} client threads "
              f"paced to {a.rate:,.0f} rows/s in all, {a.seconds:g} s per run, recording on "
              "(sqlite), detection on:\n")  # fmt: skip
        print(table_header(run_cols, "r" * len(run_cols)))
        for r, order in enumerate(round_orders(KS, a.repeats)):
            for k in order:
                state = Path(tmp) / f"state-{k}-{r}"
                b = serve_round(bundles[k], state, a.dim, a.rows, a.seconds, a.threads, a.rate)
                runs[k].append(b)
                print(run_row(r + 1, k, b), flush=True)
        print(f"\nSummary over {a.repeats} paced rounds (cost: each round's k over its k=1 "
              "run, median and [lowest, highest] round):\n")  # fmt: skip
        cols = ["k", "server CPU µs/row", "request threads", "worker", "sampled out (max)",
                "batch p50 ms", "batch p99 ms (worst)", "CPU per row vs k=1",
                "[lowest, highest]"]  # fmt: skip
        print(table_header(cols, "r" * len(cols)))
        summary = summarise(runs)
        for s in summary:
            print(table_row([
                s["k"], f"{s['cpu_us']:.2f}", f"{s['request_us']:.2f}", f"{s['worker_us']:.2f}",
                f"{s['shed']:.0%}", f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}",
                f"{s['cost']:+.1%}", f"[{s['cost_low']:+.1%}, {s['cost_high']:+.1%}]",
            ]))  # fmt: skip
        k8 = next(s for s in summary if s["k"] == max(KS))
        verdict = "meets" if k8["cost"] <= 0.15 else "misses"
        print(
            f"\nk={max(KS)} heads cost {k8['cost']:+.1%} server CPU per row vs one head "
            f"(median of {a.repeats} paired rounds, [{k8['cost_low']:+.1%}, "
            f"{k8['cost_high']:+.1%}]): {verdict} the <= 15% target"
        )
        print(f"\nSaturated (clients send as fast as replies come), {a.seconds:g} s per k:\n")
        print(table_header(run_cols, "r" * len(run_cols)))
        for k in KS:
            b = serve_round(bundles[k], Path(tmp) / f"state-{k}-sat", a.dim, a.rows,
                            a.seconds, a.threads)  # fmt: skip
            print(run_row("sat", k, b), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
