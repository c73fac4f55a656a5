"""Extraction benchmark: our TransformerEmbedder against a plain transformers loop.

Same model object, same texts (Civil Comments from ../shared/data), same truncation. The
plain loop is what one writes first: batches of 32 in input order, padded to the longest
text of each batch, ``torch.no_grad``, attention-masked mean pooling. Ours tokenises once,
sorts by token count so each batch pads to nearly its own length, and runs under
``torch.inference_mode`` (decoders without a KV cache). Throughput counts real tokens,
not padding.

    python benchmarks/extraction.py                          # minilm, 1,000 texts, CPU
    python benchmarks/extraction.py --model smollm2 --n 300
    python benchmarks/extraction.py --device cuda --dtype bfloat16 --n 5000
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch
from harness import SHARED_DATA, aligned_row, cpu_model, device_sync, timed

from silentwatch.offline.embedders import open_embedder

# Widths of the text table's columns: method, batching, then four numbers.
COLUMNS = ["<22", "<32", ">9", ">10", ">11", ">8"]
DEFAULT_CSV = SHARED_DATA / "civil_comments" / "cody140_civil_comments_4900.csv"


def read_texts(path: Path, column: str, n: int) -> list[str]:
    """The first ``n`` non-empty values of ``column``."""
    csv.field_size_limit(sys.maxsize)
    out: list[str] = []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            text = (row.get(column) or "").strip()
            if text:
                out.append(text)
            if len(out) == n:
                break
    return out


def plain_loop(emb, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """The baseline: input order, fixed batches, padding to each batch's longest text."""
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = emb.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=emb.max_length,
                return_tensors="pt",
            ).to(emb.device)
            enc = {k: v for k, v in enc.items() if k in emb._forward_args}
            hidden = emb.model(**enc).last_hidden_state.float()
            m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
    return torch.cat(out).numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm", help="an open_embedder spec (transformers)")
    ap.add_argument("--n", type=int, default=1000, help="texts (the first N of the CSV)")
    ap.add_argument("--data", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--column", default="text")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    ap.add_argument("--batch-size", type=int, default=64, help="ours (sorted batches)")
    ap.add_argument("--baseline-batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument(
        "--max-batch-tokens",
        default="auto",
        help="ours: padded tokens per batch (auto: 2048 on CPU, no cap on CUDA; 0: no cap)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--repeats", type=int, default=1, help="best of R timed runs each")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    texts = read_texts(args.data, args.column, args.n)
    emb = open_embedder(
        args.model,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        max_length=args.max_length,
    )
    if not hasattr(emb, "model"):
        ap.error(f"{args.model!r} is not a transformers model: nothing to compare against")
    if args.max_batch_tokens != "auto":
        emb.max_batch_tokens = int(args.max_batch_tokens) or None
    info = emb.info()
    lengths = [
        len(ids)
        for ids in emb.tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]
    ]
    tokens = int(sum(lengths))

    # Warm-up (allocator, kernels, lazy inits) outside the timings, for both.
    emb.embed(texts[:8])
    plain_loop(emb, texts[:8], args.baseline_batch_size)

    runs: dict[str, tuple[float, np.ndarray]] = {}
    sync = device_sync(args.device)
    for _ in range(args.repeats):
        for label, fn in (
            ("plain loop", lambda: plain_loop(emb, texts, args.baseline_batch_size)),
            ("TransformerEmbedder", lambda: emb.embed(texts)),
        ):
            t, x = timed(fn, sync)
            if label not in runs or t < runs[label][0]:
                runs[label] = (t, x)

    padded = sum(
        len(b) * max(b)
        for b in (
            lengths[i : i + args.baseline_batch_size]
            for i in range(0, len(lengths), args.baseline_batch_size)
        )
    )
    print(
        f"model {info.name} ({info.pooling}, {info.dim}-d), {args.n} texts "
        f"({tokens:,} tokens, mean {tokens / len(texts):.0f}, max_length {args.max_length}), "
        f"device {info.device}, dtype {info.dtype}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {cpu_model()}"
    )
    print(f"plain loop pads to {padded:,} token slots ({padded / tokens:.2f}x the real tokens)")
    print()
    base_t = runs["plain loop"][0]
    header = aligned_row(["method", "batching", "seconds", "texts/s", "tokens/s", "speed"], COLUMNS)
    print(header)
    print("-" * len(header))
    cap = emb._batch_tokens()
    budget = f"<={cap} tok" if cap else "no token cap"
    batching = {
        "plain loop": f"{args.baseline_batch_size} rows, input order",
        "TransformerEmbedder": f"<={args.batch_size} rows & {budget}, sorted",
    }
    for label, (t, _) in runs.items():
        cells = [label, batching[label], f"{t:.2f}", f"{len(texts) / t:.1f}"]
        print(aligned_row([*cells, f"{tokens / t:,.0f}", f"{base_t / t:.2f}x"], COLUMNS))
    if info.pooling == "mean":
        diff = np.abs(runs["plain loop"][1] - runs["TransformerEmbedder"][1]).max()
        print(f"\nsame vectors: max |difference| {diff:.1e}")
    else:
        print("\n(the plain loop mean-pools; ours pools the last token, as paper A does)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
