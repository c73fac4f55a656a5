"""Text -> unit-normalised embeddings with transformers (paper A, section 3.1).

Encoders use attention-masked mean pooling, decoders the last non-padding token (right
padding); texts are tokenised once, sorted by token count (longest first) and batched so
padding is minimal, and the forward pass runs under ``torch.inference_mode``. The model
may run in bfloat16 / float16 (the default on CUDA), but pooling and normalisation are
always done in float32. A GGUF checkpoint (``gguf_file=``) is dequantised to float32 by
transformers on load; its weights digest is the sha256 of the ``.gguf`` file.

The only embedder backend that imports torch: the registry imports it lazily, when a spec
resolves to it.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from silentwatch.monitor.bundle import EmbedderSpec
from silentwatch.offline.dtypes import TORCH_DTYPES, resolve_dtype
from silentwatch.offline.embedders.base import (
    POOLINGS,
    EmbeddingInfo,
    Pooling,
    file_sha256,
    settings_tag,
    weights_sha256,
)
from silentwatch.offline.embedders.packaged import (
    MINILM_NAME,
    SMOLLM2_NAME,
    minilm_path,
    smollm2_gguf_path,
)

# Padded tokens per forward pass on CPU: small batches of long texts stay in cache. On 2
# EPYC cores (benchmarks/extraction.py) SmolLM2 ran 25% faster with this cap than with
# plain 64-row batches, MiniLM the same or slightly faster; on CUDA big batches win.
CPU_BATCH_TOKENS = 2048
# Decoder-only families: their last token has attended to the whole text, so it is the
# embedding (paper A); every other model is treated as an encoder (mean pooling).
DECODER_TYPES = frozenset(
    {"llama", "qwen2", "qwen3", "gpt2", "mistral", "gemma", "gemma2", "gemma3", "phi3", "olmo2"}
)

__all__ = [
    "CPU_BATCH_TOKENS",
    "TransformerEmbedder",
    "default_pooling",
    "load_embedder",
]


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` without transformers' progress bars (noise in gate logs and CI output).

    GGUF dequantisation draws a plain tqdm bar that ignores transformers' switch, so the
    module's ``tqdm`` is swapped for a pass-through for the duration of the call.
    """
    import contextlib
    from unittest import mock

    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    with contextlib.ExitStack() as stack:
        try:
            from transformers import modeling_gguf_pytorch_utils as gguf_utils
        except ImportError:  # pragma: no cover - older/newer layouts: keep the bar
            gguf_utils = None
        if gguf_utils is not None and hasattr(gguf_utils, "tqdm"):
            stack.enter_context(mock.patch.object(gguf_utils, "tqdm", lambda it, **_: it))
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                hf_logging.enable_progress_bar()


def default_pooling(cfg: Any) -> Pooling:
    """``last_token`` for decoder-only models (by config), ``mean`` for everything else."""
    archs = getattr(cfg, "architectures", None) or []
    decoder = (
        getattr(cfg, "is_decoder", False)
        or cfg.model_type in DECODER_TYPES
        or any(a.endswith("ForCausalLM") for a in archs)
    )
    return "last_token" if decoder and not getattr(cfg, "is_encoder_decoder", False) else "mean"


