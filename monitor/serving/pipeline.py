"""Everything after the response: a bounded queue and one background worker.

The request path only enqueues (``submit_*``); the worker drains whatever has
queued, concatenates it, and hands one vectorised batch to every sink. Sinks are
where statistics live (histograms now, drift detectors and calibration windows
later): adding one never touches the request path.

Backpressure: the queue holds at most ``max_queued_rows`` prediction rows. A batch
that does not fit is *sampled out* and its rows are counted
(``sampled_out_rows``): the only permitted loss, never silent. Label batches are
small and are never shed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


WORKER_THREAD_NAME = "sw-pipeline"


def name_os_thread(name: str) -> None:
    """Give the calling thread an OS-level name (Linux, at most 15 bytes).

    Python before 3.14 names threads only inside the interpreter; the kernel's name is
    what ``top -H``, ``ps -L`` and ``/proc/<pid>/task/*/comm`` show, so an operator (and
    the benchmarks' per-thread CPU accounting) can tell the worker from the gRPC threads.
    A no-op elsewhere or when ``prctl`` is unavailable.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # 15 = PR_SET_NAME
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class PredictionBatch:
    """Rows the sidecar scored (``source="classify"``) or was shown (``"observe"``)."""

    embeddings: np.ndarray  # (n, d) float32 as received
    norms: np.ndarray  # (n,) row norms
    scores: np.ndarray  # (n,) P(unsafe) of the default head
    source: str
    embedder_version: str
    received_at: float  # time.time()
    # Multi-head bundles: (n, heads) P(unsafe), column 0 == scores; None for one head.
    head_scores: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return int(self.scores.shape[0])


@dataclass(frozen=True)
class LabelBatch:
    """Delayed ground truth joined to the recorded scores."""

    scores: np.ndarray  # (k,) P(unsafe) recorded at prediction time
    labels: np.ndarray  # (k,) int8
    received_at: float
    last_seq: int = -1  # durable store: sequence number of the batch's last label
    # Multi-head bundles: (k,) int head index of each label, aligned with scores and
    # labels (each score is that head's); None: every label is for head 0.
    heads: np.ndarray | None = None


@dataclass(frozen=True)
class _Call:
    """A function to run on the worker thread, in order with the batches around it."""

    fn: Callable[[], object]
    done: Future


class Sink(Protocol):
    def on_predictions(self, batch: PredictionBatch) -> None: ...

    def on_labels(self, batch: LabelBatch) -> None: ...


# Queued batches are merged only up to this many rows. Merging amortises the per-batch work
# of small requests (unary Classify: one row each); copying large ones together only costs:
# a worker that fell behind once copied 32 queued 1,024-row batches (128 MB at d = 1,024)
# per pass, fell further behind, and shed a quarter of its rows at half a core's load
# (benchmarks/heads.py, docs/benchmarks.md "Many heads").
MERGE_MAX_ROWS = 1024


def concat_predictions(
    batches: list[PredictionBatch], max_rows: int = MERGE_MAX_ROWS
) -> list[PredictionBatch]:
    """Merge consecutive batches of the same source and embedder version, while the merged
    batch stays within ``max_rows`` rows; a batch that large already passes through as is.

    >>> import numpy as np
    >>> def b(n): return PredictionBatch(np.zeros((n, 2), np.float32), np.ones(n),
    ...                                  np.zeros(n), "classify", "v1", 0.0)
    >>> [x.rows for x in concat_predictions([b(1), b(1), b(3), b(2000), b(1)], max_rows=4)]
    [2, 3, 2000, 1]
    """
    out: list[PredictionBatch] = []
    group: list[PredictionBatch] = []
    group_rows = 0

    def flush() -> None:
        if len(group) == 1:
            out.append(group[0])
        elif group:
            g0 = group[0]
            out.append(
                PredictionBatch(
                    embeddings=np.concatenate([b.embeddings for b in group]),
                    norms=np.concatenate([b.norms for b in group]),
                    scores=np.concatenate([b.scores for b in group]),
                    source=g0.source,
                    embedder_version=g0.embedder_version,
                    received_at=group[-1].received_at,
                    head_scores=None
                    if g0.head_scores is None
                    else np.concatenate([b.head_scores for b in group]),
                )
            )
        group.clear()

    def key(b: PredictionBatch) -> tuple:
        # Batches scored by different bundles (a reload between them) never merge.
        heads = None if b.head_scores is None else b.head_scores.shape[1]
        return b.source, b.embedder_version, heads

    for b in batches:
        if group and (key(b) != key(group[0]) or group_rows + b.rows > max_rows):
            flush()
            group_rows = 0
        group.append(b)
        group_rows += b.rows
    flush()
    return out


# A worker woken by a trickle of small batches (unary Classify calls) waits this long for
# more before processing, unless this many rows are queued: one wake-up and one pass over
# the sinks per few milliseconds instead of one per call (each costs a GIL hand-off from
# the request threads and the sinks' per-batch overhead).
LINGER_SECONDS = 0.002
LINGER_ROWS = MERGE_MAX_ROWS


class Pipeline:
    def __init__(
        self,
        sinks: list[Sink],
        *,
        max_queued_rows: int = 32768,
        linger_seconds: float = LINGER_SECONDS,
    ) -> None:
        self.sinks = list(sinks)
        self.max_queued_rows = max_queued_rows
        self.linger_seconds = linger_seconds
        self._queue: deque[PredictionBatch | LabelBatch | _Call] = deque()
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # wakes the worker
        self._done = threading.Condition(lock)  # wakes wait_idle() and stop()
        self._queued_rows = 0
        self._busy = False
        self._lingering = False  # the worker is gathering small batches: no wake-up needed
        self._urgent = False  # a label batch or a call is queued: stop lingering
        self._stop = False
        self._thread: threading.Thread | None = None
        self.processed_rows = 0
        self.sampled_out_rows = 0
        self.sink_errors = 0
        # (interval seconds, task, next due on time.monotonic()): run on the worker thread,
        # so tasks may read sink state without locks; each runs once more at stop.
        self._periodic: list[list] = []

    def add_periodic(self, interval: float, task: Callable[[], object]) -> None:
        """Run ``task`` every ``interval`` seconds on the worker thread, and once at stop."""
        self._periodic.append([interval, task, time.monotonic() + interval])

    def _run_periodic(self, final: bool = False) -> None:
        now = time.monotonic()
        for entry in self._periodic:
            interval, task, due = entry
            if final or now >= due:
                entry[2] = now + interval
                try:
                    task()
                except Exception:
                    self.sink_errors += 1
                    log.exception("periodic task %s failed", getattr(task, "__name__", task))

    def _wait_timeout(self) -> float | None:
        if not self._periodic:
            return None
        return max(0.0, min(e[2] for e in self._periodic) - time.monotonic())

    # -- request path -------------------------------------------------------------
    def submit_predictions(self, batch: PredictionBatch) -> bool:
        """Enqueue without blocking; False (and counted) when the batch was sampled out."""
        with self._cond:
            if self._queued_rows + batch.rows > self.max_queued_rows:
                self.sampled_out_rows += batch.rows
                return False
            self._queue.append(batch)
            self._queued_rows += batch.rows
            if not self._lingering or self._queued_rows >= LINGER_ROWS:
                self._cond.notify()
        return True

    def run_on_worker(self, fn: Callable[[], object], timeout: float = 30.0) -> object:
        """Run ``fn`` on the worker thread after everything queued before it; return its
        result (or raise its exception). Runs inline when the worker is not running."""
        if self._thread is None:
            return fn()
        call = _Call(fn, Future())
        with self._cond:
            self._queue.append(call)
            self._urgent = True
            self._cond.notify()
        return call.done.result(timeout)

    def submit_labels(self, batch: LabelBatch) -> None:
        with self._cond:
            self._queue.append(batch)
            self._urgent = True
            self._cond.notify()

    # -- worker -------------------------------------------------------------------
    @property
    def queued_batches(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="silentwatch-pipeline", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        name_os_thread(WORKER_THREAD_NAME)
        while True:
            with self._cond:
                if not self._queue and not self._stop:
                    self._cond.wait(self._wait_timeout())
                if self._queue and self.linger_seconds > 0:
                    self._linger()
                if not self._queue and self._stop:
                    break
                items = list(self._queue)
                self._queue.clear()
                self._queued_rows = 0
                self._urgent = False
                self._busy = True
            try:
                self._process(items)
                self._run_periodic()
            finally:
                with self._cond:
                    self._busy = False
                    self._done.notify_all()
        self._run_periodic(final=True)

    def _linger(self) -> None:
        """With the lock held: wait up to ``linger_seconds`` for a full batch's worth of rows
        (submitters do not wake the worker meanwhile), unless something urgent is queued or
        the pipeline is stopping."""
        deadline = time.monotonic() + self.linger_seconds
        self._lingering = True
        try:
            while self._queued_rows < LINGER_ROWS and not (self._urgent or self._stop):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        finally:
            self._lingering = False

    def _process(self, items: list[PredictionBatch | LabelBatch | _Call]) -> None:
        # Keep order between predictions, labels and calls: process runs of each kind.
        run: list[PredictionBatch] = []
        for item in [*items, None]:
            if isinstance(item, PredictionBatch):
                run.append(item)
                continue
            for batch in concat_predictions(run):
                self._dispatch("on_predictions", batch)
                self.processed_rows += batch.rows
            run = []
            if isinstance(item, LabelBatch):
                self._dispatch("on_labels", item)
            elif isinstance(item, _Call):
                try:
                    item.done.set_result(item.fn())
                except Exception as exc:
                    item.done.set_exception(exc)

    def _dispatch(self, method: str, batch: PredictionBatch | LabelBatch) -> None:
        for sink in self.sinks:
            try:
                getattr(sink, method)(batch)
            except Exception:
                # A broken sink must not stop the others or the worker; it is counted.
                self.sink_errors += 1
                log.exception("sink %s failed in %s", type(sink).__name__, method)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until everything submitted so far has been processed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._done.wait(left)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Process what is queued, then stop the worker."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
            self._done.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
