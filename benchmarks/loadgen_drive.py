"""The load generator's client: open-loop dispatchers, a labeller, and the run around them.

Open loop: requests leave on a schedule (``rate`` rows/s), whatever the sidecar's latency.
At most ``max_in_flight`` calls are outstanding; a scheduled request beyond that is not
sent (and counted), so this process never queues without bound. A dispatcher that falls
behind its schedule skips the missed slots (counted) instead of catching up in a burst.
"""

from __future__ import annotations

import contextlib
import resource
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from harness import channel
from loadgen_accounting import (
    ClientTally,
    Numbers,
    Timeline,
    account,
    metrics_delta,
    numbers_delta,
    scrape_metrics,
    status_numbers,
)
from loadgen_traffic import Traffic
from sidecar_process import check_loopback_target, check_loopback_url

from silentwatch.scrape import Samples
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

# docs/benchmarks.md, "Serving" (2026-11-24, 2 EPYC cores, sidecar pinned to one core):
# ClassifyBatch of 1,024 rows at d=384 with recording on sustained 286,540 embeddings/s.
# That run predates the detection engine (on by default now, ~12% more server CPU at d=384,
# "Detection overhead"), so twice this figure overloads today's sidecar by more than 2x.
SUSTAINABLE_ROWS_PER_S = 286_540
DEFAULT_RATE = 2 * SUSTAINABLE_ROWS_PER_S
DEFAULT_BATCH_ROWS = 1024  # as the serving benchmark, so the rate above applies


@dataclass
class LoadConfig:
    """What to send. ``rate`` counts rows (Classify = 1, ClassifyBatch = ``batch_rows``)."""

    rate: float = DEFAULT_RATE
    duration: float = 60.0
    max_requests: int = 5_000_000
    batch_rows: int = DEFAULT_BATCH_ROWS
    classify_share: float = 0.5  # share of the Classify/ClassifyBatch *requests* that are single
    label_fraction: float = 0.3  # share of the accepted request ids that get a label later
    # Seconds between a response and its label (a moderation queue, compressed): short enough
    # that most labels find their prediction in a 250,000-entry store at ~150,000 rows/s.
    label_delay: float = 1.0
    label_batch: int = 4096  # labels per SubmitLabels call, about
    # Ids waiting for their label delay; beyond this they are not queued (and counted). The
    # queue holds one (due, k0, n) tuple per response, so this also bounds its length.
    max_pending_labels: int = 1_000_000
    threads: int = 2  # dispatcher threads, each with its own channel
    max_in_flight: int = 16  # outstanding Classify/ClassifyBatch calls, all threads together
    rpc_timeout: float = 30.0
    max_lag: float = 0.5  # a dispatcher this far behind its schedule skips the missed slots
    drain_timeout: float = 60.0
    seed: int = 0
    # ClassifyBatch ids as packed_request_ids, their labels in columnar SubmitLabels calls.
    packed_ids: bool = False

    @property
    def request_rate(self) -> float:
        """Classify + ClassifyBatch requests per second that make ``rate`` rows per second."""
        s = self.classify_share
        return self.rate / (s + (1 - s) * self.batch_rows)


