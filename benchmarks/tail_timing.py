"""Run ``silentwatch serve`` with a timestamp on every Classify call and every worker pass.

benchmarks/unary_tail.py starts its sidecars this way to find where a slow unary call
waited: each ``MonitorService.Classify`` call and each pass of the statistics worker
(``Pipeline._process``) is recorded as (start, wall seconds, thread CPU seconds) on
``time.perf_counter``, which is CLOCK_MONOTONIC on Linux and so shares its time base with
the client's. The events go to preallocated arrays (no allocation per call) and are written
as an ``.npz`` on SIGUSR1 and at exit.

    python benchmarks/tail_timing.py OUT.npz serve --bundle B ...   # the serve arguments

The wrappers cost two ``perf_counter`` and two ``thread_time`` calls per call (about
1 µs), against a Classify handler's ~80 µs.
"""

from __future__ import annotations

import atexit
import functools
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

# The newest events kept per kind: a 10,000-call run with its worker passes fits with room.
MAX_EVENTS = 1 << 20


class Events:
    """(start, wall s, thread CPU s) per call of one function, newest ``MAX_EVENTS`` kept."""

    def __init__(self, size: int = MAX_EVENTS) -> None:
        self.rows = np.zeros((size, 3), dtype=np.float64)
        self.n = 0
        self.lock = threading.Lock()

    def add(self, start: float, wall: float, cpu: float) -> None:
        with self.lock:
            self.rows[self.n % len(self.rows)] = (start, wall, cpu)
            self.n += 1

    def array(self) -> np.ndarray:
        """The events recorded, oldest first."""
        with self.lock:
            size = len(self.rows)
            if self.n <= size:
                return self.rows[: self.n].copy()
            k = self.n % size
            return np.concatenate([self.rows[k:], self.rows[:k]])


def recorded(fn: Callable[..., Any], events: Events) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            events.add(t0, time.perf_counter() - t0, time.thread_time() - c0)

    return wrapper


def install() -> dict[str, Events]:
    """Wrap the Classify handler and the worker's pass; returns their event logs."""
    from silentwatch.monitor.serving import pipeline, service

    logs = {"classify": Events(), "worker": Events()}
    service.MonitorService.Classify = recorded(service.MonitorService.Classify, logs["classify"])
    pipeline.Pipeline._process = recorded(pipeline.Pipeline._process, logs["worker"])
    return logs


def read(path: str) -> dict[str, np.ndarray]:
    """The events a sidecar last wrote: ``{"classify": (n, 3), "worker": (m, 3)}``."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    logs = install()

    def dump() -> None:
        arrays = {k: v.array() for k, v in logs.items()}
        with open(out, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)

    atexit.register(dump)
    signal.signal(signal.SIGUSR1, lambda *_: dump())
    from silentwatch.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
