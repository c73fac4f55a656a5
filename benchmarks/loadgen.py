"""Load and soak generator: open-loop overload of a sidecar, with exact row accounting.

Drives Classify, ClassifyBatch and (delayed) SubmitLabels at a target rate, by default
twice the rate the serving benchmark sustained (docs/benchmarks.md, "Serving"), and
checks the sidecar's promise under overload: the request path never blocks, memory stays
bounded, and every row the statistics pipeline could not take is *sampled out and
counted*:

    rows in OK Classify/ClassifyBatch responses
        == GetStatus pipeline.processed_rows + pipeline.sampled_out_rows   (exactly)
    labels in OK SubmitLabels responses
        == joined + unknown + expired + already_labelled                  (exactly)

The sidecar runs as its own ``silentwatch serve`` process (so the RSS is its own, read
from ``/proc/<pid>/status`` every second), or ``--target`` attaches to a running one on
loopback. Bounded in time (``--duration``) and count (``--max-requests``); loopback only.

    python benchmarks/loadgen.py --duration 60                 # ~1.5 minutes with the bundle
    python benchmarks/loadgen.py --duration 600 --out soak.json   # the 10-minute soak
    python benchmarks/loadgen.py --measure-sustainable         # rate = 2 x a closed-loop run
    python benchmarks/loadgen.py --serve-arg=--store-capacity=20000 \\
        --serve-arg='--max-queued-rows 2048'                  # any `serve` flag, repeatable
    python benchmarks/loadgen.py --target 127.0.0.1:50051 --pid 1234 \\
        --metrics-url http://127.0.0.1:9464/metrics
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# tests/test_soak.py loads this file by path, without benchmarks/ on sys.path; the pieces
# below are imported by name from beside it, so the folder goes there first.
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The generator in pieces: loadgen_traffic (what is sent), loadgen_drive (the open-loop
# client), loadgen_accounting (what must add up), sidecar_process (the served sidecar);
# this file is the command line and the report.
from harness import machine, markdown_table, pin_client, table_header, table_row, write_json
from loadgen_accounting import LatencyHistogram, slope_mib_per_min
from loadgen_drive import (
    DEFAULT_RATE,
    SUSTAINABLE_ROWS_PER_S,
    LoadConfig,
    LoadRun,
    measure_sustainable,
    run_load,
)
from loadgen_traffic import DEFAULT_DIM, Traffic, build_bundle
from sidecar_process import SidecarProcess, check_loopback_target, check_loopback_url

__all__ = [
    "DEFAULT_RATE",
    "LoadConfig",
    "LoadRun",
    "SidecarProcess",
    "Traffic",
    "build_bundle",
    "check_loopback_target",
    "check_loopback_url",
    "main",
    "measure_sustainable",
    "report",
    "run_load",
]

# doctest.testmod(loadgen) in tests/test_soak.py collects only what this file defines; the
# doctests of the pieces the generator is built from are named here so that it runs them.
__test__ = {
    "check_loopback_target": check_loopback_target,
    "LatencyHistogram": LatencyHistogram,
    "slope_mib_per_min": slope_mib_per_min,
    "Traffic.labelled": Traffic.labelled,
}


# -- reporting -----------------------------------------------------------------------------
def report(r: dict[str, Any]) -> str:
    """The human-readable table of one run."""
    c, a, rss = r["client"], r["accounting"], r["rss"]
    lines = [
        f"target {c['target_rows_per_s']:,.0f} rows/s ({c['target_requests_per_s']:,.0f} req/s);"
        f" achieved {c['achieved_rows_per_s']:,.0f} rows/s over {c['load_seconds']:.1f} s",
        f"offered {c['offered_requests']:,} requests; sent {c['sent_requests']}; not sent: "
        f"in-flight limit {c['shed_in_flight_limit']}, generator behind "
        f"{c['shed_generator_behind']:,}",
        "",
        table_header(
            ["RPC", "calls", "p50 ms", "p99 ms", "max ms", "error rate", "codes"], "lrrrrrl"
        ),
    ]
    for kind, s in r["rpcs"].items():
        lines.append(
            table_row(
                [
                    kind,
                    f"{s['calls']:,}",
                    f"{s['p50_ms']:.2f}",
                    f"{s['p99_ms']:.2f}",
                    f"{s['max_ms']:.2f}",
                    f"{s['error_rate']:.2%}",
                    s["codes"],
                ]
            )
        )
    lines += [
        "",
        f"error rate, all RPCs: {c['error_rate']:.3%} of {c['rpc_calls']:,}",
    ]
    if rss:
        lines.append(
            f"sidecar RSS MiB: start {rss['start_mib']}, peak {rss['peak_mib']} "
            f"(kernel HWM {rss.get('kernel_peak_hwm_mib', '-')}), final {rss['final_mib']}; "
            f"last half {rss['last_half_range_mib']}, slope "
            f"{rss['last_half_slope_mib_per_min']:+.2f} MiB/min; "
            f"sidecar CPU {rss.get('server_cpu_share', float('nan')):.0%} of a core"
        )
        if rss.get("state_dir"):
            sd = rss["state_dir"]
            lines.append(
                f"state dir (durable store) MiB: start {sd['start_mib']}, peak {sd['peak_mib']}, "
                f"final {sd['final_mib']}; last half {sd['last_half_range_mib']}"
            )
        if rss.get("client"):
            cl = rss["client"]
            lines.append(
                f"load generator RSS MiB: start {cl['start_mib']}, peak {cl['peak_mib']}, "
                f"final {cl['final_mib']}; last half {cl['last_half_range_mib']}"
            )
    lines += [
        "",
        markdown_table(
            ["rows accepted (OK responses)", "processed", "sampled out (share)", "sum", "exact"],
            [
                [
                    f"{a['rows_sent_ok']:,}",
                    f"{a['accepted_processed_rows']:,}",
                    f"{a['sampled_out_rows']:,} ({a['sampled_out_share']:.1%})",
                    f"{a['accepted_processed_rows'] + a['sampled_out_rows']:,}",
                    a["rows_identity_exact"],
                ]
            ],
            "rrrrl",
        ),
        f"Prometheus deltas {a['prometheus']} match GetStatus: {a['prometheus_matches_status']};"
        f" server OK requests {a['server_ok_requests']} match the client's: "
        f"{a['requests_match_server']}",
        f"labels sent {a['labels_sent']:,}: responses {a['labels_response_outcomes']} "
        f"({a['labels_identity_response']}); GetStatus {a['labels_status_delta']} "
        f"({a['labels_identity_status']}); not queued {a['labels_not_queued']:,}, "
        f"unsent at end {a['labels_unsent_at_end']:,}",
        f"sink errors {a['sink_errors']}; store failures {a['store_failures']}",
        f"drained in {a['drain_seconds']} s: {a['drained']}; accounting ok: {a['ok']}",
    ]
    if r["first_errors"]:
        lines.append(f"first errors: {r['first_errors']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = ap.add_argument_group("sidecar")
    where.add_argument("--bundle", type=Path, help="bundle to serve (default: build one)")
    where.add_argument("--dim", type=int, default=DEFAULT_DIM, help="dimension of a built bundle")
    where.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `silentwatch serve` argument(s), repeatable, e.g. --serve-arg=--store=memory "
        "or --serve-arg='--max-queued-rows 2048'; they override the defaults",
    )
    where.add_argument("--no-pin", action="store_true", help="do not pin sidecar/client to CPUs")
    where.add_argument("--target", help="attach to a running sidecar (loopback host:port)")
    where.add_argument("--pid", type=int, help="with --target: the sidecar's pid, for its RSS")
    where.add_argument("--metrics-url", help="with --target: its /metrics URL (loopback)")
    load = ap.add_argument_group("load")
    d = LoadConfig()
    load.add_argument(
        "--rate",
        type=float,
        help=f"rows/s offered (default {DEFAULT_RATE:,} = 2 x the serving benchmark's "
        f"{SUSTAINABLE_ROWS_PER_S:,})",
    )
    load.add_argument(
        "--measure-sustainable",
        action="store_true",
        help="first measure the sustainable rate with a short closed-loop run; rate = "
        "--overload x that",
    )
    load.add_argument("--measure-seconds", type=float, default=5.0)
    load.add_argument("--overload", type=float, default=2.0, help="with --measure-sustainable")
    load.add_argument("--duration", type=float, default=d.duration, help="seconds of load")
    load.add_argument("--max-requests", type=int, default=d.max_requests)
    load.add_argument("--batch-rows", type=int, default=d.batch_rows)
    load.add_argument("--classify-share", type=float, default=d.classify_share)
    load.add_argument("--label-fraction", type=float, default=d.label_fraction)
    load.add_argument("--label-delay", type=float, default=d.label_delay)
    load.add_argument("--label-batch", type=int, default=d.label_batch)
    load.add_argument("--threads", type=int, default=d.threads)
    load.add_argument("--max-in-flight", type=int, default=d.max_in_flight)
    load.add_argument("--rpc-timeout", type=float, default=d.rpc_timeout)
    load.add_argument("--seed", type=int, default=d.seed)
    load.add_argument(
        "--packed-ids",
        action="store_true",
        help="ClassifyBatch sends packed_request_ids, labelled with columnar SubmitLabels",
    )
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    a = ap.parse_args(argv)

    if (a.rate is not None and a.rate <= 0) or a.duration <= 0 or a.max_requests < 1:
        ap.error("--rate, --duration and --max-requests must be positive")
    if not 0 <= a.classify_share <= 1 or not 0 <= a.label_fraction <= 1:
        ap.error("--classify-share and --label-fraction are fractions in [0, 1]")
    if a.batch_rows < 1 or a.threads < 1 or a.max_in_flight < 1 or a.label_batch < 1:
        ap.error("--batch-rows, --threads, --max-in-flight and --label-batch must be >= 1")
    serve_args = [tok for s in a.serve_arg for tok in shlex.split(s)]
    cfg = LoadConfig(
        rate=a.rate or DEFAULT_RATE,
        duration=a.duration,
        max_requests=a.max_requests,
        batch_rows=a.batch_rows,
        classify_share=a.classify_share,
        label_fraction=a.label_fraction,
        label_delay=a.label_delay,
        label_batch=a.label_batch,
        threads=a.threads,
        max_in_flight=a.max_in_flight,
        rpc_timeout=a.rpc_timeout,
        seed=a.seed,
        packed_ids=a.packed_ids,
    )
    try:
        if a.target:
            check_loopback_target(a.target)
        if a.metrics_url:
            check_loopback_url(a.metrics_url)
    except ValueError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    # As the serving benchmark: sidecar on CPU 0, this client on CPU 1.
    pin = not a.no_pin and not a.target and pin_client()
    print(f"machine: {machine()}", flush=True)
    meta: dict[str, Any] = {"machine": machine(), "serve_args": serve_args, "pinned": pin}

    if a.target:
        if a.measure_sustainable:
            sus = measure_sustainable(
                a.target, Traffic.for_sidecar(a.target, a.seed + 1), cfg, a.measure_seconds
            )
            cfg.rate = a.overload * sus
            meta["measured_sustainable_rows_per_s"] = sus
            print(f"sustainable (closed loop): {sus:,.0f} rows/s", flush=True)
        result = run_load(a.target, cfg, pid=a.pid, metrics_url=a.metrics_url)
    else:
        with tempfile.TemporaryDirectory(prefix="loadgen-bundle-") as tmp:
            bundle = a.bundle
            if bundle is None:
                t0 = time.monotonic()
                bundle = build_bundle(Path(tmp) / "bundle", a.dim)
                print(f"built a d={a.dim} bundle in {time.monotonic() - t0:.1f} s", flush=True)
            pin_cpu = 0 if pin else None
            if a.measure_sustainable:
                sc = SidecarProcess.start(bundle, serve_args, pin_cpu=pin_cpu)
                try:
                    sus = measure_sustainable(
                        sc.target,
                        Traffic.for_sidecar(sc.target, a.seed + 1),
                        cfg,
                        a.measure_seconds,
                    )
                finally:
                    sc.cleanup()
                cfg.rate = a.overload * sus
                meta["measured_sustainable_rows_per_s"] = sus
                print(f"sustainable (closed loop): {sus:,.0f} rows/s", flush=True)
            sc = SidecarProcess.start(bundle, serve_args, pin_cpu=pin_cpu)
            try:
                meta["sidecar_argv"] = sc.argv
                result = run_load(
                    sc.target,
                    cfg,
                    pid=sc.pid,
                    metrics_url=sc.metrics_url,
                    state_dir=sc.state_dir,
                )
            finally:
                rc = sc.stop()
                meta["sidecar_exit_code"] = rc
                meta["state_dir_mib"] = sc.state_dir_mib()
                if rc != 0:
                    meta["sidecar_stderr_tail"] = sc.stderr_tail()
                sc.tmp.cleanup()
    result["meta"] = meta
    print(report(result))
    if "sidecar_exit_code" in meta:
        print(
            f"sidecar exit code after SIGTERM: {meta['sidecar_exit_code']}; state dir "
            f"{meta['state_dir_mib']} MiB; client peak RSS "
            f"{result['client']['client_peak_rss_mib']} MiB"
        )
    if a.out:
        write_json(a.out, result)
        print(f"wrote {a.out}")
    ok = result["accounting"]["ok"] and meta.get("sidecar_exit_code", 0) == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
