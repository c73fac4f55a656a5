"""Where a slow unary Classify waits: client latency beside the server's own timestamps.

Issue 16's third target is a Classify p99 of at most 1 ms with everything on, in each of 3
runs. ``benchmarks/serving.py`` measures the p99 from the client only; this benchmark says
where the tail comes from. For each mode and round it starts a sidecar through
benchmarks/tail_timing.py (pinned to CPU 0; this client on CPU 1), lets it settle, sends
``--calls`` sequential Classify calls, and reads back a timestamp for every Classify
handler call and every pass of the statistics worker. Both sides use ``perf_counter``
(CLOCK_MONOTONIC), so the i-th timed call lines up with the i-th handler call, and a call
can be matched with the worker passes that ran while it was in flight. Per run:

* client p50 / p99 / p99.9, and the handler's own wall time p50 / p99 (from entering
  ``MonitorService.Classify`` to returning): what is left is gRPC, the thread hand-offs and
  waiting for the GIL or the CPU;
* the worker: passes per second, share of wall time busy, passes longer than
  ``--long-ms`` (window evaluations) per second;
* the slow calls (over ``--slow-ms``): how many overlapped a long worker pass, only short
  ones, or none, against the same shares for the calls that were not slow (the base rate:
  an association, not a proof of cause);
* ``steal``: the share of CPU time the hypervisor gave to other guests during the run
  (/proc/stat), where the machine reports it: the one reading of outside noise a
  virtual machine has (CPU pressure would mostly show this benchmark's own threads).

    python benchmarks/unary_tail.py                         # ~3 minutes, 3 rounds
    python benchmarks/unary_tail.py --modes "detection on (memory)" \
        "detection on, evaluations ≤ 0.2/s" --rounds 6     # what evaluations add
    python benchmarks/unary_tail.py --modes "everything on (sqlite + detection)" \
        --before HEAD~1 --rounds 6                         # a change, paired per round
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import tail_timing
from harness import (
    channel,
    git_describe,
    machine,
    pin_client,
    source_tree,
    table_header,
    table_row,
)
from serving import MODES, bench_bundle, start_server, unit

from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

# serving.py's modes, and detection with its window evaluations thinned to one per 5 s: the
# difference to "detection on (memory)" is what the evaluations add to the tail.
FEW_EVALUATIONS = "detection on, evaluations ≤ 0.2/s"
TAIL_MODES = {
    **MODES,
    FEW_EVALUATIONS: (True, [*MODES["detection on (memory)"][1],
                             "--max-window-evaluations-per-second", "0.2"]),
}  # fmt: skip
DEFAULT_MODES = ("recording off", "rec on, memory", "detection on (memory)", FEW_EVALUATIONS,
                 "everything on (sqlite + detection)")  # fmt: skip
WARMUP_CALLS = 200
REPO = Path(__file__).resolve().parent.parent


def cpu_ticks() -> tuple[int, int]:
    """(all, steal) jiffies of every CPU from /proc/stat; (0, 0) where it is unreadable."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(v[:8]), v[7] if len(v) > 7 else 0


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of CPU time the hypervisor gave to other guests between two readings.

    >>> steal_share((1000, 10), (1200, 30))
    0.1
    """
    total = after[0] - before[0]
    return (after[1] - before[1]) / total if total > 0 else float("nan")


def overlaps(
    starts: np.ndarray, ends: np.ndarray, pass_starts: np.ndarray, pass_ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each interval [start, end), the index range [lo, hi) of the passes that overlap
    it. Passes come from one worker thread, so they do not overlap each other and both
    their starts and their ends are sorted.

    >>> lo, hi = overlaps(np.array([0.0, 5.0]), np.array([2.0, 6.0]),
    ...                   np.array([1.0, 3.0]), np.array([1.5, 4.0]))
    >>> (hi - lo).tolist()
    [1, 0]
    """
    lo = np.searchsorted(pass_ends, starts, side="right")
    hi = np.searchsorted(pass_starts, ends, side="left")
    return lo, np.maximum(hi, lo)


def attribute(
    call_start: np.ndarray,
    call_seconds: np.ndarray,
    passes: np.ndarray,
    slow_s: float,
    long_s: float,
) -> dict[str, int]:
    """Slow and not slow calls, by what the worker did while each was in flight.

    ``passes``: (m, 3) worker events (start, wall s, CPU s) sorted by start. Each call
    counts once: ``long`` if a pass longer than ``long_s`` overlapped it, else ``short`` if
    any pass did, else ``none``; keys ``slow_*`` and ``fast_*``.

    >>> calls = np.array([0.0, 10.0, 20.0]), np.array([3.0, 3.0, 0.5])
    >>> passes = np.array([[1.0, 2.5, 2.5], [11.0, 0.1, 0.1]])
    >>> counts = attribute(*calls, passes, slow_s=1.0, long_s=2.0)
    >>> {k: v for k, v in counts.items() if v}
    {'slow_long': 1, 'slow_short': 1, 'fast_none': 1}
    """
    ps, pw = passes[:, 0], passes[:, 1]
    lo, hi = overlaps(call_start, call_start + call_seconds, ps, ps + pw)
    longs = np.concatenate([[0], np.cumsum(pw > long_s)])
    any_long = longs[hi] - longs[lo] > 0
    any_pass = hi > lo
    out: dict[str, int] = {}
    for name, rows in (("slow", call_seconds > slow_s), ("fast", call_seconds <= slow_s)):
        out[f"{name}_long"] = int(np.count_nonzero(rows & any_long))
        out[f"{name}_short"] = int(np.count_nonzero(rows & any_pass & ~any_long))
        out[f"{name}_none"] = int(np.count_nonzero(rows & ~any_pass))
    return out


