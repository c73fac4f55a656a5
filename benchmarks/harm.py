"""Drift is not harm: what the frozen head's ROC-AUC did beside what the sidecar said.

Real all-MiniLM-L6-v2 embeddings (``open_embedder("minilm")``, cached with
``embed_cached`` under the gitignored ``.cache/harm``) of two labelled data sets, each
with its own bundle (paper A's recipe, ``train_bundle`` on that data set's training part,
drift detectors calibrated family-wise at 1% of clean windows, 35% of the bundle rows held
out, 256 of them kept as paired canaries):

  civil_comments  both fractional Civil Comments files (toxicity >= 0.5), balanced bundle
                  (a weak head: held-out AUC ~0.70). Benign? case-type (topic) mixes, prior
                  shifts, the other collection, the test split, TweetEval offensive
                  (train / test), Davidson.
  instructions    refusal_direction's harmful vs harmless instructions, bundle at 20%
                  unsafe from AdvBench, JailbreakBench, StrongREJECT and harmful_train
                  (a strong head: ~0.998). Benign? category mixes, AdvBench only, prior
                  shifts, the harmless test split, HarmBench (unseen), XSTest.

On each, the iid stream's own texts re-embedded (paired with it): the int8 export,
paraphrase-MiniLM-L3-v2, a 50% rollout of L3, truncation, first-token (CLS) pooling and
paper A's Gaussian drift. Every ``Scenario`` carries its live embedder (``live``,
``live_embed(texts)``), so canary texts can be embedded the way that scenario's traffic was.

Whether a candidate is benign (|dAUC| < 0.01 vs the iid stream) or harmful
(dAUC <= -0.02) is measured, not assumed. Each stream goes through a real in-process
sidecar (``Sidecar``) over loopback gRPC: first one canary submission by the scenario's
live embedder (``CanaryClient.check``, as on a deploy), then per window ClassifyBatch (one
window of rows, with request ids), SubmitLabels for a random 30% of them (delayed human
review), then GetStatus once the window is evaluated. Replayed faster than real time, so
the window-evaluation and change-point rate caps are off, and the domain classifier runs
every window (``domain_every`` 1) so that every detector reads every window.

    python benchmarks/harm.py                # ~1 minute on 2 cores once embeddings are cached
    python benchmarks/harm.py --no-sidecar   # the truth (dAUC, CIs) only
    python benchmarks/harm.py --quick        # 512 rows per scenario: a smoke test
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from harness import ROOT, SHARED_DATA, channel, machine, markdown_table, write_json

from silentwatch.client import CanaryClient
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
TARGET_ROWS = 1024  # harm must be flagged within this many traffic rows (issue 15's target)
LABEL_SHARE = 0.3  # share of each batch a human reviews and labels (SubmitLabels)
ALPHA = 0.01  # false alarms per window the detectors are calibrated to


# -- data ---------------------------------------------------------------------------------
@dataclass
class Texts:
    """Labelled texts with where each came from (file or collection, case-type bucket)."""

    text: list[str] = field(default_factory=list)
    y: list[int] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    case: list[str] = field(default_factory=list)

    def add(self, text: str, y: int, source: str, case: str = "") -> None:
        self.text.append(text)
        self.y.append(y)
        self.source.append(source)
        self.case.append(case)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels (int8), sources and cases as arrays, for masks."""
        return np.asarray(self.y, dtype=np.int8), np.asarray(self.source), np.asarray(self.case)


