"""Detection benchmark: false alarms before and delay after a known change point.

Real all-MiniLM-L6-v2 embeddings of Civil Comments texts (../shared/data). A bundle
(paper A's classifier, thresholds at 1% false alarms per window of 256) is trained on
60% of the texts; every stream is 1024 clean live rows, then a change:

  (a) paper A's drift on the next 1024 live rows: Gaussian (per-dimension s), directional
      (s), rotation (magnitude m -> 90 deg * m / 0.15);
  (b) a breaking embedder swap: the next rows embedded by paraphrase-MiniLM-L3-v2 (ONNX);
  (c) a benign swap: the next rows embedded by the int8 ONNX export of MiniLM-L6;
  and a stream with no change.

The sidecar's engine runs as served (tumbling windows of 256 rows); each detector's
per-window false-alarm rate is measured on pre-change windows, its delay is the number
of samples after the change until its first alarmed window ends. Side by side, in the
same run: a label-free CBPE-style estimate (expected accuracy = mean max(p, 1-p)) with
its drop threshold calibrated like the detectors, and alibi-detect's MMDDriftOnline in
its own venv. The peer runs at ERT = 2,560 samples, and the engine's MMD is recalibrated
for it at alpha = 0.1 per tumbling window of 256 (ERT 256 / 0.1 = 2,560): the engine's
own setting (alpha 0.01, ERT 25,600) needs n_bootstraps >= 25,600 in alibi-detect, whose
configuration did not finish in 11 minutes here.

    python benchmarks/detection.py              # ~10 minutes on 2 cores, first run embeds
    python benchmarks/detection.py --no-peer    # without alibi-detect
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import ROOT, SHARED_DATA, machine, table_header, table_row, write_json
from sklearn.model_selection import train_test_split

from silentwatch.monitor.bundle import EmbedderSpec, load_bundle
from silentwatch.monitor.bundle.manifest import DetectorSettings
from silentwatch.monitor.detection.engine import DetectionEngine, EngineOptions, WindowSpec
from silentwatch.monitor.detection.registry import DRIFT_DETECTORS
from silentwatch.monitor.detection.suite import suite_for_bundle
from silentwatch.monitor.evaluation.classification import accuracy, roc_auc
from silentwatch.monitor.scoring import confidence
from silentwatch.monitor.serving.pipeline import PredictionBatch
from silentwatch.monitor.simulate import drift
from silentwatch.monitor.training import train_bundle

CACHE = ROOT / ".cache" / "detection"
WINDOW, ALPHA, PRE, POST, CHUNK = 256, 0.01, 1024, 1024, 64

SCENARIOS: list[tuple[str, str, float]] = [
    ("none", "none", 0.0),
    ("gaussian s=0.005", "gaussian", 0.005),
    ("gaussian s=0.01", "gaussian", 0.01),
    ("gaussian s=0.02", "gaussian", 0.02),
    ("directional s=0.02", "directional", 0.02),
    ("directional s=0.05", "directional", 0.05),
    ("directional s=0.1", "directional", 0.1),
    ("rotation m=0.005", "rotation", 0.005),
    ("rotation m=0.01", "rotation", 0.01),
    ("rotation m=0.02", "rotation", 0.02),
    ("swap to L3 (breaking)", "swap-l3", 0.0),
    ("swap to L6 int8 (benign)", "swap-int8", 0.0),
]


# -- data ---------------------------------------------------------------------------------
def load_texts() -> tuple[list[str], np.ndarray]:
    """Civil Comments texts (both files), label toxicity >= 0.5, deduplicated, in file order."""
    texts, labels, seen = [], [], set()
    for name in ("cody140_civil_comments_4900.csv", "autolabel_civil_comments_1k.csv"):
        path = SHARED_DATA / "civil_comments" / name
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                t = (row.get("text") or "").strip()
                if t and t not in seen:
                    seen.add(t)
                    texts.append(t)
                    labels.append(int(float(row["toxicity"]) >= 0.5))
    return texts, np.asarray(labels, dtype=np.int8)


def embeddings(model: str, texts: list[str]) -> np.ndarray:
    """(n, 384) unit rows, cached under .cache/detection keyed by model and texts."""
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
    path = CACHE / f"{model}-{key}.npy"
    if path.exists():
        return np.load(path)
    t0 = time.perf_counter()
    if model == "minilm-l6":
        from silentwatch.offline.embedders.hf import load_embedder

        x = load_embedder("minilm", max_length=128).embed(texts)
    else:
        from silentwatch.offline.embedders.onnx import load_onnx_embedder

        x = load_onnx_embedder(model, max_length=128).embed(texts)
    print(f"embedded {len(texts)} texts with {model} in {time.perf_counter() - t0:.0f} s")
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, x.astype(np.float32))
    return x.astype(np.float32)


# -- streams ------------------------------------------------------------------------------
def make_stream(kind: str, mag: float, pre: np.ndarray, post: np.ndarray, emb, seed: int):
    rng = np.random.default_rng(seed)
    x6 = emb["minilm-l6"]
    after = x6[post]
    if kind == "none":
        after = x6[post]
    elif kind == "gaussian":
        after = drift.gaussian_drift(after, mag, rng)
    elif kind == "directional":
        after = drift.directional_drift(after, mag, drift.random_direction(x6.shape[1], rng))
    elif kind == "rotation":
        planes = drift.rotation_planes(x6.shape[1], rng)
        after = drift.rotation_drift(after, drift.magnitude_to_angle(mag), planes)
    elif kind == "swap-l3":
        after = emb["paraphrase-l3"][post]
    elif kind == "swap-int8":
        after = emb["minilm-int8"][post]
    angle = drift.mean_angle_degrees(x6[post], after)
    return np.concatenate([x6[pre], after]).astype(np.float32), angle


def run_engine(suite, scorer, x: np.ndarray) -> dict:
    """Feed the stream in chunks as the pipeline would; record every window's alarms."""
    engine = DetectionEngine(
        suite,
        EngineOptions(
            window=WindowSpec(size=WINDOW, stride=WINDOW),
            max_evaluations_per_second=0,
            change_max_samples_per_second=0,  # replayed faster than real time: no thinning
            domain_every=1,
        ),
    )
    windows: list[tuple[int, dict[str, bool], bool]] = []
    changes: dict[str, list[int]] = {}
    seen = 0
    for start in range(0, x.shape[0], CHUNK):
        xc = x[start : start + CHUNK]
        norms = np.linalg.norm(xc, axis=1)
        p = scorer.predict_proba(xc, norms)
        before = engine.windows_evaluated
        counts = {f"{t.kind}:{t.stream}": t.change_points for t in engine.trackers}
        engine.on_predictions(PredictionBatch(xc, norms, p, "classify", "v1", float(start)))
        seen += xc.shape[0]
        if engine.windows_evaluated > before:
            snap = engine.snapshot()
            alarms = {k: r.alarm for k, (r, _) in snap["detectors"].items() if r is not None}
            windows.append((seen, alarms, snap["drift_alarm"]))
        for t in engine.trackers:
            key = f"{t.kind}:{t.stream}"
            if t.change_points > counts[key]:
                changes.setdefault(key, []).append(seen)
    return {"windows": windows, "changes": changes}


