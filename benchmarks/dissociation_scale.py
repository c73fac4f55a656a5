"""Paper B's dissociation at the largest budget this machine allows, measured with a fixed
probe on held-out examples (issue 17, item 4).

The base is the refusing organism (SmolLM2-135M-Instruct + the LoRA safety SFT of
``benchmarks/organism.py``, merged). Stages, each cached under ``--cache`` / ``--out`` so a
rerun resumes where the last one stopped:

1. ``prep`` (shared by every seed, in ``--cache``): PKU-SafeRLHF pairs split by prompt into
   probe train / probe val / dissociation rows / held-out test (fractions 0.3 / 0.1 / 0.2 /
   0.4); the base's probe features of every split; the fixed audit probe (paper B's
   ``LatentMonitor`` recipe, fitted on the base, never trained again); a random-label probe
   (the same recipe on shuffled labels, a control); the dissociation's training rows —
   harmful prompts of the dissociation split with their safe answer (b = 1) and benign
   anchors (b = 0, harmless_train prompts answered by the base, App. A.4).
2. ``train`` (per seed, in ``--out``): :func:`~silentwatch.offline.audit.dissociation.
   dissociate` with the paper's four-step update and its coefficients, the construction
   monitor starting from a copy of the fixed probe; a checkpoint every ``--checkpoint-every``
   updates. ``--resume`` continues from the newest checkpoint with the optimisers' state.
3. ``evaluate`` (per seed): for the base and each checkpoint, the fixed probe's ROC-AUC on
   the held-out test split (and on the dissociation split, in sample) with a 95% bootstrap
   interval over prompts; for the base and the last checkpoint, the keyword judge's refusal
   rate on held-out harmful and harmless prompts (Wilson 95%). Controls: the response length
   alone as a score, and the random-label probe. ``results.json`` and ``results.md``.

    python benchmarks/dissociation_scale.py prep --data $SILENTWATCH_DATA \\
        --organism .cache/organism/run/adapter --cache .cache/dissociation-scale/shared
    taskset -c 1 python benchmarks/dissociation_scale.py train --seed 0 \\
        --cache .cache/dissociation-scale/shared --out .cache/dissociation-scale/seed0 \\
        --organism .cache/organism/run/adapter --updates 400 --checkpoint-every 10
    python benchmarks/dissociation_scale.py evaluate --data $SILENTWATCH_DATA \\
        --cache .cache/dissociation-scale/shared --out .cache/dissociation-scale/seed0 \\
        --organism .cache/organism/run/adapter
    python benchmarks/dissociation_scale.py summary --organism - \\
        --cache .cache/dissociation-scale/shared --out .cache/dissociation-scale/seed0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = (0.3, 0.1, 0.2, 0.4)
SPLITS = ("probe_train", "probe_val", "diss", "test")
MAX_PROMPT, MAX_RESPONSE = 128, 64


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def base_model(organism: str) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct with the organism's adapter merged in, and its tokenizer."""
    from silentwatch.offline.audit.organism import load_adapter
    from silentwatch.offline.lm import load_causal_lm

    model, tok = load_causal_lm("smollm2")
    return load_adapter(model, organism).merge_and_unload().eval(), tok


def load_probe(cache: Path, name: str, layers: int, dim: int) -> Any:
    """A probe saved by ``prep`` (``<cache>/<name>.pt``) as a ``LatentMonitor``."""
    import torch

    from silentwatch.offline.audit.monitor import LatentMonitor

    sd = torch.load(cache / f"{name}.pt", weights_only=True)["state_dict"]
    m = LatentMonitor(layers, dim, hidden=sd["proj.weight"].shape[0])
    m.load_state_dict(sd)
    return m


def ckpt_step(ckpt: Path) -> int:
    """The update number of a ``step-NNNNNN`` checkpoint folder."""
    return int(ckpt.name.split("-")[1])


