"""Labelled text tables from a user's own files: CSV (optionally .gz), JSONL, parquet."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class LabelledTexts:
    texts: list[str]
    labels: np.ndarray  # (n,) int8, 1 = unsafe


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def read_rows(path: Path) -> Iterator[dict]:
    """The rows of a CSV / TSV / JSONL / parquet file (optionally gzipped) as dicts."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv") or name.endswith(".tsv"):
        with _open_text(path) as fh:
            yield from csv.DictReader(fh, delimiter="\t" if name.endswith(".tsv") else ",")
    elif name.endswith(".jsonl") or name.endswith(".ndjson"):
        with _open_text(path) as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{lineno} is not valid JSON ({exc.msg})") from None
    elif name.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(
                "reading parquet needs pyarrow: pip install 'silentwatch[parquet]'"
            ) from None
        yield from pq.read_table(path).to_pylist()
    else:
        raise ValueError(
            f"{path}: unsupported format; use .csv, .tsv, .jsonl or .parquet (optionally .gz)"
        )


def _to_label(value: object, threshold: float, positive: str | None) -> int:
    if positive is not None:
        return int(str(value).strip() == positive)
    if isinstance(value, bool):
        return int(value)
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(
            f"label {value!r} is not numeric; pass --positive-label to name the unsafe class"
        ) from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"label {value!r} is outside [0, 1]")
    return int(v >= threshold)


def load_labelled_texts(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_threshold: float = 0.5,
    positive_label: str | None = None,
    limit: int | None = None,
) -> LabelledTexts:
    """Read texts and binary labels; a fractional label (Civil Comments' toxicity) is
    binarised at ``label_threshold``; rows with empty text are skipped.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = p.write_text("text,toxicity\\nhello,0.1\\nawful,0.8\\n")
    >>> load_labelled_texts(p, label_column="toxicity").labels.tolist()
    [0, 1]
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file {path} does not exist")
    texts: list[str] = []
    labels: list[int] = []
    for i, row in enumerate(read_rows(path)):
        if i == 0:
            missing = [c for c in (text_column, label_column) if c not in row]
            if missing:
                raise ValueError(
                    f"{path} has no column(s) {missing}; it has {sorted(row)[:12]} — "
                    "set --text-column / --label-column"
                )
        text = row.get(text_column)
        if text is None or not str(text).strip():
            continue
        texts.append(str(text))
        labels.append(_to_label(row.get(label_column), label_threshold, positive_label))
        if limit is not None and len(texts) >= limit:
            break
    if not texts:
        raise ValueError(f"{path} holds no rows with text")
    return LabelledTexts(texts, np.asarray(labels, dtype=np.int8))
