"""Connecting to Ray: a local cluster for the run, or an existing one, with one-line errors.

Ray is imported inside the functions, never at module level: the local engine (the
default) and the sidecar must not need the ``ray`` extra.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from silentwatch.offline.execution.settings import ExecutionSettings

__all__ = [
    "RAY_HINT",
    "WORKER_MODULES",
    "ClusterError",
    "Connection",
    "check_workers",
    "connect",
    "ensure",
    "import_ray",
    "remote_cause",
    "session",
]

#: What to run when Ray is missing.
RAY_HINT = "install the ray extra: pip install 'silentwatch[ray]'"
#: What a Ray worker must import to embed texts and run the offline cells.
WORKER_MODULES: tuple[str, ...] = ("silentwatch.offline.embedders", "torch")


class ClusterError(RuntimeError):
    """Ray cannot run the work as configured; the message is one line saying what to fix."""


@dataclass(frozen=True)
class Connection:
    """A live Ray connection.

    Attributes
    ----------
    address
        What was connected to (``"local"`` for a cluster started by this run).
    owned
        This run called ``ray.init``, so it calls ``ray.shutdown`` when done (for a remote
        cluster that only disconnects the driver; the cluster keeps running).
    cpus, gpus
        The cluster's resources when connected.
    """

    address: str
    owned: bool
    cpus: float
    gpus: float


def import_ray() -> Any:
    """The ``ray`` module, or :class:`ClusterError` with the install hint."""
    try:
        import ray
        import ray.data  # the [data] part of the extra: Ray Data
    except ImportError as err:
        raise ClusterError(f"engine ray needs Ray ({err}): {RAY_HINT}") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of a GCS or ``ray://`` address; None for ``auto`` and other forms
    Ray resolves itself."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def _check_reachable(address: str, timeout_s: float) -> None:
    """Fail in seconds on an address nothing answers at.

    ``ray.init`` retries an unreachable GCS for minutes (it logs and waits, it does not
    raise), so a TCP connect with a timeout runs first.
    """
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout_s):
            pass
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise ClusterError(
            f"cannot reach the Ray cluster at {address} ({why}): start it (ray start --head) "
            "or fix execution.address / --ray-address"
        ) from None


def check_workers(modules: Sequence[str] = WORKER_MODULES, timeout_s: float = 300.0) -> None:
    """Run one tiny task that imports ``modules`` on the cluster.

    Raises
    ------
    ClusterError
        When a worker cannot import one of them (a cluster image without the offline
        extra), or when no worker runs the task within ``timeout_s``.
    """
    ray = import_ray()

    # Defined here so that cloudpickle ships it by value: it must run on a worker that
    # cannot import silentwatch, to say so.
    def probe(names: list[str]) -> str | None:
        import importlib

        for name in names:
            try:
                importlib.import_module(name)
            except ImportError as err:
                return f"{name} ({err})"
        return None

    # num_cpus=0: the probe runs even while every CPU is taken.
    ref = ray.remote(num_cpus=0)(probe).remote(list(modules))
    try:
        missing = ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise ClusterError(
            f"the Ray cluster ran no task within {timeout_s:.0f} s: does it have live workers?"
        ) from None
    if missing:
        raise ClusterError(
            f"the Ray workers cannot import {missing}: install silentwatch[offline] in the "
            "cluster image"
        )


def remote_cause(err: BaseException) -> BaseException:
    """The exception a Ray task raised, without Ray's wrapper (whose message is the whole
    remote traceback): a ``ValueError`` on a worker reads as the same ``ValueError`` here,
    so callers map it to one line as they do on the local path."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, Exception) else err


def _quiet_ray_data(ray: Any) -> None:
    """Ray Data's own bars and INFO lines would interleave with the offline progress bars;
    the engine reports progress through the same callback as the local path instead."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # "Progress bars disabled. To enable, set ...": disabled on purpose, said on every run.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def _resources(ray: Any) -> tuple[float, float]:
    res = ray.cluster_resources()
    return float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))


def connect(settings: ExecutionSettings) -> Connection:
    """Connect to (or start) the Ray cluster ``settings`` names, and check its workers.

    An already initialised Ray (a caller's, or a test's cluster) is used as it is and not
    owned. Otherwise ``None`` / ``"local"`` starts a local cluster, and anything else is
    joined after a TCP check that fails fast.

    Raises
    ------
    ClusterError
        Ray not installed, an address that cannot be reached or refuses the connection,
        or workers that cannot import the offline extra.
    """
    ray = import_ray()
    if ray.is_initialized():
        _quiet_ray_data(ray)
        cpus, gpus = _resources(ray)
        return Connection(settings.address or "local", owned=False, cpus=cpus, gpus=gpus)
    if settings.starts_local_cluster:
        ray.init(
            address="local",  # never RAY_ADDRESS: "local" means a cluster of our own
            num_cpus=settings.local_cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        address = "local"
    else:
        address = str(settings.address)
        _check_reachable(address, settings.connect_timeout_s)
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as err:
            # Something answered, but not a Ray head (Ray gives up after about 20 s). Shut
            # down what ray.init left behind: its GCS client would keep retrying, and logging.
            ray.shutdown()
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ClusterError(f"cannot connect to the Ray cluster at {address}: {first}") from None
    try:
        check_workers()
    except ClusterError:
        ray.shutdown()
        raise
    _quiet_ray_data(ray)
    cpus, gpus = _resources(ray)
    return Connection(address, owned=True, cpus=cpus, gpus=gpus)


def ensure(settings: ExecutionSettings) -> Any:
    """The ``ray`` module, connected: a library caller that opened no :func:`session`
    gets a connection that lasts until the process ends (Ray shuts it down at exit)."""
    ray = import_ray()
    if not ray.is_initialized():
        connect(settings)
    _quiet_ray_data(ray)  # also when the caller initialised Ray itself
    return ray


@contextmanager
def session(settings: ExecutionSettings) -> Iterator[Connection | None]:
    """Ray for the duration of a run: connected on entry, shut down on exit only when this
    run connected it (an already initialised Ray is left alone). ``None`` for the local
    engine, which needs no Ray and never imports it."""
    if not settings.is_ray:
        yield None
        return
    conn = connect(settings)
    try:
        yield conn
    finally:
        if conn.owned:
            import ray

            ray.shutdown()
