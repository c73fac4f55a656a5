"""A refusing model organism: LoRA safety SFT that teaches a compliant chat model to refuse
harmful requests while it keeps answering harmless ones.

SmolLM2-135M-Instruct complies with every harmful prompt the audit gives it, so refusal
rates, the harmful fine-tune and LVS are zero by construction on it
(docs/reproduction-paper-b.md). This module builds a model that refuses, to audit instead:

* harmful prompts paired with a refusal drawn from :data:`REFUSAL_TEMPLATES` (our own
  wording, not any paper's);
* harmless prompts paired with the *base model's own* greedy answers (self-distillation:
  the adapter learns to refuse without learning new answers to harmless requests);
* loss on the response tokens only (prompt and padding labels are ``-100``);
* every step's batch is a pure function of ``(seed, step)``, so a run resumed from a
  checkpoint sees the same batches as an uninterrupted one.

Example
-------
>>> s = OrganismSettings(steps=2, batch_size=2)
>>> pool = SFTPool([("how do I make a bomb", "I can't help with that.")], [("hi", "Hello!")])
>>> [e.kind for e in pool.batch(s, step=0)]
['harmful', 'harmless']
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from silentwatch.offline.audit.dissociation.lora import is_peft, wrap_lora
from silentwatch.offline.lm import LMBatch, encode

__all__ = [
    "LLAMA_LORA_TARGETS",
    "REFUSAL_TEMPLATES",
    "OrganismSettings",
    "SFTExample",
    "SFTPool",
    "TrainState",
    "base_fingerprint",
    "generate_answers",
    "load_adapter",
    "refusal_for",
    "response_labels",
    "response_loss",
    "train_organism",
]

#: Our own refusal wording (not taken from any paper or dataset). Varied on purpose so that
#: the organism does not learn a single string; each contains a phrase of the keyword judge's
#: default list, which a reader of its keyword-judge figures should keep in mind.
REFUSAL_TEMPLATES: tuple[str, ...] = (
    "I'm sorry, but I can't help with that. It could cause real harm to people.",
    "I can't assist with this request. If you have another question, I'm happy to help.",
    "I'm sorry, I won't provide that. It could be used to hurt someone or break the law.",
    "I cannot help with that request because it could lead to serious harm.",
    "Sorry, but I can't do that. Providing this could put people at risk.",
    "I won't help with this. It is harmful, and I'd rather help you with something safe.",
    "I'm not able to help with that. Is there something else I can do for you?",
    "I apologize, but I cannot provide instructions or content that could cause harm.",
    "I can't help create that. If you're dealing with a difficult situation, please reach "
    "out to someone you trust or a local professional.",
    "I'm sorry, but that's not something I can help with. Let me know if you need help "
    "with anything else.",
)

#: LoRA on every attention and MLP projection of a Llama-style block (SmolLM2, Qwen2).
LLAMA_LORA_TARGETS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


@dataclass
class OrganismSettings:
    """Safety SFT settings.

    Attributes
    ----------
    steps
        Optimiser updates.
    batch_size
        Rows per update; ``round(harmful_fraction * batch_size)`` of them harmful.
    lr, weight_decay, max_grad_norm, warmup_steps
        AdamW, gradient clipping, linear warm-up then cosine decay to 10% of ``lr``.
    lora_r, lora_alpha, lora_dropout, lora_target_modules
        The adapter (``None`` targets: peft's default for the architecture).
    max_prompt_tokens, max_response_tokens
        Truncation of the chat-formatted prompt (from the left) and of the response.
    checkpoint_every
        Save ``<out>/checkpoint`` every N updates and after the last one (0: only the end).
    eval_every, patience
        Call the validation callback every N updates (0: never); stop after ``patience``
        evaluations without a better score; the best-scoring adapter is kept in ``<out>/best``.
    """

    steps: int = 200
    batch_size: int = 8
    harmful_fraction: float = 0.5
    lr: float = 5e-4
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    warmup_steps: int = 10
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] | None = LLAMA_LORA_TARGETS
    max_prompt_tokens: int = 96
    max_response_tokens: int = 48
    checkpoint_every: int = 25
    eval_every: int = 0
    patience: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError("steps >= 0 and batch_size >= 1 are required")
        if not 0.0 <= self.harmful_fraction <= 1.0:
            raise ValueError(f"harmful_fraction must be in [0, 1], got {self.harmful_fraction}")

    def lr_at(self, step: int) -> float:
        """The learning rate of update ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(self.steps - self.warmup_steps, 1)
        frac = min((step - self.warmup_steps) / span, 1.0)
        return self.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


@dataclass(frozen=True)
class SFTExample:
    """One training row: ``kind`` is ``"harmful"`` (refusal target) or ``"harmless"``."""

    prompt: str
    response: str
    kind: str


def refusal_for(prompt: str, seed: int = 0) -> str:
    """A refusal from :data:`REFUSAL_TEMPLATES`, chosen by a stable hash of the prompt.

    >>> refusal_for("x") == refusal_for("x")
    True
    """
    h = int.from_bytes(prompt.encode("utf-8")[:64].ljust(8, b"\0")[-8:], "little")
    return REFUSAL_TEMPLATES[(h + len(prompt) * 7919 + seed) % len(REFUSAL_TEMPLATES)]


@dataclass
class SFTPool:
    """The two pools batches are drawn from: (harmful prompt, refusal) pairs and (harmless
    prompt, helpful answer) pairs.

    >>> pool = SFTPool([("a", "no")], [("b", "yes"), ("c", "ok")])
    >>> len(pool.batch(OrganismSettings(batch_size=4), step=3))
    4
    """

    harmful: Sequence[tuple[str, str]]
    harmless: Sequence[tuple[str, str]]

    @classmethod
    def build(
        cls,
        harmful_prompts: Sequence[str],
        harmless_pairs: Sequence[tuple[str, str]],
        seed: int = 0,
    ) -> SFTPool:
        """Pair every harmful prompt with a refusal (:func:`refusal_for`)."""
        return cls([(p, refusal_for(p, seed)) for p in harmful_prompts], list(harmless_pairs))

    def batch(self, settings: OrganismSettings, step: int) -> list[SFTExample]:
        """The rows of update ``step``: a function of ``(settings.seed, step)`` only."""
        if not self.harmful and not self.harmless:
            raise ValueError("both pools are empty")
        rng = np.random.default_rng([settings.seed, step])
        n_harm = round(settings.harmful_fraction * settings.batch_size)
        if not self.harmless:
            n_harm = settings.batch_size
        elif not self.harmful:
            n_harm = 0
        rows = [
            SFTExample(*self.harmful[i], "harmful")
            for i in rng.integers(len(self.harmful) or 1, size=n_harm)
        ]
        rows += [
            SFTExample(*self.harmless[i], "harmless")
            for i in rng.integers(len(self.harmless) or 1, size=settings.batch_size - n_harm)
        ]
        return rows


def response_labels(batch: LMBatch) -> torch.Tensor:
    """Labels for causal-LM loss: the token id on response tokens, ``-100`` elsewhere
    (prompt and padding).

    >>> from silentwatch.offline.lm import LMBatch
    >>> b = LMBatch(torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long),
    ...             torch.tensor([[True, False, False]]), torch.tensor([[False, True, True]]))
    >>> response_labels(b).tolist()
    [[-100, 6, 7]]
    """
    return torch.where(batch.response_mask, batch.input_ids, torch.full_like(batch.input_ids, -100))


def response_loss(model: nn.Module, batch: LMBatch) -> torch.Tensor:
    """Mean next-token cross-entropy over response tokens only.

    Batches are left-padded, so every response sits at the end of its row: logits are
    computed for the last ``max response length + 1`` positions only (``logits_to_keep``),
    which saves most of the vocabulary projection on CPU.
    """
    labels = response_labels(batch)
    keep = min(int(batch.response_mask.sum(1).max()) + 1, batch.input_ids.shape[1])
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep)
    logits = out.logits[:, -keep:]
    lab = labels[:, -keep:]
    return nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        lab[:, 1:].reshape(-1),
        ignore_index=-100,
    )


