"""Run ``silentwatch serve`` with each step of the ClassifyBatch path timed in place.

Timing a step alone, in an idle process, understates it under load: the served sidecar's
request threads share the core with the gRPC threads and the statistics worker, and the
cache with a client streaming 4 MB requests from the other core (docs/benchmarks.md,
"Where the time goes, under load"). This launcher wraps the named functions before the
sidecar starts, adds up each one's thread CPU time (``time.thread_time``, so time spent
descheduled does not count) and call count, and writes them as JSON when the sidecar exits
(SIGTERM: the sidecar drains and returns), every 200 ClassifyBatch calls and on SIGUSR1
(so a benchmark can take the totals before and after one phase and subtract).

    python benchmarks/split_timing.py OUT.json serve --bundle B ...   # the serve arguments

``benchmarks/serving.py --split`` starts its sidecars this way and prints, per mode, µs per
1,024-row batch of each step. The wrappers cost two ``thread_time`` calls per call
(about 0.5 µs), nothing against a batch's milliseconds.

Steps a version of the code lacks are skipped (``serving.py --before`` runs older trees).
"""

from __future__ import annotations

import atexit
import functools
import importlib
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

# (label, module, attribute path): the steps of MonitorService.ClassifyBatch and, inside the
# store's record, the passes that touch the per-id index and the journal.
STEPS: tuple[tuple[str, str, str], ...] = (
    ("ClassifyBatch (servicer, all)", "silentwatch.monitor.serving.service",
     "MonitorService.ClassifyBatch"),
    ("decode_matrix", "silentwatch.monitor.serving.service", "decode_matrix"),
    ("request_ids_of", "silentwatch.monitor.serving.service", "request_ids_of"),
    ("checked_norms", "silentwatch.monitor.serving.service", "checked_norms"),
    ("predict_proba", "silentwatch.monitor.scoring", "LinearScorer.predict_proba"),
    ("_record (store.record)", "silentwatch.monitor.serving.service", "MonitorService._record"),
    ("  store: pending lookup (one dict get per id)", "silentwatch.monitor.state.memory",
     "MemoryStore._lookup"),
    ("  store: ring write (evicted ids out, new ids in)", "silentwatch.monitor.state.memory",
     "_Ring.write"),
    ("  store: SQLite journal transaction", "silentwatch.monitor.state.sqlite",
     "SqliteStore._tx"),
    ("_enqueue (pipeline submit)", "silentwatch.monitor.serving.service",
     "MonitorService._enqueue"),
    ("batch_reply", "silentwatch.monitor.serving.service", "batch_reply"),
)  # fmt: skip
BATCH_STEP = STEPS[0][0]


class Totals:
    """Thread CPU seconds and calls per label, added to from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def add(self, label: str, seconds: float) -> int:
        with self.lock:
            self.cpu[label] = self.cpu.get(label, 0.0) + seconds
            self.calls[label] = n = self.calls.get(label, 0) + 1
        return n

    def as_json(self) -> dict[str, dict[str, float]]:
        with self.lock:
            return {k: {"cpu_s": v, "calls": self.calls[k]} for k, v in self.cpu.items()}


def timed(fn: Callable[..., Any], label: str, totals: Totals, dump: Callable[[], None]):
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            n = totals.add(label, time.thread_time() - t0)
            if label == BATCH_STEP and n % 200 == 0:
                dump()

    return wrapper


def install(totals: Totals, dump: Callable[[], None]) -> list[tuple[Any, str, Any]]:
    """Wrap every step this tree has; returns (owner, name, original) of each, so that a
    caller can put them back."""
    done = []
    for label, module, path in STEPS:
        owner: Any = importlib.import_module(module)
        *parents, name = path.split(".")
        try:
            for p in parents:
                owner = getattr(owner, p)
            fn = getattr(owner, name)
        except AttributeError:
            continue
        setattr(owner, name, timed(fn, label, totals, dump))
        done.append((owner, name, fn))
    return done


def read(path: str) -> dict[str, dict[str, float]]:
    """The totals a sidecar last wrote ({} before its first write)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def difference(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Per label, what was added between two reads.

    >>> difference({"a": {"cpu_s": 1.0, "calls": 2}}, {"a": {"cpu_s": 3.0, "calls": 5}})
    {'a': {'cpu_s': 2.0, 'calls': 3}}
    """
    zero = {"cpu_s": 0.0, "calls": 0}
    return {
        k: {f: v[f] - before.get(k, zero)[f] for f in ("cpu_s", "calls")} for k, v in after.items()
    }


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    totals = Totals()

    def dump() -> None:
        with open(out, "w") as f:
            json.dump(totals.as_json(), f)

    install(totals, dump)
    atexit.register(dump)
    signal.signal(signal.SIGUSR1, lambda *_: dump())
    from silentwatch.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