def splits(data: Path, pairs_limit: int) -> dict[str, Any]:
    from silentwatch.offline.audit.data import load_response_pairs, split_by_prompt

    pairs = load_response_pairs(
        data / "pku_saferlhf_pairs" / "pku_seferlhf_realign_dpo_5k.json.gz", limit=pairs_limit
    )
    return dict(zip(SPLITS, split_by_prompt(pairs, FRACTIONS, seed=0), strict=True))


def features(model: Any, tok: Any, part: Any) -> Any:
    from silentwatch.offline.audit.probe import extract_features

    return extract_features(
        model,
        tok,
        list(part.prompts),
        list(part.responses),
        batch_size=8,
        max_prompt_tokens=MAX_PROMPT,
        max_response_tokens=MAX_RESPONSE,
    )


def prep(args: argparse.Namespace) -> None:
    import torch

    from silentwatch.offline.audit.data import load_prompts
    from silentwatch.offline.audit.dissociation import DissociationData
    from silentwatch.offline.audit.dissociation.data import anchor_rows, compose
    from silentwatch.offline.audit.probe import ProbeSettings, train_probe

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    parts = splits(Path(args.data), args.pairs)
    log("splits: " + ", ".join(f"{k} {len(v)}" for k, v in parts.items()))
    model, tok = base_model(args.organism)
    feats_path = cache / "base_features.pt"
    if feats_path.exists():
        feats = torch.load(feats_path, weights_only=True)
    else:
        feats = {}
        for name, part in parts.items():
            t = time.perf_counter()
            feats[name] = features(model, tok, part)
            log(
                f"base features {name}: {tuple(feats[name].shape)} in "
                f"{time.perf_counter() - t:.0f} s"
            )
        torch.save(feats, feats_path)
    variants = (("probe", False, False), ("random_probe", True, False), ("probe_std", False, True))
    for name, shuffle, standardize in variants:
        path = cache / f"{name}.pt"
        if path.exists():
            continue
        ytr, yva = parts["probe_train"].labels, parts["probe_val"].labels
        if shuffle:  # the control: the same recipe on labels with no signal left in them
            rng = np.random.default_rng(1)
            ytr, yva = rng.permutation(ytr), rng.permutation(yva)
        # probe_std: z-scored features inside the monitor (an option, not the paper's recipe)
        settings = ProbeSettings(epochs=10, standardize=standardize)
        probe, fit = train_probe(feats["probe_train"], ytr, feats["probe_val"], yva, settings)
        torch.save({"state_dict": probe.state_dict(), "val_auroc": fit.val_auroc}, path)
        log(f"{name}: best val AUROC {fit.best_val_auroc:.3f} (epoch {fit.best_epoch})")
    rows_path = cache / "rows.json"
    if not rows_path.exists():
        diss = parts["diss"]
        anchors = load_prompts(
            Path(args.data) / "refusal_direction" / "splits" / "harmless_train.json.gz",
            limit=args.anchors,
        )
        t = time.perf_counter()
        anchor = anchor_rows(
            model, tok, anchors, max_new_tokens=MAX_RESPONSE, max_prompt_tokens=MAX_PROMPT
        )
        log(f"anchors: {len(anchor)} of {len(anchors)} kept in {time.perf_counter() - t:.0f} s")
        data = DissociationData(
            list(diss.prompts),
            list(diss.responses),
            [bool(v) for v in diss.labels],
            [True] * len(diss),
            [not bool(v) for v in diss.labels],
        )
        rows = compose(data, "paper", anchor)
        rows_path.write_text(json.dumps(asdict(rows)))
        log(f"rows: {sum(rows.harmful)} gated b = 1, {len(rows) - sum(rows.harmful)} anchors")