def summarise(window_alarms: list[tuple[int, bool]], change_at: int) -> tuple[int, int, int | None]:
    """(pre-change windows, of them alarmed, delay of the first alarmed post-change window)."""
    pre = [a for end, a in window_alarms if end <= change_at]
    post = [end - change_at for end, a in window_alarms if end > change_at and a]
    return len(pre), sum(pre), (post[0] if post else None)


def clean_false_alarms(suite, scorer, x: np.ndarray, n_windows: int, seed: int) -> dict:
    """Alarm rate of each detector on random windows of clean live rows (never calibrated on)."""
    rng = np.random.default_rng(seed)
    p = scorer.predict_proba(x)
    hits = dict.fromkeys(suite.detectors, 0)
    for _ in range(n_windows):
        w = rng.choice(x.shape[0], WINDOW, replace=False)
        for name, det in suite.detectors.items():
            hits[name] += det.statistic(x[w], p[w]) > suite.threshold(name, WINDOW)
    return {k: v / n_windows for k, v in hits.items()}


# -- CBPE-style label-free performance estimate -------------------------------------------
class CBPE:
    """Expected accuracy ``mean max(p, 1-p)`` if the classifier were calibrated.

    Alarm when the window's expected accuracy falls below the reference's by more than
    the ``1 - alpha`` quantile of that drop over held-out windows (same calibration as
    the detectors). It reads confidence only, so it misses paper A's silent failure.
    """

    def __init__(self, holdout_scores: np.ndarray, rng: np.random.Generator) -> None:
        c = confidence(holdout_scores.astype(np.float64))
        self.ref = float(c.mean())
        wins = np.argsort(rng.random((2000, c.size)), axis=1)[:, :WINDOW]
        self.threshold = float(
            np.quantile(self.ref - c[wins].mean(axis=1), 1 - ALPHA, method="higher")
        )

    def alarms(self, p: np.ndarray) -> list[tuple[int, bool]]:
        out = []
        for end in range(WINDOW, p.size + 1, WINDOW):
            est = float(confidence(p[end - WINDOW : end].astype(np.float64)).mean())
            out.append((end, self.ref - est > self.threshold))
        return out


