"""A real Prometheus server and a real `silentwatch serve` on loopback, for the end-to-end
alert test (tests/test_alerts_e2e.py) and the figure in the README
(benchmarks/alerts_e2e_figure.py).

The scenario (:class:`Scenario`): a bundle trained on a synthetic embedding world, with
one text per row so that it keeps 256 held-out canaries and their reference embeddings;
clean traffic with delayed labels; then a topic shift the classifier is blind to (drift,
no harm); then a broken embedder (a random rotation of the space: the frozen head falls
to chance) for the traffic and for the canaries the moderation service submits.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from silentwatch.monitor.bundle import EmbedderSpec, load_bundle
from silentwatch.monitor.bundle.manifest import DetectorSettings
from silentwatch.monitor.simulate.drift import normalise
from silentwatch.monitor.simulate.world import SyntheticWorld
from silentwatch.monitor.training import train_bundle
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "rules" / "silentwatch.rules.yml"

# The scenario's world: small enough to train and calibrate in seconds on 2 cores.
DIM = 64
WINDOW = 64
TRAIN_ROWS = 4000
# The harmless shift: every embedding moves by this much along a high-variance direction of
# the world that the classifier's weights are orthogonal to (its ROC-AUC does not move),
# and is put back on the unit sphere. Enough for the drift detectors to alarm on every
# window of 64 rows.
TOPIC_SHIFT = 0.2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def world() -> SyntheticWorld:
    return SyntheticWorld(dim=DIM, delta=0.01, seed=11)


@dataclass
class Scenario:
    """The bundle, and the two embedders and the traffic shift the test plays.

    ``embed`` is the validated embedder as the moderation service runs it: it maps each
    training text (``"e2e text <row>"``) to that row's embedding, so the bundle's canary
    texts embed exactly as their reference embeddings. ``embed_broken`` is the same
    service after a broken embedder update: every embedding turned by one random
    orthogonal ``rotation``, which takes the frozen head to chance.
    """

    world: SyntheticWorld
    bundle: Path
    corpus: dict[str, np.ndarray]
    harmless: np.ndarray  # unit vector orthogonal to the classifier's weights
    rotation: np.ndarray  # (DIM, DIM) orthogonal

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.corpus[t] for t in texts])

    def embed_broken(self, texts: Sequence[str]) -> np.ndarray:
        return self.broken(self.embed(texts))

    def topic_shift(self, x: np.ndarray) -> np.ndarray:
        """Drift without harm: the traffic moves where the classifier does not look."""
        return normalise(x + TOPIC_SHIFT * self.harmless).astype(np.float32)

    def broken(self, x: np.ndarray) -> np.ndarray:
        """Harm: the embedding space turned under the frozen head."""
        return (x @ self.rotation).astype(np.float32)


def build_scenario(out: Path, w: SyntheticWorld | None = None) -> Scenario:
    """Train the scenario's bundle (with canaries) into ``out``."""
    w = w or world()
    x, y = w.sample(TRAIN_ROWS)
    texts = [f"e2e text {i}" for i in range(len(x))]
    train_bundle(
        x,
        y,
        out,
        embedder=EmbedderSpec(name="silentwatch/synthetic-world", version="v1"),
        classifier_version="e2e",
        detectors=DetectorSettings(window_size=WINDOW, calibration_windows=200),
        texts=texts,  # keeps 256 held-out rows as canaries, with their embeddings
        overwrite=True,
    )
    weights = load_bundle(out).scorer.weights.astype(np.float64)
    weights /= np.linalg.norm(weights)
    # The world's third principal direction (the first is the common mean), with the part
    # the classifier reads projected out.
    v = w.basis[:, 2] - (w.basis[:, 2] @ weights) * weights
    q, _ = np.linalg.qr(np.random.default_rng(7).standard_normal((DIM, DIM)))
    return Scenario(
        world=w,
        bundle=out,
        corpus=dict(zip(texts, x, strict=True)),
        harmless=v / np.linalg.norm(v),
        rotation=q,
    )


