"""Labelled text tables from a user's own files: CSV (optionally .gz), JSONL, parquet."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class LabelledTexts:
    texts: list[str]
    # (n,) int8, 1 = unsafe; (n, k) when several label columns were asked for, in that order.
    labels: np.ndarray
    label_columns: tuple[str, ...] = ()


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
    label_column: str | Sequence[str] = "label",
    label_threshold: float = 0.5,
    positive_label: str | None = None,
    limit: int | None = None,
) -> LabelledTexts:
    """Read texts and binary labels; a fractional label (Civil Comments' toxicity) is
    binarised at ``label_threshold``; rows with empty text are skipped.

    Parameters
    ----------
    path : str or Path
        A CSV / TSV / JSONL / parquet file, optionally gzipped.
    text_column : str
        The column holding the texts.
    label_column : str or sequence of str
        One column: ``labels`` has shape (n,). A list or tuple of columns (one per
        classifier head): ``labels`` has shape (n, k), column j from ``label_column[j]``.
    label_threshold : float
        Fractional labels count as unsafe at ``>=`` this, in every label column.
    positive_label : str, optional
        A string label value meaning unsafe (then labels are compared, not thresholded).
    limit : int, optional
        Keep only the first ``limit`` rows with text.

    Returns
    -------
    LabelledTexts
        The texts, their int8 labels and the label columns read.

    Raises
    ------
    ValueError
        A missing file or column (named, with the columns the file has), a label that is
        neither numeric in [0, 1] nor comparable with ``positive_label``, no rows.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = p.write_text("text,toxicity,threat\\nhello,0.1,0.0\\nawful,0.8,0.6\\n")
    >>> load_labelled_texts(p, label_column="toxicity").labels.tolist()
    [0, 1]
    >>> load_labelled_texts(p, label_column=["toxicity", "threat"]).labels.tolist()
    [[0, 0], [1, 1]]
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file {path} does not exist")
    columns = (label_column,) if isinstance(label_column, str) else tuple(label_column)
    if not columns:
        raise ValueError("no label column given")
    dup = sorted({c for c in columns if columns.count(c) > 1})
    if dup:
        raise ValueError(f"label column(s) {dup} given twice; name each column once")
    texts: list[str] = []
    labels: list[list[int]] = []
    for i, row in enumerate(read_rows(path)):
        if i == 0:
            missing = [c for c in (text_column, *columns) if c not in row]
            if missing:
                have = list(row)
                shown = ", ".join(have[:40]) + (
                    f" (+{len(have) - 40} more)" if len(have) > 40 else ""
                )
                raise ValueError(
                    f"{path} has no column(s) {missing}; its columns are: {shown} — "
                    "set --text-column / --label-column"
                )
        text = row.get(text_column)
        if text is None or not str(text).strip():
            continue
        texts.append(str(text))
        values = []
        for c in columns:
            try:
                values.append(_to_label(row.get(c), label_threshold, positive_label))
            except ValueError as exc:
                raise ValueError(f"{path}, data row {i + 1}, column {c!r}: {exc}") from None
        labels.append(values)
        if limit is not None and len(texts) >= limit:
            break
    if not texts:
        raise ValueError(f"{path} holds no rows with text")
    out = np.asarray(labels, dtype=np.int8)
    return LabelledTexts(
        texts, out[:, 0] if isinstance(label_column, str) else out, label_columns=columns
    )
