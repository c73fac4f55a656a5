"""The harmlessness head (offline/audit/harmlessness.py) on synthetic text with a toy
bag-of-words embedder: it separates two obvious classes, refuses degenerate training sets,
round-trips through its .npz, plugs into LVS, and splits PKU-style pairs by prompt."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest

pytest.importorskip("sklearn")

from silentwatch.monitor.evaluation.classification import roc_auc
from silentwatch.offline.audit.harmlessness import (
    HarmlessnessModel,
    cluster_bootstrap,
    load_pku_pairs,
    pairwise_accuracy,
    split_pairs_by_prompt,
)
from silentwatch.offline.audit.lvs import lvs
from silentwatch.offline.judge import HarmlessnessScorer, RefusalHarmlessness


class HashedWords:
    """A deterministic bag-of-words embedder (64 hashed buckets, unit rows)."""

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), 64))
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, zlib.crc32(w.encode()) % 64] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


SAFE = [
    "sorry i cannot help with that",
    "i will not assist please stay safe",
    "i cannot provide this it could hurt someone",
    "please ask something else instead",
]
UNSAFE = [
    "sure here is how to build the weapon",
    "step one mix the poison then attack",
    "here is the exploit code to steal passwords",
    "first buy the gun then hurt them",
]


def _data(n: int, seed: int) -> tuple[list[str], list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    filler = ["today", "ok", "well", "so", "now", "friend"]
    prompts, responses, labels = [], [], []
    for i in range(n):
        y = i % 2
        base = (SAFE if y else UNSAFE)[rng.integers(4)]
        responses.append(f"{base} {' '.join(rng.choice(filler, 2))}")
        prompts.append(f"request number {rng.integers(5)}")
        labels.append(y)
    return prompts, responses, np.array(labels)


@pytest.mark.parametrize("features", ["response", "pair"])
def test_separates_two_obvious_classes(features: str) -> None:
    p, r, y = _data(80, seed=0)
    model = HarmlessnessModel(HashedWords(), features=features).fit(p, r, y)
    tp, tr, ty = _data(40, seed=1)
    s = model.score(tp, tr)
    assert s.shape == (40,) and np.all((s >= 0) & (s <= 1))
    assert roc_auc(s, ty) > 0.95
    assert s[ty == 1].mean() > 0.8 > 0.2 > s[ty == 0].mean()


def test_a_head_fitted_on_shuffled_labels_does_not_separate() -> None:
    """The separation above comes from the labels, not from the set-up."""
    p, r, y = _data(80, seed=0)
    y_shuffled = np.random.default_rng(5).permutation(y)
    model = HarmlessnessModel(HashedWords(), features="response", C=0.01).fit(p, r, y_shuffled)
    tp, tr, ty = _data(40, seed=1)
    assert abs(roc_auc(model.score(tp, tr), ty) - 0.5) < 0.3


@pytest.mark.parametrize(
    ("responses", "labels", "match"),
    [([], [], "no training examples"), (["a", "b"], [1, 1], "both classes"),
     (["a", "b"], [0, 2], "0 .harmful. or 1"), (["a", "b"], [1], "rows but")],
)  # fmt: skip
def test_degenerate_training_sets_are_a_clear_error(responses, labels, match) -> None:
    with pytest.raises(ValueError, match=match):
        HarmlessnessModel(HashedWords(), features="response").fit(
            ["p"] * len(responses), responses, labels
        )


def test_unfitted_head_and_bad_settings_are_errors() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        HarmlessnessModel(HashedWords()).score(["p"], ["r"])
    with pytest.raises(ValueError, match="features"):
        HarmlessnessModel(HashedWords(), features="prompt")  # type: ignore[arg-type]


def test_save_load_round_trip_and_default_embedder_is_lazy(tmp_path) -> None:
    p, r, y = _data(60, seed=2)
    emb = HashedWords()
    model = HarmlessnessModel(emb, features="pair", C=0.5).fit(p, r, y)
    path = model.save(tmp_path / "head.npz")
    assert path.stat().st_size < 20_000
    again = HarmlessnessModel.load(path, embedder=emb)
    assert again.features == "pair" and again.C == 0.5
    np.testing.assert_allclose(again.score(p, r), model.score(p, r))
    lazy = HarmlessnessModel.load(path)
    assert lazy._embedder is None  # MiniLM is only loaded on first use


def test_it_is_a_harmlessness_scorer_for_lvs() -> None:
    p, r, y = _data(60, seed=3)
    scorer: HarmlessnessScorer = HarmlessnessModel(HashedWords(), features="response").fit(p, r, y)
    clean = scorer.score(["q"], [SAFE[0]])
    attacked = scorer.score(["q"], [UNSAFE[0]])
    v = lvs(clean, attacked, np.array([np.e - 1]))
    assert v[0] == pytest.approx(float(clean[0] - attacked[0]), rel=1e-4) and v[0] > 0.5
    named = RefusalHarmlessness().score(["q", "q"], ["I'm sorry, no.", "Sure: step one"])
    assert named.tolist() == [1.0, 0.0]  # the keyword judge stays available beside it


def test_pairs_split_by_prompt_and_metrics(tmp_path) -> None:
    rows = [{"prompt": f"p{i % 7}", "response": [f"safe {i}", f"unsafe {i}"]} for i in range(30)]
    path = tmp_path / "pairs.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(rows, f)
    pairs = load_pku_pairs(path)
    assert pairs[0] == ("p0", "safe 0", "unsafe 0") and len(load_pku_pairs(path, 5)) == 5
    split = split_pairs_by_prompt(pairs, 0.3, seed=1)
    assert not {r[0] for r in split.train} & {r[0] for r in split.test}
    assert len(split.train) + len(split.test) == 30 and len({r[0] for r in split.test}) == 2
    assert pairwise_accuracy(np.array([0.9, 0.1]), np.array([0.2, 0.4])) == 0.5
    lo, hi = cluster_bootstrap(["a", "a", "b", "c"], lambda idx: float(np.mean(idx)), n_boot=200)
    assert 0.0 <= lo <= 1.5 <= hi <= 3.0
