"""Window statistics computed in a child process, off the request threads' interpreter.

A window evaluation (MMD, the domain classifier, ...) is a few milliseconds of numpy at
d = 1,024, run on the pipeline worker. In the sidecar's process it holds the GIL between
BLAS calls, so request threads wait behind it, and it shares their core. With
``detection_process: true`` the engine hands each window to :class:`StatisticsProcess`: a
child process that loads the same bundle (checked by its sha256), restores the same
calibrated detectors from it, reads each window from shared memory and returns one number
per detector. Nothing is pickled: the child gets a path, a hash and names. Everything
else stays where it was: the worker still buffers the rows, applies thresholds, counts
alarms and builds the status from the returned statistics, so readings, accounting and
snapshots are unchanged. The child runs at a lower scheduling priority (``nice``), so on a
shared core the request threads come first. If the child fails or dies, the engine
computes in process again, logs it once and counts every window it had to (``fallbacks``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
from collections.abc import Mapping, Sequence
from multiprocessing import shared_memory
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_F32 = np.dtype(np.float32)


def _arrays(buf: Any, rows: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The (rows, dim) window and (rows,) score views on one shared block."""
    x = np.ndarray((rows, dim), dtype=_F32, buffer=buf)
    s = np.ndarray((rows,), dtype=_F32, buffer=buf, offset=rows * dim * _F32.itemsize)
    return x, s


def _detectors(bundle_path: str, sha256: str) -> Mapping[str, Any]:
    """The bundle's calibrated detectors, rebuilt as the sidecar built them."""
    from silentwatch.monitor.bundle.io import load_bundle
    from silentwatch.monitor.detection.suite import suite_for_bundle

    bundle = load_bundle(bundle_path)
    if bundle.sha256 != sha256:
        raise ValueError(f"the bundle at {bundle_path} changed since the sidecar loaded it")
    if bundle.manifest.detectors is None:
        raise ValueError("the bundle carries no calibrated detectors")
    return suite_for_bundle(bundle).detectors


def _serve(
    conn: Any, shm_name: str, bundle_path: str, sha256: str, rows: int, dim: int, nice: int
) -> None:
    """The child's loop: first ``"ready"`` (or an error string), then ``(n, names)`` in,
    ``{name: statistic}`` (or an error string) out."""
    if nice:
        os.nice(nice)
    shm = shared_memory.SharedMemory(name=shm_name)
    x_all = s_all = None
    try:
        try:
            dets = _detectors(bundle_path, sha256)
        except Exception as exc:
            conn.send(f"loading the detectors failed: {type(exc).__name__}: {exc}")
            return
        conn.send("ready")
        x_all, s_all = _arrays(shm.buf, rows, dim)
        while True:
            try:
                msg = conn.recv()
            except EOFError:  # the parent went away
                return
            if msg is None:
                return
            n, names = msg
            x, s = x_all[:n], s_all[:n]
            try:
                conn.send({name: float(dets[name].statistic(x, s)) for name in names})
            except Exception as exc:  # reported to the parent, which computes in process
                conn.send(f"{type(exc).__name__}: {exc}")
    finally:
        del x_all, s_all  # views on the block: release before closing it
        shm.close()


class StatisticsProcess:
    """A child process that computes detectors' window statistics from shared memory.

    Parameters
    ----------
    bundle_path, sha256
        The served bundle and its hash: the child restores the detectors from it (a bundle
        without calibrated detectors, or changed on disk, makes it refuse: in process then).
    max_rows, dim
        The largest window it takes, and the embedding dimension.
    nice
        Added to the child's scheduling niceness (lower priority than the request threads).

    Examples
    --------
    A bundle that cannot give the detectors (here: none at that path) is reported at the
    first window, and the caller computes in process:

    >>> import numpy as np
    >>> with StatisticsProcess("/nonexistent", "0" * 64, max_rows=8, dim=4) as child:
    ...     ok = child.wait_ready(60)
    ...     child.statistics(["mmd"], np.eye(4, dtype=np.float32), np.zeros(4, np.float32))
    >>> ok, child.fallbacks
    (False, 1)
    """

    def __init__(
        self, bundle_path: str, sha256: str, max_rows: int, dim: int, *, nice: int = 10
    ) -> None:
        self.max_rows, self.dim = int(max_rows), int(dim)
        size = self.max_rows * (self.dim + 1) * _F32.itemsize
        self._shm = shared_memory.SharedMemory(create=True, size=size)
        self._x, self._s = _arrays(self._shm.buf, self.max_rows, self.dim)
        # spawn: a forked child of a process running gRPC threads is not safe.
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve,
            args=(
                child,
                self._shm.name,
                str(bundle_path),
                sha256,
                self.max_rows,
                self.dim,
                nice,
            ),
            name="sw-detection",
            daemon=True,
        )
        self._proc.start()
        child.close()
        self.alive = True
        self.ready = False  # the child said it has the detectors
        self.fallbacks = 0  # windows computed in process because the child could not
        self.early = 0  # windows computed in process while the child was still starting

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def _hello(self) -> bool:
        """Read the child's first word: its detectors are loaded, or why not (logged)."""
        hello = self._conn.recv()
        if hello == "ready":
            self.ready = True
            return True
        self.alive = False
        log.error(
            "the detection process could not start (%s); window statistics are computed in "
            "the sidecar's process",
            hello,
        )
        return False

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the child to load its detectors; whether it
        did (False: it failed, died or is still loading)."""
        if self.ready or not self.alive:
            return self.ready
        try:
            return self._conn.poll(timeout) and self._hello()
        except (EOFError, OSError):
            self.alive = False
            return False

    def statistics(
        self, names: Sequence[str], x: np.ndarray, s: np.ndarray
    ) -> dict[str, float] | None:
        """Every named detector's statistic on window ``x`` (rows) with scores ``s``; None
        when the child cannot answer (counted in ``fallbacks``) or is still starting (in
        ``early``; the worker never waits for it to load the bundle): compute in process."""
        n = x.shape[0]
        if not self.alive or n > self.max_rows:
            self.fallbacks += 1
            return None
        try:
            if not self.ready:
                if not self._conn.poll():  # still loading the bundle: never wait for it
                    self.early += 1
                    return None
                if not self._hello():
                    self.fallbacks += 1
                    return None
            self._x[:n] = x
            self._s[:n] = s
            self._conn.send((n, list(names)))
            reply = self._conn.recv()  # blocks without the GIL while the child works
        except (EOFError, OSError) as exc:
            self.alive = False
            self.fallbacks += 1
            log.error(
                "the detection process (pid %s) is gone (%s); window statistics are computed "
                "in the sidecar's process from now on",
                self._proc.pid,
                exc,
            )
            return None
        if isinstance(reply, str):
            self.fallbacks += 1
            log.error("the detection process failed on a window (%s); computed in process", reply)
            return None
        return reply

    def close(self) -> None:
        """Stop the child and free the shared block (idempotent)."""
        if self._shm is None:
            return
        if self.alive:
            with contextlib.suppress(OSError):
                self._conn.send(None)
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)
        self.alive = False
        self._conn.close()
        del self._x, self._s
        self._shm.close()
        self._shm.unlink()
        self._shm = None

    def __enter__(self) -> StatisticsProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