class LoadRun:
    """One open-loop run against a sidecar: dispatchers, a labeller, a sampler."""

    def __init__(
        self,
        target: str,
        cfg: LoadConfig,
        traffic: Traffic,
        *,
        pid: int | None = None,
        metrics_url: str | None = None,
        state_dir: Path | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.target = check_loopback_target(target)
        self.metrics_url = check_loopback_url(metrics_url) if metrics_url else None
        self.cfg = cfg
        self.traffic = traffic
        traffic.packed = cfg.packed_ids
        self.log = log
        self._lock = threading.Lock()  # guards self.tally and the pending-label queue
        self.tally = ClientTally()
        self.timeline = Timeline(pid, self.metrics_url, state_dir, log)
        # (due, k0, n, packed): one entry per response; packed ids are labelled apart.
        self._pending: deque[tuple[float, int, int, bool]] = deque()
        self._pending_ids = 0
        self._in_flight = threading.BoundedSemaphore(cfg.max_in_flight)
        self._stop = threading.Event()
        self._load_done = threading.Event()
        self._stop_sampler = threading.Event()

    # -- bookkeeping ----------------------------------------------------------------------
    def _take_budget(self) -> bool:
        with self._lock:
            if self.tally.requests_total >= self.cfg.max_requests:
                self.tally.budget_exhausted = True
                self._stop.set()
                return False
            self.tally.requests_total += 1
            return True

    def _rows_ok(self) -> int:
        with self._lock:
            return self.tally.rows_ok

    # -- Classify / ClassifyBatch: open loop ------------------------------------------------
    def _on_done(self, kind: str, k0: int, n: int, t0: float, fut: grpc.Future) -> None:
        # Runs on a gRPC thread: keep it short, never block.
        dt = time.perf_counter() - t0
        try:
            exc = fut.exception()
            code = "OK" if exc is None else exc.code().name
            detail = "" if exc is None else str(exc.details())
        except grpc.FutureCancelledError:
            code, detail = "CANCELLED", "cancelled by the client"
        with self._lock:
            self.tally.record(kind, code, dt, detail)
            self.tally.rows_done(code, n)
            if code == "OK" and self.cfg.label_fraction > 0:
                if self._pending_ids + n <= self.cfg.max_pending_labels:
                    packed = self.traffic.packed and kind == "ClassifyBatch"
                    due = time.monotonic() + self.cfg.label_delay
                    self._pending.append((due, k0, n, packed))
                    self._pending_ids += n
                else:
                    self.tally.labels_not_queued += len(
                        Traffic.labelled(k0, n, self.cfg.label_fraction)
                    )
        self._in_flight.release()

    def _dispatch(self, index: int, deadline: float, ch: grpc.Channel) -> None:
        """One open-loop sender; ``ch`` outlives it so that its last calls can finish."""
        cfg, traffic, tally = self.cfg, self.traffic, self.tally
        rng = np.random.default_rng([cfg.seed, index])
        interval = cfg.threads / cfg.request_rate
        stub = pb_grpc.MonitorStub(ch)
        methods = {"Classify": stub.Classify, "ClassifyBatch": stub.ClassifyBatch}
        # Kinds drawn in blocks: one numpy call per 4,096 requests, not one per request.
        kinds: Iterator[bool] = iter(())
        next_t = time.monotonic() + interval * index / cfg.threads  # staggered starts
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if next_t > now:
                time.sleep(min(next_t - now, deadline - now))
                continue
            lag = now - next_t
            if lag > cfg.max_lag:
                # Open loop means we never catch up in a burst: count the slots we missed.
                missed = int(lag / interval)
                with self._lock:
                    tally.shed_behind += missed
                next_t += missed * interval
            next_t += interval
            single = next(kinds, None)
            if single is None:
                kinds = iter((rng.random(4096) < cfg.classify_share).tolist())
                single = next(kinds)
            kind = "Classify" if single else "ClassifyBatch"
            n = 1 if single else cfg.batch_rows
            with self._lock:
                tally.offered[kind] += 1
            # Bounded in-flight: when the sidecar is this far behind, the request is not
            # sent (and counted), instead of queueing without bound in this process.
            if not self._in_flight.acquire(blocking=False):
                with self._lock:
                    tally.shed_in_flight[kind] += 1
                continue
            if not self._take_budget():
                self._in_flight.release()
                break
            k0 = traffic.take(n)
            req = traffic.classify(k0) if single else traffic.classify_batch(k0, n)
            with self._lock:
                tally.sent[kind] += 1
            t0 = time.perf_counter()
            try:
                fut = methods[kind].future(req, timeout=cfg.rpc_timeout)
            except Exception as exc:  # a client-side failure before anything was sent
                with self._lock:
                    tally.record(kind, "CLIENT_ERROR", 0.0, repr(exc))
                    tally.rows_refused += n
                self._in_flight.release()
                continue
            fut.add_done_callback(
                lambda f, kind=kind, k0=k0, n=n, t0=t0: self._on_done(kind, k0, n, t0, f)
            )

    # -- delayed labels ----------------------------------------------------------------------
    def _due_labels(self) -> list[tuple[np.ndarray, bool]]:
        """Ids whose label delay has passed, up to about ``label_batch`` of them, as one
        request's worth per id form: ``[(ids, packed), ...]``, empty when none are due."""
        now = time.monotonic()
        parts: dict[bool, list[np.ndarray]] = {False: [], True: []}
        count = 0
        with self._lock:
            while self._pending and self._pending[0][0] <= now and count < self.cfg.label_batch:
                _, k0, n, packed = self._pending.popleft()
                self._pending_ids -= n
                ks = Traffic.labelled(k0, n, self.cfg.label_fraction)
                parts[packed].append(ks)
                count += len(ks)
        return [(np.concatenate(p), form) for form, p in parts.items() if p]

    def _label(self) -> None:
        cfg = self.cfg
        with channel(self.target) as ch:
            stub = pb_grpc.MonitorStub(ch)
            while True:
                due = [(ks, packed) for ks, packed in self._due_labels() if len(ks)]
                if not due:
                    if self._load_done.is_set():
                        break
                    time.sleep(0.02)
                    continue
                for i, (ks, packed) in enumerate(due):
                    if not self._take_budget():
                        with self._lock:
                            self.tally.labels_unsent_at_end += sum(len(k) for k, _ in due[i:])
                        self._load_done.wait()
                        break
                    req = self.traffic.label_request(ks, packed)
                    t0 = time.perf_counter()
                    try:
                        resp = stub.SubmitLabels(req, timeout=cfg.rpc_timeout)
                        code, detail = "OK", ""
                    except grpc.RpcError as exc:
                        resp, code, detail = None, exc.code().name, str(exc.details())
                    dt = time.perf_counter() - t0
                    with self._lock:
                        self.tally.record("SubmitLabels", code, dt, detail)
                        self.tally.labels_done(len(ks), resp)
                else:
                    continue
                break  # the request budget ran out
        # Labels still waiting for their delay when the load ended are not sent: counted.
        with self._lock:
            for _, k0, n, _ in self._pending:
                self.tally.labels_unsent_at_end += len(Traffic.labelled(k0, n, cfg.label_fraction))
            self._pending.clear()
            self._pending_ids = 0

    # -- the run ---------------------------------------------------------------------------
    def wait_drained(self, stub: pb_grpc.MonitorStub, base: Numbers) -> tuple[Numbers, bool, float]:
        """Poll GetStatus until the pipeline has taken every row it will ever see.

        Done when nothing is queued and processed + sampled out has reached the rows the
        client saw accepted (plus any whose fate is unknown) and held still for 0.3 s.
        """
        lo, hi = self.tally.rows_ok, self.tally.rows_ok + self.tally.rows_unknown
        t0 = time.monotonic()
        last, since = None, t0
        while True:
            snap = status_numbers(stub.GetStatus(pb.GetStatusRequest(), timeout=10))
            d = numbers_delta(snap, base)["pipeline"]
            total = d["processed_rows"] + d["sampled_out_rows"]
            now = time.monotonic()
            if total != last:
                last, since = total, now
            if snap["pipeline"]["queued"] == 0 and lo <= total <= hi and now - since >= 0.3:
                return snap, True, now - t0
            if now - t0 > self.cfg.drain_timeout:
                return snap, False, now - t0
            time.sleep(0.1)

    def run(self) -> dict[str, Any]:
        """Send the load, wait for the sidecar to drain, and return the results."""
        cfg, timeline = self.cfg, self.timeline
        with contextlib.ExitStack() as stack:
            stub = pb_grpc.MonitorStub(stack.enter_context(channel(self.target)))
            # One channel (one HTTP/2 connection) per dispatcher, closed only after every
            # call on it has finished: closing earlier would cancel calls the sidecar may
            # already have counted, and the accounting could no longer be exact.
            chans = [stack.enter_context(channel(self.target)) for _ in range(cfg.threads)]
            stack.callback(self._stop_sampler.set)  # runs before the channels close
            base = status_numbers(stub.GetStatus(pb.GetStatusRequest(), timeout=10))
            base_metrics = scrape_metrics(self.metrics_url)
            t_start = time.monotonic()
            timeline.samples.append(timeline.sample(stub, t_start, self._rows_ok))
            sampler = threading.Thread(
                target=timeline.follow,
                args=(self.target, t_start, self._stop_sampler, self._rows_ok),
                daemon=True,
            )
            labeller = threading.Thread(target=self._label, name="loadgen-labels")
            deadline = t_start + cfg.duration
            dispatchers = [
                threading.Thread(
                    target=self._dispatch, args=(i, deadline, chans[i]), name=f"loadgen-{i}"
                )
                for i in range(cfg.threads)
            ]
            client_cpu0 = time.process_time()
            try:
                sampler.start()
                labeller.start()
                for t in dispatchers:
                    t.start()
                for t in dispatchers:
                    t.join()
                load_wall = time.monotonic() - t_start
                # Wait for every outstanding call: holding all the permits means none is left.
                got = 0
                wait_until = time.monotonic() + cfg.rpc_timeout + 10
                while got < cfg.max_in_flight and time.monotonic() < wait_until:
                    if self._in_flight.acquire(timeout=0.5):
                        got += 1
                in_flight_left = cfg.max_in_flight - got
            finally:
                # Also on Ctrl-C or an error: no thread of ours outlives the run.
                self._stop.set()
                self._load_done.set()
                for t in dispatchers:
                    if t.is_alive():
                        t.join()
                if labeller.is_alive():
                    labeller.join()
            end_load = time.monotonic() - t_start
            _, drained, drain_s = self.wait_drained(stub, base)
            end = status_numbers(stub.GetStatus(pb.GetStatusRequest(), timeout=10))
            end_metrics = scrape_metrics(self.metrics_url)
            self._stop_sampler.set()
            sampler.join(5)
            timeline.samples.append(timeline.sample(stub, t_start, self._rows_ok))
            client_cpu = time.process_time() - client_cpu0
        accounting = account(
            self.tally, base, end, base_metrics, end_metrics,
            with_metrics=self.metrics_url is not None, drained=drained, drain_s=drain_s,
            in_flight_left=in_flight_left,
        )  # fmt: skip
        return self._result(
            base, end, base_metrics, end_metrics, accounting, load_wall, end_load, client_cpu
        )

    # -- results ---------------------------------------------------------------------------
    def _result(
        self,
        base: Numbers,
        end: Numbers,
        base_metrics: Samples,
        end_metrics: Samples,
        accounting: dict[str, Any],
        load_wall: float,
        end_load: float,
        client_cpu: float,
    ) -> dict[str, Any]:
        cfg, t = self.cfg, self.tally
        rpcs = t.rpc_summary()
        calls = sum(r["calls"] for r in rpcs.values())
        errors = sum(r["calls"] - r["codes"].get("OK", 0) for r in rpcs.values())
        offered = sum(t.offered.values())
        offered_rows = t.offered["Classify"] + t.offered["ClassifyBatch"] * cfg.batch_rows
        client = {
            "target_rows_per_s": cfg.rate,
            "target_requests_per_s": cfg.request_rate,
            "offered_requests": offered,
            "offered_rows": offered_rows,
            "sent_requests": dict(t.sent),
            "shed_in_flight_limit": dict(t.shed_in_flight),
            "shed_generator_behind": t.shed_behind,
            "budget_exhausted": t.budget_exhausted,
            "load_seconds": round(load_wall, 3),
            "achieved_rows_per_s": t.rows_ok / load_wall if load_wall else 0.0,
            "client_cpu_seconds": round(client_cpu, 2),
            # This process's own peak: the generator must not grow without bound either.
            "client_peak_rss_mib": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
            ),
            "rpc_calls": calls,
            "rpc_errors": errors,
            "error_rate": errors / calls if calls else 0.0,
        }
        return {
            "config": asdict(cfg),
            "target": self.target,
            "client": client,
            "rpcs": rpcs,
            "first_errors": t.first_error,
            "rss": self.timeline.rss_summary(end_load),
            "accounting": accounting,
            "status_start": base,
            "status_end": end,
            "status_delta": numbers_delta(end, base),
            "metrics_delta": metrics_delta(end_metrics, base_metrics),
            "timeline": self.timeline.samples,
        }


