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
import contextlib
import functools
import ipaddress
import json
import math
import os
import platform
import resource
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

# docs/benchmarks.md, "Serving" (2026-11-24, 2 EPYC cores, sidecar pinned to one core):
# ClassifyBatch of 1,024 rows at d=384 with recording on sustained 286,540 embeddings/s.
# That run predates the detection engine (on by default now, ~12% more server CPU at d=384,
# "Detection overhead"), so twice this figure overloads today's sidecar by more than 2x.
SUSTAINABLE_ROWS_PER_S = 286_540
DEFAULT_RATE = 2 * SUSTAINABLE_ROWS_PER_S
DEFAULT_DIM = 384  # the serving figure above is d=384 (all-MiniLM-L6-v2's dimension)
DEFAULT_BATCH_ROWS = 1024  # as the serving benchmark, so the rate above applies
WORLD_SEED = 11
TRAIN_ROWS = 6000  # enough held-out rows to calibrate the default window of 256
POOL_ROWS = 8192  # distinct embeddings the traffic cycles through
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
MiB = 1024 * 1024
CLASSIFY_KINDS = ("Classify", "ClassifyBatch")


# -- loopback only --------------------------------------------------------------------------
def loopback_host(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (brackets allowed)."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_loopback_target(target: str) -> str:
    """Return ``target`` ("host:port") if it is on loopback; raise ValueError otherwise.

    >>> check_loopback_target("127.0.0.1:50051")
    '127.0.0.1:50051'
    >>> check_loopback_target("[::1]:50051")
    '[::1]:50051'
    >>> check_loopback_target("10.0.0.7:50051")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: refusing to send load to 10.0.0.7:50051: the load generator only targets ...
    """
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"target {target!r} is not host:port")
    if not loopback_host(host):
        raise ValueError(
            f"refusing to send load to {target}: the load generator only targets loopback "
            "(localhost, 127.0.0.0/8, ::1)"
        )
    return target


def check_loopback_url(url: str) -> str:
    """Return ``url`` if its host is loopback (the metrics scrape obeys the same rule)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if not loopback_host(host):
        raise ValueError(f"refusing to scrape {url}: loopback only")
    return url


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


def read_rss(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB; VmHWM is the kernel's own peak, between samples too."""
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            vals[key] = int(value.split()[0]) / 1024  # kB
    return vals["VmRSS"], vals["VmHWM"]


