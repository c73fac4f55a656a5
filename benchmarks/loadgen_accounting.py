"""The load generator's accounting: what the client saw against what the sidecar counted.

Two identities must hold exactly once the pipeline has drained:

    rows in OK Classify/ClassifyBatch responses
        == GetStatus pipeline.processed_rows + pipeline.sampled_out_rows
    labels in OK SubmitLabels responses
        == joined + unknown + expired + already_labelled

The client's side is a :class:`ClientTally`; the sidecar's is GetStatus (read generically,
:func:`status_numbers`) and its ``/metrics`` (read with :mod:`silentwatch.scrape`).
Resources (RSS, CPU, the durable store's disk) are sampled once a second by a
:class:`Timeline`. Everything here stays the same size however long the run.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from harness import MiB, channel, cpu_seconds, dir_mib, read_rss

from silentwatch.scrape import Samples, key, scrape, series
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

CLASSIFY_KINDS = ("Classify", "ClassifyBatch")
RPC_KINDS = (*CLASSIFY_KINDS, "SubmitLabels")
# Non-OK codes that prove the sidecar recorded nothing: the servicer refuses before it
# records or enqueues (monitor/serving/service.py). Any other failure (a deadline, a dropped
# connection, INTERNAL) leaves it open whether the rows reached the pipeline.
DEFINITE_REFUSALS = frozenset(
    {
        "INVALID_ARGUMENT",
        "ALREADY_EXISTS",
        "FAILED_PRECONDITION",
        "RESOURCE_EXHAUSTED",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "UNIMPLEMENTED",
        "OUT_OF_RANGE",
    }
)
# Outcomes a SubmitLabels label can have; they must add up to the labels received. A new
# outcome field in LabelStatus (e.g. one for store errors) belongs here once it exists.
LABEL_OUTCOMES = ("joined", "unknown", "expired", "already_labelled")
# The /metrics series the run compares (the rest of the exposition is not needed).
METRIC_PREFIXES = (
    "silentwatch_pipeline_",
    "silentwatch_requests",
    "silentwatch_labels_",
    "silentwatch_prediction_store_",
    "process_resident_memory_bytes",
)
PROCESSED = "silentwatch_pipeline_processed_rows_total"
SAMPLED_OUT = "silentwatch_pipeline_sampled_out_rows_total"
SINK_ERRORS = "silentwatch_pipeline_sink_errors_total"


# -- measurements that stay the same size however long the run ----------------------------
class LatencyHistogram:
    """Latencies in log-spaced buckets (2% wide): fixed memory, quantiles within ~1%.

    A 10-minute soak makes millions of calls; keeping each latency would grow without
    bound, which is what this benchmark must not do itself.

    >>> h = LatencyHistogram()
    >>> for ms in range(1, 101):
    ...     h.add(ms / 1e3)
    >>> [abs(h.quantile(q) * 1e3 / ms - 1) < 0.02 for q, ms in ((0.5, 50), (0.99, 99))]
    [True, True]
    >>> h.count, h.max
    (100, 0.1)
    """

    RATIO = 1.02
    BUCKETS = 1000  # 1.02**1000 us ~ 400,000 s: nothing falls off the end

    def __init__(self) -> None:
        self.counts = [0] * self.BUCKETS
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self._log_ratio = math.log(self.RATIO)

    def add(self, seconds: float) -> None:
        us = seconds * 1e6
        i = 0 if us <= 1.0 else min(self.BUCKETS - 1, int(math.log(us) / self._log_ratio) + 1)
        self.counts[i] += 1
        self.count += 1
        self.total += seconds
        self.max = max(self.max, seconds)

    def quantile(self, q: float) -> float:
        """Seconds; the geometric middle of the bucket holding the q-quantile."""
        if not self.count:
            return float("nan")
        rank = q * self.count
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank and c:
                mid = 1.0 if i == 0 else self.RATIO ** (i - 0.5)
                return min(mid * 1e-6, self.max)
        return self.max

    def summary(self) -> dict[str, float]:
        nan = float("nan")
        return {
            "calls": self.count,
            "p50_ms": 1e3 * self.quantile(0.50),
            "p99_ms": 1e3 * self.quantile(0.99),
            "max_ms": 1e3 * self.max if self.count else nan,
            "mean_ms": 1e3 * self.total / self.count if self.count else nan,
        }


def slope_mib_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute.

    >>> slope_mib_per_min([(0, 10.0), (60, 11.0), (120, 12.0)])
    1.0
    """
    if len(points) < 3:
        return float("nan")
    t, m = np.asarray(points, dtype=np.float64).T
    return round(float(np.polyfit(t, m, 1)[0]) * 60, 6)


# -- the client's side -----------------------------------------------------------------------
def _per_classify_kind() -> dict[str, int]:
    return dict.fromkeys(CLASSIFY_KINDS, 0)


