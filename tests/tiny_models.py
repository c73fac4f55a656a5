"""Tiny random-initialised transformers models saved to disk, for CPU tests.

Built from a config in code (no download) and tokenised with the packaged
all-MiniLM-L6-v2 tokenizer, so ``open_embedder(<dir>)`` loads them like any local model.
"""

from __future__ import annotations

from pathlib import Path

LAYERS = 2


def save_tiny(kind: str, out: Path, *, seed: int = 0, hidden: int = 32) -> Path:
    """A tiny random ``kind`` ("bert" or "llama") model with MiniLM's tokenizer in ``out``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaModel

    from silentwatch.offline.embedders import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(seed)
    common = {
        "vocab_size": tok.vocab_size,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 4,
        "max_position_embeddings": 512,
    }
    if kind == "bert":
        model = BertModel(BertConfig(**common))
    else:
        cfg = LlamaConfig(
            **common,
            num_key_value_heads=2,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id,
        )
        model = LlamaModel(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
