"""A real embedder update, per head: held-out AUC change beside the signals the sidecar raises.

Civil Comments (the two labelled files in ../shared/data/civil_comments, pooled and
de-duplicated by text) with six categories binarised at a rater fraction >= 0.5
(severe_toxicity is left out: 8 positives). A six-head bundle is trained on the packaged
MiniLM-L6's embeddings of the train split; then for each update of the embedder
(the int8 ONNX export: benign; paraphrase-MiniLM-L3: breaking)

* offline truth: each frozen head's held-out ROC-AUC, old vs new embeddings, with DeLong
  95% intervals and the paired change;
* what the sidecar says: a real sidecar (in process, real gRPC) serving the bundle is sent
  the canaries' new-embedder vectors (SubmitCanaryEmbeddings): each head's paired canary
  reading and the bundle-level silent-failure signal; then delayed labels per head (held-out
  rows embedded by the new embedder, Classify with ids, SubmitLabels with ``head=``) and
  each head's label-confirmation state.

Embeddings are cached (``--cache-dir``, default benchmarks/.cache/embeddings, gitignored):
the first run embeds ~5,800 texts with three models (~10 minutes on 2 cores), later runs
take seconds.

    python benchmarks/heads_update.py
    python benchmarks/heads_update.py --json heads_update.json
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from harness import ROOT, SHARED_DATA, machine, markdown_table, write_json

CIVIL = SHARED_DATA / "civil_comments"
FILES = ("cody140_civil_comments_4900.csv", "autolabel_civil_comments_1k.csv")
#: The categories with enough positives to judge (severe_toxicity has 8 in the pool).
HEADS = ("toxicity", "obscene", "threat", "insult", "identity_attack", "sexual_explicit")
OLD = "minilm"
#: The updates, as examples/gate/minilm-to-int8.yaml and minilm-to-l3.yaml name them.
UPDATES = (
    ("benign: MiniLM-L6 int8 ONNX", "minilm-int8"),
    ("breaking: paraphrase-L3", "paraphrase-l3"),
)
DEFAULT_CACHE = ROOT / "benchmarks" / ".cache" / "embeddings"
Z95 = 1.959963984540054


# -- data ------------------------------------------------------------------------------------
def load_civil(folder: Path = CIVIL, heads: Sequence[str] = HEADS) -> tuple[list[str], np.ndarray]:
    """The pooled texts (first occurrence of each text kept, file order) and (n, k) 0/1 labels."""
    seen: set[str] = set()
    texts: list[str] = []
    labels: list[list[int]] = []
    for name in FILES:
        with (folder / name).open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                t = row["text"]
                if t in seen or not t.strip():
                    continue
                seen.add(t)
                texts.append(t)
                labels.append([int(float(row[h]) >= 0.5) for h in heads])
    return texts, np.asarray(labels, dtype=np.int8)


def embed_all(
    specs: Sequence[str], texts: list[str], cache_dir: Path | None
) -> dict[str, tuple[np.ndarray, object]]:
    """``{spec: (embeddings, EmbedderSpec)}``, each read from / written to the cache."""
    from silentwatch.offline.embedders.cache import embed_cached
    from silentwatch.offline.embedders.registry import open_embedder

    out = {}
    for spec in specs:
        t0 = time.perf_counter()
        emb = open_embedder(spec)
        x = embed_cached(emb, texts, cache_dir)
        print(f"  {spec}: {x.shape} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        out[spec] = (x, emb.spec())
    return out


# -- offline truth: each frozen head's held-out AUC, old vs new -------------------------------
@dataclass(frozen=True)
class HeadAuc:
    """One frozen head on the held-out rows: ROC-AUC under the old and the new embeddings."""

    head: str
    positives: int
    negatives: int
    old: tuple[float, float, float]  # estimate, 95% low, high (DeLong)
    new: tuple[float, float, float]
    change: tuple[float, float, float]  # new - old, paired DeLong 95% interval


def _interval(est: float, se: float) -> tuple[float, float, float]:
    return (est, est - Z95 * se, est + Z95 * se)


def frozen_head_aucs(
    y: np.ndarray, p_old: np.ndarray, p_new: np.ndarray, names: Sequence[str]
) -> list[HeadAuc]:
    """Per head (column): DeLong 95% intervals of the old and new AUCs and of their paired
    change, on the same rows (NaN where a class has fewer than two rows)."""
    from silentwatch.monitor.evaluation.paired import delong_paired

    out = []
    for j, name in enumerate(names):
        d = delong_paired(y[:, j], p_old[:, j], p_new[:, j])
        pos = int(y[:, j].sum())
        out.append(
            HeadAuc(
                head=name,
                positives=pos,
                negatives=int(y.shape[0] - pos),
                old=_interval(d.auc_a, math.sqrt(d.var_a) if d.var_a == d.var_a else math.nan),
                new=_interval(d.auc_b, math.sqrt(d.var_b) if d.var_b == d.var_b else math.nan),
                change=_interval(d.auc_b - d.auc_a, d.se_difference),
            )
        )
    return out


def split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random (train, test) split of row indices."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(n * test_fraction)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


# -- what the sidecar says ---------------------------------------------------------------------
def _matrix(x: np.ndarray) -> object:
    from silentwatch.v1 import monitor_pb2 as pb

    x = np.ascontiguousarray(x, dtype="<f4")
    return pb.EmbeddingMatrix(rows=x.shape[0], dim=x.shape[1], f32le=x.tobytes())


def sidecar_signals(
    bundle_dir: Path,
    canary_embedding: Callable[[list[str]], np.ndarray],
    label_x: np.ndarray,
    label_y: np.ndarray,
    *,
    new_version: str,
    state_dir: Path,
) -> dict[str, object]:
    """Serve ``bundle_dir`` in process, submit the canaries' live embeddings and delayed labels.

    ``canary_embedding`` maps the canary texts (GetCanaries) to the live embedder's rows.
    ``label_x`` (n, d) live embeddings are classified with ids (as traffic of the deployed
    embedder version: a silent update) and every head gets its column of ``label_y`` (n, k)
    as labels naming it. Returns the per-head readings, label confirmations and the
    bundle-level silent-failure signal.
    """
    import grpc

    from silentwatch.monitor.bundle import load_bundle
    from silentwatch.monitor.config import load_settings
    from silentwatch.monitor.serving.server import Sidecar
    from silentwatch.v1 import monitor_pb2 as pb
    from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

    bundle = load_bundle(bundle_dir)
    names = [h.name for h in bundle.heads]
    version = bundle.manifest.embedder.version
    settings = load_settings(
        bundle=bundle_dir,
        port=0,
        metrics_port=0,
        store="memory",
        state_dir=state_dir,
    )
    # The sidecar logs each failing head at ERROR; the tables below say the same.
    logging.disable(logging.ERROR)
    sc = Sidecar(settings, bundle=bundle).start()
    try:
        with grpc.insecure_channel(sc.grpc_target) as ch:
            stub = pb_grpc.MonitorStub(ch)
            can = stub.GetCanaries(pb.GetCanariesRequest())
            live = canary_embedding(list(can.texts))
            r = stub.SubmitCanaryEmbeddings(
                pb.SubmitCanaryEmbeddingsRequest(
                    canary_set_id=can.canary_set_id,
                    embeddings=_matrix(live),
                    embedder_version=new_version,
                )
            )
            readings = {h.head: h.reading for h in r.heads}
            ids = [f"lab-{i}" for i in range(label_x.shape[0])]
            for start in range(0, len(ids), 1024):
                part = slice(start, start + 1024)
                stub.ClassifyBatch(
                    pb.ClassifyBatchRequest(
                        request_ids=ids[part],
                        embeddings=_matrix(label_x[part]),
                        embedder_version=version,
                    )
                )
            for j, head in enumerate(names):
                labels = [
                    pb.Label(request_id=i, unsafe=bool(v), head=head)
                    for i, v in zip(ids, label_y[:, j], strict=True)
                ]
                stub.SubmitLabels(pb.SubmitLabelsRequest(labels=labels))
            sc.pipeline.wait_idle(60.0)
            st = stub.GetStatus(pb.GetStatusRequest())
    finally:
        sc.stop(grace=0.5)
        logging.disable(logging.NOTSET)
    heads = {}
    for h in st.heads:
        rd = readings[h.name]
        c = h.labelled.confirmation
        heads[h.name] = {
            "canary_positives": int(rd.positives),
            "canary_size": int(rd.size),
            "canary_reference_auc": rd.reference_roc_auc,
            "canary_live_auc": (rd.roc_auc.estimate, rd.roc_auc.low, rd.roc_auc.high),
            "canary_drop_lower_bound": rd.auc_drop_lower_bound,
            "canary_failure": bool(rd.failure),
            "angle_mean_degrees": rd.angle_mean_degrees,
            "label_reference_auc": c.reference_auc,
            "label_live_auc": c.live_auc,
            "label_drop_lower_bound": c.drop_lower_bound,
            "label_positives": int(c.n_positive),
            "label_negatives": int(c.n_negative),
            "label_checks": int(c.checks),
            "label_confirmed": bool(c.confirmed),
            "silent_failure": bool(h.silent_failure.active),
            "evidence": list(h.silent_failure.evidence),
        }
    return {
        "heads": heads,
        "silent_failure": bool(st.silent_failure.active),
        "failing_heads": [h.name for h in st.heads if h.silent_failure.active],
        "summary": st.silent_failure.summary,
        "evidence": list(st.silent_failure.evidence),
    }


# -- tables ----------------------------------------------------------------------------------
def _ci(t: tuple[float, float, float], signed: bool = False) -> str:
    est, lo, hi = t
    if not math.isfinite(est):
        return "n/a"
    f = "+.3f" if signed else ".3f"
    return f"{est:{f}} [{lo:{f}}, {hi:{f}}]"


def update_table(aucs: list[HeadAuc], signals: dict[str, object]) -> str:
    """One row per head: offline truth beside the canary reading and label confirmation."""
    rows = []
    heads = signals["heads"]
    assert isinstance(heads, dict)
    for a in aucs:
        s = heads[a.head]
        rows.append([
            a.head, f"{a.positives}/{a.positives + a.negatives}", _ci(a.old), _ci(a.new),
            _ci(a.change, signed=True),
            f"{s['canary_positives']}/{s['canary_size']}",
            f"{s['canary_reference_auc']:.3f} -> {_ci(s['canary_live_auc'])}",
            f"{s['canary_drop_lower_bound']:+.3f}",
            "**yes**" if s["canary_failure"] else "no",
            f"{s['label_positives']}+/{s['label_negatives']}-",
            f"{s['label_reference_auc']:.3f} -> {s['label_live_auc']:.3f}",
            f"{s['label_drop_lower_bound']:+.3f}",
            "**yes**" if s["label_confirmed"] else "no",
            "**active**" if s["silent_failure"] else "-",
        ])  # fmt: skip
    cols = [
        "head", "held-out pos/n", "held-out AUC old [95% CI]", "new", "change (paired)",
        "canary pos/n", "canary AUC ref -> live [95% CI]", "canary drop >=", "canary failure",
        "labels", "label AUC ref -> live", "label drop >=", "confirmed", "silent failure",
    ]  # fmt: skip
    return markdown_table(cols, rows, "lrrrrrrrlrrrll")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--test-fraction", type=float, default=0.25)
    ap.add_argument("--labels", type=int, default=500, help="delayed labels per head")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embed-only", action="store_true", help="fill the cache and stop")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args()
    t_start = time.perf_counter()
    print(f"machine: {machine(('grpcio', 'numpy', 'onnxruntime', 'torch'))}\n")
    texts, y = load_civil()
    emb = embed_all([OLD, *(s for _, s in UPDATES)], texts, a.cache_dir)
    if a.embed_only:
        return 0
    from silentwatch.monitor.bundle import load_bundle
    from silentwatch.monitor.training import train_bundle

    train, test = split(len(texts), a.test_fraction, a.seed)
    x_old, old_spec = emb[OLD]
    print(f"{len(texts):,} texts (train {train.size:,}, held-out {test.size:,}); positives "
          + ", ".join(f"{h} {int(y[:, j].sum())}" for j, h in enumerate(HEADS)) + "\n")  # fmt: skip
    results: dict[str, object] = {"machine": machine(), "heads": HEADS, "updates": {}}
    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir = Path(tmp) / "bundle"
        t0 = time.perf_counter()
        train_bundle(
            x_old[train], y[train], bundle_dir, embedder=old_spec, head_names=HEADS,
            texts=[texts[i] for i in train], seed=a.seed,
        )  # fmt: skip
        print(f"six-head bundle trained on {train.size:,} rows in "
              f"{time.perf_counter() - t0:.1f} s\n")  # fmt: skip
        bundle = load_bundle(bundle_dir)
        p_old = bundle.head_scorer.predict_proba(x_old[test])
        index = {t: i for i, t in enumerate(texts)}
        rng = np.random.default_rng(a.seed + 1)
        labelled = np.sort(rng.choice(test, size=min(a.labels, test.size), replace=False))
        for title, spec in UPDATES:
            x_new, new_spec = emb[spec]
            p_new = bundle.head_scorer.predict_proba(x_new[test])
            aucs = frozen_head_aucs(y[test], p_old, p_new, HEADS)
            signals = sidecar_signals(
                bundle_dir,
                lambda ts, x=x_new: x[[index[t] for t in ts]],
                x_new[labelled],
                y[labelled],
                new_version=new_spec.version,
                state_dir=Path(tmp) / f"state-{spec}",
            )
            print(f"### {title} ({OLD} -> {spec})\n")
            print(update_table(aucs, signals))
            failing = signals["failing_heads"]
            print(
                f"\nbundle silent failure: {'ACTIVE' if signals['silent_failure'] else 'no'}"
                + (
                    f" (heads: {', '.join(failing)}; evidence: {', '.join(signals['evidence'])})"
                    if failing
                    else ""
                )
                + f"\nsummary: {signals['summary']}\n",
                flush=True,
            )
            results["updates"][spec] = {
                "title": title,
                "held_out": [asdict(r) for r in aucs],
                "sidecar": signals,
            }
    print(f"total {time.perf_counter() - t_start:.0f} s")
    if a.json:
        write_json(a.json, results, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