@dataclass
class ClientTally:
    """What the client saw, call by call: its side of every identity.

    Plain counters: the load run's lock guards them (gRPC threads update them too).
    """

    latency: dict[str, LatencyHistogram] = field(
        default_factory=lambda: {k: LatencyHistogram() for k in RPC_KINDS}
    )
    codes: dict[str, dict[str, int]] = field(default_factory=lambda: {k: {} for k in RPC_KINDS})
    first_error: dict[str, str] = field(default_factory=dict)
    rows_ok: int = 0
    rows_refused: int = 0  # rows of calls refused outright (nothing recorded)
    rows_unknown: int = 0  # rows of calls whose fate is unknown (deadline, disconnect)
    offered: dict[str, int] = field(default_factory=_per_classify_kind)
    sent: dict[str, int] = field(default_factory=_per_classify_kind)
    shed_in_flight: dict[str, int] = field(default_factory=_per_classify_kind)
    shed_behind: int = 0  # scheduled requests skipped because a dispatcher fell behind
    requests_total: int = 0  # every RPC counted against max_requests (not GetStatus)
    budget_exhausted: bool = False
    labels_sent: int = 0
    label_outcomes: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("received", *LABEL_OUTCOMES), 0)
    )
    labels_failed: int = 0  # in SubmitLabels calls that failed
    labels_not_queued: int = 0  # pending-label cap reached: never sent, counted
    labels_unsent_at_end: int = 0  # not yet due when the run ended

    def record(self, kind: str, code: str, seconds: float, detail: str = "") -> None:
        """One finished call: its latency (OK only), its code, the first error of a kind."""
        if code == "OK":
            self.latency[kind].add(seconds)
        c = self.codes[kind]
        c[code] = c.get(code, 0) + 1
        if code != "OK" and f"{kind} {code}" not in self.first_error:
            self.first_error[f"{kind} {code}"] = detail[:300]

    def rows_done(self, code: str, n: int) -> None:
        """The n rows of a finished Classify/ClassifyBatch call, by what its code proves."""
        if code == "OK":
            self.rows_ok += n
        elif code in DEFINITE_REFUSALS:
            self.rows_refused += n
        else:
            self.rows_unknown += n

    def labels_done(self, n: int, resp: pb.SubmitLabelsResponse | None) -> None:
        """n labels in one SubmitLabels call; ``resp`` None if the call failed."""
        if resp is not None:
            self.labels_sent += n
            for k in self.label_outcomes:
                self.label_outcomes[k] += getattr(resp, k)
        else:  # the sidecar may or may not have counted them
            self.labels_failed += n

    def rpc_summary(self) -> dict[str, dict[str, Any]]:
        """Per RPC: latency quantiles of the OK calls, calls, codes and error rate."""
        rpcs = {}
        for kind, h in self.latency.items():
            codes = dict(sorted(self.codes[kind].items()))
            calls = sum(codes.values())
            errors = calls - codes.get("OK", 0)
            rpcs[kind] = {
                **h.summary(),
                "calls": calls,
                "codes": codes,
                "error_rate": errors / calls if calls else 0.0,
            }
        return rpcs


# -- the sidecar's side ----------------------------------------------------------------------
_NUMERIC = frozenset({1, 2, 3, 4, 5, 6})  # FieldDescriptor.CPPTYPE_INT32 .. CPPTYPE_FLOAT

Numbers = dict[str, dict[str, float]]


def status_numbers(msg: pb.GetStatusResponse) -> Numbers:
    """Every numeric scalar of every status section, found through the descriptor.

    Read generically so that sections and fields added to GetStatusResponse later (a durable
    store's errors, say) appear in the results without a change here.
    """
    out: Numbers = {}
    for f in msg.DESCRIPTOR.fields:
        if f.is_repeated:
            continue
        if f.cpp_type == f.CPPTYPE_MESSAGE:
            sub = getattr(msg, f.name)
            nums = {
                g.name: getattr(sub, g.name)
                for g in sub.DESCRIPTOR.fields
                if not g.is_repeated and g.cpp_type in _NUMERIC
            }
            if nums:
                out[f.name] = nums
        elif f.cpp_type in _NUMERIC:
            out.setdefault("top", {})[f.name] = getattr(msg, f.name)
    return out


def numbers_delta(end: Numbers, start: Numbers) -> Numbers:
    """end - start, field by field (a field missing at the start counts from 0)."""
    return {
        sec: {k: v - start.get(sec, {}).get(k, 0) for k, v in fields.items()}
        for sec, fields in end.items()
    }


def scrape_metrics(url: str | None) -> Samples:
    """The /metrics series the run compares; none without a URL (loopback, checked by callers)."""
    return scrape(url).matching(*METRIC_PREFIXES) if url else Samples()


