"""Multi-head test data: the in-repo Civil Comments sample under a cheap hashed embedding.

No model is loaded: a hashed bag of words (plus a little seeded noise, so that no row is
all zeros) separates toxicity / insult / threat well enough to fit and check heads in
well under a second per bundle.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "data" / "civil_comments_sample.csv"
#: The sample's rater-fraction columns (examples/data/PROVENANCE.md).
COLUMNS = (
    "toxicity",
    "severe_toxicity",
    "obscene",
    "threat",
    "insult",
    "identity_attack",
    "sexual_explicit",
)
DIM = 256


def hashed_embed(texts: list[str], dim: int = DIM, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 hashed bag-of-words vectors, deterministic."""
    from sklearn.feature_extraction.text import HashingVectorizer

    x = HashingVectorizer(n_features=dim, alternate_sign=True, norm="l2").transform(texts)
    noise = np.random.default_rng(seed).normal(scale=0.02, size=(len(texts), dim))
    return (x.toarray() + noise).astype(np.float32)


def sample_rows(limit: int | None = None) -> list[dict[str, str]]:
    """The sample's rows as dicts (``text`` and :data:`COLUMNS`), in file order."""
    with SAMPLE.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return rows[:limit] if limit is not None else rows


def sample_xy(
    columns: tuple[str, ...] = ("toxicity", "threat", "insult"), limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Hashed embeddings, (n, k) 0/1 labels at 0.5 and the texts of the sample."""
    rows = sample_rows(limit)
    texts = [r["text"] for r in rows]
    y = np.array([[float(r[c]) >= 0.5 for c in columns] for r in rows], dtype=np.int8)
    return hashed_embed(texts), y, texts
