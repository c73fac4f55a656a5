"""Paired canaries' noise floor: how far re-embedding the same texts with the *same* model
moves them, beside a benign and a breaking model update.

A paired canary reading (``monitor/evaluation/paired.py``) calls the live embedder
"changed" when the mean angle between each canary text's reference and live embedding
exceeds ``DEFAULT_ANGLE_TOLERANCE``. That tolerance must sit above what merely running
the same model differently does, so this script measures it, on real texts: all-MiniLM-L6-v2
(``open_embedder("minilm")``, mean pooling, 256 tokens) embeds ``--n`` Civil Comments
texts once as the reference (float32, batch 32, 2 torch threads, no token cap), then again
under each setting a deployment may differ in:

* batch size 1, 8, 64, 256 (padding to each batch's longest text changes the shapes the
  matrix kernels see, and with them the summation order);
* the default loading (batch 64 capped at 2,048 padded tokens per pass on CPU);
* 1 torch thread instead of 2 (another reduction split);
* bfloat16 instead of float32 for the forward pass (``dtype="bfloat16"``, which the
  embedder already offers; pooling and normalisation stay float32), at batch 32 and 256;
* the reference setting again, and a freshly loaded model (determinism);

and, for contrast, two model updates: the int8 ONNX export of the same model
(``minilm-int8``; harmless to a frozen head, docs/benchmarks.md "Drift is not harm") and
paraphrase-MiniLM-L3-v2 (``paraphrase-l3``; breaking). Each row reports the per-text
angle to the reference (mean, p99, max, degrees) and the head-free linear CKA (as
``1 - CKA``).

    python benchmarks/canary_noise.py                      # 256 texts: ~3 CPU-minutes
    python benchmarks/canary_noise.py --data my.csv --n 512
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from harness import SHARED_DATA, machine, markdown_table

from silentwatch.monitor.evaluation.paired import (
    DEFAULT_ANGLE_TOLERANCE,
    linear_cka,
    paired_angles_degrees,
)
from silentwatch.offline.embedders import open_embedder

DEFAULT_CSV = SHARED_DATA / "civil_comments" / "cody140_civil_comments_4900.csv"
REFERENCE_BATCH, REFERENCE_THREADS = 32, 2


def read_texts(path: Path, column: str, n: int, seed: int) -> list[str]:
    """``n`` distinct non-empty texts of ``column``, drawn at random (seeded) from the file."""
    if not path.is_file():
        sys.exit(
            f"no data file at {path}: pass --data with a CSV that has a {column!r} column "
            "(e.g. ../shared/data/civil_comments/cody140_civil_comments_4900.csv)"
        )
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if column not in (reader.fieldnames or []):
            sys.exit(f"{path} has no {column!r} column (columns: {reader.fieldnames})")
        texts = sorted({t for row in reader if (t := (row[column] or "").strip())})
    if len(texts) < n:
        sys.exit(f"{path} holds {len(texts)} distinct texts; --n asks for {n}")
    pick = np.random.default_rng(seed).choice(len(texts), size=n, replace=False)
    return [texts[i] for i in pick]


@dataclass(frozen=True)
class Setting:
    """One way of re-embedding the canaries: a label, what it is, and how to run it."""

    label: str
    kind: str  # "reference", "same model" or "model update"
    embed: Callable[[list[str]], np.ndarray]
    threads: int = REFERENCE_THREADS


def minilm(
    dtype: str = "float32", batch: int = REFERENCE_BATCH, *, cap: bool = False
) -> Callable[[list[str]], np.ndarray]:
    """A freshly loaded all-MiniLM-L6-v2 with exactly ``batch`` rows per pass, or the
    default CPU cap of 2,048 padded tokens (``cap``), which is what text mode runs."""
    emb = open_embedder("minilm", dtype=dtype, batch_size=batch)
    if not cap:
        # The token cap would shrink batches of long texts: off, so "batch 256" means it.
        emb.max_batch_tokens = None
    return emb.embed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_CSV, help="CSV of texts")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--n", type=int, default=256, help="canary texts (default 256)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    texts = read_texts(args.data, args.text_column, args.n, args.seed)

    torch.set_num_threads(REFERENCE_THREADS)
    reference_embed = minilm()
    t0 = time.perf_counter()
    reference = reference_embed(texts)
    reference_s = time.perf_counter() - t0

    settings = [
        Setting("re-run, same process (fp32, batch 32, 2 threads)", "same model", reference_embed),
        Setting("re-load the model, re-run", "same model", minilm()),
        *(Setting(f"batch {b}", "same model", minilm(batch=b)) for b in (1, 8, 64, 256)),
        Setting("default loading (batch 64, 2,048-token cap)", "same model", minilm(cap=True)),
        Setting("1 torch thread", "same model", reference_embed, threads=1),
        Setting("bfloat16 forward pass (batch 32)", "same model", minilm("bfloat16")),
        Setting("bfloat16, batch 256", "same model", minilm("bfloat16", batch=256)),
        Setting(
            "minilm-int8 (ONNX int8 export)", "model update", open_embedder("minilm-int8").embed
        ),
        Setting(
            "paraphrase-l3 (paraphrase-MiniLM-L3-v2)",
            "model update",
            open_embedder("paraphrase-l3").embed,
        ),
    ]
    rows: list[list[str]] = [
        [
            "reference: fp32, batch 32, 2 threads",
            "reference",
            "0",
            "0",
            "0",
            "0",
            f"{reference_s:.1f}",
        ]
    ]
    worst_same = 0.0
    for s in settings:
        torch.set_num_threads(s.threads)
        t0 = time.perf_counter()
        live = np.asarray(s.embed(texts), dtype=np.float32)
        seconds = time.perf_counter() - t0
        angles = paired_angles_degrees(reference, live)
        mean, p99, top = angles.mean(), np.percentile(angles, 99), angles.max()
        if s.kind == "same model":
            worst_same = max(worst_same, float(mean))
        rows.append(
            [
                s.label,
                s.kind,
                f"{mean:.3g}",
                f"{p99:.3g}",
                f"{top:.3g}",
                f"{1.0 - linear_cka(reference, live):.2g}",
                f"{seconds:.1f}",
            ]
        )
        print(f"  {s.label}: mean {mean:.3g}°, {seconds:.1f} s", file=sys.stderr, flush=True)
    torch.set_num_threads(REFERENCE_THREADS)

    print(
        f"**Machine:** {machine(('numpy', 'torch', 'transformers', 'onnxruntime'))}. "
        f"{len(texts)} texts from {args.data.name} (seed {args.seed}), max_length 256."
    )
    print()
    # 1 - CKA, not CKA: the same-model rows would all print 1.000000.
    cols = ["setting", "kind", "mean°", "p99°", "max°", "1 − linear CKA", "s"]
    print(markdown_table(cols, rows, "llrrrrr"))
    print()
    print(
        f"Worst same-model mean angle: {worst_same:.3g}°; "
        f"DEFAULT_ANGLE_TOLERANCE = {DEFAULT_ANGLE_TOLERANCE}°."
    )


if __name__ == "__main__":
    main()
