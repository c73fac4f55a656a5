"""Data for paper B's latent monitor: labelled (prompt, response) examples and prompt lists.

Paper B ("When Behavioral Safety Evaluation Fails: A Representation-Level Perspective",
arXiv 2606.08044) trains its probe on PKU-SafeRLHF (prompt, response) pairs labelled safe or
unsafe, and measures refusal on lists of harmful and harmless instructions. Here:

* :class:`ResponsePairs` — prompts, responses, labels (0 safe / 1 unsafe) and a prompt id per
  example, so that splits can keep every prompt on one side (the PKU file has ~5.5 pairs per
  prompt: a random row split would leak prompts from train into the held-out set);
* :func:`load_response_pairs` — the PKU pair format (``{"prompt", "response": [safe, unsafe]}``,
  or two response columns) or a labelled table (prompt, response, label columns), from JSON,
  JSONL, CSV/TSV or parquet, optionally gzipped;
* :func:`load_prompts` — one column of prompts (the refusal-direction splits' ``instruction``);
* :func:`split_by_prompt` — a seeded split by prompt id, sized by example counts.

Example
-------
>>> import tempfile, pathlib, json
>>> p = pathlib.Path(tempfile.mkdtemp()) / "pairs.jsonl"
>>> rows = [{"prompt": f"q{i % 3}", "response": [f"safe {i}", f"unsafe {i}"]} for i in range(6)]
>>> _ = p.write_text("\\n".join(json.dumps(r) for r in rows))
>>> pairs = load_response_pairs(p)
>>> len(pairs), pairs.n_prompts, pairs.labels.tolist()[:4]
(12, 3, [0, 1, 0, 1])
>>> train, test = split_by_prompt(pairs, (0.67, 0.33), seed=0)
>>> set(train.prompts) & set(test.prompts)
set()
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from silentwatch.monitor.training.datasets import read_rows

# Label spellings accepted in a user's label column (besides 0/1 numbers and booleans).
_SAFE = frozenset({"0", "safe", "false", "no", "harmless", "benign"})
_UNSAFE = frozenset({"1", "unsafe", "true", "yes", "harmful", "toxic"})


@dataclass(frozen=True)
class ResponsePairs:
    """Labelled (prompt, response) examples with a prompt id for grouping.

    ``labels[i]`` is 1 when ``responses[i]`` is an unsafe answer to ``prompts[i]``;
    ``prompt_ids[i]`` numbers the distinct prompt texts in order of first appearance.
    """

    prompts: list[str]
    responses: list[str]
    labels: np.ndarray  # (n,) int8, 1 = unsafe
    prompt_ids: np.ndarray  # (n,) int64

    def __post_init__(self) -> None:
        n = len(self.prompts)
        sizes = (len(self.responses), self.labels.shape[0], self.prompt_ids.shape[0])
        if any(s != n for s in sizes):
            raise ValueError(f"ResponsePairs fields disagree in length: {n} prompts vs {sizes}")

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def n_prompts(self) -> int:
        return int(np.unique(self.prompt_ids).size)

    def subset(self, rows: Sequence[int] | np.ndarray) -> ResponsePairs:
        """The examples at ``rows`` (prompt ids kept, so subsets of one set stay comparable)."""
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        return ResponsePairs(
            prompts=[self.prompts[i] for i in idx],
            responses=[self.responses[i] for i in idx],
            labels=self.labels[idx],
            prompt_ids=self.prompt_ids[idx],
        )

    @classmethod
    def from_lists(
        cls, prompts: Sequence[str], responses: Sequence[str], labels: Sequence[int] | np.ndarray
    ) -> ResponsePairs:
        """Build from parallel lists; prompt ids number the distinct prompt texts."""
        ids: dict[str, int] = {}
        prompt_ids = np.array([ids.setdefault(p, len(ids)) for p in prompts], dtype=np.int64)
        y = np.asarray(labels).reshape(-1)
        if y.size and not ((y == 0) | (y == 1)).all():
            raise ValueError("labels must be 0 (safe) or 1 (unsafe)")
        return cls(list(prompts), list(responses), y.astype(np.int8), prompt_ids)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _records(path: Path) -> Iterator[Any]:
    """Rows of a data file: a ``.json`` list (optionally gzipped) here, the rest (CSV/TSV,
    JSONL, parquet) through :mod:`silentwatch.monitor.training.datasets`."""
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.name.lower().removesuffix(".gz").endswith(".json"):
        with _open_text(path) as fh:
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path} is not valid JSON ({exc.msg}); JSON Lines files should end in .jsonl"
                ) from None
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a JSON list of records, not {type(data).__name__}")
        yield from data
    else:
        yield from read_rows(path)


def _require(path: Path, row: Any, columns: Sequence[str], hint: str, i: int = 0) -> None:
    where = str(path) if i == 0 else f"{path} row {i + 1}"
    if not isinstance(row, dict):
        raise ValueError(f"{where}: rows must be objects with named columns, got {row!r:.80}")
    missing = [c for c in columns if c not in row]
    if missing:
        raise ValueError(
            f"{where} has no column(s) {missing}; it has {sorted(row)[:12]} — set {hint}"
        )


def _label(value: Any, positive_label: str | None, where: str) -> int:
    if positive_label is not None:
        return int(str(value).strip() == positive_label)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    text = str(value).strip().lower()
    if text in _SAFE or text == "0.0":
        return 0
    if text in _UNSAFE or text == "1.0":
        return 1
    raise ValueError(
        f"{where}: label {value!r} is not 0/1, true/false or safe/unsafe; "
        "pass positive_label to name the unsafe class"
    )


def load_response_pairs(
    path: str | Path,
    *,
    prompt_column: str = "prompt",
    response_column: str = "response",
    label_column: str | None = None,
    safe_column: str | None = None,
    unsafe_column: str | None = None,
    positive_label: str | None = None,
    limit: int | None = None,
) -> ResponsePairs:
    """Labelled (prompt, response) examples from a file, in one of three layouts:

    * **pairs** (the default; the PKU-SafeRLHF file): ``response_column`` holds
      ``[safe_response, unsafe_response]``; each row gives a safe (0) then an unsafe (1)
      example;
    * **two columns**: ``safe_column`` and ``unsafe_column`` name the two responses (CSV);
    * **labelled**: ``label_column`` set; one example per row, label 0/1, true/false,
      safe/unsafe, or ``== positive_label`` for unsafe.

    Rows with an empty prompt or response are skipped; ``limit`` caps the rows read.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = p.write_text("q,a,y\\nhi,hello,safe\\nhi,go away,unsafe\\n")
    >>> d = load_response_pairs(p, prompt_column="q", response_column="a", label_column="y")
    >>> d.labels.tolist(), d.prompt_ids.tolist()
    ([0, 1], [0, 0])
    """
    path = Path(path)
    if (safe_column is None) != (unsafe_column is None):
        raise ValueError("safe_column and unsafe_column go together")
    if label_column is not None and safe_column is not None:
        raise ValueError("give label_column or safe_column/unsafe_column, not both")
    prompts: list[str] = []
    responses: list[str] = []
    labels: list[int] = []

    def add(prompt: Any, response: Any, label: int) -> None:
        if prompt is None or response is None:
            return
        p, r = str(prompt), str(response)
        if p.strip() and r.strip():
            prompts.append(p)
            responses.append(r)
            labels.append(label)

    for i, row in enumerate(_records(path)):
        if limit is not None and i >= limit:
            break
        where = f"{path} row {i + 1}"
        if label_column is not None:
            cols = (prompt_column, response_column, label_column)
            _require(path, row, cols, "prompt_column / response_column / label_column", i)
            add(
                row[prompt_column],
                row[response_column],
                _label(row[label_column], positive_label, where),
            )
        elif safe_column is not None and unsafe_column is not None:
            cols = (prompt_column, safe_column, unsafe_column)
            _require(path, row, cols, "prompt_column / safe_column / unsafe_column", i)
            add(row[prompt_column], row[safe_column], 0)
            add(row[prompt_column], row[unsafe_column], 1)
        else:
            _require(
                path,
                row,
                (prompt_column, response_column),
                "prompt_column / response_column (or label_column for one response per row)",
                i,
            )
            pair = row[response_column]
            if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise ValueError(
                    f"{where}: column {response_column!r} should be [safe, unsafe], got "
                    f"{pair!r:.80}; for one labelled response per row set label_column"
                )
            add(row[prompt_column], pair[0], 0)
            add(row[prompt_column], pair[1], 1)
    if not prompts:
        raise ValueError(f"{path} holds no (prompt, response) rows")
    return ResponsePairs.from_lists(prompts, responses, labels)


def load_prompts(
    path: str | Path, *, column: str = "instruction", limit: int | None = None
) -> list[str]:
    """A list of prompts: one column of a JSON list of objects (the refusal-direction splits'
    ``instruction``), JSONL, CSV/TSV or parquet (``.gz`` ok), or a JSON list of strings.
    Empty prompts are skipped.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "harmful.json"
    >>> _ = p.write_text('[{"instruction": "a", "category": null}, {"instruction": "b"}]')
    >>> load_prompts(p)
    ['a', 'b']
    """
    path = Path(path)
    out: list[str] = []
    for i, row in enumerate(_records(path)):
        if isinstance(row, str):
            text: Any = row
        else:
            _require(path, row, (column,), "column", i)
            text = row.get(column)
        if text is not None and str(text).strip():
            out.append(str(text))
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise ValueError(f"{path} holds no prompts in column {column!r}")
    return out


def split_by_prompt(
    pairs: ResponsePairs, fractions: Sequence[float] = (0.8, 0.2), *, seed: int = 0
) -> tuple[ResponsePairs, ...]:
    """Split into ``len(fractions)`` parts with no prompt in two parts.

    The distinct prompts are shuffled (seeded) and dealt in order; a part ends once its
    share of *examples* reaches ``fractions[k]`` of the total, so sizes match the fractions
    to within one prompt's examples. Each part keeps the input's order.

    >>> d = ResponsePairs.from_lists(list("aabbccdd"), list("xyxyxyxy"), [0, 1] * 4)
    >>> [len(s) for s in split_by_prompt(d, (0.5, 0.25, 0.25), seed=1)]
    [4, 2, 2]
    """
    f = np.asarray(fractions, dtype=np.float64)
    if f.ndim != 1 or f.size < 2 or (f < 0).any() or abs(f.sum() - 1.0) > 1e-6:
        raise ValueError(
            f"fractions must be two or more non-negative numbers summing to 1: {tuple(fractions)}"
        )
    groups, sizes = np.unique(pairs.prompt_ids, return_counts=True)
    order = np.random.default_rng(seed).permutation(groups.size)
    # Prompt k goes to the part whose cumulative target its example midpoint falls under.
    ends = np.cumsum(sizes[order])
    mids = (ends - sizes[order] / 2.0) / ends[-1]
    part = np.minimum(np.searchsorted(np.cumsum(f), mids, side="right"), f.size - 1)
    part_of = dict(zip(groups[order].tolist(), part.tolist(), strict=True))
    which = np.array([part_of[g] for g in pairs.prompt_ids.tolist()], dtype=np.int64)
    return tuple(pairs.subset(np.flatnonzero(which == k)) for k in range(f.size))