def _rows(path: Path) -> Iterator[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        yield from csv.DictReader(fh)


def _json(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


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


# StrongREJECT's six categories as refusal_direction's harmful_test spells them; its other
# capitalised categories (ten prompts each) are JailbreakBench's, its snake_case ones HarmBench's.
_STRONGREJECT = {
    "Non-violent crimes", "Violence", "Disinformation and deception",
    "Hate, harassment and discrimination", "Illegal goods and services", "Sexual content",
}  # fmt: skip


def instructions() -> Texts:
    """refusal_direction's instructions: unsafe = harmful (AdvBench, HarmBench, ...), safe =
    harmless (Alpaca); de-duplicated by text, first source wins.

    ``source`` is the collection: ``advbench``, ``harmbench`` (raw val + test, harmful_val
    and harmful_test's snake_case categories), ``jailbreakbench``, ``strongreject``,
    ``rd-train`` (harmful_train's rows not in AdvBench: MaliciousInstruct, TDC2023),
    ``harmless-train`` / ``-val`` / ``-test``; ``case`` is the category where one is known.
    """
    out, seen = Texts(), set()
    rd, raw = (
        SHARED_DATA / "refusal_direction" / "splits",
        SHARED_DATA / "refusal_direction" / "raw",
    )

    def add(t: str, y: int, source: str, case: str = "") -> None:
        t = (t or "").strip()
        if t and t not in seen:
            seen.add(t)
            out.add(t, y, source, case or "")

    for row in _rows(raw / "advbench.csv"):
        add(row["goal"], 1, "advbench")
    for name in ("harmbench_val.csv", "harmbench_test.csv"):
        for row in _rows(raw / name):
            add(row["Behavior"], 1, "harmbench", row["SemanticCategory"])
    for row in _json(rd / "harmful_val.json"):
        add(row["instruction"], 1, "harmbench", row["category"])
    for row in _json(rd / "harmful_test.json"):
        cat = row["category"] or ""
        src = (
            "strongreject" if cat in _STRONGREJECT
            else "harmbench" if cat.islower() else "jailbreakbench"
        )  # fmt: skip
        add(row["instruction"], 1, src, cat)
    for row in _json(rd / "harmful_train.json"):
        add(row["instruction"], 1, "rd-train")
    for split in ("train", "val", "test"):
        name = f"harmless_{split}.json" + (".gz" if split == "train" else "")
        for row in _json(rd / name):
            add(row["instruction"], 0, f"harmless-{split}")
    return out


def xstest() -> Texts:
    """XSTest: safe prompts that look unsafe (homonyms, figurative language ...) and their
    unsafe contrasts."""
    out = Texts()
    for row in _rows(SHARED_DATA / "xstest" / "xstest_prompts.csv"):
        t = (row.get("prompt") or "").strip()
        if t:
            out.add(t, int(row["label"] == "unsafe"), "xstest", row["type"])
    return out


# -- embeddings -----------------------------------------------------------------------------
_LOADED: dict[str, Any] = {}
# Rows already embedded in this process, by variant and text: the on-disk cache is keyed on
# whole lists, so a subset of texts embedded before (a stream's, a bundle's canaries) is
# looked up here instead of re-embedded.
_MEMO: dict[str, dict[str, np.ndarray]] = {}
VALIDATED = "minilm"  # every bundle's embedder: all-MiniLM-L6-v2, mean pooling, 256 tokens


def embed(variant: str, texts: list[str], *, raw: bool = False) -> np.ndarray:
    """(n, 384) rows of ``texts`` by one embedder variant, through the embedding cache.

    ``minilm`` (mean pooling, 256 tokens: the bundles' embedder), ``minilm-int8``,
    ``paraphrase-l3``, ``minilm-lenN`` (truncation to N tokens), ``minilm-cls``
    (first-token pooling), ``minilm-bf16`` (bfloat16 forward pass). Unit rows, or with
    ``raw`` the pooled vectors before normalisation.
    """
    from silentwatch.offline.embedders import embed_cached, open_embedder

    key = variant + ("@raw" if raw else "")
    if key not in _LOADED:
        # The variants are the embedders' own load options (offline/embedders/registry.py).
        opts: dict[str, Any] = {"normalize": not raw}
        if variant == "minilm-cls":
            variant, opts["pooling"] = "minilm", "cls"
        elif variant.startswith("minilm-len"):
            variant, opts["max_length"] = "minilm", int(variant[10:])
        elif variant == "minilm-bf16":
            variant, opts["dtype"] = "minilm", "bfloat16"
        _LOADED[key] = open_embedder(variant, **opts)
    memo = _MEMO.setdefault(key, {})
    if texts and all(t in memo for t in texts):  # every text already embedded in this run
        return np.stack([memo[t] for t in texts])
    t0 = time.perf_counter()
    x = np.asarray(embed_cached(_LOADED[key], texts, CACHE / "embeddings"), dtype=np.float32)
    if (dt := time.perf_counter() - t0) > 2:
        print(f"  embedded {len(texts):,} texts with {key} in {dt:.0f} s", flush=True)
    memo.update(zip(texts, x, strict=True))
    return x


def _text_unit(texts: list[str], seed: int) -> np.ndarray:
    """A number in [0, 1) per text, from (seed, text) alone: the same text always routes
    (and is perturbed) the same way, whichever batch or stream it comes in."""
    return np.asarray(
        [
            int.from_bytes(hashlib.sha256(f"{seed}\0{t}".encode()).digest()[:8], "little") / 2**64
            for t in texts
        ]
    )


@dataclass(frozen=True)
class LiveEmbedder:
    """What produces a scenario's live embeddings, for replaying any text through it.

    ``kind``:

    * ``validated``: the bundle's embedder, unchanged (traffic shifts);
    * ``variant``: every row re-embedded by ``variant`` (a model swap or a configuration
      change of the same model);
    * ``rollout``: a share ``share`` of texts re-embedded by ``variant``, the rest by the
      validated embedder; which texts is decided by ``(seed, text)``, so a text always
      lands on the same side (sticky routing);
    * ``gaussian``: the validated embedder's unit rows plus N(0, ``sigma``²) per
      dimension, re-normalised (paper A's Gaussian drift); the noise is drawn from
      ``(seed, text)``, so a text always gets the same vector.
    """

    kind: str = "validated"
    variant: str = VALIDATED
    share: float = 1.0
    sigma: float = 0.0
    seed: int = 0

    def describe(self) -> str:
        if self.kind == "validated":
            return f"validated ({VALIDATED})"
        if self.kind == "variant":
            return self.variant
        if self.kind == "rollout":
            return f"{self.share:.0%} of texts from {self.variant} (seed {self.seed})"
        return f"{VALIDATED} + Gaussian sigma={self.sigma} per dimension (seed {self.seed})"

    def embed(self, texts: list[str], *, raw: bool = False) -> np.ndarray:
        """(n, 384) rows of ``texts`` as this live embedder would send them (cached)."""
        texts = list(texts)
        if self.kind == "variant":
            return embed(self.variant, texts, raw=raw)
        x0 = embed(VALIDATED, texts, raw=raw)
        if self.kind == "validated":
            return x0
        if self.kind == "rollout":
            moved = _text_unit(texts, self.seed) < self.share
            if not moved.any():
                return x0
            out = x0.copy()
            idx = np.flatnonzero(moved)
            out[idx] = embed(self.variant, [texts[i] for i in idx], raw=raw)
            return out
        if self.kind == "gaussian":
            u = _text_unit(texts, self.seed)
            noise = np.stack(
                [np.random.default_rng(int(v * 2**63)).standard_normal(x0.shape[1]) for v in u]
            ).astype(np.float32)
            if raw:  # noise on the raw scale, in proportion to each row's norm
                norms = np.linalg.norm(x0, axis=1, keepdims=True)
                return x0 + self.sigma * norms * noise
            return drift.normalise(x0 + self.sigma * noise).astype(np.float32)
        raise ValueError(f"unknown live embedder kind {self.kind!r}")


# -- scenarios ------------------------------------------------------------------------------
@dataclass
class Scenario:
    """One stream of traffic: texts, embeddings and labels, and what it is a candidate for.

    ``live`` says which embedder produced ``x`` from ``texts``; ``live_embed(texts)``
    embeds any texts (a bundle's canaries, say) the same way, so ``live_embed(texts)``
    reproduces ``x`` row for row (to float32 rounding: batches differ).
    """

    name: str
    candidate: str  # control, benign or harmful: what it is expected to be, then measured
    kind: str  # what changed: control, topic, prior, collection, split, platform, embedder
    dataset: str
    texts: list[str]
    x: np.ndarray
    y: np.ndarray
    unique_rows: int
    live: LiveEmbedder = field(default_factory=LiveEmbedder)
    paired: bool = False  # same texts, same order as the iid stream (paired bootstrap)
    angle: float | None = None  # mean angle to the bundle embedder's rows of the same texts

    def live_embed(self, texts: list[str]) -> np.ndarray:
        """``texts`` embedded the way this scenario's live embedder would (through the cache)."""
        return self.live.embed(texts)


@dataclass
class Dataset:
    """One labelled data set with its own bundle (trained on its own training part) and
    its scenarios. Indices are rows of ``texts`` / ``x``."""

    name: str
    texts: Texts
    x: np.ndarray  # the validated embedder's unit rows of every text in ``texts``
    y: np.ndarray
    bundle_rows: np.ndarray  # rows given to train_bundle (its training + held-out rows)
    holdout: np.ndarray  # the held-out part of bundle_rows (calibration, held-out metrics)
    pool: np.ndarray  # rows the bundle never saw: the iid stream comes from here
    bundle_dir: Path
    scorer: LinearScorer
    window: int
    info: dict[str, Any]
    scenarios: list[Scenario] = field(default_factory=list)

    @property
    def fit_rows(self) -> np.ndarray:
        """The rows the head was fitted on (the bundle's reference is drawn from these)."""
        return np.setdiff1d(self.bundle_rows, self.holdout)


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


def _bundle(
    name: str, texts: Texts, x: np.ndarray, rows: np.ndarray, pool: np.ndarray, seed: int
) -> Dataset:
    """``train_bundle`` on ``rows`` (35% of them held out, stratified, for calibration)."""
    y = np.asarray(texts.y, dtype=np.int8)
    rng = np.random.default_rng(seed)
    ho_local = np.concatenate(
        [
            rng.permutation(np.flatnonzero(y[rows] == c))[: round(0.35 * (y[rows] == c).sum())]
            for c in (0, 1)
        ]
    )
    tmp = Path(tempfile.mkdtemp(prefix=f"sw-harm-{name}-"))
    t0 = time.perf_counter()
    train_bundle(
        x[rows],
        y[rows],
        tmp / "bundle",
        embedder=_LOADED[VALIDATED].spec(),
        holdout_rows=ho_local,
        seed=seed,
        # Paired canaries: 256 held-out rows, half of each class, with their embeddings.
        texts=[texts.text[i] for i in rows],
        # "auto": the default settings (window 256, alpha 0.01), the window halved until
        # the held-out rows can calibrate it, as `silentwatch bundle train` does.
        detectors="auto",
    )
    bundle = load_bundle(tmp / "bundle")
    window = bundle.manifest.detectors.settings.window_size
    m = bundle.manifest.training.holdout_metrics
    print(
        f"[{name}] bundle: {rows.size} rows ({int(y[rows].sum())} unsafe), "
        f"{ho_local.size} held out, held-out AUC {m['roc_auc']:.3f}, window {window}, "
        f"train + calibrate {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    info = {
        "bundle_rows": int(rows.size),
        "bundle_unsafe_share": float(y[rows].mean()),
        "evaluation_pool_rows": int(pool.size),
        "window_size": int(window),
        "bundle_holdout_metrics": dict(m),
        "reference_mean_confidence": bundle.manifest.detectors.reference_confidence[
            "mean_confidence"
        ],
    }
    return Dataset(
        name, texts, x, y, rows, rows[ho_local], pool, tmp / "bundle", bundle.scorer, window, info
    )


class _Builder:
    """Appends a dataset's scenarios; holds the iid stream the paired ones re-embed."""

    def __init__(self, ds: Dataset, n: int, rng: np.random.Generator, seed: int) -> None:
        self.ds, self.n, self.rng, self.seed = ds, n, rng, seed
        self.iid: np.ndarray | None = None

    def rows(self, name: str, kind: str, idx: np.ndarray, candidate: str = "benign") -> None:
        """A traffic shift: rows of the dataset's own texts, validated embedder."""
        ds = self.ds
        sc = Scenario(
            name, candidate, kind, ds.name, [ds.texts.text[i] for i in idx], ds.x[idx],
            ds.y[idx], np.unique(idx).size,
        )  # fmt: skip
        if candidate == "control":
            self.iid, sc.paired, sc.angle = idx, True, 0.0
        ds.scenarios.append(sc)

    def sub(self, name: str, kind: str, mask: np.ndarray, prior: float | None) -> None:
        pool = self.ds.pool
        self.rows(name, kind, draw(pool[mask[pool]], self.ds.y, self.n, prior, self.rng))

    def other(self, name: str, kind: str, texts: Texts, prior: float | None = None) -> None:
        """A stream from another file or data set: embed only what is streamed."""
        yt = np.asarray(texts.y, dtype=np.int8)
        idx = draw(np.arange(yt.size), yt, self.n, prior, self.rng)
        uniq, inv = np.unique(idx, return_inverse=True)
        t = [texts.text[i] for i in idx]
        xt = embed(VALIDATED, [texts.text[i] for i in uniq])[inv]
        self.ds.scenarios.append(
            Scenario(name, "benign", kind, self.ds.name, t, xt, yt[idx], uniq.size)
        )

    def live(self, name: str, candidate: str, live: LiveEmbedder) -> None:
        """The iid stream's own texts through another live embedder: paired with it."""
        assert self.iid is not None, "the control comes first"
        ds, iid = self.ds, self.iid
        texts = [ds.texts.text[i] for i in iid]
        uniq, inv = np.unique(iid, return_inverse=True)
        x = live.embed([ds.texts.text[i] for i in uniq])[inv]
        ds.scenarios.append(
            Scenario(
                name, candidate, "embedder", ds.name, texts, x, ds.y[iid], uniq.size, live,
                True, drift.mean_angle_degrees(ds.x[iid], x),
            )
        )  # fmt: skip

    def embedder_changes(self, sigmas: tuple[float, ...], lengths: tuple[int, ...]) -> None:
        s = self.seed
        self.live(
            "re-embed: minilm-int8 (ONNX int8 export)",
            "benign",
            LiveEmbedder("variant", "minilm-int8"),
        )
        self.live(
            "swap: paraphrase-MiniLM-L3-v2", "harmful", LiveEmbedder("variant", "paraphrase-l3")
        )
        self.live(
            "partial rollout: 50% of texts from L3", "harmful",
            LiveEmbedder("rollout", "paraphrase-l3", share=0.5, seed=s),
        )  # fmt: skip
        for n in lengths:
            self.live(
                f"config: max_length {n}", "harmful", LiveEmbedder("variant", f"minilm-len{n}")
            )
        self.live(
            "config: first-token (CLS) pooling", "harmful", LiveEmbedder("variant", "minilm-cls")
        )
        for sigma in sigmas:
            self.live(
                f"Gaussian drift s={sigma} (paper A)", "harmful",
                LiveEmbedder("gaussian", sigma=sigma, seed=s),
            )  # fmt: skip


def civil_comments_dataset(args: argparse.Namespace) -> Dataset:
    """Civil Comments (toxicity >= 0.5): a balanced bundle; topic, prior, collection, split
    and platform shifts; the embedder changes on the iid stream's texts."""
    rng = np.random.default_rng(args.seed)
    cc = civil_comments()
    y, source, case = cc.arrays()
    pos, neg = rng.permutation(np.flatnonzero(y == 1)), rng.permutation(np.flatnonzero(y == 0))
    # Balanced bundle rows; the rest is the evaluation pool. The pool keeps enough unsafe
    # rows for one balanced iid stream without repeats (n/2 of them).
    k = min(args.train_per_class, pos.size - args.rows // 2)
    rows, pool = np.concatenate([pos[:k], neg[:k]]), np.concatenate([pos[k:], neg[k:]])
    ds = _bundle("civil_comments", cc, embed(VALIDATED, cc.text), rows, pool, args.seed)
    b = _Builder(ds, args.rows, rng, args.seed)
    b.rows("iid (control)", "control", draw(pool, y, args.rows, 0.5, rng), "control")
    everything = np.ones(y.size, dtype=bool)
    b.sub(
        "case mix: identity_attack + threat",
        "topic",
        np.isin(case, ["identity_attack", "threat"]),
        0.5,
    )
    b.sub(
        "case mix: obscene + sexual + severe", "topic",
        np.isin(case, ["obscene", "sexual_explicit", "severe_toxicity"]), 0.5,
    )  # fmt: skip
    b.sub(
        "case mix: clean + insult (natural prior)",
        "topic",
        np.isin(case, ["clean", "insult"]),
        None,
    )
    b.sub("prior shift: 85% unsafe", "prior", everything, 0.85)
    b.sub("prior shift: 10% unsafe", "prior", everything, 0.10)
    b.sub("collection: autolabel-1k rows only", "collection", source == "autolabel", 0.5)
    b.other("Civil Comments test split (any-attribute label)", "split", civil_comments_test())
    b.other("platform: TweetEval offensive train", "platform", tweeteval_offensive("train"))
    b.other("time: TweetEval offensive test", "split", tweeteval_offensive("test"))
    b.other("platform: Davidson hate/offensive", "platform", davidson())
    b.embedder_changes(sigmas=(0.02,), lengths=(32, 16))
    return ds


def instructions_dataset(args: argparse.Namespace) -> Dataset:
    """refusal_direction instructions (harmful vs harmless), where a MiniLM head is strong.

    The bundle sees AdvBench, JailbreakBench, StrongREJECT and harmful_train's other rows
    (60% of them) against harmless_train rows at 20% unsafe; HarmBench is kept out whole
    (an unseen collection), and so are the harmless val / test splits.
    """
    rng = np.random.default_rng(args.seed + 1)
    it = instructions()
    y, source, case = it.arrays()
    seen_harmful = rng.permutation(
        np.flatnonzero(np.isin(source, ["advbench", "jailbreakbench", "strongreject", "rd-train"]))
    )
    harmless = rng.permutation(np.flatnonzero(source == "harmless-train"))
    k = round(0.6 * seen_harmful.size)
    n_safe = 4 * k  # 20% unsafe
    rows = np.concatenate([seen_harmful[:k], harmless[:n_safe]])
    # The evaluation pool: the other 40% of those collections' harmful rows and enough
    # harmless_train rows for every stream (the rest of harmless_train is left unembedded).
    pool = np.concatenate([seen_harmful[k:], harmless[n_safe : n_safe + 2 * args.rows]])
    test = rng.permutation(np.flatnonzero(source == "harmless-test"))[: 2 * args.rows]
    used = np.concatenate([rows, pool, np.flatnonzero(source == "harmbench"), test])
    x = np.zeros((y.size, 384), dtype=np.float32)  # rows never used stay zero, unembedded
    x[used] = embed(VALIDATED, [it.text[i] for i in used])
    ds = _bundle("instructions", it, x, rows, pool, args.seed)
    ds.info["prior"] = 0.2
    b = _Builder(ds, args.rows, rng, args.seed)
    b.rows("iid (control)", "control", draw(pool, y, args.rows, 0.2, rng), "control")
    everything = np.ones(y.size, dtype=bool)
    harmless_pool = pool[y[pool] == 0]
    for name, cats in (
        ("category mix: violence + sexual + hate", [
            "Violence", "Sexual content", "Hate, harassment and discrimination",
            "Harassment/Discrimination", "Physical harm", "Sexual/Adult content"]),
        ("category mix: fraud + malware + economic", [
            "Non-violent crimes", "Illegal goods and services", "Malware/Hacking",
            "Economic harm", "Fraud/Deception", "Privacy"]),
    ):  # fmt: skip
        harmful = pool[np.isin(case[pool], cats)]
        idx = np.concatenate(
            [
                rng.choice(harmful, round(0.2 * args.rows)),
                rng.choice(harmless_pool, args.rows - round(0.2 * args.rows), replace=False),
            ]
        )
        b.rows(name, "topic", rng.permutation(idx))
    b.sub("collection: AdvBench only (harmful side)", "collection",
          (source == "advbench") | (y == 0), 0.2)  # fmt: skip
    b.sub("prior shift: 50% unsafe", "prior", everything, 0.5)
    b.sub("prior shift: 5% unsafe", "prior", everything, 0.05)
    # Unseen: HarmBench's behaviours (no row in the bundle), harmless from the test split.
    unseen = np.concatenate([np.flatnonzero(source == "harmbench"), test])
    b.rows("collection: HarmBench (unseen) + harmless test split", "collection",
           draw(unseen, y, args.rows, 0.2, rng))  # fmt: skip
    k = round(0.2 * args.rows)
    split = [rng.choice(pool[y[pool] == 1], k), rng.choice(test, args.rows - k, replace=False)]
    b.rows(
        "split: harmless test split + pool harmful", "split", rng.permutation(np.concatenate(split))
    )
    b.other("dataset: XSTest (safe look-alikes vs unsafe)", "platform", xstest())
    b.embedder_changes(sigmas=(0.02, 0.07), lengths=(16, 8))
    return ds


DATASETS = {"civil_comments": civil_comments_dataset, "instructions": instructions_dataset}


def build_datasets(args: argparse.Namespace) -> list[Dataset]:
    """Every data set named in ``args.datasets``, its bundle and its scenarios."""
    out = []
    for name in args.datasets:
        t0 = time.perf_counter()
        out.append(DATASETS[name](args))
        print(f"[{name}] {len(out[-1].scenarios)} scenarios built in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    return out


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
    # Joined labels and traffic rows when label confirmation first raised the page.
    label_confirmed_after: tuple[int, int] | None = None
    try:
        with channel(sidecar.grpc_target) as ch:
            stub = pb_grpc.MonitorStub(ch)
            # The deploy: the moderation service re-embeds the canaries with its live
            # embedder (this scenario's) before traffic flows, as CanaryClient does.
            canary = CanaryClient(ch).check(sc.live_embed)
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
                by_labels = "label_confirmation" in st.silent_failure.evidence
                if by_labels and label_confirmed_after is None:
                    label_confirmed_after = (int(st.labels.joined), start + window)
                windows.append(
                    {
                        "input_drift": d.input_drift,
                        "silent_failure": st.silent_failure.active,
                        "by_labels": by_labels,
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
    r = canary
    return {
        "windows": windows,
        "canary": {
            "failure": r.failure,
            "embedder_changed": r.embedder_changed,
            "angle_mean": r.angle_mean_degrees,
            "linear_cka": r.linear_cka,
            "auc_live": r.roc_auc.estimate,
            "auc_reference": r.reference_roc_auc,
            "auc_drop": r.auc_drop,
            "auc_drop_lower_bound": r.auc_drop_lower_bound,
            "brier_reference": r.reference_brier,
            "brier_live": r.live_brier,
            "brier_increase_lower_bound": r.brier_increase_lower_bound,
            "flip_rate": r.flip_rate.estimate,
            "size": r.size,
        },
        "label_confirmed_after_labels": label_confirmed_after,
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    ap.add_argument("--rows", type=int, default=None, help="rows per scenario (default 2048)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (1000)")
    ap.add_argument(
        "--train-per-class", type=int, default=1400, help="Civil Comments bundle rows per class"
    )
    ap.add_argument(
        "--datasets", default=",".join(DATASETS), help=f"comma list of {', '.join(DATASETS)}"
    )
    ap.add_argument("--no-sidecar", action="store_true", help="the truth (dAUC) only, no replay")
    ap.add_argument("--out", type=Path, default=CACHE / "results.json")
    args = ap.parse_args(argv)
    args.rows = args.rows or (512 if args.quick else 2048)
    args.bootstrap = args.bootstrap or (100 if args.quick else 1000)
    args.datasets = [d for d in args.datasets.split(",") if d]
    if unknown := set(args.datasets) - set(DATASETS):
        ap.error(f"unknown data sets {sorted(unknown)}; choose from {list(DATASETS)}")
    return args


def evaluate(ds: Dataset, args: argparse.Namespace, state: Path) -> list[dict[str, Any]]:
    """Truth (AUC, dAUC vs the iid stream) and, unless --no-sidecar, the replay, per scenario."""
    control = ds.scenarios[0]
    p0 = ds.scorer.predict_proba(control.x)
    c0 = float(confidence(p0).mean())
    results = []
    for k, sc in enumerate(ds.scenarios):
        t0 = time.perf_counter()
        p = ds.scorer.predict_proba(sc.x)
        truth = auc_ci(p, sc.y, p0, control.y, sc.paired, args.bootstrap, args.seed + k)
        r: dict[str, Any] = {
            "dataset": ds.name,
            "scenario": sc.name,
            "kind": sc.kind,
            "live_embedder": sc.live.describe(),
            "candidate": sc.candidate,
            "verdict": verdict(sc.candidate, truth["delta"]),
            "rows": int(sc.y.size),
            "unique_rows": sc.unique_rows,
            "unsafe_share": float(sc.y.mean()),
            "mean_angle_deg": sc.angle,
            **truth,
            "mean_confidence": float(confidence(p).mean()),
            "mean_confidence_change_vs_iid": float(confidence(p).mean()) - c0,
        }
        if not args.no_sidecar:
            side = replay(ds.bundle_dir, sc, ds.window, args.seed + k, state / f"{ds.name}-{k}")
            w = side.pop("windows")
            dets = sorted({d for win in w for d in win["detectors"]})
            r |= {
                "sidecar_confidence_relative_change": float(
                    np.mean([x["confidence_relative_change"] for x in w])
                ),
                "windows": len(w),
                "drift_alarm_share": float(np.mean([x["input_drift"] for x in w])),
                "silent_failure_share": float(np.mean([x["silent_failure"] for x in w])),
                # Labels alone (what the page would be without canaries).
                "label_page_share": float(np.mean([x["by_labels"] for x in w])),
                "detector_alarm_share": {
                    d: float(np.mean([x["detectors"].get(d, False) for x in w])) for d in dets
                },
                **side,
            }
        r["seconds"] = time.perf_counter() - t0
        results.append(r)
        side_line = (
            ""
            if args.no_sidecar
            else f", input drift {r['drift_alarm_share']:.2f}, silent failure "
            f"{r['silent_failure_share']:.2f} (canary AUC {r['canary']['auc_reference']:.3f}"
            f" -> {r['canary']['auc_live']:.3f}, failure {r['canary']['failure']})"
        )
        print(
            f"  [{ds.name}] {sc.name}: AUC {r['auc']:.3f} ({r['delta']:+.3f} "
            f"[{r['delta_lo']:+.3f}, {r['delta_hi']:+.3f}]){side_line}, {r['seconds']:.1f} s",
            flush=True,
        )
    return results


def table(results: list[dict[str, Any]], sidecar: bool) -> str:
    cols = [
        "dataset", "scenario", "live embedder", "expected", "measured", "ROC-AUC [95% CI]",
        "ΔAUC [95% CI]", "angle°", "Δ mean conf",
    ]  # fmt: skip
    if sidecar:
        cols += [
            "input drift windows", "silent failure windows", "canary AUC ref → live",
            "canary AUC drop ≥ / Brier rise ≥", "canary angle°", "canary flips", "canary page",
            "labels confirm after", "sidecar rolling AUC",
        ]  # fmt: skip
    rows = []
    for r in results:
        row = [
            r["dataset"],
            r["scenario"],
            r["live_embedder"],
            r["candidate"],
            r["verdict"],
            f"{r['auc']:.3f} [{r['auc_lo']:.3f}, {r['auc_hi']:.3f}]",
            f"{r['delta']:+.3f} [{r['delta_lo']:+.3f}, {r['delta_hi']:+.3f}]",
            "" if r["mean_angle_deg"] is None else f"{r['mean_angle_deg']:.1f}",
            f"{r['mean_confidence_change_vs_iid']:+.3f}",
        ]
        if sidecar:
            c = r["canary"]
            after = r["label_confirmed_after_labels"]
            row += [
                f"{r['drift_alarm_share']:.2f} of {r['windows']}",
                f"{r['silent_failure_share']:.2f}",
                f"{c['auc_reference']:.3f} → {c['auc_live']:.3f}",
                f"{c['auc_drop_lower_bound']:+.3f} / {c['brier_increase_lower_bound']:+.3f}",
                f"{c['angle_mean']:.1f}",
                f"{c['flip_rate']:.2f}",
                "PAGE" if c["failure"] else "no",
                "—" if after is None else f"{after[0]:,} labels ({after[1]:,} rows)",
                f"{r['rolling_auc']:.3f} (n={r['rolling_n']})",
            ]
        rows.append(row)
    return markdown_table(cols, rows, "lllll" + "r" * (len(cols) - 5))


def caught(r: dict[str, Any]) -> bool:
    """Harm flagged in time: at the first canary submission, or by labels within 1,024
    traffic rows (about 307 labels at 30%)."""
    after = r["label_confirmed_after_labels"]
    return bool(r["canary"]["failure"]) or (after is not None and after[1] <= TARGET_ROWS)


def confusion(results: list[dict[str, Any]]) -> str:
    """The issue's targets, per data set: harmful caught, benign quiet, iid input drift."""
    lines = []
    for name in dict.fromkeys(r["dataset"] for r in results):
        rs = [r for r in results if r["dataset"] == name]
        # The harmful changes are embedder changes; a traffic shift that costs the
        # head AUC (a harder topic, XSTest) is counted apart: canaries cannot see it (the
        # embedder did not change), only labels can.
        harm = [r for r in rs if r["verdict"] == "harmful" and r["kind"] == "embedder"]
        hard = [r for r in rs if r["verdict"] == "harmful" and r["kind"] != "embedder"]
        benign = [r for r in rs if r["verdict"] == "benign"]
        iid = [r for r in rs if r["verdict"] == "control"]
        missed = [r["scenario"] for r in harm if not caught(r)]
        loud = [r["scenario"] for r in benign if r["silent_failure_share"] > 0.01]
        hard_caught = [r["scenario"] for r in hard if caught(r)]
        lines.append(
            f"{name}: harmful embedder changes caught {len(harm) - len(missed)}/{len(harm)}"
            + (f" (missed: {', '.join(missed)})" if missed else "")
            + f"; harmful traffic shifts caught within {TARGET_ROWS} rows "
            f"{len(hard_caught)}/{len(hard)}"
            + f"; benign quiet (silent failure <= 1% of windows) {len(benign) - len(loud)}/"
            f"{len(benign)}"
            + (f" (loud: {', '.join(loud)})" if loud else "")
            + "; iid input drift "
            + ", ".join(f"{r['drift_alarm_share']:.3f} of {r['windows']} windows" for r in iid)
        )
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    t_start = time.perf_counter()
    datasets = build_datasets(args)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sw-harm-state-") as state:
        for ds in datasets:
            results += evaluate(ds, args, Path(state))
    line = machine(("numpy", "grpcio", "torch", "onnxruntime"))
    bundles = "; ".join(
        f"{ds.name}: {ds.info['bundle_rows']} bundle rows "
        f"({ds.info['bundle_unsafe_share']:.0%} unsafe), held-out AUC "
        f"{ds.info['bundle_holdout_metrics']['roc_auc']:.3f}, window {ds.window}"
        for ds in datasets
    )
    print(
        f"\nMachine: {line}\n{args.rows} rows per scenario, {LABEL_SHARE:.0%} labelled, "
        f"alpha {ALPHA} per window, seed {args.seed}, {args.bootstrap} bootstrap resamples\n"
        f"bundles: {bundles}\n"
    )
    print(table(results, not args.no_sidecar))
    if not args.no_sidecar:
        print("\n" + confusion(results))
    wall = time.perf_counter() - t_start
    print(f"\nwall time {wall:.0f} s")
    write_json(
        args.out,
        {
            "machine": line,
            "args": {k: str(v) for k, v in vars(args).items()},
            "label_share": LABEL_SHARE,
            "alpha": ALPHA,
            "datasets": {ds.name: ds.info for ds in datasets},
            "results": results,
            "wall_seconds": wall,
        },
    )
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