# -- peer -----------------------------------------------------------------------------------
def run_peer(
    ref: np.ndarray,
    streams: dict[str, np.ndarray],
    seed: int,
    workdir: Path,
    n_bootstraps: int,
    peer_window: int,
    alpha: float,
) -> dict | None:
    py = ROOT / ".peer-alibi" / "bin" / "python"
    if not py.exists():
        print("alibi-detect peer not installed: bash benchmarks/peers/setup_alibi.sh")
        return None
    workdir.mkdir(parents=True, exist_ok=True)
    np.save(workdir / "ref.npy", ref)
    files = []
    for name, x in streams.items():
        f = workdir / f"{name}.npz"
        np.savez(f, x=x, change_at=-1 if name.startswith("none") else PRE)
        files.append(str(f))
    out = workdir / "alibi.json"
    cmd = [
        str(py),
        str(ROOT / "benchmarks" / "peers" / "alibi_mmd_online.py"),
        "--reference",
        str(workdir / "ref.npy"),
        "--streams",
        *files,
        "--ert",
        str(WINDOW / alpha),
        "--window-size",
        str(peer_window),
        "--n-bootstraps",
        str(n_bootstraps),
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


# -- main -----------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=6, help="streams per scenario (seeds)")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--fa-windows", type=int, default=1000, help="clean windows for the FA rate")
    ap.add_argument("--split-seed", type=int, default=42, help="bundle / live split")
    ap.add_argument("--fa-only", action="store_true", help="stop after the clean-window FA table")
    ap.add_argument("--peer-reps", type=int, default=2, help="seeds for the (slow) peer")
    ap.add_argument("--peer-bootstraps", type=int, default=5000)
    ap.add_argument("--peer-alpha", type=float, default=0.1, help="per window of 256")
    ap.add_argument("--peer-window", type=int, default=64)
    ap.add_argument("--json", type=Path, default=CACHE / "results.json")
    args = ap.parse_args()

    texts, y = load_texts()
    emb = {m: embeddings(m, texts) for m in ("minilm-l6", "minilm-int8", "paraphrase-l3")}
    n = len(texts)
    perm = np.random.default_rng(args.split_seed).permutation(n)
    train, live = perm[: int(0.6 * n)], perm[int(0.6 * n) :]
    tmp = Path(tempfile.mkdtemp(prefix="sw-detect-"))
    t0 = time.perf_counter()
    train_bundle(
        emb["minilm-l6"][train],
        y[train],
        tmp / "bundle",
        embedder=EmbedderSpec(name="sentence-transformers/all-MiniLM-L6-v2", version="l6"),
        holdout_fraction=0.35,
        detectors=DetectorSettings(window_size=WINDOW, false_alarm_rate=ALPHA),
    )
    bundle = load_bundle(tmp / "bundle")
    cal = bundle.manifest.detectors
    print(
        f"bundle: {len(train)} rows, {cal.holdout_rows} held out; thresholds calibrated in "
        f"{cal.seconds:.1f} s; train+calibrate {time.perf_counter() - t0:.1f} s"
    )
    suite = suite_for_bundle(bundle)
    scorer = bundle.scorer
    # The same bundle recalibrated at the peer's false-alarm setting.
    train_bundle(
        emb["minilm-l6"][train],
        y[train],
        tmp / "bundle-peer",
        embedder=EmbedderSpec(name="sentence-transformers/all-MiniLM-L6-v2", version="l6"),
        holdout_fraction=0.35,
        detectors=DetectorSettings(window_size=WINDOW, false_alarm_rate=args.peer_alpha),
    )
    suite_peer = suite_for_bundle(load_bundle(tmp / "bundle-peer"))
    ours_at_peer: list[tuple[str, int, int | None]] = []
    _, ho = train_test_split(
        np.arange(len(train)), test_size=0.35, stratify=y[train], random_state=42
    )
    cbpe = CBPE(scorer.predict_proba(emb["minilm-l6"][train][ho]), np.random.default_rng(0))

    live_fa = clean_false_alarms(suite, scorer, emb["minilm-l6"][live], args.fa_windows, 7)
    if args.fa_only:
        gap = (
            float(confidence(scorer.predict_proba(emb["minilm-l6"][live])).mean())
            - (cal.reference_confidence["mean_confidence"])
        )
        print(
            f"split seed {args.split_seed}: live - held-out mean confidence {gap:+.4f}; "
            "false alarms per window: " + ", ".join(f"{k} {v:.3f}" for k, v in live_fa.items())
        )
        return 0
    names = [*DRIFT_DETECTORS, "confidence_shift"]
    per: dict[str, dict[str, list]] = {}
    quality: dict[str, list] = {}
    peer_results: list[dict] = []
    for rep in range(args.reps):
        order = np.random.default_rng(1000 + rep).permutation(live)
        pre, post = order[:PRE], order[PRE : PRE + POST]
        streams = {}
        for label, kind, mag in SCENARIOS:
            x, angle = make_stream(kind, mag, pre, post, emb, seed=rep)
            streams[f"{kind}-{mag}"] = x
            res = run_engine(suite, scorer, x)
            p = scorer.predict_proba(x)
            change_at = x.shape[0] if kind == "none" else PRE
            if not args.no_peer and rep < args.peer_reps:
                rp = run_engine(suite_peer, scorer, x)
                _, fa_n, dl = summarise([(e, a["mmd"]) for e, a, _ in rp["windows"]], change_at)
                ours_at_peer.append((f"{kind}-{mag}", fa_n, dl))
            rows = per.setdefault(label, {})
            for name in names:
                rows.setdefault(name, []).append(
                    summarise([(e, a.get(name, False)) for e, a, _ in res["windows"]], change_at)
                )
            rows.setdefault("any drift detector", []).append(
                summarise([(e, d) for e, _, d in res["windows"]], change_at)
            )
            rows.setdefault("CBPE (label-free estimate)", []).append(
                summarise(cbpe.alarms(p), change_at)
            )
            for key, ends in sorted(res["changes"].items()):
                false = [e for e in ends if e <= change_at]
                hit = [e - change_at for e in ends if e > change_at]
                rows.setdefault(f"river {key}", []).append(
                    (1, int(bool(false)), hit[0] if hit else None)
                )
            pa, ya = p[PRE:], y[post]
            quality.setdefault(label, []).append(
                (
                    angle,
                    roc_auc(pa, ya),
                    accuracy(pa, ya),
                    float(confidence(pa).mean()),
                    float(confidence(p[:PRE]).mean()),
                    float(confidence(pa).mean()),
                )
            )
        if not args.no_peer and rep < args.peer_reps:
            pr = run_peer(
                bundle.reference.embeddings,
                streams,
                rep,
                tmp / f"peer{rep}",
                args.peer_bootstraps,
                args.peer_window,
                args.peer_alpha,
            )
            if pr:
                peer_results.append(pr)

    # -- report ---------------------------------------------------------------------------
    print(
        f"\nPlatform: {machine(('numpy',))}; {args.reps} streams per scenario; "
        f"window {WINDOW}, alpha {ALPHA} per window\n"
    )
    print("Classifier on the post-change rows (labels known here, not to the detectors):\n")
    print(
        table_header(
            ["scenario", "mean angle (deg)", "ROC-AUC", "accuracy", "mean confidence pre -> post"],
            "lllll",
        )
    )
    for label, vals in quality.items():
        v = np.nanmean(np.array(vals, dtype=float), axis=0)
        print(
            table_row(
                [
                    label,
                    f"{v[0]:.1f}",
                    f"{v[1]:.3f}",
                    f"{v[2]:.3f}",
                    f"{v[3 + 1]:.3f} -> {v[3]:.3f}",
                ]
            )
        )
    print(
        f"\nPer-window false-alarm rate on {args.fa_windows} random windows of {WINDOW} clean "
        f"live rows ({len(live)} rows the calibration never saw; alpha {ALPHA}):\n"
    )
    print(table_header(["detector", "rate"], "ll"))
    for det, rate in live_fa.items():
        print(table_row([det, f"{rate:.3f}"]))
    # False alarms pooled over every stream's pre-change windows.
    print(
        "\nPre-change windows of the streams (the 12 streams of one seed share their "
        "pre-change rows, so these are strongly correlated):\n"
    )
    fa = {}
    for det in next(iter(per.values())):
        tot = sum(r[0] for rows in per.values() for r in rows.get(det, []))
        hit = sum(r[1] for rows in per.values() for r in rows.get(det, []))
        fa[det] = (hit, tot)
    print(table_header(["detector", "false alarms / pre-change windows", "rate"], "lll"))
    for det, (hit, tot) in fa.items():
        print(table_row([det, f"{hit} / {tot}", f"{hit / max(tot, 1):.3f}"]))
    print(
        "\nDetection delay in samples after the change (median over streams; "
        "'-' = missed in every stream; k/n = streams detected within 1024):\n"
    )
    dets = list(next(iter(per.values())))
    print(table_header(["scenario", *dets], "l" * (1 + len(dets))))
    for label, rows in per.items():
        if label == "none":
            continue
        cells = []
        for det in dets:
            delays = [r[2] for r in rows.get(det, [])]
            got = [d for d in delays if d is not None]
            cells.append(f"{int(np.median(got))} ({len(got)}/{len(delays)})" if got else "-")
        print(table_row([label, *cells]))
    if peer_results:
        print(
            f"\nalibi-detect MMDDriftOnline (ERT {WINDOW / args.peer_alpha:.0f}, window "
            f"{peer_results[0]['window_size']}, {peer_results[0]['n_bootstraps']} bootstraps; "
            f"configure {np.mean([r['config_seconds'] for r in peer_results]):.0f} s, "
            f"{np.mean([s['ms_per_update'] for r in peer_results for s in r['streams']]):.2f} "
            "ms per update):\n"
        )
        columns = [
            "scenario",
            "alibi: streams with a false alarm before the change",
            "alibi delay (median)",
            f"silentwatch mmd at alpha {args.peer_alpha}: false alarm",
            "delay",
        ]
        print(table_header(columns, "lllll"))
        by: dict[str, list] = {}
        for r in peer_results:
            for s in r["streams"]:
                by.setdefault(s["name"], []).append(s)
        for label, kind, mag in SCENARIOS:
            ss = by.get(f"{kind}-{mag}", [])
            fa_n = sum(s["false_alarm_at"] is not None for s in ss)
            got = [s["delay"] for s in ss if s["delay"] is not None]
            d = f"{int(np.median(got))} ({len(got)}/{len(ss)})" if got else "-"
            mine = [r for r in ours_at_peer if r[0] == f"{kind}-{mag}"]
            m_fa = sum(r[1] > 0 for r in mine)
            m_got = [r[2] for r in mine if r[2] is not None]
            m_d = f"{int(np.median(m_got))} ({len(m_got)}/{len(mine)})" if m_got else "-"
            na = kind == "none"
            print(
                table_row(
                    [
                        label,
                        f"{fa_n}/{len(ss)}",
                        "n/a" if na else d,
                        f"{m_fa}/{len(mine)}",
                        "n/a" if na else m_d,
                    ]
                )
            )
    write_json(
        args.json,
        {"per": per, "quality": quality, "fa": fa, "live_fa": live_fa, "peer": peer_results},
        default=str,
        indent=None,
    )
    print(f"\nraw results: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
