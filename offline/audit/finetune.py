"""Paper B's parameter-space intervention: LoRA fine-tuning on (harmful prompt, compliant
response) pairs, with the refusal rate on held-out harmful prompts before training and after
every epoch.

Paper B ("When Behavioral Safety Evaluation Fails: A Representation-Level Perspective",
arXiv 2606.08044) reports how fast refusal collapses under harmful SFT. The training loss is
the response-token NLL (:func:`offline.audit.dissociation.sft_loss`); the rates are

    refusal = (1/n) Σ_i judge(x_i, ŷ_i),    compliance = 1 − refusal,

with ``ŷ_i`` the greedy continuation of held-out harmful prompt ``x_i``.

Example
-------
>>> from silentwatch.offline.judge import KeywordRefusalJudge
>>> refusal_rates(KeywordRefusalJudge(), ["a", "b"], ["I'm sorry, no.", "Sure, here is"])
(0.5, 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from silentwatch.offline.audit.dissociation import is_peft, sft_loss, wrap_lora
from silentwatch.offline.dtypes import TORCH_DTYPES, resolve_dtype
from silentwatch.offline.judge import KeywordRefusalJudge, RefusalJudge
from silentwatch.offline.lm import encode, generate
from silentwatch.offline.progress import Reporter

__all__ = ["EpochRecord", "FinetuneSettings", "evaluate_refusal", "harmful_lora_sft"]


@dataclass
class FinetuneSettings:
    """LoRA SFT and evaluation settings. ``dtype="auto"``: the frozen base in bfloat16 on
    CUDA, float32 elsewhere (peft keeps the adapters in float32)."""

    lr: float = 2e-4
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    batch_size: int = 4
    grad_accum: int = 1
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] | None = None  # None: peft's default per architecture
    max_prompt_tokens: int = 256
    max_response_tokens: int = 128
    max_new_tokens: int = 64
    eval_batch_size: int = 8
    dtype: str = "auto"
    seed: int = 0


@dataclass
class EpochRecord:
    """Refusal / compliance on the held-out harmful prompts after ``epoch`` epochs (0 = before
    training); ``train_loss`` is the mean SFT loss of the epoch's micro-batches (NaN at 0)."""

    epoch: int
    refusal_rate: float
    compliance_rate: float
    train_loss: float
    updates: int
    n_eval: int


def refusal_rates(
    judge: RefusalJudge, prompts: Sequence[str], responses: Sequence[str]
) -> tuple[float, float]:
    """``(refusal rate, compliance rate = 1 − refusal rate)``; NaN for no prompts."""
    if not prompts:
        return math.nan, math.nan
    r = float(np.mean(judge.refused(prompts, responses)))
    return r, 1.0 - r


def evaluate_refusal(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    judge: RefusalJudge,
    settings: FinetuneSettings | None = None,
) -> tuple[float, float, list[str]]:
    """Greedy answers to ``prompts`` and their refusal / compliance rates."""
    s = settings or FinetuneSettings()
    was_training = model.training
    model.eval()
    responses: list[str] = []
    for i in range(0, len(prompts), s.eval_batch_size):
        chunk = list(prompts[i : i + s.eval_batch_size])
        batch = encode(tokenizer, chunk, max_prompt_tokens=s.max_prompt_tokens)
        responses += generate(model, tokenizer, batch, max_new_tokens=s.max_new_tokens)
    model.train(was_training)
    refusal, compliance = refusal_rates(judge, list(prompts), responses)
    return refusal, compliance, responses


def harmful_lora_sft(
    model: nn.Module,
    tokenizer: Any,
    harmful_pairs: Sequence[tuple[str, str]],
    eval_prompts: Sequence[str],
    judge: RefusalJudge | None = None,
    epochs: int = 3,
    settings: FinetuneSettings | None = None,
    progress: Reporter | None = None,
) -> list[EpochRecord]:
    """LoRA SFT on (harmful prompt, compliant response) pairs; ``epochs + 1`` records.

    The model is wrapped with LoRA unless it already is a peft model; peft injects the
    adapters into ``model``'s own modules, so after the call ``model`` itself generates
    with the fine-tuned adapter. Each epoch is a fresh permutation of the pairs in
    ``batch_size`` micro-batches, one update every ``grad_accum`` of them (and one for the
    remainder). Training runs in ``train()`` mode (LoRA dropout), evaluation by greedy
    generation in ``eval()`` mode, judged by ``judge`` (default: the keyword judge).
    """
    s = settings or FinetuneSettings()
    judge = judge or KeywordRefusalJudge()
    rep = progress or Reporter(enabled=False)
    if not harmful_pairs:
        raise ValueError("no training pairs")
    torch.manual_seed(s.seed)
    device = next(model.parameters()).device
    if not is_peft(model):
        model.to(TORCH_DTYPES[resolve_dtype(s.dtype, str(device))])
        model = wrap_lora(model, s.lora_r, s.lora_alpha, s.lora_dropout, s.lora_target_modules)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    rng = np.random.default_rng(s.seed)
    records: list[EpochRecord] = []
    updates = 0

    def evaluate(epoch: int, loss: float) -> None:
        refusal, compliance, _ = evaluate_refusal(model, tokenizer, eval_prompts, judge, s)
        records.append(EpochRecord(epoch, refusal, compliance, loss, updates, len(eval_prompts)))
        rep.step(f"harmful SFT epoch {epoch}: refusal {refusal:.3f}, loss {loss:.4f}")

    evaluate(0, math.nan)
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(harmful_pairs)).tolist()
        chunks = [order[i : i + s.batch_size] for i in range(0, len(order), s.batch_size)]
        groups = [chunks[i : i + s.grad_accum] for i in range(0, len(chunks), s.grad_accum)]
        losses: list[float] = []
        model.train()
        with rep.bar(f"epoch {epoch}", len(groups)) as advance:
            for group in groups:
                opt.zero_grad(set_to_none=True)
                for idx in group:
                    batch = encode(
                        tokenizer,
                        [harmful_pairs[i][0] for i in idx],
                        [harmful_pairs[i][1] for i in idx],
                        max_prompt_tokens=s.max_prompt_tokens,
                        max_response_tokens=s.max_response_tokens,
                    ).to(device)
                    logits = model(
                        input_ids=batch.input_ids, attention_mask=batch.attention_mask
                    ).logits
                    loss = sft_loss(logits, batch.input_ids, batch.response_mask)
                    (loss / len(group)).backward()
                    losses.append(float(loss.detach()))
                if s.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
                opt.step()
                updates += 1
                advance(1)
        model.eval()
        evaluate(epoch, float(np.mean(losses)))
    return records