class Sidecar:
    """`silentwatch serve` as a subprocess; windows evaluated as fast as traffic comes."""

    def __init__(self, bundle: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "silentwatch",
                "serve",
                "--bundle",
                str(bundle),
                "--port",
                "0",
                "--metrics-port",
                "0",
                "--max-window-evaluations-per-second",
                "0",
                "--change-max-samples-per-second",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"sidecar did not start: {self.proc.stderr.read()}")  # type: ignore[union-attr]
        event = json.loads(line)
        self.grpc_target: str = event["grpc"]
        self.metrics_url: str = event["metrics"]
        self.metrics_address = urllib.parse.urlparse(self.metrics_url).netloc

    def stop(self) -> None:
        terminate(self.proc)


class Prometheus:
    """Debian's prometheus binary with a temporary config: 1 s scrapes and rule evaluations."""

    def __init__(self, binary: str, workdir: Path, target: str, rules: Path = RULES) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  evaluation_interval: 1s\n"
            f"rule_files: [{json.dumps(str(rules))}]\n"
            "scrape_configs:\n"
            "  - job_name: silentwatch\n"
            f"    static_configs: [{{targets: [{json.dumps(target)}]}}]\n"
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready(60.0)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {Path(self.log.name).read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("prometheus not ready")

    def api(self, path: str, **params: str | float) -> dict:
        q = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{q}", timeout=10) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus API {path}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def firing(self, alertname: str) -> list[dict]:
        return self.query(f'ALERTS{{alertname="{alertname}", alertstate="firing"}}')

    def stop(self) -> None:
        terminate(self.proc)
        self.log.close()


@dataclass
class Replay:
    """Paced ClassifyBatch traffic with delayed labels for a share of it."""

    target: str
    rows_per_second: float = 1200.0
    batch: int = 32
    label_fraction: float = 0.5
    label_delay_batches: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        self._channel = grpc.insecure_channel(self.target)
        self._stub = pb_grpc.MonitorStub(self._channel)
        self._rng = np.random.default_rng(self.seed)
        self._pending: deque[list[pb.Label]] = deque()
        self._sent = 0

    def send(
        self,
        x: np.ndarray,
        y: np.ndarray,
        every_batch: Callable[[], None] | None = None,
    ) -> None:
        t0 = time.monotonic()
        for start in range(0, len(x), self.batch):
            chunk = x[start : start + self.batch]
            ids = [f"e2e-{self._sent + i}" for i in range(len(chunk))]
            self._sent += len(chunk)
            self._stub.ClassifyBatch(
                pb.ClassifyBatchRequest(
                    request_ids=ids,
                    embeddings=pb.EmbeddingMatrix(
                        rows=len(chunk), dim=chunk.shape[1], f32le=chunk.astype("<f4").tobytes()
                    ),
                    embedder_version="v1",
                )
            )
            pick = np.flatnonzero(self._rng.random(len(chunk)) < self.label_fraction)
            labels = [pb.Label(request_id=ids[i], unsafe=bool(y[start + i])) for i in pick]
            self._pending.append(labels)
            if len(self._pending) > self.label_delay_batches:  # reviewers lag the traffic
                self._stub.SubmitLabels(pb.SubmitLabelsRequest(labels=self._pending.popleft()))
            if every_batch is not None:
                every_batch()
            ahead = (start + len(chunk)) / self.rows_per_second - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)

    def flush_labels(self) -> None:
        while self._pending:
            self._stub.SubmitLabels(pb.SubmitLabelsRequest(labels=self._pending.popleft()))

    def close(self) -> None:
        self._channel.close()


def artifacts_dir() -> Path | None:
    d = os.environ.get("SILENTWATCH_E2E_ARTIFACTS")
    return Path(d) if d else None
