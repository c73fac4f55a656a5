"""Tiny random-initialised causal LMs (Llama, Qwen2, GPT-2) built from a config in code, with
the packaged all-MiniLM-L6-v2 tokenizer (no chat template: prompts use
``silentwatch.offline.lm.PLAIN_TEMPLATE``). For CPU tests of paper B's audit."""

from __future__ import annotations

from typing import Any

LAYERS = 4
HIDDEN = 32


def tiny_lm(kind: str = "llama", *, seed: int = 0, layers: int = LAYERS, hidden: int = HIDDEN):
    """``(model, tokenizer)``: a tiny causal LM of ``kind`` in eval mode, tokenizer left-padded."""
    import torch
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    from silentwatch.offline.embedders import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    tok.padding_side = "left"
    tok.eos_token = tok.sep_token
    torch.manual_seed(seed)
    ids: dict[str, Any] = {
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.cls_token_id,
        "eos_token_id": tok.sep_token_id,
    }
    if kind == "gpt2":
        cfg = GPT2Config(
            vocab_size=tok.vocab_size,
            n_embd=hidden,
            n_layer=layers,
            n_head=4,
            n_positions=512,
            **ids,
        )
        model = GPT2LMHeadModel(cfg)
    else:
        common = {
            "vocab_size": tok.vocab_size,
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            **ids,
        }
        model = (
            Qwen2ForCausalLM(Qwen2Config(**common))
            if kind == "qwen2"
            else LlamaForCausalLM(LlamaConfig(**common))
        )
    model.generation_config.pad_token_id = tok.pad_token_id
    # transformers installs its own output-recording hooks on the first forward that asks for
    # hidden states; do it now so that tests counting hooks see a stable baseline.
    with torch.no_grad():
        model(input_ids=torch.tensor([[tok.cls_token_id]]), output_hidden_states=True)
    return model.eval(), tok
