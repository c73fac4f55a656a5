"""What the benchmark scripts share: paths, the machine line, timing, tables, JSON, pinning.

The scripts are run as files (``python benchmarks/X.py``), so Python puts this folder first
on ``sys.path`` and ``import harness`` finds this file; benchmarks/ is not a package. A
script that is also loaded by path from a test (loadgen.py) puts the folder there itself.

>>> print(markdown_table(["call", "µs"], [["record", f"{1223.4:,.0f}"]], "lr"))
| call | µs |
|---|---:|
| record | 1,223 |
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
# The data sets (Civil Comments, refusal_direction) live beside the checkout, in
# ../shared/data, unless SILENTWATCH_SHARED_DATA points elsewhere.
SHARED_DATA = Path(os.environ.get("SILENTWATCH_SHARED_DATA", ROOT.parent / "shared" / "data"))
MiB = 1024 * 1024
# Room for 1,024-row batches at d=1024 (4 MiB) and large label batches, on both sides.
MAX_MESSAGE_BYTES = 64 * MiB
_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6}
Timings = Sequence[float] | np.ndarray  # seconds of repeated runs


# -- the machine ---------------------------------------------------------------------------
# -- another version of the code ---------------------------------------------------------
def git_describe(repo: Path, rev: str) -> str:
    """``rev``'s short hash and subject line."""
    out = subprocess.run(
        ["git", "-C", str(repo), "log", "-1", "--format=%h %s", rev],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def source_tree(repo: Path, rev: str, dest: Path) -> Path:
    """Check out ``rev`` of ``repo`` under ``dest`` (``git archive``: no worktree to clean up)
    and return a directory to put first on ``PYTHONPATH`` so that ``import silentwatch`` (and
    ``python -m silentwatch``) runs that version instead of the installed one.

    The repository keeps ``monitor/`` and ``offline/`` beside ``silentwatch/`` and installs
    them as ``silentwatch.monitor`` and ``silentwatch.offline`` (pyproject's package-dir);
    the returned directory rebuilds that layout with symlinks. The editable install's
    finder comes after ``PYTHONPATH`` on ``sys.meta_path``, so this copy wins.
    """
    tree, shim = dest / "tree", dest / "shim" / "silentwatch"
    tree.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", rev], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    shim.mkdir(parents=True)
    for entry in (tree / "silentwatch").iterdir():
        (shim / entry.name).symlink_to(entry)
    for sub in ("monitor", "offline"):
        (shim / sub).symlink_to(tree / sub)
    return shim.parent


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        lines = []
    fallback = platform.processor() or platform.machine()
    return next(
        (ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), fallback
    )


def machine(packages: Sequence[str] = ("grpcio", "numpy"), *extra: str) -> str:
    """One line saying where a figure was measured: CPU, cores, Python, package versions.

    ``packages`` are distribution names, read from their installed metadata (so a script
    need not import one only to print its version); ``extra`` is appended as given.

    >>> machine(("numpy",), "device cpu")  # doctest: +ELLIPSIS
    '..., ... cores; Python 3..., numpy ..., device cpu'
    """
    parts = [f"Python {platform.python_version()}"]
    parts += [f"{p} {metadata.version(p)}" for p in packages]
    return f"{cpu_model()}, {os.cpu_count()} cores; " + ", ".join([*parts, *extra])


def pin_client() -> bool:
    """Pin this process to CPU 1 when there are two CPUs or more; True if it did.

    The sidecar runs pinned to CPU 0 (``taskset -c 0``): client and server must not share
    a core, or the client's work would count against the server's throughput.
    """
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
        return True
    return False


def _stat_cpu_seconds(stat: str) -> float:
    """utime + stime, in seconds, of one /proc ``stat`` line (a process's or a thread's)."""
    fields = stat.rsplit(")", 1)[1].split()  # after the name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (from /proc/<pid>/stat)."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())


def descendants(pid: int) -> list[int]:
    """The live child processes of ``pid``, their children, and so on."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):  # a process may exit while we look
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = [int(c) for c in (task / "children").read_text().split()]
                out += kids
                todo += kids
    return out


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and of its live descendants (e.g. the sidecar's
    detection process), in seconds."""
    total = cpu_seconds(pid)
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(child)
    return total


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """utime + stime per OS thread name of a process, summed over threads of one name.

    Threads that exited are not listed (their time is in :func:`cpu_seconds` only); the
    sidecar's pipeline worker names itself ``sw-pipeline``.
    """
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread may exit between listing and read
            stat = (task / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            out[name] = out.get(name, 0.0) + _stat_cpu_seconds(stat)
    return out


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


def channel(target: str) -> grpc.Channel:
    """An insecure gRPC channel to a loopback sidecar, with room for large batches."""
    return grpc.insecure_channel(
        target,
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )


# -- timing --------------------------------------------------------------------------------
def _no_sync() -> None:
    return None


def device_sync(device: str) -> Callable[[], None]:
    """``torch.cuda.synchronize`` for a CUDA device, else a no-op.

    CUDA kernels run asynchronously: without a synchronisation the clock would stop before
    the work it is meant to time has finished.
    """
    if device.startswith("cuda"):
        import torch  # only the torch benchmarks ask for a CUDA device

        return torch.cuda.synchronize
    return _no_sync


def timed(fn: Callable[[], T], sync: Callable[[], None] = _no_sync) -> tuple[float, T]:
    """Wall seconds of one call of ``fn``, and what it returned.

    ``sync`` runs before the clock starts (earlier device work is not counted) and before
    it stops (this call's is).
    """
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def repeat(fn: Callable[[], object], reps: int, sync: Callable[[], None] = _no_sync) -> list[float]:
    """Wall seconds of ``reps`` calls of ``fn``, one after the other."""
    return [timed(fn, sync)[0] for _ in range(reps)]


def quantile(seconds: Timings, q: float, unit: str = "s") -> float:
    """The ``q``-quantile of repeated timings, in ``unit`` (s, ms or us); 0.5 is the median.

    >>> quantile([0.001, 0.003, 0.002], 0.5, "ms")
    2.0
    """
    x = np.median(seconds) if q == 0.5 else np.quantile(seconds, q)
    return _UNITS[unit] * float(x)


def percentiles(
    seconds: Timings, qs: Sequence[float] = (0.5, 0.99), unit: str = "ms"
) -> dict[str, float]:
    """``{"p50_ms": ..., "p99_ms": ...}`` of repeated timings.

    >>> percentiles([k / 1000 for k in range(1, 102)])  # 1 to 101 ms
    {'p50_ms': 51.0, 'p99_ms': 100.0}
    """
    return {f"p{100 * q:g}_{unit}": quantile(seconds, q, unit) for q in qs}


# -- tables --------------------------------------------------------------------------------
def table_row(cells: Iterable[object]) -> str:
    """One markdown table row; an empty cell stays one space wide."""
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def table_header(columns: Sequence[str], align: str) -> str:
    """A markdown table's header and rule; ``align`` has one letter per column, l or r.

    >>> print(table_header(["", "d", "mode"], "lrl"))
    | | d | mode |
    |---|---:|---|
    """
    if len(align) != len(columns):
        raise ValueError(f"{len(columns)} columns but alignment {align!r}")
    rule = "|" + "|".join({"l": "---", "r": "---:"}[a] for a in align) + "|"
    return f"{table_row(columns)}\n{rule}"


def markdown_table(
    columns: Sequence[str], rows: Iterable[Sequence[object]], align: str | None = None
) -> str:
    """A whole markdown table (``align`` defaults to every column left-aligned)."""
    lines = [table_header(columns, align or "l" * len(columns))]
    lines += [table_row(r) for r in rows]
    return "\n".join(lines)


def aligned_row(cells: Sequence[object], specs: Sequence[str]) -> str:
    """Cells of a fixed-width text table, each formatted with its spec ("<22", ">9.2f").

    >>> aligned_row(["plain loop", 20.04], ["<12", ">7.2f"])
    'plain loop    20.04'
    """
    return "".join(format(c, s) for c, s in zip(cells, specs, strict=True))


# -- results -------------------------------------------------------------------------------
def write_json(
    path: Path,
    data: Any,
    *,
    default: Callable[[Any], Any] = float,
    indent: int | None = 1,
) -> Path:
    """Write ``data`` as JSON to ``path`` (folders created), newline-terminated.

    ``default`` converts what json cannot (numpy scalars: ``float``; anything: ``str``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent, default=default) + "\n")
    return path
