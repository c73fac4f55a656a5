"""Fit the harmlessness head (offline/audit/harmlessness.py) on PKU-SafeRLHF pairs and
measure it on held-out prompts.

The pairs are split **by prompt** (no prompt on both sides); every pair gives a harmless
(r0, label 1) and a harmful (r1, label 0) example. Held-out figures: ROC-AUC over all
held-out responses, and pairwise accuracy, P(harmless | r0) > P(harmless | r1), with 95%
bootstrap intervals that resample whole prompts. Both feature sets (``response``, ``pair``)
are measured; the head of ``--features`` (default: the better one in 3-fold
CV on the training prompts; C is chosen the same way) is saved to ``--out`` (a small ``.npz``).
Embeddings are cached under ``--cache`` (all-MiniLM-L6-v2, the packaged model).

    taskset -c 1 python benchmarks/harmlessness.py \\
        --pairs <data>/pku_saferlhf_pairs/pku_seferlhf_realign_dpo_5k.json.gz \\
        --out .cache/harmlessness/head.npz
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class CachedEmbedder:
    """``embed_cached`` around an embedder, so refits never re-embed."""

    def __init__(self, inner: Any, cache: Path) -> None:
        self.inner, self.cache = inner, cache

    def embed(self, texts: list[str]) -> np.ndarray:
        from silentwatch.offline.embedders.cache import embed_cached

        return embed_cached(self.inner, texts, self.cache)


def evaluate(model: Any, split: Any, n_boot: int) -> dict[str, Any]:
    from silentwatch.monitor.evaluation.classification import roc_auc
    from silentwatch.offline.audit.harmlessness import cluster_bootstrap, pairwise_accuracy

    test = split.test
    p = [r[0] for r in test]
    s_safe = model.score(p, [r[1] for r in test])
    s_unsafe = model.score(p, [r[2] for r in test])

    def auc(idx: np.ndarray) -> float:
        scores = np.concatenate([s_safe[idx], s_unsafe[idx]])
        return roc_auc(scores, np.r_[np.ones(idx.size), np.zeros(idx.size)])

    def acc(idx: np.ndarray) -> float:
        return pairwise_accuracy(s_safe[idx], s_unsafe[idx])

    every = np.arange(len(test))
    return {
        "auc": auc(every),
        "auc_ci": list(cluster_bootstrap(p, auc, n_boot=n_boot)),
        "pairwise_accuracy": acc(every),
        "pairwise_accuracy_ci": list(cluster_bootstrap(p, acc, n_boot=n_boot, seed=1)),
        "mean_p_harmless_safe": float(s_safe.mean()),
        "mean_p_harmless_unsafe": float(s_unsafe.mean()),
    }


def choose_c(
    emb: Any, features: str, split: Any, grid: list[float], seed: int
) -> tuple[float, dict[str, float]]:
    """The C of ``grid`` with the best mean held-out AUC over 3 folds of the training
    prompts (whole prompts per fold); the test prompts are never touched."""
    from silentwatch.monitor.evaluation.classification import roc_auc
    from silentwatch.offline.audit.harmlessness import HarmlessnessModel

    train = split.train
    if len(grid) == 1:
        return grid[0], {}
    probe = HarmlessnessModel(emb, features=features)  # type: ignore[arg-type]
    p = [r[0] for r in train]
    x_safe = probe.featurize(p, [r[1] for r in train])
    x_unsafe = probe.featurize(p, [r[2] for r in train])
    prompts = sorted(set(p))
    fold_of = {q: i % 3 for i, q in enumerate(np.random.default_rng(seed).permutation(prompts))}
    fold = np.array([fold_of[q] for q in p])
    cv: dict[str, float] = {}
    for c in grid:
        aucs = []
        for k in range(3):
            tr, te = fold != k, fold == k
            m = HarmlessnessModel(emb, features=features, C=c)  # type: ignore[arg-type]
            m.fit_features(
                np.vstack([x_safe[tr], x_unsafe[tr]]), np.r_[np.ones(tr.sum()), np.zeros(tr.sum())]
            )
            s = m.score_features(np.vstack([x_safe[te], x_unsafe[te]]))
            aucs.append(roc_auc(s, np.r_[np.ones(te.sum()), np.zeros(te.sum())]))
        cv[str(c)] = float(np.mean(aucs))
    best = max(grid, key=lambda c: cv[str(c)])
    return best, cv


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pairs", required=True, help="PKU-style JSON(.gz) of prompt/response pairs")
    ap.add_argument("--out", default=str(ROOT / ".cache" / "harmlessness" / "head.npz"))
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "harmlessness" / "emb"))
    ap.add_argument(
        "--features",
        choices=("auto", "response", "pair"),
        default="auto",
        help="the head saved; auto: the feature set with the better CV AUC",
    )
    ap.add_argument("--test-fraction", type=float, default=0.3)
    ap.add_argument(
        "--C",
        default="0.0001,0.0003,0.001,0.01,0.1",
        help="inverse L2 strengths; several: 3-fold CV by prompt",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from silentwatch.offline.audit.harmlessness import (
        HarmlessnessModel,
        load_pku_pairs,
        split_pairs_by_prompt,
    )
    from silentwatch.offline.embedders.hf import load_embedder

    t0 = time.perf_counter()
    rows = load_pku_pairs(args.pairs, args.limit)
    split = split_pairs_by_prompt(rows, args.test_fraction, args.seed)
    n_prompts = len({r[0] for r in rows})
    n_test_prompts = len({r[0] for r in split.test})
    print(
        f"{len(rows)} pairs, {n_prompts} prompts: train {len(split.train)} pairs, "
        f"test {len(split.test)} pairs ({n_test_prompts} prompts)",
        file=sys.stderr,
    )
    emb = CachedEmbedder(load_embedder("minilm", max_length=256), Path(args.cache))
    train_p = [r[0] for r in split.train] * 2
    train_r = [r[1] for r in split.train] + [r[2] for r in split.train]
    train_y = [1] * len(split.train) + [0] * len(split.train)
    result: dict[str, Any] = {
        "pairs": len(rows),
        "prompts": n_prompts,
        "train_pairs": len(split.train),
        "test_pairs": len(split.test),
        "test_prompts": n_test_prompts,
        "seed": args.seed,
        "features": {},
    }
    grid = [float(c) for c in str(args.C).split(",")]
    heads: dict[str, Any] = {}
    for features in ("response", "pair"):
        c, cv = choose_c(emb, features, split, grid, args.seed)
        model = HarmlessnessModel(emb, features=features, C=c)
        model.fit(train_p, train_r, train_y)
        result["features"][features] = {"C": c, "cv_auc": cv} | evaluate(model, split, args.n_boot)
        print(features, json.dumps(result["features"][features]), file=sys.stderr)
        heads[features] = model
    saved = args.features
    if saved == "auto":
        saved = max(heads, key=lambda f: max(result["features"][f]["cv_auc"].values(), default=0))
    heads[saved].save(args.out)
    result["saved"] = saved
    result["seconds"] = time.perf_counter() - t0
    Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