def metrics_delta(end: Samples, base: Samples) -> dict[str, float]:
    """end - base per series, keyed ``name{labels}``, without the process_* gauges."""
    return {
        series(k): v - base.get(k, 0.0) for k, v in end.items() if not k[0].startswith("process_")
    }


# -- the identities --------------------------------------------------------------------------
def account(
    tally: ClientTally,
    base: Numbers,
    end: Numbers,
    base_metrics: Samples,
    end_metrics: Samples,
    *,
    with_metrics: bool,
    drained: bool,
    drain_s: float,
    in_flight_left: int,
) -> dict[str, Any]:
    """Check every identity; ``ok`` is True only if all hold exactly.

    ``with_metrics``: whether /metrics was read (without it, the Prometheus side of the
    checks is left out instead of failing).
    """
    t = tally
    delta = numbers_delta(end, base)
    pl, lab = delta["pipeline"], delta["labels"]
    accepted, sampled = int(pl["processed_rows"]), int(pl["sampled_out_rows"])
    # The one identity the issue asks for: every row the client saw accepted was either
    # folded into the statistics or sampled out and counted; exact unless some call's
    # fate is unknown (then the server's total must lie between the two bounds).
    rows_exact = t.rows_unknown == 0 and accepted + sampled == t.rows_ok
    rows_bounded = t.rows_ok <= accepted + sampled <= t.rows_ok + t.rows_unknown
    metric_keys = {"sampled_out_rows": SAMPLED_OUT, "processed_rows": PROCESSED}
    prom = {
        k: end_metrics[key(m)] - base_metrics.get(key(m), 0.0)
        for k, m in metric_keys.items()
        if key(m) in end_metrics
    }
    server_outcomes = sum(int(lab.get(k, 0)) for k in LABEL_OUTCOMES)
    client_outcomes = sum(t.label_outcomes[k] for k in LABEL_OUTCOMES)
    accounting = {
        "rows_sent_ok": t.rows_ok,
        "rows_refused": t.rows_refused,
        "rows_unknown_fate": t.rows_unknown,
        "accepted_processed_rows": accepted,
        "sampled_out_rows": sampled,
        "sampled_out_share": sampled / t.rows_ok if t.rows_ok else 0.0,
        # Row counters the sidecar may add later (not in the identity until named here).
        "other_pipeline_row_counters": {
            k: int(v)
            for k, v in pl.items()
            if k.endswith("_rows") and k not in ("processed_rows", "sampled_out_rows")
        },
        "rows_identity_exact": rows_exact,
        "rows_identity_bounded": rows_bounded,
        "prometheus": prom,
        "prometheus_matches_status": bool(prom)
        and int(prom.get("sampled_out_rows", -1)) == sampled
        and int(prom.get("processed_rows", -1)) == accepted,
        "drained": drained,
        "drain_seconds": round(drain_s, 3),
        "in_flight_left": in_flight_left,
        "labels_sent": t.labels_sent,
        "labels_response_outcomes": dict(t.label_outcomes),
        "labels_status_delta": {k: int(v) for k, v in lab.items()},
        "labels_identity_response": t.labels_sent == client_outcomes
        and t.label_outcomes["received"] == t.labels_sent,
        # Exact when no SubmitLabels call failed; a failed call's labels may or may not
        # have been counted, so then the sidecar's count may exceed ours by that much.
        "labels_failed": t.labels_failed,
        "labels_identity_status": t.labels_sent
        <= int(lab.get("received", -1))
        <= t.labels_sent + t.labels_failed
        and server_outcomes == int(lab.get("received", -1)),
        "labels_not_queued": t.labels_not_queued,
        "labels_unsent_at_end": t.labels_unsent_at_end,
    }
    # "Processed" must mean folded: a sink that raised still counts its rows as processed,
    # so its error counter has to stay at zero for the identity to mean what it says.
    accounting["sink_errors"] = int(
        end_metrics.get_value(SINK_ERRORS) - base_metrics.get_value(SINK_ERRORS)
    )
    # Store failures (a durable store's write errors, predictions it could not record)
    # are not part of the identities; reported so that a run with any is noticed.
    accounting["store_failures"] = {
        k: int(v) for k, v in delta.get("store", {}).items() if "error" in k or "not_recorded" in k
    }
    # The sidecar's own request counter must agree call for call with what we saw.
    server_ok = {
        k: int(end_metrics.get_value("silentwatch_requests_total", 0, code="OK", rpc=k))
        - int(base_metrics.get_value("silentwatch_requests_total", 0, code="OK", rpc=k))
        for k in t.latency
    }
    accounting["server_ok_requests"] = server_ok
    accounting["requests_match_server"] = server_ok == {
        k: t.codes[k].get("OK", 0) for k in t.latency
    }
    # Strict: a call whose fate is unknown means the identity cannot be proved exactly.
    accounting["ok"] = bool(
        rows_exact
        and (
            (accounting["prometheus_matches_status"] and accounting["requests_match_server"])
            or not with_metrics
        )
        and accounting["labels_identity_response"]
        and accounting["labels_identity_status"]
        and t.labels_failed == 0
        and accounting["sink_errors"] == 0
        and drained
        and in_flight_left == 0
    )
    return accounting