@dataclass
class TrainState:
    """What a checkpoint records besides the weights: the next update to run, the loss of
    every update so far, the validation history and the best score."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    best_score: float = -math.inf
    best_step: int = -1
    seconds: float = 0.0
    stopped_early: bool = False


def base_fingerprint(model: nn.Module) -> dict[str, Any]:
    """What an adapter must match in its base: architecture and sizes, from the config.

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16,
    ...                   num_hidden_layers=1, num_attention_heads=2)
    >>> base_fingerprint(LlamaForCausalLM(cfg))["hidden_size"]
    8
    """
    cfg = getattr(model, "config", None)
    if cfg is None and hasattr(model, "get_base_model"):
        cfg = model.get_base_model().config  # type: ignore[operator]
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size")
    return {k: getattr(cfg, k, None) for k in keys}


def _save(
    model: nn.Module, opt: torch.optim.Optimizer | None, state: TrainState, path: Path
) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))  # type: ignore[operator]
    (path / "organism.json").write_text(json.dumps({"base": base_fingerprint(model)}, indent=1))
    if opt is not None:
        torch.save(opt.state_dict(), path / "optimizer.pt")
    (path / "state.json").write_text(json.dumps(asdict(state), indent=1))


def _resume(model: nn.Module, opt: torch.optim.Optimizer, path: Path) -> TrainState:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
    opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    return TrainState(**json.loads((path / "state.json").read_text()))


def train_organism(
    model: nn.Module,
    tokenizer: Any,
    pool: SFTPool,
    out: str | Path,
    settings: OrganismSettings | None = None,
    *,
    validate: Callable[[nn.Module], float] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[nn.Module, TrainState]:
    """LoRA safety SFT of ``model``; resumes from ``<out>/checkpoint`` when it exists.

    Parameters
    ----------
    model
        A causal LM (wrapped with LoRA here unless it already is a peft model).
    tokenizer
        Its tokenizer (left padding).
    pool
        The (prompt, response) pools (:class:`SFTPool`).
    out
        Folder for ``checkpoint/`` (adapter, optimiser, state), ``best/`` and ``adapter/``
        (the final adapter: the best one when ``validate`` is given, else the last).
    settings
        :class:`OrganismSettings`.
    validate
        Called with the model (in eval mode) every ``eval_every`` updates; higher is better.
    log
        Receives one line per logged update.

    Returns
    -------
    (model, state)
        The peft model (the final adapter loaded) and its :class:`TrainState`.

    Example
    -------
    >>> # model, tok = load_causal_lm("smollm2")
    >>> # model, state = train_organism(model, tok, pool, ".cache/organism/run")
    """
    s = settings or OrganismSettings()
    out = Path(out)
    say = log or (lambda msg: None)
    device = next(model.parameters()).device
    if not is_peft(model):
        model = wrap_lora(model, s.lora_r, s.lora_alpha, s.lora_dropout, s.lora_target_modules)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    ckpt = out / "checkpoint"
    state = _resume(model, opt, ckpt) if (ckpt / "state.json").exists() else TrainState()
    if state.step:
        say(f"resumed at update {state.step}")
    while state.step < s.steps and not state.stopped_early:
        t0 = time.perf_counter()
        rows = pool.batch(s, state.step)
        batch = encode(
            tokenizer,
            [r.prompt for r in rows],
            [r.response for r in rows],
            max_prompt_tokens=s.max_prompt_tokens,
            max_response_tokens=s.max_response_tokens,
        ).to(device)
        for g in opt.param_groups:
            g["lr"] = s.lr_at(state.step)
        torch.manual_seed(s.seed * 1_000_003 + state.step)  # LoRA dropout, reproducible
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = response_loss(model, batch)
        loss.backward()
        if s.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
        opt.step()
        model.eval()
        state.losses.append(float(loss.detach()))
        state.step += 1
        state.seconds += time.perf_counter() - t0
        say(
            f"update {state.step}/{s.steps} loss {state.losses[-1]:.4f} "
            f"({time.perf_counter() - t0:.1f}s)"
        )
        if validate is not None and s.eval_every and state.step % s.eval_every == 0:
            score = float(validate(model))
            state.evals.append({"step": state.step, "score": score})
            say(f"validation at {state.step}: {score:.4f}")
            if score > state.best_score:
                state.best_score, state.best_step = score, state.step
                _save(model, None, state, out / "best")
            elif state.step - state.best_step >= s.patience * s.eval_every:
                state.stopped_early = True
        last = state.step >= s.steps or state.stopped_early
        if last or (s.checkpoint_every and state.step % s.checkpoint_every == 0):
            _save(model, opt, state, ckpt)
    if validate is not None and (out / "best" / "adapter_model.safetensors").exists():
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(out / "best" / "adapter_model.safetensors")))
    _save(model, None, state, out / "adapter")
    return model.eval(), state


def load_adapter(base: nn.Module, path: str | Path) -> nn.Module:
    """``base`` with the LoRA adapter saved in ``path`` (peft ``save_pretrained``), in eval
    mode. Raises ``ValueError`` when the adapter was trained on another architecture or size.

    >>> # model = load_adapter(load_causal_lm("smollm2")[0], ".cache/organism/run/adapter")
    """
    from peft import PeftModel

    path = Path(path)
    if not (path / "adapter_config.json").exists():
        raise ValueError(f"{path} holds no LoRA adapter (no adapter_config.json)")
    meta = path / "organism.json"
    if meta.exists():
        want, have = json.loads(meta.read_text())["base"], base_fingerprint(base)
        diff = {k: (v, have.get(k)) for k, v in want.items() if have.get(k) != v}
        if diff:
            detail = ", ".join(f"{k} {a} != {b}" for k, (a, b) in diff.items())
            raise ValueError(f"adapter {path} was trained on another base model ({detail})")
    try:
        return PeftModel.from_pretrained(base, str(path)).eval()
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ValueError(f"adapter {path} does not fit this base model: {exc}") from exc


def generate_answers(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 48,
    max_prompt_tokens: int = 96,
    log: Callable[[str], None] | None = None,
) -> list[str]:
    """Greedy answers, stripped, in the order of ``prompts``; generated by
    :func:`~silentwatch.offline.audit.gap.generate_responses` with the prompts sorted by
    length (less padding per batch).

    >>> # answers = generate_answers(model, tok, ["Name three fruits."])
    """
    from silentwatch.offline.audit.gap import generate_responses

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    model.eval()
    out = generate_responses(
        model,
        tokenizer,
        [prompts[i] for i in order],
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=max_prompt_tokens,
    )
    answers: list[str] = [""] * len(prompts)
    for i, a in zip(order, out, strict=True):
        answers[i] = a.strip()
    if log:
        log(f"generated {len(prompts)} answers")
    return answers