@dataclass
class TransformerEmbedder:
    """Pooled, unit-normalised sentence embeddings from a transformers model.

    Parameters
    ----------
    model_path
        A local model directory (or, with ``gguf_file``, the folder holding the GGUF).
    name
        The name recorded in specs (default: the config's ``_name_or_path``).
    pooling
        ``"mean"``, ``"cls"`` (first token) or ``"last_token"``; ``None`` picks it from
        the config.
    max_length
        Tokens kept per text.
    batch_size
        Texts per forward pass.
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    dtype
        ``"auto"`` (float32 on CPU, bfloat16 on CUDA), ``"float32"``, ``"bfloat16"``,
        ``"float16"``: the forward pass's dtype only.
    gguf_file
        File name of a GGUF checkpoint inside ``model_path`` (needs ``gguf``).
    max_batch_tokens
        Cap on padded tokens (rows x width) per forward pass, on top of ``batch_size``:
        ``"auto"`` is :data:`CPU_BATCH_TOKENS` on CPU and no cap elsewhere; ``None``
        no cap. Batches of long texts get fewer rows, batches of short ones up to
        ``batch_size``.
    normalize
        Unit-normalise the pooled rows (default); ``False`` returns them raw.
    """

    model_path: str
    name: str | None = None
    pooling: Pooling | None = None
    max_length: int = 256
    batch_size: int = 64
    device: str = "cpu"
    dtype: str = "auto"
    gguf_file: str | None = None
    max_batch_tokens: int | Literal["auto"] | None = "auto"
    normalize: bool = True

    def __post_init__(self) -> None:
        self.dtype = resolve_dtype(self.dtype, self.device)
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {self.pooling!r}")
        load_kw: dict[str, Any] = {}
        if self.gguf_file:
            if importlib.util.find_spec("gguf") is None:
                raise ImportError(
                    "loading a GGUF checkpoint needs the gguf package: "
                    "pip install 'silentwatch[offline]'"
                )
            load_kw["gguf_file"] = self.gguf_file
        cfg = AutoConfig.from_pretrained(self.model_path, **load_kw)
        self._default_pooling = default_pooling(cfg)
        if self.pooling is None:
            self.pooling = self._default_pooling
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, **load_kw)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        torch_dtype = TORCH_DTYPES[self.dtype]
        if self.gguf_file:
            # transformers dequantises GGUF tensors to float32; cast afterwards.
            model = _quiet(AutoModel.from_pretrained, self.model_path, **load_kw)
        else:
            model = _quiet(AutoModel.from_pretrained, self.model_path, dtype=torch_dtype)
        # A checkpoint saved from *ForCausalLM may come back with its head: keep the body.
        model = getattr(model, "base_model", model)
        self.model = model.to(device=self.device, dtype=torch_dtype).eval()
        self.dim = int(self.model.config.hidden_size)
        self.num_layers = int(self.model.config.num_hidden_layers)
        self._forward_args = set(inspect.signature(self.model.forward).parameters)
        self._is_decoder = default_pooling(cfg) == "last_token"
        self.name = self.name or getattr(cfg, "_name_or_path", None) or str(self.model_path)
        path = Path(self.model_path)
        if self.gguf_file:
            self.weights_sha256 = file_sha256(path / self.gguf_file)
        else:
            self.weights_sha256 = weights_sha256(path) if path.is_dir() else None

    def spec(self, version: str | None = None) -> EmbedderSpec:
        """The bundle's record of this embedder.

        The version defaults to the weights digest plus :func:`settings_tag` (pooling,
        truncation, dtype or normalisation other than the defaults), so a bundle for
        MiniLM at ``max_length`` 32 never accepts vectors from MiniLM at 256.
        """
        digest = self.weights_sha256
        tag = settings_tag(
            pooling=self.pooling or self._default_pooling,
            default_pooling=self._default_pooling,
            max_length=self.max_length,
            dtype=self.dtype,
            normalized=self.normalize,
        )
        return EmbedderSpec(
            name=str(self.name),
            version=version or (f"sha256:{digest[:12]}{tag}" if digest else f"unversioned{tag}"),
            weights_sha256=digest,
            pooling=self.pooling or "unknown",
            normalized=self.normalize,
        )

    def info(self) -> EmbeddingInfo:
        """What produces this embedder's vectors (also the cache key's ingredients)."""
        return EmbeddingInfo(
            name=str(self.name),
            weights_sha256=self.weights_sha256,
            dtype=self.dtype,
            pooling=self.pooling or "mean",
            max_length=self.max_length,
            dim=self.dim,
            device=str(self.device),
            backend="transformers",
            normalized=self.normalize,
        )

    def embed(self, texts: list[str], layer: int = -1) -> np.ndarray:
        """(n, dim) float32 unit rows, in the order of ``texts``.

        Parameters
        ----------
        texts
            The texts to embed.
        layer
            Index into the L + 1 hidden states (0 = token embeddings, -1 = last layer).
        """
        if not -(self.num_layers + 1) <= layer <= self.num_layers:
            raise IndexError(f"layer {layer} out of range for {self.num_layers} + 1 states")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for idx, batch in self._batches(texts):
            if layer == -1:
                # last_hidden_state == hidden_states[-1]; not asking for all saves memory.
                hidden = self._forward(batch, all_layers=False).last_hidden_state
            else:
                hidden = self._forward(batch, all_layers=True).hidden_states[layer]
            out[idx] = self._pool(hidden, batch["attention_mask"]).cpu().numpy()
        return out

    def embed_layers(self, texts: list[str]) -> np.ndarray:
        """(n, L + 1, dim) float32: every hidden state pooled and unit-normalised per layer.

        Index 0 is the token-embedding output, index L the last layer (equal to
        :meth:`embed`); for representation audits (paper B's probe reads all layers).
        """
        out = np.empty((len(texts), self.num_layers + 1, self.dim), dtype=np.float32)
        for idx, batch in self._batches(texts):
            states = self._forward(batch, all_layers=True).hidden_states
            mask = batch["attention_mask"]
            pooled = torch.stack([self._pool(h, mask) for h in states], dim=1)
            out[idx] = pooled.cpu().numpy()
        return out

    # -- internals -------------------------------------------------------------------

    def _batches(self, texts: list[str]) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """Yield (row indices, padded tensors): longest texts first, by token count.

        Sorting by token count (not characters) keeps each batch's padding minimal;
        longest first makes the largest batch run first, so an out-of-memory shows at once.
        """
        if not texts:
            return
        enc = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_length, padding=False
        )
        # attention_mask is rebuilt from the lengths; other inputs only if the model takes them
        # (a decoder given a BERT-style tokenizer must not receive token_type_ids).
        keys = [
            k
            for k in enc
            if k == "input_ids" or (k in self._forward_args and k != "attention_mask")
        ]
        lengths = np.array([len(ids) for ids in enc["input_ids"]])
        order = np.argsort(-lengths, kind="stable")
        pad_id = self.tokenizer.pad_token_id or 0
        budget = self._batch_tokens()
        start = 0
        while start < len(texts):
            width = int(lengths[order[start]])  # longest first: the batch's width
            rows = (
                self.batch_size if budget is None else max(1, min(self.batch_size, budget // width))
            )
            idx = order[start : start + rows]
            start += rows
            batch: dict[str, torch.Tensor] = {}
            for key in keys:
                fill = pad_id if key == "input_ids" else 0
                arr = np.full((len(idx), width), fill, dtype=np.int64)
                for row, i in enumerate(idx):
                    seq = enc[key][i]
                    arr[row, : len(seq)] = seq  # right padding
                batch[key] = torch.from_numpy(arr).to(self.device)
            mask = np.arange(width)[None, :] < lengths[idx][:, None]
            batch["attention_mask"] = torch.from_numpy(mask.astype(np.int64)).to(self.device)
            yield idx, batch

    def _batch_tokens(self) -> int | None:
        if self.max_batch_tokens == "auto":
            return CPU_BATCH_TOKENS if str(self.device) == "cpu" else None
        return self.max_batch_tokens

    def _forward(self, batch: dict[str, torch.Tensor], *, all_layers: bool) -> Any:
        kw: dict[str, Any] = {"output_hidden_states": all_layers}
        if self._is_decoder:
            kw["use_cache"] = False  # no KV cache: one forward pass, nothing to generate
        with torch.inference_mode():
            return self.model(**batch, **kw)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(b, t, d) hidden states -> (b, d) float32 rows (unit rows unless ``normalize``
        is off)."""
        with torch.inference_mode():
            hidden = hidden.float()  # pool in float32 whatever the forward dtype
            if self.pooling == "mean":
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
            elif self.pooling == "cls":
                pooled = hidden[:, 0]  # right padding: position 0 is always a real token
            else:
                last = mask.sum(1) - 1  # right padding: the last non-padding position
                pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
            if not self.normalize:
                return pooled
            return torch.nn.functional.normalize(pooled, dim=-1)


def load_embedder(model: str | None = None, **kwargs: Any) -> TransformerEmbedder:
    """Load a transformers embedder.

    Parameters
    ----------
    model
        ``None`` / ``"minilm"``: the packaged all-MiniLM-L6-v2 (mean pooling);
        ``"smollm2"``: the packaged SmolLM2-135M-Instruct GGUF (last-token pooling);
        anything else: a local path or hub id.
    **kwargs
        Passed to :class:`TransformerEmbedder` (``device``, ``dtype``, ``batch_size``...).
    """
    # An explicit pooling (gate.yaml's per-side settings) overrides the model's own.
    pooling = kwargs.pop("pooling", None)
    if model in (None, "minilm", MINILM_NAME):
        return TransformerEmbedder(
            minilm_path(), name=MINILM_NAME, pooling=pooling or "mean", **kwargs
        )
    if model == "smollm2":
        gguf = smollm2_gguf_path()
        return TransformerEmbedder(
            str(gguf.parent),
            name=SMOLLM2_NAME,
            pooling=pooling or "last_token",
            gguf_file=gguf.name,
            **kwargs,
        )
    return TransformerEmbedder(model, pooling=pooling, **kwargs)
