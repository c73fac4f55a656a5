"""A ``silentwatch serve`` child process on loopback, and the loopback-only rule.

The benchmarks send load; they must never send it anywhere but this machine, so every
target and metrics URL passes :func:`check_loopback_target` / :func:`check_loopback_url`.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import MAX_MESSAGE_BYTES, dir_mib

from silentwatch.v1 import monitor_pb2 as pb


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


# -- the sidecar ---------------------------------------------------------------------------
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


def submit_unsafe_labels(
    stub: Any, ids: Sequence[str], timeout: float, per_request: int = 4096
) -> int:
    """Label ``ids`` unsafe in SubmitLabels requests of at most ``per_request`` labels (under
    the sidecar's ``max_batch_rows``); how many joined."""
    joined = 0
    for i in range(0, len(ids), per_request):
        labels = [pb.Label(request_id=r, unsafe=True) for r in ids[i : i + per_request]]
        joined += stub.SubmitLabels(pb.SubmitLabelsRequest(labels=labels), timeout=timeout).joined
    return joined


@dataclass
class SidecarProcess:
    """A ``silentwatch serve`` child process on loopback, ports picked by the kernel."""

    proc: subprocess.Popen[str]
    target: str
    metrics_url: str
    stderr_path: Path
    tmp: tempfile.TemporaryDirectory[str]
    argv: list[str]
    state_dir: Path | None = None  # the temporary --state-dir passed, if any
    _stdout_tail: deque[str] = field(default_factory=lambda: deque(maxlen=50))

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
            "--max-message-bytes", str(MAX_MESSAGE_BYTES), "--max-batch-rows", "16384",
            "--log-level", "WARNING", *extra,
        ]  # fmt: skip
        stderr_path = Path(tmp.name) / "sidecar.stderr"
        # stderr to a file, never a pipe nobody reads: a full pipe would block the sidecar.
        with stderr_path.open("w") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None  # stdout=PIPE
        stdout = proc.stdout
        line_box: list[str] = []
        reader = threading.Thread(target=lambda: line_box.append(stdout.readline()))
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
        assert self.proc.stdout is not None  # started with stdout=PIPE
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
