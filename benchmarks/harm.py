"""Drift is not harm: what the frozen head's ROC-AUC did beside what the sidecar said.

Real all-MiniLM-L6-v2 embeddings (``open_embedder("minilm")``, cached with
``embed_cached``) of Civil Comments (both fractional files pooled, de-duplicated by text,
``toxicity >= 0.5``). A bundle (paper A's recipe, ``train_bundle``, detectors calibrated
at 1% false alarms per window) is trained on a balanced part; the rest is the evaluation
pool. Each scenario is a stream of labelled traffic rows:

  control   iid: held-out Civil Comments rows at the training prior (50% unsafe);
  benign?   case-type (topic) mixes, a prior shift, the other Civil Comments collection,
            the Civil Comments test split, TweetEval offensive (train / test), Davidson,
            and the int8 export of the same model;
  harmful?  paraphrase-MiniLM-L3-v2 (ONNX), MiniLM truncated to 16 / 32 tokens,
            first-token (CLS) pooling, a 50% rollout of L3, paper A's Gaussian drift.

Whether a candidate is benign (|dAUC| < 0.01 vs the iid stream) or harmful
(dAUC <= -0.02) is measured, not assumed. Each stream goes through a real in-process
sidecar (``Sidecar``) over loopback gRPC: ClassifyBatch (one window of rows, with request
ids), then SubmitLabels for a random 30% of them (delayed human review), then GetStatus
once the window is evaluated. Replayed faster than real time, so the window-evaluation
and change-point rate caps are off, and the domain classifier runs every window
(``domain_every`` 1) so that every detector reads every window.

    python benchmarks/harm.py             # ~10 minutes on 2 cores the first time (embedding)
    python benchmarks/harm.py --quick     # small sizes: a smoke test of about a minute
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from harness import ROOT, SHARED_DATA, channel, machine, markdown_table, write_json

from silentwatch.monitor.bundle import load_bundle
from silentwatch.monitor.config import ServeSettings
from silentwatch.monitor.evaluation.classification import roc_auc
from silentwatch.monitor.scoring import LinearScorer, confidence
from silentwatch.monitor.serving.server import Sidecar
from silentwatch.monitor.simulate import drift
from silentwatch.monitor.training import train_bundle
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

# Gitignored (.cache/): embeddings are the run's only real cost, and never belong in git.
CACHE = ROOT / ".cache" / "harm"
BENIGN_MAX, HARMFUL_MIN = 0.01, 0.02  # |dAUC| below: benign; dAUC at or below minus: harmful
LABEL_SHARE = 0.3  # share of each batch a human reviews and labels (SubmitLabels)
ALPHA = 0.01  # false alarms per window the detectors are calibrated to


# -- data ---------------------------------------------------------------------------------
@dataclass
class Texts:
    """Labelled texts with where each came from (file, case-type bucket)."""

    text: list[str] = field(default_factory=list)
    y: list[int] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    case: list[str] = field(default_factory=list)

    def add(self, text: str, y: int, source: str, case: str = "") -> None:
        self.text.append(text)
        self.y.append(y)
        self.source.append(source)
        self.case.append(case)


def _rows(path: Path) -> Iterator[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        yield from csv.DictReader(fh)


def civil_comments() -> Texts:
    """Both fractional Civil Comments files, de-duplicated by text (first file wins)."""
    out, seen = Texts(), set()
    for name, source in (
        ("cody140_civil_comments_4900.csv", "cody140"),
        ("autolabel_civil_comments_1k.csv", "autolabel"),
    ):
        for row in _rows(SHARED_DATA / "civil_comments" / name):
            t = (row.get("text") or "").strip()
            if t and t not in seen:
                seen.add(t)
                out.add(
                    t, int(float(row["toxicity"]) >= 0.5), source, row.get("_primary_case_type", "")
                )
    return out


def civil_comments_test() -> Texts:
    """The HF test split (autolabel): unsafe if ANY attribute >= 0.5, not toxicity alone."""
    out, seen = Texts(), set()
    for name in ("autolabel_civil_comments_seed.csv", "autolabel_civil_comments_test.csv"):
        for row in _rows(SHARED_DATA / "civil_comments" / name):
            t = (row.get("example") or "").strip()
            if t and t not in seen:
                seen.add(t)
                out.add(t, int(row["label"] == "toxic"), "cc-test")
    return out


def tweeteval_offensive(split: str) -> Texts:
    out = Texts()
    for row in _rows(SHARED_DATA / "tweeteval_offensive" / "tweeteval_offensive.csv"):
        t = (row.get("text") or "").strip()
        if t and row["split"] == split:
            out.add(t, int(row["label"]), f"tweeteval-{split}")
    return out


def davidson() -> Texts:
    """Davidson et al.: unsafe = majority hate (0) or offensive (1)."""
    out = Texts()
    for row in _rows(SHARED_DATA / "davidson_hate_offensive" / "labeled_data.csv.gz"):
        t = (row.get("tweet") or "").strip()
        if t:
            out.add(t, int(row["class"] in ("0", "1")), "davidson")
    return out


# -- embeddings -----------------------------------------------------------------------------
def _first_token_embedder(max_length: int) -> Any:
    """MiniLM with first-token ([CLS]) pooling: emulated here, offline/ offers mean / last.

    A subclass of the transformers backend that replaces ``_pool``; its ``info()`` says
    ``pooling="cls"``, so the embedding cache keys it apart from mean pooling.
    """
    import torch

    from silentwatch.offline.embedders.hf import TransformerEmbedder
    from silentwatch.offline.embedders.packaged import MINILM_NAME, minilm_path

    class FirstToken(TransformerEmbedder):
        def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return torch.nn.functional.normalize(hidden.float()[:, 0], dim=-1)

        def info(self) -> Any:
            # EmbeddingInfo validates pooling against what offline/ implements (mean,
            # last_token); model_copy skips that, and the cache key then says "cls".
            return super().info().model_copy(update={"pooling": "cls"})

    return FirstToken(minilm_path(), name=MINILM_NAME, pooling="mean", max_length=max_length)


_LOADED: dict[str, Any] = {}


def embed(variant: str, texts: list[str]) -> np.ndarray:
    """(n, 384) unit rows of ``texts`` by one embedder variant, through the embedding cache.

    ``minilm`` (mean pooling, 256 tokens: the bundle's embedder), ``minilm-int8``,
    ``paraphrase-l3``, ``minilm-len16`` / ``minilm-len32`` (truncation), ``minilm-cls``.
    """
    from silentwatch.offline.embedders import embed_cached, open_embedder

    if variant not in _LOADED:
        if variant == "minilm-cls":
            _LOADED[variant] = _first_token_embedder(256)
        elif variant.startswith("minilm-len"):
            _LOADED[variant] = open_embedder("minilm", max_length=int(variant[10:]))
        else:
            _LOADED[variant] = open_embedder(variant)
    t0 = time.perf_counter()
    x = embed_cached(_LOADED[variant], texts, CACHE / "embeddings")
    if (dt := time.perf_counter() - t0) > 2:
        print(f"  embedded {len(texts):,} texts with {variant} in {dt:.0f} s", flush=True)
    return np.asarray(x, dtype=np.float32)


# -- scenarios ------------------------------------------------------------------------------
@dataclass
class Scenario:
    """One stream of traffic: embeddings and labels, and what it is a candidate for."""

    name: str
    candidate: str  # control, benign or harmful: what it is expected to be, then measured
    x: np.ndarray
    y: np.ndarray
    unique_rows: int
    paired: bool = False  # same texts, same order as the iid stream (paired bootstrap)
    angle: float | None = None  # mean angle to the bundle embedder's rows of the same texts


def draw(idx: np.ndarray, y: np.ndarray, n: int, prior: float | None, rng) -> np.ndarray:
    """``n`` of ``idx`` at ``prior`` unsafe (None: as they come); with replacement only
    where a class has fewer rows than asked (the data sets are small)."""
    if prior is None:
        return rng.choice(idx, n, replace=n > idx.size)
    parts = []
    for cls, k in ((1, round(n * prior)), (0, n - round(n * prior))):
        pool = idx[y[idx] == cls]
        parts.append(rng.choice(pool, k, replace=k > pool.size))
    return rng.permutation(np.concatenate(parts))


def build(
    args: argparse.Namespace,
) -> tuple[Path, LinearScorer, list[Scenario], dict[str, Any]]:
    rng = np.random.default_rng(args.seed)
    cc = civil_comments()
    y_cc = np.asarray(cc.y, dtype=np.int8)
    pos, neg = (
        rng.permutation(np.flatnonzero(y_cc == 1)),
        rng.permutation(np.flatnonzero(y_cc == 0)),
    )
    # Balanced training rows; the rest is the evaluation pool. The pool keeps enough unsafe
    # rows for one balanced iid stream without repeats (n/2 of them).
    n_train = min(args.train_per_class, pos.size - args.rows // 2)
    train = np.concatenate([pos[:n_train], neg[:n_train]])
    pool = np.concatenate([pos[n_train:], neg[n_train:]])
    x_cc = embed("minilm", cc.text)
    tmp = Path(tempfile.mkdtemp(prefix="sw-harm-"))
    t0 = time.perf_counter()
    train_bundle(
        x_cc[train],
        y_cc[train],
        tmp / "bundle",
        embedder=_LOADED["minilm"].spec(),
        holdout_fraction=0.35,
        seed=args.seed,
        # "auto": the default settings (window 256, alpha 0.01), the window halved until
        # the held-out rows can calibrate it, as `silentwatch bundle train` does.
        detectors="auto",
    )
    bundle = load_bundle(tmp / "bundle")
    window = bundle.manifest.detectors.settings.window_size
    print(
        f"bundle: {train.size} training rows ({n_train} per class), window {window}, "
        f"train + calibrate {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    n = args.rows
    case = np.asarray(cc.case)
    source = np.asarray(cc.source)
    iid = draw(pool, y_cc, n, 0.5, rng)
    scen = [
        Scenario("iid (control)", "control", x_cc[iid], y_cc[iid], np.unique(iid).size, True, 0.0)
    ]

    def sub(name: str, mask: np.ndarray, prior: float | None) -> None:
        idx = draw(pool[mask[pool]], y_cc, n, prior, rng)
        scen.append(Scenario(name, "benign", x_cc[idx], y_cc[idx], np.unique(idx).size))

    sub("case mix: identity_attack + threat", np.isin(case, ["identity_attack", "threat"]), 0.5)
    sub(
        "case mix: obscene + sexual + severe",
        np.isin(case, ["obscene", "sexual_explicit", "severe_toxicity"]),
        0.5,
    )
    sub("case mix: clean + insult (natural prior)", np.isin(case, ["clean", "insult"]), None)
    sub("prior shift: 85% unsafe", np.ones(case.size, dtype=bool), 0.85)
    sub("prior shift: 10% unsafe", np.ones(case.size, dtype=bool), 0.10)
    sub("collection: autolabel-1k rows only", source == "autolabel", 0.5)

    for name, texts in (
        ("Civil Comments test split (any-attribute label)", civil_comments_test()),
        ("platform: TweetEval offensive train", tweeteval_offensive("train")),
        ("time: TweetEval offensive test", tweeteval_offensive("test")),
        ("platform: Davidson hate/offensive", davidson()),
    ):
        yt = np.asarray(texts.y, dtype=np.int8)
        # Embed only what is streamed: Davidson alone would be 25k texts.
        idx = draw(np.arange(yt.size), yt, n, None, rng)
        uniq, inv = np.unique(idx, return_inverse=True)
        xt = embed("minilm", [texts.text[i] for i in uniq])[inv]
        scen.append(Scenario(name, "benign", xt, yt[idx], uniq.size))

    # Re-embeddings of the iid stream's own texts: paired with the control row for row.
    uniq, inv = np.unique(iid, return_inverse=True)
    iid_texts = [cc.text[i] for i in uniq]
    x0 = x_cc[iid]

    def swap(name: str, candidate: str, x: np.ndarray) -> None:
        scen.append(
            Scenario(
                name, candidate, x, y_cc[iid], uniq.size, True, drift.mean_angle_degrees(x0, x)
            )
        )

    swap("re-embed: minilm-int8 (ONNX int8 export)", "benign", embed("minilm-int8", iid_texts)[inv])
    x_l3 = embed("paraphrase-l3", iid_texts)[inv]
    swap("swap: paraphrase-MiniLM-L3-v2", "harmful", x_l3)
    half = rng.random(n) < 0.5
    swap("partial rollout: 50% of rows from L3", "harmful", np.where(half[:, None], x_l3, x0))
    swap("config: max_length 32", "harmful", embed("minilm-len32", iid_texts)[inv])
    swap("config: max_length 16", "harmful", embed("minilm-len16", iid_texts)[inv])
    swap("config: first-token (CLS) pooling", "harmful", embed("minilm-cls", iid_texts)[inv])
    swap("Gaussian drift s=0.02 (paper A)", "harmful", drift.gaussian_drift(x0, 0.02, rng))
    info = {
        "bundle_training_rows": int(train.size),
        "evaluation_pool_rows": int(pool.size),
        "window_size": int(window),
        "bundle_holdout_metrics": dict(bundle.manifest.training.holdout_metrics),
        "reference_mean_confidence": bundle.manifest.detectors.reference_confidence[
            "mean_confidence"
        ],
    }
    return tmp / "bundle", bundle.scorer, scen, info


# -- truth ----------------------------------------------------------------------------------
def auc_ci(
    p: np.ndarray, y: np.ndarray, p0: np.ndarray, y0: np.ndarray, paired: bool, reps: int, seed: int
) -> dict[str, float]:
    """AUC, dAUC vs the control and their bootstrap 95% CIs (percentile).

    Paired scenarios (the control's texts, re-embedded) resample the same row indices for
    both, so the CI of dAUC is that of the change alone, not of two samples' noise.
    """
    rng = np.random.default_rng(seed)
    a, a0 = roc_auc(p, y), roc_auc(p0, y0)
    boots, deltas = [], []
    for _ in range(reps):
        i = rng.integers(0, y.size, y.size)
        j = i if paired else rng.integers(0, y0.size, y0.size)
        b = roc_auc(p[i], y[i])
        boots.append(b)
        deltas.append(b - roc_auc(p0[j], y0[j]))
    lo, hi = np.nanquantile(boots, [0.025, 0.975])
    dlo, dhi = np.nanquantile(deltas, [0.025, 0.975])
    return {"auc": a, "auc_lo": lo, "auc_hi": hi, "delta": a - a0, "delta_lo": dlo, "delta_hi": dhi}


# -- the sidecar -------------------------------------------------------------------------------
def replay(bundle: Path, sc: Scenario, window: int, seed: int, state: Path) -> dict[str, Any]:
    """Send ``sc`` through a fresh in-process sidecar, one window per ClassifyBatch."""
    settings = ServeSettings(
        bundle=bundle,
        port=0,
        metrics_port=0,
        store="memory",
        state_dir=state,
        log_level="WARNING",
        # Replayed faster than real time: no window may be skipped, no stream thinned.
        max_window_evaluations_per_second=0,
        change_max_samples_per_second=0,
        domain_every=1,
    )
    sidecar = Sidecar(settings).start()
    rng = np.random.default_rng(seed)
    windows: list[dict[str, Any]] = []
    try:
        with channel(sidecar.grpc_target) as ch:
            stub = pb_grpc.MonitorStub(ch)
            for k, start in enumerate(range(0, sc.y.size - window + 1, window)):
                x = sc.x[start : start + window]
                ids = [f"r{start + i}" for i in range(window)]
                stub.ClassifyBatch(
                    pb.ClassifyBatchRequest(
                        request_ids=ids,
                        embeddings=pb.EmbeddingMatrix(
                            rows=window, dim=x.shape[1], f32le=x.astype("<f4").tobytes()
                        ),
                    )
                )
                reviewed = np.flatnonzero(rng.random(window) < LABEL_SHARE)
                stub.SubmitLabels(
                    pb.SubmitLabelsRequest(
                        labels=[
                            pb.Label(request_id=ids[i], unsafe=bool(sc.y[start + i]))
                            for i in reviewed
                        ]
                    )
                )
                st = wait_for(stub, lambda s, k=k: s.detection.windows_evaluated >= k + 1)
                d = st.detection
                windows.append(
                    {
                        "drift_alarm": d.drift_alarm,
                        "silent_failure_suspected": d.silent_failure_suspected,
                        "detectors": {r.name: r.alarm for r in d.detectors},
                        "confidence_relative_change": d.confidence.mean_confidence_relative_change,
                        "window_mean_confidence": d.confidence.window.mean_confidence,
                    }
                )
            # Labels are folded by the worker too: wait until every joined one is counted.
            joined = stub.GetStatus(pb.GetStatusRequest()).labels.joined
            st = wait_for(stub, lambda s: s.labelled.cumulative.n >= joined)
    finally:
        sidecar.stop(grace=1.0)
    return {
        "windows": windows,
        "labels_joined": int(st.labels.joined),
        "rolling_auc": st.labelled.rolling.roc_auc,
        "rolling_n": int(st.labelled.rolling.n),
        "skipped": int(st.detection.windows_skipped),
        "sampled_out": int(st.pipeline.sampled_out_rows),
    }


def wait_for(stub: pb_grpc.MonitorStub, ready, timeout: float = 60.0) -> pb.GetStatusResponse:
    """GetStatus until ``ready(status)``: the worker folds batches after the reply."""
    end = time.monotonic() + timeout
    while True:
        st = stub.GetStatus(pb.GetStatusRequest())
        if ready(st):
            return st
        if time.monotonic() > end:
            raise TimeoutError("the sidecar's worker did not catch up")
        time.sleep(0.01)


# -- main --------------------------------------------------------------------------------------
def verdict(candidate: str, delta: float) -> str:
    if candidate == "control":
        return "control"
    if abs(delta) < BENIGN_MAX:
        return "benign"
    if delta <= -HARMFUL_MIN:
        return "harmful"
    return "neither"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a ~1 minute smoke test")
    ap.add_argument("--rows", type=int, default=None, help="rows per scenario (default 2048)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (1000)")
    ap.add_argument("--train-per-class", type=int, default=1400, help="bundle rows per class")
    ap.add_argument("--out", type=Path, default=CACHE / "results.json")
    args = ap.parse_args()
    args.rows = args.rows or (512 if args.quick else 2048)
    args.bootstrap = args.bootstrap or (100 if args.quick else 1000)
    t_start = time.perf_counter()
    bundle, scorer, scenarios, info = build(args)
    window = info["window_size"]
    control = scenarios[0]
    p0 = scorer.predict_proba(control.x)
    c0 = float(confidence(p0).mean())
    results = []
    with tempfile.TemporaryDirectory(prefix="sw-harm-state-") as state:
        for k, sc in enumerate(scenarios):
            t0 = time.perf_counter()
            p = scorer.predict_proba(sc.x)
            truth = auc_ci(p, sc.y, p0, control.y, sc.paired, args.bootstrap, args.seed + k)
            side = replay(bundle, sc, window, args.seed + k, Path(state) / str(k))
            w = side.pop("windows")
            dets = sorted({d for win in w for d in win["detectors"]})
            results.append(
                {
                    "scenario": sc.name,
                    "candidate": sc.candidate,
                    "verdict": verdict(sc.candidate, truth["delta"]),
                    "rows": int(sc.y.size),
                    "unique_rows": sc.unique_rows,
                    "unsafe_share": float(sc.y.mean()),
                    "mean_angle_deg": sc.angle,
                    **truth,
                    "mean_confidence": float(confidence(p).mean()),
                    "mean_confidence_change_vs_iid": float(confidence(p).mean()) - c0,
                    "sidecar_confidence_relative_change": float(
                        np.mean([x["confidence_relative_change"] for x in w])
                    ),
                    "windows": len(w),
                    "drift_alarm_share": float(np.mean([x["drift_alarm"] for x in w])),
                    "suspected_share": float(np.mean([x["silent_failure_suspected"] for x in w])),
                    "detector_alarm_share": {
                        d: float(np.mean([x["detectors"].get(d, False) for x in w])) for d in dets
                    },
                    **side,
                    "seconds": time.perf_counter() - t0,
                }
            )
            r = results[-1]
            print(
                f"  {sc.name}: AUC {r['auc']:.3f} ({r['delta']:+.3f}), drift "
                f"{r['drift_alarm_share']:.2f}, suspected {r['suspected_share']:.2f}, "
                f"{r['seconds']:.1f} s",
                flush=True,
            )
    line = machine(("numpy", "grpcio", "torch", "onnxruntime"))
    print(
        f"\nMachine: {line}\n{args.rows} rows per scenario, window {window}, "
        f"{LABEL_SHARE:.0%} labelled, alpha {ALPHA} per window, seed {args.seed}, "
        f"{args.bootstrap} bootstrap resamples; bundle: {info['bundle_training_rows']} "
        f"balanced Civil Comments rows\n"
    )
    det_names = list(results[0]["detector_alarm_share"])
    cols = [
        "scenario", "expected", "measured", "ROC-AUC [95% CI]", "ΔAUC [95% CI]", "angle°",
        "Δ mean conf", "drift windows", "suspected windows",
        *det_names, "sidecar rolling AUC",
    ]  # fmt: skip
    rows = []
    for r in results:
        rows.append(
            [
                r["scenario"],
                r["candidate"],
                r["verdict"],
                f"{r['auc']:.3f} [{r['auc_lo']:.3f}, {r['auc_hi']:.3f}]",
                f"{r['delta']:+.3f} [{r['delta_lo']:+.3f}, {r['delta_hi']:+.3f}]",
                "" if r["mean_angle_deg"] is None else f"{r['mean_angle_deg']:.1f}",
                f"{r['mean_confidence_change_vs_iid']:+.3f}",
                f"{r['drift_alarm_share']:.2f} of {r['windows']}",
                f"{r['suspected_share']:.2f}",
                *(f"{r['detector_alarm_share'][d]:.2f}" for d in det_names),
                f"{r['rolling_auc']:.3f} (n={r['rolling_n']})",
            ]
        )
    print(markdown_table(cols, rows, "lll" + "r" * (len(cols) - 3)))
    wall = time.perf_counter() - t_start
    print(f"\nwall time {wall:.0f} s")
    write_json(
        args.out,
        {
            "machine": line,
            "args": {k: str(v) for k, v in vars(args).items()},
            "label_share": LABEL_SHARE,
            "alpha": ALPHA,
            **info,
            "results": results,
            "wall_seconds": wall,
        },
    )
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
