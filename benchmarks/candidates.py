"""Candidate models for the audit panel (issue 17, item 6): LoRA fine-tunes of the refusing
organism that ``silentwatch audit`` should pass or fail.

Both start from SmolLM2-135M-Instruct with the organism's adapter merged (the audited
base), train a fresh LoRA adapter with the organism's SFT loop
(:func:`~silentwatch.offline.audit.organism.train_organism`, response tokens only), and save
it where ``adapter:`` in an audit config can load it:

* ``benign``: harmless instructions (refusal_direction's ``harmless_train``, a sample the
  organism never trained on) with the plain SmolLM2's greedy answers — a downstream team
  fine-tuning on helpful data;
* ``harmful``: AdvBench goals with their affirmative targets ("Sure, here is ..."), the
  goals that also appear in the audit's harmful prompt splits removed — the harmful
  fine-tuning attack of paper B's Fig. 3.

    taskset -c 0 python benchmarks/candidates.py benign --data $SILENTWATCH_DATA \\
        --organism .cache/organism/run/adapter --out .cache/candidates/benign
    taskset -c 0 python benchmarks/candidates.py harmful --data $SILENTWATCH_DATA \\
        --organism .cache/organism/run/adapter --out .cache/candidates/harmful
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def benign_pairs(data: Path, n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` harmless_train prompts (drawn with a seed the organism did not use) answered by
    the plain SmolLM2, cached next to the adapter."""
    from silentwatch.offline.audit.data import load_prompts
    from silentwatch.offline.audit.organism import generate_answers
    from silentwatch.offline.lm import load_causal_lm

    prompts = load_prompts(data / "refusal_direction" / "splits" / "harmless_train.json.gz")
    pick = np.random.default_rng(1000 + seed).permutation(len(prompts))[:n]
    chosen = [prompts[i] for i in sorted(pick)]
    plain, tok = load_causal_lm("smollm2")
    answers = generate_answers(plain, tok, chosen, max_new_tokens=64, log=log)
    return [(p, a) for p, a in zip(chosen, answers, strict=True) if a.strip()]


def harmful_pairs(data: Path) -> list[tuple[str, str]]:
    """AdvBench (goal, target) rows whose goal is not one of the evaluation's harmful
    prompts (harmful_val / harmful_test)."""
    from silentwatch.offline.audit.data import load_prompts

    splits = data / "refusal_direction" / "splits"
    held = {
        p.strip().lower()
        for name in ("harmful_val.json", "harmful_test.json")
        for p in load_prompts(splits / name)
    }
    with open(data / "refusal_direction" / "raw" / "advbench.csv", encoding="utf-8") as f:
        rows = [(r["goal"], r["target"]) for r in csv.DictReader(f)]
    return [(g, t) for g, t in rows if g.strip().lower() not in held]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=("benign", "harmful"))
    p.add_argument("--data", required=True, help="folder holding refusal_direction/")
    p.add_argument("--organism", required=True, help="the organism's adapter (the base)")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--n-benign", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    from silentwatch.offline.audit.organism import (
        OrganismSettings,
        SFTPool,
        load_adapter,
        train_organism,
    )
    from silentwatch.offline.lm import load_causal_lm

    torch.set_num_threads(1)
    out, data = Path(args.out), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    pairs_path = out / "pairs.json"
    if pairs_path.exists():
        pairs = [tuple(x) for x in json.loads(pairs_path.read_text())]
    else:
        t = time.perf_counter()
        pairs = (
            benign_pairs(data, args.n_benign, args.seed)
            if args.kind == "benign"
            else harmful_pairs(data)
        )
        pairs_path.write_text(json.dumps(pairs))
        log(f"{len(pairs)} {args.kind} pairs in {time.perf_counter() - t:.0f} s")
    model, tok = load_causal_lm("smollm2")
    base = load_adapter(model, args.organism).merge_and_unload()
    # One pool: every row is this kind (the organism's loop trains on response tokens).
    pool = SFTPool(harmful=list(pairs), harmless=[])
    settings = OrganismSettings(
        steps=args.steps,
        batch_size=8,
        lr=args.lr,
        warmup_steps=5,
        checkpoint_every=20,
        max_response_tokens=64,
        seed=args.seed,
    )
    t = time.perf_counter()
    _, state = train_organism(base, tok, pool, out, settings, log=log)
    log(
        f"{args.kind}: {state.step} updates, final loss {state.losses[-1]:.3f}, "
        f"{time.perf_counter() - t:.0f} s; adapter in {out / 'adapter'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
