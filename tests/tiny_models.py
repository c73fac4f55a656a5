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


#: Filler words of the toy labelled sets the gate tests embed with tiny models.
TOY_WORDS = (
    "river", "table", "morning", "green", "window", "music", "paper", "garden", "city", "letter",
)  # fmt: skip


def write_toy_evalset(path: Path, rows: int, *, varied_lengths: bool = False) -> Path:
    """A JSONL file of ``rows`` labelled texts (``body``, ``is_toxic`` = yes / no,
    alternating), whose unsafe rows carry "awful hateful": separable even for a random
    tiny model. ``varied_lengths`` gives 1-6 trailing words, so length-sorting engines
    reorder the rows."""
    import json
    import random

    rng = random.Random(0)
    with path.open("w") as fh:
        for i in range(rows):
            unsafe = i % 2
            word = "awful hateful" if unsafe else "lovely kind"
            n = 1 + i % 6 if varied_lengths else 2
            first = rng.choice(TOY_WORDS)
            tail = " ".join(rng.choice(TOY_WORDS) for _ in range(n))
            text = f"{first} {word} {tail}"
            fh.write(json.dumps({"body": text, "is_toxic": "yes" if unsafe else "no"}) + "\n")
    return path
