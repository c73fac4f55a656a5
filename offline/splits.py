"""Paper A's evaluation protocol on any labelled set: a balanced sample, then 70/10/20.

"I Can't Believe It's Not Robust" (arXiv 2603.01297), section 3.1: Civil Comments
binarised at toxicity >= 0.5, 10,000 rows balanced between the classes, split 70/10/20
(train / validation / test) with seed 42. Both steps are stratified and seeded here so an
old and a new embedder are always compared on exactly the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    """Row indices into the loaded dataset."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @property
    def train_val(self) -> np.ndarray:
        return np.sort(np.concatenate([self.train, self.val]))

    def sizes(self) -> dict[str, int]:
        return {k: int(getattr(self, k).size) for k in ("train", "val", "test")}


def balanced_sample(y: np.ndarray, max_rows: int | None, *, seed: int = 42) -> np.ndarray:
    """Indices of an equal number of rows per class, at most ``max_rows`` in all.

    Each class contributes ``min(max_rows // 2, smallest class count)`` rows drawn
    without replacement; the result is sorted.

    >>> y = np.array([0] * 8 + [1] * 3)
    >>> idx = balanced_sample(y, None)
    >>> np.bincount(y[idx]).tolist()
    [3, 3]
    """
    y = np.asarray(y).reshape(-1)
    counts = np.bincount(y, minlength=2)
    if counts.min() == 0:
        raise ValueError(f"both classes are needed, have {counts[0]} safe and {counts[1]} unsafe")
    per_class = int(counts.min())
    if max_rows is not None:
        per_class = min(per_class, max_rows // 2)
    rng = np.random.default_rng(seed)
    parts = [rng.choice(np.flatnonzero(y == c), size=per_class, replace=False) for c in (0, 1)]
    return np.sort(np.concatenate(parts))


def stratified_split(
    y: np.ndarray,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    *,
    seed: int = 42,
    rows: np.ndarray | None = None,
) -> Split:
    """Split ``rows`` (default: all) into train / val / test, stratified by class.

    Per class the rows are shuffled and cut at the cumulative fractions, so each part
    keeps the class balance to within one row.

    >>> s = stratified_split(np.array([0, 1] * 50))
    >>> s.sizes()
    {'train': 70, 'val': 10, 'test': 20}
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1: {fractions}")
    y = np.asarray(y).reshape(-1)
    rows = np.arange(y.size) if rows is None else np.asarray(rows)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in (0, 1):
        members = rng.permutation(rows[y[rows] == c])
        cuts = np.round(np.cumsum(fractions)[:2] * members.size).astype(int)
        for k, chunk in enumerate(np.split(members, cuts)):
            parts[k].append(chunk)
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    return Split(train=train, val=val, test=test)