def dir_mib(path: Path) -> float:
    """Bytes of the files under ``path``, in MiB (0 while it does not exist)."""
    total = 0
    for f in path.rglob("*"):
        with contextlib.suppress(OSError):  # a file may vanish between listing and stat
            if f.is_file():
                total += f.stat().st_size
    return total / MiB


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def slope_mib_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute.

    >>> slope_mib_per_min([(0, 10.0), (60, 11.0), (120, 12.0)])
    1.0
    """
    if len(points) < 3:
        return float("nan")
    t, m = np.asarray(points, dtype=np.float64).T
    return round(float(np.polyfit(t, m, 1)[0]) * 60, 6)


# -- the sidecar's own view ------------------------------------------------------------------
_NUMERIC = frozenset({1, 2, 3, 4, 5, 6})  # FieldDescriptor.CPPTYPE_INT32 .. CPPTYPE_FLOAT


def status_numbers(msg: pb.GetStatusResponse) -> dict[str, dict[str, float]]:
    """Every numeric scalar of every status section, found through the descriptor.

    Read generically so that sections and fields added to GetStatusResponse later (a durable
    store's errors, say) appear in the results without a change here.
    """
    out: dict[str, dict[str, float]] = {}
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


def numbers_delta(
    end: dict[str, dict[str, float]], start: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """end - start, field by field (a field missing at the start counts from 0)."""
    return {
        sec: {k: v - start.get(sec, {}).get(k, 0) for k, v in fields.items()}
        for sec, fields in end.items()
    }


def scrape(url: str, timeout: float = 5.0) -> dict[str, float]:
    """The sidecar's /metrics as {'name{label="v",...}': value}, for the series we compare."""
    keep = ("silentwatch_pipeline_", "silentwatch_requests", "silentwatch_labels_")
    keep += ("silentwatch_prediction_store_", "process_resident_memory_bytes")
    with urllib.request.urlopen(url, timeout=timeout) as r:  # loopback, checked by callers
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith(keep) and not s.name.endswith("_created"):
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


@functools.cache
def serve_supports(flag: str) -> bool:
    """Whether this checkout's ``silentwatch serve --help`` lists ``flag``."""
    res = subprocess.run(
        [sys.executable, "-m", "silentwatch", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return flag in res.stdout


@dataclass
class SidecarProcess:
    """A ``silentwatch serve`` child process on loopback, ports picked by the kernel."""

    proc: subprocess.Popen
    target: str
    metrics_url: str
    stderr_path: Path
    tmp: tempfile.TemporaryDirectory
    argv: list[str]
    state_dir: Path | None = None  # the temporary --state-dir passed, if any
    _stdout_tail: deque = field(default_factory=lambda: deque(maxlen=50))

    @classmethod
    def start(
        cls,
        bundle: Path,
        serve_args: list[str] | None = None,
        *,
        pin_cpu: int | None = None,
        timeout: float = 120.0,
    ) -> SidecarProcess:
        """Start it and wait for its JSON "serving" line.

        ``serve_args`` come last so they override the defaults here. If this checkout's
        ``serve`` has ``--state-dir`` and none was given, a temporary one is passed.
        """
        tmp = tempfile.TemporaryDirectory(prefix="loadgen-")
        extra = list(serve_args or [])
        state_dir = None
        if not any(a.split("=", 1)[0] == "--state-dir" for a in extra) and serve_supports(
            "--state-dir"
        ):
            state_dir = Path(tmp.name) / "state"
            extra += ["--state-dir", str(state_dir)]
        pin = (
            ["taskset", "-c", str(pin_cpu)]
            if pin_cpu is not None and shutil.which("taskset")
            else []
        )
        argv = [
            *pin, sys.executable, "-m", "silentwatch", "serve", "--bundle", str(bundle),
            "--host", "127.0.0.1", "--port", "0",
            "--metrics-host", "127.0.0.1", "--metrics-port", "0",
            # Room for 1,024-row batches at d=1024 (4 MiB) and larger label batches.
            "--max-message-bytes", str(64 * MiB), "--max-batch-rows", "16384",
            "--log-level", "WARNING", *extra,
        ]  # fmt: skip
        stderr_path = Path(tmp.name) / "sidecar.stderr"
        # stderr to a file, never a pipe nobody reads: a full pipe would block the sidecar.
        with stderr_path.open("w") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
        line_box: list[str] = []
        reader = threading.Thread(target=lambda: line_box.append(proc.stdout.readline()))
        reader.start()
        reader.join(timeout)
        line = line_box[0] if line_box else ""
        if not line:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            raise RuntimeError(
                f"the sidecar did not start (exit {proc.returncode}): "
                + stderr_path.read_text()[-2000:]
            )
        event = json.loads(line)
        self = cls(
            proc=proc,
            target=check_loopback_target(event["grpc"]),
            metrics_url=check_loopback_url(event["metrics"]),
            stderr_path=stderr_path,
            tmp=tmp,
            argv=argv,
            state_dir=state_dir,
        )
        # Keep reading stdout so that the sidecar can never block on a full pipe.
        threading.Thread(target=self._drain_stdout, daemon=True).start()
        return self

    def _drain_stdout(self) -> None:
        for line in self.proc.stdout:
            self._stdout_tail.append(line)

    @property
    def pid(self) -> int:
        """The sidecar's own pid (taskset execs, so it keeps the child's)."""
        return self.proc.pid

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful drain), then the exit code; SIGKILL only after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def stderr_tail(self, chars: int = 2000) -> str:
        try:
            return self.stderr_path.read_text()[-chars:]
        except OSError:
            return ""

    def state_dir_mib(self) -> float | None:
        """Disk used by the temporary state directory (a durable store's file, snapshots)."""
        if self.state_dir is None or not self.state_dir.exists():
            return None
        return round(dir_mib(self.state_dir), 1)

    def cleanup(self) -> None:
        self.stop()
        self.tmp.cleanup()


def build_bundle(out: Path, dim: int = DEFAULT_DIM, rows: int = TRAIN_ROWS) -> Path:
    """A bundle on the demo's synthetic embedding world, detectors calibrated (~10-20 s)."""
    from silentwatch.monitor.bundle import EmbedderSpec
    from silentwatch.monitor.simulate.world import SyntheticWorld
    from silentwatch.monitor.training import train_bundle

    x, y = SyntheticWorld(dim=dim, seed=WORLD_SEED).sample(rows)
    train_bundle(x, y, out, embedder=EmbedderSpec(name="loadgen/world", version="v1"))
    return out


# -- the load --------------------------------------------------------------------------------
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

    @property
    def request_rate(self) -> float:
        """Classify + ClassifyBatch requests per second that make ``rate`` rows per second."""
        s = self.classify_share
        return self.rate / (s + (1 - s) * self.batch_rows)


class Traffic:
    """Request builders over a fixed pool of embeddings; every request id is unique.

    Ids are ``<run>-<k>`` with k from one counter, so a batch's ids are the range
    k0..k0+n-1 and the client can remember what to label as (time, k0, n): a few bytes
    per request, not per row. Row k's embedding and label are pool row ``k % POOL_ROWS``.
    """

    def __init__(self, dim: int, embedder_version: str, seed: int = 0) -> None:
        from silentwatch.monitor.simulate.world import SyntheticWorld

        # Rows after the ones a bundle built here was trained on: clean, unseen traffic.
        x, y = SyntheticWorld(dim=dim, seed=WORLD_SEED).sample(TRAIN_ROWS + POOL_ROWS)
        x, y = x[TRAIN_ROWS:], y[TRAIN_ROWS:]
        self.dim = dim
        self.row_bytes = dim * 4
        # Twice over, so that any run of up to POOL_ROWS rows is one contiguous slice.
        self.pool = np.concatenate([x, x]).astype("<f4").tobytes()
        self.labels = y.astype(bool)
        self.embedder_version = embedder_version
        self.run = f"lg{secrets.token_hex(3)}{seed:x}"
        self._next = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> int:
        """Reserve n consecutive ids; returns the first k."""
        with self._lock:
            k0 = self._next
            self._next += n
        return k0

    def ids(self, k0: int, n: int) -> list[str]:
        run = self.run
        return [f"{run}-{k}" for k in range(k0, k0 + n)]

    def rows(self, k0: int, n: int) -> bytes:
        off = (k0 % POOL_ROWS) * self.row_bytes
        return self.pool[off : off + n * self.row_bytes]

    def classify(self, k0: int) -> pb.ClassifyRequest:
        return pb.ClassifyRequest(
            request_id=f"{self.run}-{k0}",
            embedding=pb.Embedding(f32le=self.rows(k0, 1)),
            embedder_version=self.embedder_version,
        )

    def classify_batch(self, k0: int, n: int) -> pb.ClassifyBatchRequest:
        return pb.ClassifyBatchRequest(
            request_ids=self.ids(k0, n),
            embeddings=pb.EmbeddingMatrix(rows=n, dim=self.dim, f32le=self.rows(k0, n)),
            embedder_version=self.embedder_version,
        )

    @staticmethod
    def labelled(k0: int, n: int, fraction: float) -> np.ndarray:
        """Which of ids k0..k0+n-1 get a label: a fixed hash of k, so any subset is fair."""
        ks = np.arange(k0, k0 + n, dtype=np.uint64)
        h = (ks * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
        return ks[h < np.uint64(int(fraction * 2**32))]

    def label_request(self, ks: np.ndarray) -> pb.SubmitLabelsRequest:
        run, y = self.run, self.labels
        return pb.SubmitLabelsRequest(
            labels=[
                pb.Label(request_id=f"{run}-{k}", unsafe=bool(y[k % POOL_ROWS]))
                for k in ks.tolist()
            ]
        )


def channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(
        target,
        options=[
            ("grpc.max_send_message_length", 64 * MiB),
            ("grpc.max_receive_message_length", 64 * MiB),
        ],
    )


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
        self.state_dir = state_dir  # sampled too: a durable store must not grow without bound
        self.metrics_url = check_loopback_url(metrics_url) if metrics_url else None
        self.cfg = cfg
        self.traffic = traffic
        self.pid = pid
        self.log = log
        self._lock = threading.Lock()
        self.latency = {k: LatencyHistogram() for k in (*CLASSIFY_KINDS, "SubmitLabels")}
        self.codes: dict[str, dict[str, int]] = {k: {} for k in self.latency}
        self.first_error: dict[str, str] = {}
        self.rows_ok = 0
        self.rows_refused = 0  # rows of calls refused outright (nothing recorded)
        self.rows_unknown = 0  # rows of calls whose fate is unknown (deadline, disconnect)
        self.offered = dict.fromkeys(CLASSIFY_KINDS, 0)
        self.sent = dict.fromkeys(CLASSIFY_KINDS, 0)
        self.shed_in_flight = dict.fromkeys(CLASSIFY_KINDS, 0)
        self.shed_behind = 0  # scheduled requests skipped because a dispatcher fell behind
        self.requests_total = 0  # every RPC counted against max_requests (not GetStatus)
        self.budget_exhausted = False
        self.labels_sent = 0
        self.label_outcomes = dict.fromkeys(("received", *LABEL_OUTCOMES), 0)
        self.labels_failed = 0  # in SubmitLabels calls that failed
        self.labels_not_queued = 0  # pending-label cap reached: never sent, counted
        self.labels_unsent_at_end = 0  # not yet due when the run ended
        self._pending: deque[tuple[float, int, int]] = deque()
        self._pending_ids = 0
        self._in_flight = threading.BoundedSemaphore(cfg.max_in_flight)
        self._stop = threading.Event()
        self._load_done = threading.Event()
        self._stop_sampler = threading.Event()
        self.samples: list[dict[str, float]] = []

    # -- bookkeeping ----------------------------------------------------------------------
    def _take_budget(self) -> bool:
        with self._lock:
            if self.requests_total >= self.cfg.max_requests:
                self.budget_exhausted = True
                self._stop.set()
                return False
            self.requests_total += 1
            return True

    def _record(self, kind: str, code: str, seconds: float, detail: str = "") -> None:
        # Caller holds self._lock.
        if code == "OK":
            self.latency[kind].add(seconds)
        c = self.codes[kind]
        c[code] = c.get(code, 0) + 1
        if code != "OK" and f"{kind} {code}" not in self.first_error:
            self.first_error[f"{kind} {code}"] = detail[:300]

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
            self._record(kind, code, dt, detail)
            if code == "OK":
                self.rows_ok += n
                if self.cfg.label_fraction > 0:
                    if self._pending_ids + n <= self.cfg.max_pending_labels:
                        self._pending.append((time.monotonic() + self.cfg.label_delay, k0, n))
                        self._pending_ids += n
                    else:
                        self.labels_not_queued += len(
                            Traffic.labelled(k0, n, self.cfg.label_fraction)
                        )
            elif code in DEFINITE_REFUSALS:
                self.rows_refused += n
            else:
                self.rows_unknown += n
        self._in_flight.release()

    def _dispatch(self, index: int, deadline: float, ch: grpc.Channel) -> None:
        """One open-loop sender; ``ch`` outlives it so that its last calls can finish."""
        cfg, traffic = self.cfg, self.traffic
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
                    self.shed_behind += missed
                next_t += missed * interval
            next_t += interval
            single = next(kinds, None)
            if single is None:
                kinds = iter((rng.random(4096) < cfg.classify_share).tolist())
                single = next(kinds)
            kind = "Classify" if single else "ClassifyBatch"
            n = 1 if single else cfg.batch_rows
            with self._lock:
                self.offered[kind] += 1
            # Bounded in-flight: when the sidecar is this far behind, the request is not
            # sent (and counted), instead of queueing without bound in this process.
            if not self._in_flight.acquire(blocking=False):
                with self._lock:
                    self.shed_in_flight[kind] += 1
                continue
            if not self._take_budget():
                self._in_flight.release()
                break
            k0 = traffic.take(n)
            req = traffic.classify(k0) if single else traffic.classify_batch(k0, n)
            with self._lock:
                self.sent[kind] += 1
            t0 = time.perf_counter()
            try:
                fut = methods[kind].future(req, timeout=cfg.rpc_timeout)
            except Exception as exc:  # a client-side failure before anything was sent
                with self._lock:
                    self._record(kind, "CLIENT_ERROR", 0.0, repr(exc))
                    self.rows_refused += n
                self._in_flight.release()
                continue
            fut.add_done_callback(
                lambda f, kind=kind, k0=k0, n=n, t0=t0: self._on_done(kind, k0, n, t0, f)
            )

    # -- delayed labels ----------------------------------------------------------------------
    def _due_labels(self) -> np.ndarray | None:
        """Ids whose label delay has passed, up to about ``label_batch`` of them."""
        now = time.monotonic()
        parts: list[np.ndarray] = []
        count = 0
        with self._lock:
            while self._pending and self._pending[0][0] <= now and count < self.cfg.label_batch:
                _, k0, n = self._pending.popleft()
                self._pending_ids -= n
                ks = Traffic.labelled(k0, n, self.cfg.label_fraction)
                parts.append(ks)
                count += len(ks)
        return np.concatenate(parts) if parts else None

    def _label(self) -> None:
        cfg = self.cfg
        with channel(self.target) as ch:
            stub = pb_grpc.MonitorStub(ch)
            while True:
                ks = self._due_labels()
                if ks is None or not len(ks):
                    if self._load_done.is_set():
                        break
                    time.sleep(0.02)
                    continue
                if not self._take_budget():
                    with self._lock:
                        self.labels_unsent_at_end += len(ks)
                    self._load_done.wait()
                    break
                req = self.traffic.label_request(ks)
                t0 = time.perf_counter()
                try:
                    resp = stub.SubmitLabels(req, timeout=cfg.rpc_timeout)
                    code, detail = "OK", ""
                except grpc.RpcError as exc:
                    resp, code, detail = None, exc.code().name, str(exc.details())
                dt = time.perf_counter() - t0
                with self._lock:
                    self._record("SubmitLabels", code, dt, detail)
                    if resp is not None:
                        self.labels_sent += len(ks)
                        for k in self.label_outcomes:
                            self.label_outcomes[k] += getattr(resp, k)
                    else:  # the sidecar may or may not have counted them
                        self.labels_failed += len(ks)
        # Labels still waiting for their delay when the load ended are not sent: counted.
        with self._lock:
            for _, k0, n in self._pending:
                self.labels_unsent_at_end += len(Traffic.labelled(k0, n, cfg.label_fraction))
            self._pending.clear()
            self._pending_ids = 0

    # -- sampling ------------------------------------------------------------------------------
    def _sample(self, stub: pb_grpc.MonitorStub, t_start: float) -> dict[str, float]:
        s: dict[str, float] = {"t": round(time.monotonic() - t_start, 3)}
        if self.pid is not None:
            with contextlib.suppress(OSError, KeyError):
                s["rss_mib"], s["hwm_mib"] = read_rss(self.pid)
                s["cpu_s"] = cpu_seconds(self.pid)
        elif self.metrics_url:
            with contextlib.suppress(OSError, ValueError):
                rss = scrape(self.metrics_url).get("process_resident_memory_bytes")
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
        with self._lock:
            s["client_rows_ok"] = self.rows_ok
        return s

    def _sampler(self, t_start: float) -> None:
        with channel(self.target) as ch:
            stub = pb_grpc.MonitorStub(ch)
            while not self._stop_sampler.wait(1.0):
                s = self._sample(stub, t_start)
                self.samples.append(s)
                if len(self.samples) % 10 == 0:  # a pulse every ~10 s on long soaks
                    self.log(
                        f"  t={s['t']:.0f}s rows ok {s['client_rows_ok']:,} sampled out "
                        f"{s.get('sampled_out_rows', 0):,} RSS {s.get('rss_mib', 0):.0f} MiB"
                    )

    # -- the run ---------------------------------------------------------------------------
    def wait_drained(self, stub: pb_grpc.MonitorStub, base: dict) -> tuple[dict, bool, float]:
        """Poll GetStatus until the pipeline has taken every row it will ever see.

        Done when nothing is queued and processed + sampled out has reached the rows the
        client saw accepted (plus any whose fate is unknown) and held still for 0.3 s.
        """
        lo, hi = self.rows_ok, self.rows_ok + self.rows_unknown
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
        cfg = self.cfg
        with contextlib.ExitStack() as stack:
            stub = pb_grpc.MonitorStub(stack.enter_context(channel(self.target)))
            # One channel (one HTTP/2 connection) per dispatcher, closed only after every
            # call on it has finished: closing earlier would cancel calls the sidecar may
            # already have counted, and the accounting could no longer be exact.
            chans = [stack.enter_context(channel(self.target)) for _ in range(cfg.threads)]
            stack.callback(self._stop_sampler.set)  # runs before the channels close
            base = status_numbers(stub.GetStatus(pb.GetStatusRequest(), timeout=10))
            base_metrics = scrape(self.metrics_url) if self.metrics_url else {}
            t_start = time.monotonic()
            self.samples.append(self._sample(stub, t_start))
            sampler = threading.Thread(target=self._sampler, args=(t_start,), daemon=True)
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
            end_metrics = scrape(self.metrics_url) if self.metrics_url else {}
            self._stop_sampler.set()
            sampler.join(5)
            self.samples.append(self._sample(stub, t_start))
            client_cpu = time.process_time() - client_cpu0
        return self._result(
            base, end, base_metrics, end_metrics, load_wall, end_load, drained, drain_s,
            in_flight_left, client_cpu,
        )  # fmt: skip

    # -- results ---------------------------------------------------------------------------
    def _result(
        self,
        base: dict,
        end: dict,
        base_metrics: dict[str, float],
        end_metrics: dict[str, float],
        load_wall: float,
        end_load: float,
        drained: bool,
        drain_s: float,
        in_flight_left: int,
        client_cpu: float,
    ) -> dict[str, Any]:
        cfg = self.cfg
        delta = numbers_delta(end, base)
        pl, lab = delta["pipeline"], delta["labels"]
        accepted, sampled = int(pl["processed_rows"]), int(pl["sampled_out_rows"])
        # The one identity the issue asks for: every row the client saw accepted was either
        # folded into the statistics or sampled out and counted; exact unless some call's
        # fate is unknown (then the server's total must lie between the two bounds).
        rows_exact = self.rows_unknown == 0 and accepted + sampled == self.rows_ok
        rows_bounded = self.rows_ok <= accepted + sampled <= self.rows_ok + self.rows_unknown
        metric_keys = {
            "sampled_out_rows": "silentwatch_pipeline_sampled_out_rows_total",
            "processed_rows": "silentwatch_pipeline_processed_rows_total",
        }
        prom = {
            k: end_metrics[m] - base_metrics.get(m, 0.0)
            for k, m in metric_keys.items()
            if m in end_metrics
        }
        server_outcomes = sum(int(lab.get(k, 0)) for k in LABEL_OUTCOMES)
        client_outcomes = sum(self.label_outcomes[k] for k in LABEL_OUTCOMES)
        accounting = {
            "rows_sent_ok": self.rows_ok,
            "rows_refused": self.rows_refused,
            "rows_unknown_fate": self.rows_unknown,
            "accepted_processed_rows": accepted,
            "sampled_out_rows": sampled,
            "sampled_out_share": sampled / self.rows_ok if self.rows_ok else 0.0,
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
            "labels_sent": self.labels_sent,
            "labels_response_outcomes": dict(self.label_outcomes),
            "labels_status_delta": {k: int(v) for k, v in lab.items()},
            "labels_identity_response": self.labels_sent == client_outcomes
            and self.label_outcomes["received"] == self.labels_sent,
            # Exact when no SubmitLabels call failed; a failed call's labels may or may not
            # have been counted, so then the sidecar's count may exceed ours by that much.
            "labels_failed": self.labels_failed,
            "labels_identity_status": self.labels_sent
            <= int(lab.get("received", -1))
            <= self.labels_sent + self.labels_failed
            and server_outcomes == int(lab.get("received", -1)),
            "labels_not_queued": self.labels_not_queued,
            "labels_unsent_at_end": self.labels_unsent_at_end,
        }
        # "Processed" must mean folded: a sink that raised still counts its rows as processed,
        # so its error counter has to stay at zero for the identity to mean what it says.
        sink_errors = end_metrics.get("silentwatch_pipeline_sink_errors_total", 0.0)
        accounting["sink_errors"] = int(
            sink_errors - base_metrics.get("silentwatch_pipeline_sink_errors_total", 0.0)
        )
        # Store failures (a durable store's write errors, predictions it could not record)
        # are not part of the identities; reported so that a run with any is noticed.
        accounting["store_failures"] = {
            k: int(v)
            for k, v in delta.get("store", {}).items()
            if "error" in k or "not_recorded" in k
        }
        # The sidecar's own request counter must agree call for call with what we saw.
        server_ok = {
            k: int(end_metrics.get(f'silentwatch_requests_total{{code="OK",rpc="{k}"}}', 0))
            - int(base_metrics.get(f'silentwatch_requests_total{{code="OK",rpc="{k}"}}', 0))
            for k in self.latency
        }
        accounting["server_ok_requests"] = server_ok
        accounting["requests_match_server"] = server_ok == {
            k: self.codes[k].get("OK", 0) for k in self.latency
        }
        # Strict: a call whose fate is unknown means the identity cannot be proved exactly.
        accounting["ok"] = bool(
            rows_exact
            and (
                (accounting["prometheus_matches_status"] and accounting["requests_match_server"])
                or not self.metrics_url
            )
            and accounting["labels_identity_response"]
            and accounting["labels_identity_status"]
            and self.labels_failed == 0
            and accounting["sink_errors"] == 0
            and drained
            and in_flight_left == 0
        )
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
        calls = sum(r["calls"] for r in rpcs.values())
        errors = sum(r["calls"] - r["codes"].get("OK", 0) for r in rpcs.values())
        offered = sum(self.offered.values())
        offered_rows = self.offered["Classify"] + self.offered["ClassifyBatch"] * cfg.batch_rows
        client = {
            "target_rows_per_s": cfg.rate,
            "target_requests_per_s": cfg.request_rate,
            "offered_requests": offered,
            "offered_rows": offered_rows,
            "sent_requests": dict(self.sent),
            "shed_in_flight_limit": dict(self.shed_in_flight),
            "shed_generator_behind": self.shed_behind,
            "budget_exhausted": self.budget_exhausted,
            "load_seconds": round(load_wall, 3),
            "achieved_rows_per_s": self.rows_ok / load_wall if load_wall else 0.0,
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
            "first_errors": self.first_error,
            "rss": self.rss_summary(end_load),
            "accounting": accounting,
            "status_start": base,
            "status_end": end,
            "status_delta": delta,
            "metrics_delta": {
                k: v - base_metrics.get(k, 0.0)
                for k, v in end_metrics.items()
                if not k.startswith("process_")
            },
            "timeline": self.samples,
        }

    def rss_summary(self, end_load: float) -> dict[str, Any]:
        """Sidecar (and client) RSS: start, peak, final, and how the second half of the load
        moved (its least-squares slope and its band; on a short or noisy run the band says
        more than the slope)."""

        def series(key: str) -> dict[str, Any]:
            pts = [(s["t"], s[key]) for s in self.samples if key in s]
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

        out = series("rss_mib")
        if not out:
            return {}
        out["client"] = series("client_rss_mib")
        if self.state_dir is not None:
            out["state_dir"] = series("state_dir_mib")
        hwm = [s["hwm_mib"] for s in self.samples if "hwm_mib" in s]
        if hwm:
            out["kernel_peak_hwm_mib"] = round(max(hwm), 1)
        cpu = [(s["t"], s["cpu_s"]) for s in self.samples if "cpu_s" in s]
        if len(cpu) >= 2 and cpu[-1][0] > cpu[0][0]:
            out["server_cpu_share"] = round((cpu[-1][1] - cpu[0][1]) / (cpu[-1][0] - cpu[0][0]), 3)
        return out


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
    traffic = Traffic(*_identity(check_loopback_target(target)), cfg.seed)
    run = LoadRun(
        target, cfg, traffic, pid=pid, metrics_url=metrics_url, state_dir=state_dir, log=log
    )
    return run.run()


# -- reporting -----------------------------------------------------------------------------
def machine() -> str:
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    return (
        f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"grpcio {grpc.__version__}, numpy {np.__version__}"
    )


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
        "| RPC | calls | p50 ms | p99 ms | max ms | error rate | codes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for kind, s in r["rpcs"].items():
        lines.append(
            f"| {kind} | {s['calls']:,} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
            f"{s['max_ms']:.2f} | {s['error_rate']:.2%} | {s['codes']} |"
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
        "| rows accepted (OK responses) | processed | sampled out (share) | sum | exact |",
        "|---:|---:|---:|---:|---|",
        f"| {a['rows_sent_ok']:,} | {a['accepted_processed_rows']:,} | "
        f"{a['sampled_out_rows']:,} ({a['sampled_out_share']:.1%}) | "
        f"{a['accepted_processed_rows'] + a['sampled_out_rows']:,} | "
        f"{a['rows_identity_exact']} |",
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
    )
    try:
        if a.target:
            check_loopback_target(a.target)
        if a.metrics_url:
            check_loopback_url(a.metrics_url)
    except ValueError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    pin = not a.no_pin and (os.cpu_count() or 1) > 1 and not a.target
    if pin:
        os.sched_setaffinity(0, {1})  # as the serving benchmark: sidecar CPU 0, client CPU 1
    print(f"machine: {machine()}", flush=True)
    meta: dict[str, Any] = {"machine": machine(), "serve_args": serve_args, "pinned": pin}

    if a.target:
        if a.measure_sustainable:
            sus = measure_sustainable(
                a.target, _traffic_for(a.target, a.seed + 1), cfg, a.measure_seconds
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
                        sc.target, _traffic_for(sc.target, a.seed + 1), cfg, a.measure_seconds
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
        a.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
        print(f"wrote {a.out}")
    ok = result["accounting"]["ok"] and meta.get("sidecar_exit_code", 0) == 0
    return 0 if ok else 1


def _identity(target: str) -> tuple[int, str]:
    with channel(target) as ch:
        st = pb_grpc.MonitorStub(ch).GetStatus(pb.GetStatusRequest(), timeout=30)
    return st.embedding_dim, st.embedder.version


def _traffic_for(target: str, seed: int) -> Traffic:
    return Traffic(*_identity(target), seed)


if __name__ == "__main__":
    raise SystemExit(main())
