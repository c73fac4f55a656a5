"""A labelled evaluation set prepared as paper A does: load, balance, split (seeded)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from silentwatch.monitor.bundle.manifest import DEFAULT_HEAD, check_head_name
from silentwatch.monitor.training.datasets import load_labelled_texts
from silentwatch.offline.splits import Split, balanced_sample, stratified_split


class DataSettings(BaseModel):
    """Where the labelled texts are and how to sample them (paper A's defaults)."""

    model_config = ConfigDict(extra="forbid")

    path: Path | list[Path] = Field(
        ..., description="CSV / JSONL / parquet file(s), same columns; relative to the config file"
    )
    text_column: str = "text"
    label_column: str | list[str] = Field(
        "label",
        description="one column, or one per classifier head (the first is the default head; "
        "balancing and the split follow it)",
    )
    head_names: list[str] | None = Field(
        None, description="the heads' names (default: the column names; one column: 'default')"
    )
    label_threshold: float = Field(0.5, description="fractional labels are binarised at >=")
    positive_label: str | None = Field(None, description="for string labels: the unsafe one")
    max_rows: int | None = Field(10_000, ge=20, description="paper A: 10,000 balanced")
    dedupe: bool = Field(
        True,
        description="drop repeated texts (equal after stripping surrounding whitespace) "
        "before balancing, keeping the first; a copy in the test split of a training row "
        "would flatter every metric",
    )
    balance: bool = True
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    seed: int = 42

    @property
    def paths(self) -> list[Path]:
        return list(self.path) if isinstance(self.path, list) else [self.path]

    @property
    def label_columns(self) -> list[str]:
        return (
            list(self.label_column) if isinstance(self.label_column, list) else [self.label_column]
        )

    @property
    def heads(self) -> list[str]:
        """The heads judged, in order (the first is the default head)."""
        if self.head_names is not None:
            return list(self.head_names)
        cols = self.label_columns
        return cols if isinstance(self.label_column, list) else [DEFAULT_HEAD]

    @model_validator(mode="after")
    def _heads_fit(self) -> DataSettings:
        cols, names = self.label_columns, self.heads
        if not cols:
            raise ValueError("label_column names no column")
        if len(names) != len(cols):
            raise ValueError(
                f"head_names has {len(names)} names for {len(cols)} label columns; give one "
                "name per column"
            )
        for name in names:
            check_head_name(name)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate head names {dup}: each head needs a name of its own")
        return self

    @field_validator("fractions")
    @classmethod
    def _sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0 or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError("fractions (train, val, test) must be positive and sum to 1")
        return v


@dataclass(frozen=True)
class EvalSet:
    texts: list[str]
    y: np.ndarray  # int64 0/1, aligned with texts: the default (first) head's
    split: Split
    rows_loaded: int
    # Texts dropped as repeats of an earlier row, and how many of those carried another label.
    duplicates_dropped: int = 0
    duplicate_label_conflicts: int = 0
    # (n, heads) int64 0/1, column j = head j (column 0 == y); head names in order.
    labels: np.ndarray | None = None
    heads: tuple[str, ...] = (DEFAULT_HEAD,)

    @property
    def y_heads(self) -> np.ndarray:
        return self.y[:, None] if self.labels is None else self.labels

    def describe(self, settings: DataSettings) -> dict:
        return {
            "path": ", ".join(str(p) for p in settings.paths),
            "rows_loaded": self.rows_loaded,
            "duplicates_dropped": self.duplicates_dropped,
            "duplicate_label_conflicts": self.duplicate_label_conflicts,
            "rows_used": len(self.texts),
            "positives_used": int(self.y.sum()),
            "heads": {h: int(self.y_heads[:, j].sum()) for j, h in enumerate(self.heads)},
            "split": self.split.sizes(),
            "balanced": settings.balance,
            "seed": settings.seed,
        }


def first_occurrences(texts: list[str], labels: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Rows to keep so that no text repeats (compared after stripping surrounding
    whitespace; the first row of each text is kept), how many rows were dropped, and how
    many of the dropped carried labels other than the kept row's.

    >>> keep, dropped, conflicts = first_occurrences(
    ...     ["a", "b", " a", "c", "b"], np.array([[1], [0], [1], [0], [1]]))
    >>> keep.tolist(), dropped, conflicts
    ([0, 1, 3], 2, 1)
    """
    first: dict[str, int] = {}
    keep: list[int] = []
    conflicts = 0
    for i, t in enumerate(texts):
        j = first.setdefault(t.strip(), i)
        if j == i:
            keep.append(i)
        elif not np.array_equal(labels[i], labels[j]):
            conflicts += 1
    return np.asarray(keep, dtype=np.int64), len(texts) - len(keep), conflicts


def load_evalset(d: DataSettings) -> EvalSet:
    """Read the file(s), drop repeated texts, keep a (balanced) sample of at most
    ``max_rows``, split it 70/10/20.

    Raises ``ValueError`` with what to change when the file or its columns do not fit.
    """
    texts: list[str] = []
    labels = []
    for path in d.paths:
        part = load_labelled_texts(
            path,
            text_column=d.text_column,
            label_column=d.label_columns,
            label_threshold=d.label_threshold,
            positive_label=d.positive_label,
        )
        texts.extend(part.texts)
        labels.append(part.labels)
    y_heads = np.concatenate(labels).astype(np.int64).reshape(len(texts), -1)
    rows_loaded = len(texts)
    dropped = conflicts = 0
    if d.dedupe:
        keep, dropped, conflicts = first_occurrences(texts, y_heads)
        texts = [texts[i] for i in keep]
        y_heads = y_heads[keep]
    y_all = y_heads[:, 0]
    counts = np.bincount(y_all, minlength=2)
    if counts.min() < 10:
        raise ValueError(
            f"{', '.join(map(str, d.paths))}: {counts[0]} safe and {counts[1]} unsafe rows; "
            "at least 10 of each are needed (check label_column / label_threshold / positive_label)"
        )
    if d.balance:
        rows = balanced_sample(y_all, d.max_rows, seed=d.seed)
    else:
        rows = np.arange(y_all.size)
        if d.max_rows is not None and rows.size > d.max_rows:
            rows = np.sort(np.random.default_rng(d.seed).choice(rows, d.max_rows, replace=False))
    y = y_all[rows]
    return EvalSet(
        texts=[texts[i] for i in rows],
        y=y,
        split=stratified_split(y, d.fractions, seed=d.seed),
        rows_loaded=rows_loaded,
        duplicates_dropped=dropped,
        duplicate_label_conflicts=conflicts,
        labels=y_heads[rows] if y_heads.shape[1] > 1 else None,
        heads=tuple(d.heads),
    )