def tail_run(
    bundle: Path,
    mode: str,
    state_dir: Path,
    d: int,
    calls: int,
    settle: float,
    slow_ms: float,
    long_ms: float,
    source: Path | None = None,
) -> dict[str, float]:
    """One sidecar in ``mode``: ``calls`` timed sequential Classify calls, then the events.
    ``source``: import silentwatch from there (``harness.source_tree``, for ``--before``)."""
    recording, flags = TAIL_MODES[mode]
    if "sqlite" in flags:
        flags = [*flags, "--state-dir", str(state_dir)]
    events = state_dir.with_suffix(".npz")
    ticks = cpu_ticks()
    proc, target = start_server(bundle, recording, flags, source=source, events=events)
    try:
        time.sleep(settle)  # start-up's imports and first collections are not the tail
        x = unit(calls + WARMUP_CALLS, d, 1)
        reqs = [
            pb.ClassifyRequest(request_id=f"t{i}", embedding=pb.Embedding(f32le=x[i].tobytes()))
            for i in range(calls + WARMUP_CALLS)
        ]
        with channel(target) as ch:
            stub = pb_grpc.MonitorStub(ch)
            for r in reqs[:WARMUP_CALLS]:
                stub.Classify(r)
            start, lat = np.empty(calls), np.empty(calls)
            for i, r in enumerate(reqs[WARMUP_CALLS:]):
                t0 = time.perf_counter()
                stub.Classify(r)
                start[i], lat[i] = t0, time.perf_counter() - t0
        steal = steal_share(ticks, cpu_ticks())
        proc.send_signal(signal.SIGUSR1)
        ev = _wait_events(events, WARMUP_CALLS + calls)
    finally:
        proc.kill()
        proc.wait()
    handler = ev["classify"][-calls:]  # sequential calls: the i-th timed call is the i-th
    worker = ev["worker"]
    span = start[-1] + lat[-1] - start[0]
    worker = worker[(worker[:, 0] + worker[:, 1] > start[0]) & (worker[:, 0] < start[0] + span)]
    # The time bases agree and the calls line up: each handler call inside its client call.
    h_end = handler[:, 0] + handler[:, 1]
    aligned = (handler[:, 0] >= start) & (h_end <= start + lat)
    ms = 1e3
    a = attribute(start, lat, worker, slow_ms / ms, long_ms / ms)
    return {
        "steal": steal,
        "aligned": float(aligned.mean()),
        "p50_ms": float(np.percentile(lat, 50) * ms),
        "p99_ms": float(np.percentile(lat, 99) * ms),
        "p999_ms": float(np.percentile(lat, 99.9) * ms),
        "handler_p50_ms": float(np.percentile(handler[:, 1], 50) * ms),
        "handler_p99_ms": float(np.percentile(handler[:, 1], 99) * ms),
        "outside_p99_ms": float(np.percentile(lat - handler[:, 1], 99) * ms),
        "passes_per_s": len(worker) / span,
        "worker_busy": float(worker[:, 1].sum() / span),
        "long_per_s": float(np.count_nonzero(worker[:, 1] > long_ms / ms) / span),
        **a,
    }