# -- resources over time ---------------------------------------------------------------------
class Timeline:
    """The sidecar's resources once a second, and the pipeline's counters beside them.

    Its RSS from /proc (with ``pid``) or from its /metrics; its CPU; the durable store's
    disk (``state_dir``); and this process's own RSS, to show the generator is flat too.
    """

    def __init__(
        self,
        pid: int | None,
        metrics_url: str | None,
        state_dir: Path | None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.pid = pid
        self.metrics_url = metrics_url
        self.state_dir = state_dir  # sampled too: a durable store must not grow without bound
        self.log = log
        self.samples: list[dict[str, float]] = []

    def sample(
        self, stub: pb_grpc.MonitorStub, t_start: float, rows_ok: Callable[[], int]
    ) -> dict[str, float]:
        s: dict[str, float] = {"t": round(time.monotonic() - t_start, 3)}
        if self.pid is not None:
            with contextlib.suppress(OSError, KeyError):
                s["rss_mib"], s["hwm_mib"] = read_rss(self.pid)
                s["cpu_s"] = cpu_seconds(self.pid)
        elif self.metrics_url:
            with contextlib.suppress(OSError, ValueError):
                rss = scrape(self.metrics_url).get(key("process_resident_memory_bytes"))
                if rss is not None:
                    s["rss_mib"] = rss / MiB
        with contextlib.suppress(grpc.RpcError):
            pl = stub.GetStatus(pb.GetStatusRequest(), timeout=5).pipeline
            s.update(
                queued=pl.queued,
                processed_rows=pl.processed_rows,
                sampled_out_rows=pl.sampled_out_rows,
            )
        with contextlib.suppress(OSError, KeyError):
            s["client_rss_mib"] = read_rss(os.getpid())[0]  # ours, to show it is flat too
        if self.state_dir is not None:
            s["state_dir_mib"] = dir_mib(self.state_dir)
        s["client_rows_ok"] = rows_ok()
        return s

    def follow(
        self, target: str, t_start: float, stop: threading.Event, rows_ok: Callable[[], int]
    ) -> None:
        """Sample every second until ``stop`` is set (a thread's target)."""
        with channel(target) as ch:
            stub = pb_grpc.MonitorStub(ch)
            while not stop.wait(1.0):
                s = self.sample(stub, t_start, rows_ok)
                self.samples.append(s)
                if len(self.samples) % 10 == 0:  # a pulse every ~10 s on long soaks
                    self.log(
                        f"  t={s['t']:.0f}s rows ok {s['client_rows_ok']:,} sampled out "
                        f"{s.get('sampled_out_rows', 0):,} RSS {s.get('rss_mib', 0):.0f} MiB"
                    )

    def rss_summary(self, end_load: float) -> dict[str, Any]:
        """Sidecar (and client) RSS: start, peak, final, and how the second half of the load
        moved (its least-squares slope and its band; on a short or noisy run the band says
        more than the slope)."""

        def series_of(name: str) -> dict[str, Any]:
            pts = [(s["t"], s[name]) for s in self.samples if name in s]
            if not pts:
                return {}
            half = [p for p in pts if end_load / 2 <= p[0] <= end_load + 1.0]
            return {
                "samples": len(pts),
                "start_mib": round(pts[0][1], 1),
                "peak_mib": round(max(m for _, m in pts), 1),
                "final_mib": round(pts[-1][1], 1),
                "last_half_slope_mib_per_min": slope_mib_per_min(half),
                "last_half_range_mib": [
                    round(min((m for _, m in half), default=float("nan")), 1),
                    round(max((m for _, m in half), default=float("nan")), 1),
                ],
            }

        out = series_of("rss_mib")
        if not out:
            return {}
        out["client"] = series_of("client_rss_mib")
        if self.state_dir is not None:
            out["state_dir"] = series_of("state_dir_mib")
        hwm = [s["hwm_mib"] for s in self.samples if "hwm_mib" in s]
        if hwm:
            out["kernel_peak_hwm_mib"] = round(max(hwm), 1)
        cpu = [(s["t"], s["cpu_s"]) for s in self.samples if "cpu_s" in s]
        if len(cpu) >= 2 and cpu[-1][0] > cpu[0][0]:
            out["server_cpu_share"] = round((cpu[-1][1] - cpu[0][1]) / (cpu[-1][0] - cpu[0][0]), 3)
        return out