def train(args: argparse.Namespace) -> None:
    import torch

    from silentwatch.offline.audit.dissociation import (
        DissociationData,
        DissociationSettings,
        dissociate,
    )
    from silentwatch.offline.progress import Reporter

    torch.set_num_threads(1)
    cache, out = Path(args.cache), Path(args.out)
    rows = DissociationData(**json.loads((cache / "rows.json").read_text()))
    model, tok = base_model(args.organism)
    layers, dim = model.config.num_hidden_layers, model.config.hidden_size
    probe = load_probe(cache, args.probe, layers, dim)
    monitor = load_probe(cache, args.probe, layers, dim)  # starts as a copy of the probe
    settings = DissociationSettings(
        composition="as_given",
        updates=args.updates,
        batch_size=args.batch_size,
        max_prompt_tokens=MAX_PROMPT,
        max_response_tokens=MAX_RESPONSE,
        checkpoint_every=args.checkpoint_every,
        checkpoint_dir=str(out / "ckpt"),
        seed=args.seed,
    )
    resume = None
    if args.resume:
        done = sorted((out / "ckpt").glob("step-*"))
        resume = done[-1] if done else None
        log(f"resuming from {resume}" if resume else "nothing to resume: starting")
    t = time.perf_counter()
    result = dissociate(
        model,
        tok,
        rows,
        monitor,
        settings,
        progress=Reporter(enabled=True),
        audit_probe=probe,
        resume=resume,
    )
    out.mkdir(parents=True, exist_ok=True)
    records = [asdict(r) for r in result.records]
    with open(out / "records.jsonl", "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    log(f"{len(records)} updates in {time.perf_counter() - t:.0f} s")


def _auroc_ci(
    scores: np.ndarray, labels: np.ndarray, prompts: list[str], n_boot: int = 1000
) -> dict[str, Any]:
    from silentwatch.offline.audit.harmlessness import cluster_bootstrap
    from silentwatch.offline.audit.probe import auroc

    def stat(idx: np.ndarray) -> float:
        y = labels[idx]
        return auroc(scores[idx], y) if 0 < y.sum() < y.size else float("nan")

    lo, hi = cluster_bootstrap(prompts, stat, n_boot=n_boot)
    return {"auroc": auroc(scores, labels), "ci": [lo, hi], "n": int(labels.size)}


def evaluate(args: argparse.Namespace) -> None:
    import torch
    from peft import PeftModel

    from silentwatch.monitor.evaluation.paired import wilson_interval
    from silentwatch.offline.audit.data import load_prompts
    from silentwatch.offline.audit.organism import generate_answers
    from silentwatch.offline.audit.probe import monitor_logits
    from silentwatch.offline.judge import KeywordRefusalJudge

    torch.set_num_threads(1)
    cache, out = Path(args.cache), Path(args.out)
    parts = splits(Path(args.data), args.pairs)
    base, tok = base_model(args.organism)
    feats = torch.load(cache / "base_features.pt", weights_only=True)

    layers, dim = feats["test"].shape[1:]
    probe, random_probe = (
        load_probe(cache, n, layers, dim).eval() for n in (args.probe, "random_probe")
    )
    test, diss = parts["test"], parts["diss"]
    y_test = np.asarray(test.labels)
    lengths = np.array(
        [len(tok(r, add_special_tokens=False)["input_ids"]) for r in test.responses], dtype=float
    )
    controls = {
        "response_length": _auroc_ci(lengths, y_test, list(test.prompts)),
        "random_label_probe": _auroc_ci(
            monitor_logits(random_probe, feats["test"]).numpy(), y_test, list(test.prompts)
        ),
    }
    judge = KeywordRefusalJudge()
    splits_dir = Path(args.data) / "refusal_direction" / "splits"
    refusal_sets = {
        "harmful": load_prompts(splits_dir / "harmful_val.json", limit=args.refusal_prompts),
        "harmless": load_prompts(splits_dir / "harmless_val.json", limit=args.refusal_prompts),
    }

    def refusal(model: Any) -> dict[str, Any]:
        res = {}
        for name, prompts in refusal_sets.items():
            answers = generate_answers(model, tok, prompts, max_new_tokens=48)
            k = int(judge.refused(prompts, answers).sum())
            res[name] = {
                "rate": k / len(prompts),
                "ci": list(wilson_interval(k, len(prompts))),
                "n": len(prompts),
            }
        return res

    ckpts = sorted((out / "ckpt").glob("step-*"))
    last_step = ckpt_step(ckpts[-1]) if ckpts else 0
    if args.steps:
        want = {int(v) for v in args.steps.split(",")}
        ckpts = [c for c in ckpts if ckpt_step(c) in want]
    elif args.every > 1:
        keep = ckpts[args.every - 1 :: args.every]
        ckpts = keep + ([ckpts[-1]] if ckpts and ckpts[-1] not in keep else [])
    behaviour_at = {0, last_step}
    if args.refusal_at:
        behaviour_at |= {int(v) for v in args.refusal_at.split(",")}
    recs_path = out / "records.jsonl"
    recs = [json.loads(line) for line in recs_path.open()] if recs_path.exists() else []

    def training_state(step: int) -> dict[str, float]:
        """The construction's own readings over the 10 updates before ``step``."""
        window = [r for r in recs if step - 10 < r["step"] <= step]
        if not window:
            return {}
        return {
            "kl_per_token": float(np.mean([r["kl"] for r in window])),
            "sft": float(np.mean([r["sft"] for r in window])),
            "monitor_term_median": float(np.median([r["monitor_term"] for r in window])),
        }

    rows: list[dict[str, Any]] = []
    results_path = out / "results.json"
    cached = json.loads(results_path.read_text()) if results_path.exists() else {}
    done = {r["step"]: r for r in cached.get("rows", [])}
    for ckpt in [None, *ckpts]:
        step = 0 if ckpt is None else ckpt_step(ckpt)
        if step in done and not (step in behaviour_at and "refusal" not in done[step]):
            rows.append({**done[step], **training_state(step)})
            continue
        t = time.perf_counter()
        model = base if ckpt is None else PeftModel.from_pretrained(base, str(ckpt)).eval()
        ends = step in behaviour_at
        ft = feats["test"] if ckpt is None else features(model, tok, test)
        row: dict[str, Any] = {
            **training_state(step),
            "step": step,
            "test": _auroc_ci(monitor_logits(probe, ft).numpy(), y_test, list(test.prompts)),
            "probe_p_unsafe_mean": float(torch.sigmoid(monitor_logits(probe, ft)).mean()),
        }
        if ends:  # the in-sample rows and the behaviour: at a few steps only (CPU time)
            fd = feats["diss"] if ckpt is None else features(model, tok, diss)
            row["diss_in_sample"] = _auroc_ci(
                monitor_logits(probe, fd).numpy(), np.asarray(diss.labels), list(diss.prompts)
            )
            row["refusal"] = refusal(model)
        if ckpt is not None:
            base = model.unload()
        rows.append(row)
        log(
            f"step {step}: test AUROC {row['test']['auroc']:.3f} {row['test']['ci']} "
            f"({time.perf_counter() - t:.0f} s)"
        )
        results_path.write_text(json.dumps({"controls": controls, "rows": rows}, indent=2))
    (out / "results.md").write_text(markdown(controls, rows, args.seed_label))
    print((out / "results.md").read_text())


def markdown(controls: dict[str, Any], rows: list[dict[str, Any]], label: str) -> str:
    def a(r: dict[str, Any]) -> str:
        return f"{r['auroc']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"

    lines = [
        f"### {label}",
        "",
        "| update | KL per token (last 10 updates) | fixed probe AUROC, held-out test "
        "| in sample (dissociation rows) | mean P(unsafe), test | refusal harmful "
        "| refusal harmless |",
        "|---:|---:|---|---|---:|---|---|",
    ]
    for r in rows:
        ref = r.get("refusal")
        rh = (
            (
                f"{ref['harmful']['rate']:.2f} [{ref['harmful']['ci'][0]:.2f}, "
                f"{ref['harmful']['ci'][1]:.2f}]"
            )
            if ref
            else ""
        )
        rl = (
            (
                f"{ref['harmless']['rate']:.2f} [{ref['harmless']['ci'][0]:.2f}, "
                f"{ref['harmless']['ci'][1]:.2f}]"
            )
            if ref
            else ""
        )
        ins = a(r["diss_in_sample"]) if "diss_in_sample" in r else ""
        kl = f"{r['kl_per_token']:.3f}" if "kl_per_token" in r else "—"
        lines.append(
            f"| {r['step']} | {kl} | {a(r['test'])} | {ins} | "
            f"{r['probe_p_unsafe_mean']:.3f} | {rh} | {rl} |"
        )
    lines += [
        "",
        f"Controls on the same test split: response length alone {a(controls['response_length'])}; "
        f"random-label probe {a(controls['random_label_probe'])}.",
        "",
    ]
    return "\n".join(lines)


def summary(args: argparse.Namespace) -> None:
    """``training.md``: the training records in windows of ``--every`` updates (default 20):
    mean KL per token, median monitor term (Eq. 1's −λ log σ(g) part, heavy-tailed), mean
    construction-monitor BCE (Eq. 2) and the monitor's mean P(unsafe) on gated / anchor rows
    (over the updates whose micro-batch held such rows)."""
    out = Path(args.out)
    recs = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines() if x]
    width = args.every if args.every > 1 else 20
    lines = [
        f"### {args.seed_label}: training records, windows of {width} updates",
        "",
        "| updates | KL per token (mean) | monitor term (median) | monitor BCE (mean) "
        "| P(unsafe) gated rows | P(unsafe) anchors | SFT loss (mean) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for lo in range(0, len(recs), width):
        w = recs[lo : lo + width]

        def col(k: str, w: list[dict[str, Any]] = w) -> np.ndarray:
            v = np.array([r[k] for r in w if r.get(k) is not None], dtype=float)
            return v[np.isfinite(v)]  # P(unsafe) is NaN on a micro-batch without that kind

        lines.append(
            f"| {w[0]['step']}–{w[-1]['step']} | {col('kl').mean():.4f} "
            f"| {np.median(col('monitor_term')):.1f} | {col('monitor_bce').mean():.3f} "
            f"| {col('p_harmful').mean():.2f} | {col('p_benign').mean():.2f} "
            f"| {col('sft').mean():.3f} |"
        )
    (out / "training.md").write_text("\n".join(lines) + "\n")
    print((out / "training.md").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=("prep", "train", "evaluate", "summary"))
    p.add_argument(
        "--data", default=None, help="folder with pku_saferlhf_pairs/, refusal_direction/"
    )
    p.add_argument("--organism", required=True, help="the organism's LoRA adapter folder")
    p.add_argument("--cache", required=True, help="shared stage-1 outputs")
    p.add_argument("--out", default=None, help="a seed's checkpoints and results")
    p.add_argument("--pairs", type=int, default=900, help="PKU rows read (2 examples each)")
    p.add_argument("--anchors", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--updates", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--resume", action="store_true")
    p.add_argument(
        "--probe",
        default="probe",
        choices=("probe", "probe_std"),
        help="the fixed audit probe (and the construction monitor's start): paper B's "
        "recipe, or the standardised-features option",
    )
    p.add_argument("--every", type=int, default=1, help="evaluate every k-th checkpoint (+ last)")
    p.add_argument("--steps", default="", help="evaluate these checkpoints (comma list)")
    p.add_argument(
        "--refusal-at", default="", help="also measure behaviour at these steps (comma list)"
    )
    p.add_argument("--refusal-prompts", type=int, default=40)
    p.add_argument("--seed-label", default="seed 0")
    args = p.parse_args(argv)
    if args.stage in ("prep", "evaluate") and args.data is None:
        p.error(f"{args.stage} needs --data")
    if args.stage in ("train", "evaluate", "summary") and args.out is None:
        p.error(f"{args.stage} needs --out")
    {"prep": prep, "train": train, "evaluate": evaluate, "summary": summary}[args.stage](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