def measure_sustainable(
    target: str, traffic: Traffic, cfg: LoadConfig, seconds: float = 5.0, warmup: float = 1.0
) -> float:
    """Closed loop: ``cfg.threads`` clients send the same mix back to back; rows/s accepted.

    What the sidecar sustains on this machine with this mix; the open-loop rate is then a
    multiple of it. Labels are not sent here (they cost the sidecar little).
    """
    check_loopback_target(target)
    rows = [0]
    lock = threading.Lock()
    measuring = threading.Event()
    stop = time.monotonic() + warmup + seconds

    def client(i: int) -> None:
        rng = np.random.default_rng([cfg.seed, 1000 + i])
        with channel(target) as ch:
            stub = pb_grpc.MonitorStub(ch)
            while time.monotonic() < stop:
                single = rng.random() < cfg.classify_share
                n = 1 if single else cfg.batch_rows
                k0 = traffic.take(n)
                try:
                    if single:
                        stub.Classify(traffic.classify(k0), timeout=cfg.rpc_timeout)
                    else:
                        stub.ClassifyBatch(traffic.classify_batch(k0, n), timeout=cfg.rpc_timeout)
                except grpc.RpcError:
                    continue
                if measuring.is_set():
                    with lock:
                        rows[0] += n

    ts = [threading.Thread(target=client, args=(i,)) for i in range(cfg.threads)]
    for t in ts:
        t.start()
    time.sleep(warmup)
    measuring.set()
    t0 = time.monotonic()
    for t in ts:
        t.join()
    return rows[0] / (time.monotonic() - t0)


def run_load(
    target: str,
    cfg: LoadConfig,
    *,
    pid: int | None = None,
    metrics_url: str | None = None,
    state_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Open-loop load against a running sidecar on loopback; the results as a dict.

    ``pid`` (the sidecar's, for its RSS from /proc), ``metrics_url`` (its /metrics, for the
    Prometheus side of the accounting) and ``state_dir`` (its durable store, whose size is
    sampled) are optional; without them those parts of the results are left out.
    """
    traffic = Traffic.for_sidecar(check_loopback_target(target), cfg.seed)
    run = LoadRun(
        target, cfg, traffic, pid=pid, metrics_url=metrics_url, state_dir=state_dir, log=log
    )
    return run.run()