def _wait_events(path: Path, at_least: int, timeout: float = 10.0) -> dict[str, np.ndarray]:
    """The events file once it holds ``at_least`` Classify calls (SIGUSR1 writes it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ev = tail_timing.read(str(path))
            if len(ev["classify"]) >= at_least:
                return ev
        except (OSError, ValueError, KeyError, EOFError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: the sidecar did not write its events")
        time.sleep(0.05)


def paired_change(after: list[float], before: list[float]) -> list[float]:
    """after / before - 1, round by round.

    >>> [round(c, 2) for c in paired_change([1.2, 0.9], [1.0, 1.0])]
    [0.2, -0.1]
    """
    return [x / y - 1 for x, y in zip(after, before, strict=True)]


def share(n: int, of: int) -> str:
    return f"{n} ({n / of:.0%})" if of else "0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", nargs="+", choices=list(TAIL_MODES), default=list(DEFAULT_MODES))
    ap.add_argument("--against", default=None,
                    help="paired p99 change against this mode (default: the first)")  # fmt: skip
    ap.add_argument("--before", metavar="REV",
                    help="also run every mode on this git revision, alternating, and give the "
                         "paired change after / before instead")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after start, untimed")
    ap.add_argument("--slow-ms", type=float, default=1.0)
    ap.add_argument("--long-ms", type=float, default=2.0, help="a worker pass this long")
    a = ap.parse_args()
    pinned = pin_client()
    print(f"{machine()}; client pinned to CPU 1: {pinned}; d={a.dim}, {a.calls} timed "
          f"sequential Classify calls per run after {a.settle:g} s settling and "
          f"{WARMUP_CALLS} warm-up calls; slow > {a.slow_ms:g} ms, long pass > "
          f"{a.long_ms:g} ms\n")  # fmt: skip
    cols = ["round", "code", "mode", "steal", "p50 ms", "p99 ms", "p99.9 ms",
            "handler p50 / p99 ms", "outside handler p99 ms", "worker passes/s", "busy",
            "long passes/s", "slow calls", "slow: long pass", "slow: short only",
            "slow: none", "not slow: long pass", "calls lined up"]  # fmt: skip
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees: dict[str, Path | None] = {"after": None}
        if a.before:
            trees["before"] = source_tree(REPO, a.before, Path(tmp) / "before")
            print(f"before: {a.before} ({git_describe(REPO, a.before)}); after: the working "
                  f"tree ({git_describe(REPO, 'HEAD')} + changes)\n")  # fmt: skip
        print(table_header(cols, "rllrrrrlrrrrrrrrrr"))
        bundle = bench_bundle(Path(tmp) / "b", a.dim)
        entries = [(tree, mode) for mode in a.modes for tree in trees]
        for r in range(a.rounds):
            for k, (tree, mode) in enumerate(entries if r % 2 == 0 else entries[::-1]):
                v = tail_run(bundle, mode, Path(tmp) / f"s{r}-{k}", a.dim, a.calls, a.settle,
                             a.slow_ms, a.long_ms, trees[tree])  # fmt: skip
                runs.setdefault((tree, mode), []).append(v)
                slow = v["slow_long"] + v["slow_short"] + v["slow_none"]
                fast = v["fast_long"] + v["fast_short"] + v["fast_none"]
                print(table_row([
                    r + 1, tree, mode, f"{v['steal']:.1%}", f"{v['p50_ms']:.3f}",
                    f"{v['p99_ms']:.3f}", f"{v['p999_ms']:.3f}",
                    f"{v['handler_p50_ms']:.3f} / {v['handler_p99_ms']:.3f}",
                    f"{v['outside_p99_ms']:.3f}", f"{v['passes_per_s']:.0f}",
                    f"{v['worker_busy']:.1%}", f"{v['long_per_s']:.1f}", slow,
                    share(v["slow_long"], slow), share(v["slow_short"], slow),
                    share(v["slow_none"], slow), share(v["fast_long"], fast),
                    f"{v['aligned']:.1%}",
                ]), flush=True)  # fmt: skip
    print_summary(runs, a.rounds, "before" if a.before else (a.against or a.modes[0]))


def print_summary(
    runs: dict[tuple[str, str], list[dict[str, float]]], rounds: int, base: str
) -> None:
    """Per (code, mode): p99s, rounds within 1 ms, the handler's p99, and the paired change
    of the p99 and the handler's p99 against ``base``: "before" (the same mode on the
    other revision) or a mode (this tree)."""

    def against(tree: str, mode: str) -> tuple[str, str] | None:
        if base == "before":
            return ("before", mode) if tree == "after" else None
        return (tree, base) if mode != base else None

    ref = "the same mode on the other revision" if base == "before" else base
    print(f"\nSummary over {rounds} rounds (paired change: this / the reference - 1 within "
          f"each round; the reference is {ref}):\n")  # fmt: skip
    print(table_header(["code", "mode", "p99 ms (median)", "p99 ms (each round)",
                        "rounds ≤ 1 ms", "handler p99 ms (median)", "paired p99 change",
                        "rounds higher", "paired handler p99 change", "rounds higher"],
                       "llrlrrrrrr"))  # fmt: skip
    for (tree, mode), vs in runs.items():
        p99 = [v["p99_ms"] for v in vs]
        hp99 = [v["handler_p99_ms"] for v in vs]
        cells = ["", "", "", ""]
        ref = against(tree, mode)
        if ref in runs:
            for i, key in enumerate(("p99_ms", "handler_p99_ms")):
                c = paired_change([v[key] for v in vs], [v[key] for v in runs[ref]])
                cells[2 * i : 2 * i + 2] = [f"{np.median(c):+.1%}",
                                            f"{sum(x > 0 for x in c)} of {len(c)}"]  # fmt: skip
        print(table_row([
            tree, mode, f"{np.median(p99):.3f}", ", ".join(f"{p:.3f}" for p in p99),
            f"{sum(p <= 1.0 for p in p99)} of {len(p99)}", f"{np.median(hp99):.3f}", *cells,
        ]))  # fmt: skip


if __name__ == "__main__":
    main()
